r"""The test procedure of paper §4.1 ("Testing details"): from an image to its final boxes.

CornerNet is tested at the image's own resolution, as the official code does:

1. [canvas_geometry][cornernet_ref.inference.canvas_geometry] and
   [pad_image][cornernet_ref.inference.pad_image]: the image (resized by a test scale) is
   centred on a black canvas of sides ``128 n - 1``; the network reads it on a grid 4 times
   smaller;
2. [scale_detections][cornernet_ref.inference.scale_detections]: the maps of the canvas
   (and, with flip testing, of its mirror) are decoded
   ([decode][cornernet_ref.decode.decode]), the mirror's boxes mirrored back
   ([mirror_boxes][cornernet_ref.inference.mirror_boxes]) and every box mapped back to the
   image's pixels ([boxes_to_image][cornernet_ref.inference.boxes_to_image]);
3. [merge_detections][cornernet_ref.inference.merge_detections]: the boxes of every scale
   are pooled, merged by soft-NMS per class and the best 100 kept.

[detect_image][cornernet_ref.inference.detect_image] runs the three steps on one image,
with the options of one [TestConfig][cornernet_ref.inference.TestConfig]. Where the maps
come from is an [OutputSource][cornernet_ref.inference.OutputSource]: a model
([model_source][cornernet_ref.inference.model_source]), an ONNX export
([onnx_source][cornernet_ref.export.onnx_source]) or the ground truth
([oracle_source][cornernet_ref.analysis.oracle_source]). Scoring the boxes with COCO's
metrics is [cornernet_ref.evaluate][].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from cornernet_ref.data.image import MEAN_RGB, STD_RGB, normalize, read_image, resize_image
from cornernet_ref.decode import REJECTED, DecodeConfig, decode, soft_nms_all
from cornernet_ref.errors import InputError
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.printable import PrintableConfig

NMS_METHODS = ("gaussian", "linear")


@dataclass(frozen=True)
class TestConfig(PrintableConfig):
    r"""How an image is tested; the defaults are the official single-scale test.

    Attributes:
        flip: test the mirrored canvas as well and pool its boxes (official).
        scales: test the image resized by each of these; ``(1,)`` is the single-scale test,
            the official multi-scale configuration uses ``0.5, 0.75, 1, 1.25, 1.5``.
        nms_method: ``"gaussian"`` (official) or ``"linear"`` soft-NMS
            ([soft_nms][cornernet_ref.decode.soft_nms]).
        max_per_image: boxes kept per image after soft-NMS (official 100).
        decode: the options of [decode][cornernet_ref.decode.decode].
    """

    __test__ = False  # not a pytest test class, despite its name

    flip: bool = True
    scales: tuple[float, ...] = (1.0,)
    nms_method: str = "gaussian"
    max_per_image: int = 100
    decode: DecodeConfig = DecodeConfig()

    def __post_init__(self) -> None:
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise ValueError(f"scales must be positive numbers, got {self.scales}")
        if self.nms_method not in NMS_METHODS:
            raise ValueError(f"nms_method must be one of {NMS_METHODS}, got {self.nms_method!r}")
        if self.max_per_image < 1:
            raise ValueError(f"max_per_image must be positive, got {self.max_per_image}")


class CanvasGeometry(NamedTuple):
    r"""Where an ``(h, w)`` image, resized by ``scale``, sits in its test canvas and output grid."""

    image_size: tuple[int, int]  # the original image
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    border: tuple[int, int]  # (top, left) padding of the canvas
    scale: float = 1.0

    @property
    def scaled_size(self) -> tuple[int, int]:
        r"""The image resized by ``scale``: ``(int(h * scale), int(w * scale))``."""
        return int(self.image_size[0] * self.scale), int(self.image_size[1] * self.scale)

    @property
    def ratio(self) -> tuple[float, float]:
        r"""``(output / input)`` per axis, ``(y, x)``."""
        return (
            self.output_size[0] / self.input_size[0],
            self.output_size[1] / self.input_size[1],
        )


def canvas_geometry(height: int, width: int, scale: float = 1.0) -> CanvasGeometry:
    r"""The official test canvas of an ``height x width`` image resized by ``scale``.

    The image resized by $s$ has sides $h = \lfloor s \cdot \text{height} \rfloor$ and
    $w = \lfloor s \cdot \text{width} \rfloor$. The canvas sides are the smallest numbers
    $\ge$ those of the form $128 n - 1$ ($|$ is bitwise or), and the network reads its
    output on a grid 4 times smaller:

    $$ H_{in} = h \,|\, 127, \quad W_{in} = w \,|\, 127, \qquad H_{out} = \frac{H_{in} + 1}{4},
    \quad W_{out} = \frac{W_{in} + 1}{4} $$

    The image sits in the centre of the canvas, at the border

    $$ b_y = \left\lfloor \frac{H_{in} - h}{2} \right\rfloor, \qquad
       b_x = \left\lfloor \frac{W_{in} - w}{2} \right\rfloor $$
    """
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
    r"""Normalised ``(3, H_in, W_in)`` test canvas of an ``(h, w, 3)`` RGB image.

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
    r"""Map ``(..., 4)`` xyxy boxes on the output grid to pixels of the original image.

    A coordinate is divided by the ratio $r = W_{out} / W_{in}$, moved by the border $b$,
    clipped to the image as resized by the scale $s$ (of width $w = \lfloor s \cdot
    \text{width} \rfloor$) and divided by $s$; likewise in $y$:

    $$ x_{image} = \operatorname{clip}(x_{out} / r - b,\; 0,\; w) / s $$
    """
    ratio_y, ratio_x = geometry.ratio
    top, left = geometry.border
    height, width = geometry.scaled_size
    x = (boxes[..., 0::2] / ratio_x - left).clamp(0, width) / geometry.scale
    y = (boxes[..., 1::2] / ratio_y - top).clamp(0, height) / geometry.scale
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def mirror_boxes(boxes: Tensor, width: float) -> Tensor:
    r"""Mirror ``(..., 4)`` xyxy boxes in a frame of width $W$, swapping $x_1$ and $x_2$.

    $$ x \mapsto W - x: \qquad (x_1, y_1, x_2, y_2) \mapsto (W - x_2,\; y_1,\; W - x_1,\; y_2) $$

    Flip testing mirrors the boxes of the mirrored canvas back on the output grid, $W =
    W_{out}$ ([scale_detections][cornernet_ref.inference.scale_detections]).
    """
    return torch.stack(
        (width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]), dim=-1
    )


