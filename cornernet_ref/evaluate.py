"""Test-time pipeline and COCO evaluation (paper §4.1, "Testing details"; §4.3).

CornerNet is tested at the image's own resolution. For an ``h x w`` image the official
code builds an input canvas of size

$$ H_{in} = h \\,|\\, 127, \\qquad W_{in} = w \\,|\\, 127 \\quad (\\text{bitwise or}), $$

the smallest sizes ``>= (h, w)`` of the form ``128 n - 1``, places the image in its centre
(zero, i.e. black, padding) and reads the network output at
``(H_out, W_out) = ((H_in + 1) / 4, (W_in + 1) / 4)``. A decoded box goes back to image
pixels by the ratio ``r = W_out / W_in`` (per axis) and the border ``b``, then is clipped:

$$ x_{image} = \\operatorname{clip}(x_{heat} / r - b,\\; 0,\\; w) $$

Optionally the image is also tested at other scales $s$ (the official multi-scale
configuration uses 0.5, 0.75, 1, 1.25 and 1.5): it is resized to $\\lfloor s h \\rfloor \\times
\\lfloor s w \\rfloor$ first, the canvas is built around the resized image, and its boxes are
clipped to the resized image and divided by $s$. The detections of all scales are pooled
before soft-NMS.

With flip testing the batch holds the canvas and its mirror; the mirror's boxes are
mirrored back on the heatmap grid (``x -> W_out - x``, swapping ``x1`` and ``x2``) and
both sets are merged by soft-NMS per class (:func:`cornernet_ref.decode.soft_nms`). The
best 100 boxes of an image are kept, and scored by pycocotools in COCO's ``xywh`` format.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn

from cornernet_ref.data.augment import resize_image
from cornernet_ref.data.coco import load_coco
from cornernet_ref.data.image import MEAN_RGB, STD_RGB, normalize, read_image
from cornernet_ref.decode import REJECTED, decode, soft_nms
from cornernet_ref.errors import InputError, print_error
from cornernet_ref.output import CornerNetOutput

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


class CanvasGeometry(NamedTuple):
    """Where an ``(h, w)`` image, resized by ``scale``, sits in its test canvas and output grid."""

    image_size: tuple[int, int]  # the original image
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    border: tuple[int, int]  # (top, left) padding of the canvas
    scale: float = 1.0

    @property
    def scaled_size(self) -> tuple[int, int]:
        """The image resized by ``scale``: ``(int(h * scale), int(w * scale))``."""
        return int(self.image_size[0] * self.scale), int(self.image_size[1] * self.scale)

    @property
    def ratio(self) -> tuple[float, float]:
        """``(output / input)`` per axis, ``(y, x)``."""
        return (
            self.output_size[0] / self.input_size[0],
            self.output_size[1] / self.input_size[1],
        )


def canvas_geometry(height: int, width: int, scale: float = 1.0) -> CanvasGeometry:
    """The official test canvas of an ``height x width`` image resized by ``scale``."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    resized_h, resized_w = int(height * scale), int(width * scale)
    if not scale > 0 or min(resized_h, resized_w) < 1:
        raise ValueError(f"scale {scale} leaves nothing of a {height} x {width} image")
    input_size = (resized_h | 127, resized_w | 127)
    output_size = ((input_size[0] + 1) // 4, (input_size[1] + 1) // 4)
    # The official crop centres the image: border = input // 2 - size // 2 = (input - size) // 2.
    border = ((input_size[0] - resized_h) // 2, (input_size[1] - resized_w) // 2)
    return CanvasGeometry((height, width), input_size, output_size, border, scale)


def pad_image(
    image: np.ndarray, scale: float = 1.0, *, mean: np.ndarray = MEAN_RGB, std: np.ndarray = STD_RGB
) -> tuple[Tensor, CanvasGeometry]:
    """Normalised ``(3, H_in, W_in)`` test canvas of an ``(h, w, 3)`` RGB image.

    ``mean`` and ``std`` are those of :func:`cornernet_ref.data.image.normalize`.

    The image is first resized by ``scale`` (bilinear, as OpenCV) unless ``scale`` is 1. As
    in the official crop, the pixels of the canvas are copied up to ``size // 2 + input //
    2`` from the image centre, so an image whose side is already ``128 n - 1`` loses its last
    row or column (the canvas is one pixel short on that side).
    """
    geometry = canvas_geometry(*image.shape[:2], scale)
    if scale != 1:
        image = resize_image(image, geometry.scaled_size)
    height, width = geometry.scaled_size
    (top, left), (in_h, in_w) = geometry.border, geometry.input_size
    kept_h = min(height, height // 2 + in_h // 2)
    kept_w = min(width, width // 2 + in_w // 2)
    canvas = np.zeros((in_h, in_w, 3), dtype=image.dtype)  # black padding, then normalised
    canvas[top : top + kept_h, left : left + kept_w] = image[:kept_h, :kept_w]
    return normalize(canvas, mean, std), geometry


def boxes_to_image(boxes: Tensor, geometry: CanvasGeometry) -> Tensor:
    """Map ``(..., 4)`` heatmap boxes to image pixels: undo the ratio, border and scale, clip."""
    ratio_y, ratio_x = geometry.ratio
    top, left = geometry.border
    height, width = geometry.scaled_size
    x = (boxes[..., 0::2] / ratio_x - left).clamp(0, width) / geometry.scale
    y = (boxes[..., 1::2] / ratio_y - top).clamp(0, height) / geometry.scale
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def mirror_boxes(boxes: Tensor, width: float) -> Tensor:
    """Mirror ``(..., 4)`` xyxy boxes in a frame of the given width: ``x -> width - x``."""
    return torch.stack(
        (width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]), dim=-1
    )


class ImageDetections(NamedTuple):
    """Final detections of one image in image pixels: ``boxes (N, 4)`` xyxy, scores, labels."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def scale_detections(
    out: CornerNetOutput,
    geometry: CanvasGeometry,
    *,
    flip: bool,
    K: int = 100,
    kernel: int = 3,
    ae_threshold: float = 0.5,
    num_dets: int = 1000,
) -> ImageDetections:
    """The valid pairs of one scale (and its mirror, if ``flip``) in image pixels, before NMS.

    Args:
        out: raw maps of a batch of 1 (the canvas) or 2 (canvas, mirrored canvas).
        geometry: the canvas geometry of the image at this scale.
        flip: whether the batch holds the mirrored canvas as its second element.
        K: corners kept per heatmap (see :func:`cornernet_ref.decode.decode`).
        kernel: side of the max-pooling window that finds the peaks.
        ae_threshold: largest embedding distance of a pair.
        num_dets: pairs kept per image.
    """
    expected = 2 if flip else 1
    if out.tl_heat.shape[0] != expected:
        raise ValueError(f"flip={flip} needs a batch of {expected}, got {out.tl_heat.shape[0]}")
    dets = decode(out, K=K, kernel=kernel, ae_threshold=ae_threshold, num_dets=num_dets)
    boxes = dets.boxes
    if flip:  # mirror the mirror's boxes back on the output grid
        boxes = torch.stack((boxes[0], mirror_boxes(boxes[1], geometry.output_size[1])))
    boxes = boxes_to_image(boxes, geometry).reshape(-1, 4)
    scores, labels = dets.scores.reshape(-1), dets.labels.reshape(-1)
    valid = scores > REJECTED
    return ImageDetections(boxes[valid], scores[valid], labels[valid])


def merge_detections(
    parts: Sequence[ImageDetections], *, nms_method: str = "gaussian", max_per_image: int = 100
) -> ImageDetections:
    """Pool the detections of every scale, soft-NMS per class, keep the best ``max_per_image``.

    Ties with the last kept score are kept too, as the official threshold does.
    """
    boxes = torch.cat([part.boxes for part in parts])
    scores = torch.cat([part.scores for part in parts])
    labels = torch.cat([part.labels for part in parts])
    keep, scores = soft_nms(boxes, scores, labels, method=nms_method)
    boxes, labels = boxes[keep], labels[keep]
    if len(scores) > max_per_image:
        threshold = scores.topk(max_per_image).values[-1]
        top = scores >= threshold
        boxes, scores, labels = boxes[top], scores[top], labels[top]
    return ImageDetections(boxes, scores, labels)


def postprocess(
    out: CornerNetOutput,
    geometry: CanvasGeometry,
    *,
    flip: bool,
    nms_method: str = "gaussian",
    max_per_image: int = 100,
    **decode_options: Any,
) -> ImageDetections:
    """Final detections of one image tested at one scale (and its mirror, if ``flip``).

    Args:
        out: raw maps, as in :func:`scale_detections`.
        geometry: the canvas geometry, as in :func:`scale_detections`.
        flip: whether the batch holds the mirrored canvas too.
        **decode_options: ``K``, ``kernel``, ``ae_threshold``, ``num_dets`` of
            :func:`scale_detections`.
        nms_method: ``"gaussian"`` (official) or ``"linear"`` soft-NMS.
        max_per_image: boxes kept per image.
    """
    part = scale_detections(out, geometry, flip=flip, **decode_options)
    return merge_detections([part], nms_method=nms_method, max_per_image=max_per_image)


# An output source gives the raw maps of one image: (image record, geometry, flip) -> maps.
OutputSource = Callable[[dict, CanvasGeometry, bool], CornerNetOutput]


def model_source(
    model: nn.Module, images_dir: str | Path, device: str | torch.device = "cpu"
) -> OutputSource:
    """Run ``model`` (``(B, 3, H, W) -> list[CornerNetOutput]``, last stack used) on each image."""
    model.eval().to(device)

    @torch.no_grad()
    def outputs(record: dict, geometry: CanvasGeometry, flip: bool) -> CornerNetOutput:
        image = read_image(Path(images_dir) / record["file_name"])
        canvas, padded = pad_image(image, geometry.scale)
        if padded != geometry:
            raise InputError(
                f"{record['file_name']}: image is {padded.image_size}, annotations say "
                f"{geometry.image_size}"
            )
        batch = torch.stack((canvas, canvas.flip(-1)) if flip else (canvas,)).to(device)
        result = model(batch)
        return CornerNetOutput(
            *(t.cpu() for t in (result[-1] if isinstance(result, list) else result))
        )

    return outputs


def detections_to_coco(
    image_id: int, detections: ImageDetections, category_ids: list[int]
) -> list[dict]:
    """COCO result entries (``xywh``), rounded to 2 decimals as the official files are."""
    results = []
    for box, score, label in zip(
        detections.boxes.tolist(),
        detections.scores.tolist(),
        detections.labels.tolist(),
        strict=True,
    ):
        x1, y1, x2, y2 = box
        results.append(
            {
                "image_id": image_id,
                "category_id": category_ids[label],
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(score, 2),
            }
        )
    return results


def coco_metrics(coco: COCO, results: list[dict], image_ids: Iterable[int] | None = None) -> dict:
    """pycocotools bbox metrics of ``results`` against ``coco``.

    Returns:
        ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100`` as floats; 0 when there are no
        detections, ``-1`` where pycocotools finds no ground truth of that kind.
    """
    if not results:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    if image_ids is not None:
        evaluator.params.imgIds = sorted(image_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {
        name: float(value)
        for name, value in zip(METRIC_NAMES, evaluator.stats[: len(METRIC_NAMES)], strict=True)
    }


def detect_image(
    source: OutputSource,
    record: dict,
    *,
    flip: bool = True,
    scales: Sequence[float] = (1.0,),
    nms_method: str = "gaussian",
    max_per_image: int = 100,
    **decode_options: Any,
) -> ImageDetections:
    """Final detections of one image (its COCO record): every scale, flip, soft-NMS, top 100.

    Args:
        source: raw maps of the image at a scale (:func:`model_source`, or the oracle of
            :mod:`cornernet_ref.analysis`).
        record: the image's COCO record (``file_name``, ``height``, ``width``, ``id``).
        flip: flip testing (the official default).
        scales: the test scales; ``(1,)`` is the official single-scale test.
        nms_method: ``"gaussian"`` (official) or ``"linear"`` soft-NMS, see
            :func:`merge_detections`.
        max_per_image: boxes kept per image.
        **decode_options: ``K``, ``kernel``, ``ae_threshold``, ``num_dets`` of
            :func:`cornernet_ref.decode.decode`.
    """
    parts = []
    for scale in scales:
        geometry = canvas_geometry(record["height"], record["width"], scale)
        out = source(record, geometry, flip)
        parts.append(scale_detections(out, geometry, flip=flip, **decode_options))
    return merge_detections(parts, nms_method=nms_method, max_per_image=max_per_image)


def evaluate(
    source: OutputSource,
    coco: COCO,
    *,
    image_ids: Iterable[int] | None = None,
    results_out: str | Path | None = None,
    **detect_options: Any,
) -> dict:
    """Detect on every image of ``coco`` with ``source`` and score the results.

    Args:
        source: raw maps of an image (:func:`model_source`, or the oracle of
            :mod:`cornernet_ref.analysis`).
        coco: the annotations; category ``i`` of the model is the ``i``-th smallest COCO id.
        image_ids: evaluate on these images only (default: all).
        results_out: where to write the COCO results JSON, if anywhere.
        **detect_options: ``flip``, ``scales`` and the rest of :func:`detect_image`.

    Returns:
        The metrics of :func:`coco_metrics`.
    """
    category_ids = sorted(coco.getCatIds())
    image_ids = sorted(coco.getImgIds() if image_ids is None else image_ids)
    results = []
    for image_id in image_ids:
        detections = detect_image(source, coco.loadImgs(image_id)[0], **detect_options)
        results += detections_to_coco(image_id, detections, category_ids)
    if results_out is not None:
        Path(results_out).write_text(json.dumps(results))
    return coco_metrics(coco, results, image_ids)


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """``cornernet-ref evaluate``: COCO metrics of a checkpoint or of the ground-truth oracle."""
    parser = subparsers.add_parser(
        "evaluate",
        help="COCO bbox metrics of a checkpoint, or of the ground truth itself (--oracle)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--images", type=Path, required=True, help="folder of the images")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO annotation JSON")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="model checkpoint to evaluate")
    which.add_argument(
        "--oracle", action="store_true", help="ground truth as predictions (no model)"
    )
    parser.add_argument(
        "--ground-truth",
        choices=("heatmaps", "heatmaps+offsets"),
        help="with --checkpoint: replace these predicted maps by ground truth (Table 6)",
    )
    parser.add_argument(
        "--flip", action=argparse.BooleanOptionalAction, default=True, help="flip testing"
    )
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=(1.0,),
        help="test scales, comma-separated (official multi-scale: 0.5,0.75,1,1.25,1.5)",
    )
    parser.add_argument("--nms", choices=("gaussian", "linear"), default="gaussian")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="evaluate on the first N images only"
    )
    parser.add_argument("--results-out", type=Path, help="write the COCO results JSON here")
    parser.add_argument("--metrics-out", type=Path, required=True, help="write metrics JSON here")
    parser.set_defaults(func=_run)


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales 0.5,1,1.5`` -> ``(0.5, 1.0, 1.5)``."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        scales = ()
    if not scales or not all(math.isfinite(scale) and scale > 0 for scale in scales):
        raise argparse.ArgumentTypeError(
            f"expected positive scales such as 1 or 0.5,1,1.5, got {text!r}"
        )
    return scales


def positive_int(text: str) -> int:
    """An option that counts something: ``"3"`` -> ``3``; zero or less is refused."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    """A score threshold: ``"0.3"`` -> ``0.3``, within ``[0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    from cornernet_ref import analysis  # the oracle builds on this module

    if args.ground_truth and not args.checkpoint:
        raise InputError(
            "--ground-truth needs --checkpoint (with --oracle all maps are ground truth)"
        )
    if not args.images.is_dir():
        raise InputError(f"image folder not found: {args.images}")
    coco = load_coco(args.annotations)
    num_classes = len(coco.getCatIds())
    if args.oracle:
        source = analysis.oracle_source(coco, num_classes=num_classes)
    else:
        from cornernet_ref.model import CornerNet

        source = model_source(CornerNet.from_checkpoint(args.checkpoint), args.images, args.device)
        if args.ground_truth:
            source = analysis.with_ground_truth_source(
                source,
                analysis.oracle_source(coco, num_classes=num_classes),
                offsets=args.ground_truth == "heatmaps+offsets",
            )
    image_ids = sorted(coco.getImgIds())[: args.limit] if args.limit else None
    metrics = evaluate(
        source,
        coco,
        flip=args.flip,
        scales=args.scales,
        image_ids=image_ids,
        results_out=args.results_out,
        nms_method=args.nms,
    )
    args.metrics_out.parent.mkdir(parents=True, exist_ok=True)
    args.metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    non_finite = [name for name, value in metrics.items() if not math.isfinite(value)]
    if non_finite:
        print_error(f"non-finite metrics {', '.join(non_finite)} (written to {args.metrics_out})")
        return 1
    return 0