class ImageDetections(NamedTuple):
    r"""Final detections of one image in image pixels: ``boxes (N, 4)`` xyxy, scores, labels."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def scale_detections(
    out: CornerNetOutput, geometry: CanvasGeometry, config: TestConfig = TestConfig()
) -> ImageDetections:
    r"""The pairs of one scale (and its mirror, with ``config.flip``) in image pixels.

    The mirror's boxes are mirrored back on the output grid before the ratio and the border
    are undone: the whole canvas was mirrored, so this is exact even when its two borders
    differ by a pixel. Rejected pairs are kept, with their score ``-1``, so that the number
    of boxes does not depend on the maps (nothing waits for a GPU);
    [merge_detections][cornernet_ref.inference.merge_detections] leaves them out.

    Args:
        out: raw maps of a batch of 1 (the canvas) or, with ``config.flip``, 2 (the canvas
            and its mirror).
        geometry: the canvas geometry of the image at this scale.
        config: ``flip`` and the ``decode`` options.

    Returns:
        ``(D, 4)`` boxes, ``(D,)`` scores and labels: ``num_dets`` pairs per canvas
        ([decode][cornernet_ref.decode.decode]).
    """
    expected = 2 if config.flip else 1
    if out.tl_heat.shape[0] != expected:
        raise ValueError(
            f"flip={config.flip} needs a batch of {expected}, got {out.tl_heat.shape[0]}"
        )
    dets = decode(out, config.decode)
    boxes = dets.boxes
    if config.flip:  # mirror the mirror's boxes back on the output grid
        boxes = torch.stack((boxes[0], mirror_boxes(boxes[1], geometry.output_size[1])))
    boxes = boxes_to_image(boxes, geometry).reshape(-1, 4)
    return ImageDetections(boxes, dets.scores.reshape(-1), dets.labels.reshape(-1))


def merge_detections(
    parts: Sequence[ImageDetections], config: TestConfig = TestConfig()
) -> ImageDetections:
    r"""Pool the detections of every scale, soft-NMS per class, keep the best ``max_per_image``.

    Rejected pairs (score ``-1``) are left out of soft-NMS. Ties with the last kept score are
    kept too, as the official threshold does. Everything up to the last line has a size
    fixed by the inputs'; the last line selects the final boxes, and on a GPU it is the one
    step that waits for the device (to read how many there are).

    Args:
        parts: the detections of each scale (:func:`scale_detections`).
        config: ``nms_method`` and ``max_per_image``.
    """
    boxes = torch.cat([part.boxes for part in parts])
    scores = torch.cat([part.scores for part in parts])
    labels = torch.cat([part.labels for part in parts])
    result = soft_nms_all(boxes, scores, labels, valid=scores > REJECTED, method=config.nms_method)
    # The max_per_image-th best kept score (-inf if fewer are kept) is the threshold.
    kept_scores = torch.where(result.kept, result.scores, -torch.inf)
    threshold = kept_scores.topk(min(config.max_per_image, len(scores))).values[-1:]
    final = result.kept & (result.scores >= threshold)
    pick = result.order[final]  # the variable-size result: read back from a GPU here
    return ImageDetections(boxes[pick], result.scores[final], labels[pick])


OutputSource = Callable[[dict, CanvasGeometry, bool], CornerNetOutput]
"""The raw maps of one image: ``(COCO image record, geometry, flip) -> CornerNetOutput``, a
batch of 1 (the canvas) or, with ``flip``, 2 (the canvas and its mirror)."""


def canvas_batch(
    images_dir: str | Path,
    record: dict,
    geometry: CanvasGeometry,
    flip: bool,
    *,
    mean: np.ndarray = MEAN_RGB,
    std: np.ndarray = STD_RGB,
) -> Tensor:
    r"""The ``(1 or 2, 3, H_in, W_in)`` batch an image is tested on: its canvas at
    ``geometry.scale`` (:func:`pad_image`) and, with ``flip``, the canvas mirrored.

    Raises:
        InputError: the image file's size differs from the record's.
    """
    image = read_image(Path(images_dir) / record["file_name"])
    canvas, padded = pad_image(image, geometry.scale, mean=mean, std=std)
    if padded != geometry:
        raise InputError(
            f"{record['file_name']}: image is {padded.image_size}, annotations say "
            f"{geometry.image_size}"
        )
    return torch.stack((canvas, canvas.flip(-1)) if flip else (canvas,))


def model_source(
    model: nn.Module, images_dir: str | Path, device: str | torch.device = "cpu"
) -> OutputSource:
    r"""Run ``model`` (``(B, 3, H, W) -> list[CornerNetOutput]``, last stack used) on each image."""
    model.eval().to(device)

    @torch.no_grad()
    def outputs(record: dict, geometry: CanvasGeometry, flip: bool) -> CornerNetOutput:
        result = model(canvas_batch(images_dir, record, geometry, flip).to(device))
        return CornerNetOutput(
            *(t.cpu() for t in (result[-1] if isinstance(result, list) else result))
        )

    return outputs


def detect_image(
    source: OutputSource, record: dict, config: TestConfig = TestConfig()
) -> ImageDetections:
    r"""Final detections of one image (its COCO record): every scale, flip, soft-NMS, top 100.

    Args:
        source: raw maps of the image at a scale (:func:`model_source`, or the oracle of
            :mod:`cornernet_ref.analysis`).
        record: the image's COCO record (``file_name``, ``height``, ``width``).
        config: the scales, flip testing, soft-NMS and decoding options.
    """
    parts = []
    for scale in config.scales:
        geometry = canvas_geometry(record["height"], record["width"], scale)
        out = source(record, geometry, config.flip)
        parts.append(scale_detections(out, geometry, config))
    return merge_detections(parts, config)


__all__ = [
    "CanvasGeometry",
    "ImageDetections",
    "OutputSource",
    "TestConfig",
    "boxes_to_image",
    "canvas_geometry",
    "detect_image",
    "merge_detections",
    "mirror_boxes",
    "model_source",
    "pad_image",
    "scale_detections",
]
