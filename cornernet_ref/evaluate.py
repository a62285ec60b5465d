r"""COCO evaluation of the detections of the test procedure (paper §4.3).

[evaluate][cornernet_ref.evaluate.evaluate] detects on every image of a COCO annotation file
([detect_images][cornernet_ref.inference.detect_images]), writes the boxes in COCO's ``xywh``
results format ([detections_to_coco][cornernet_ref.evaluate.detections_to_coco]) and scores
them with pycocotools ([coco_metrics][cornernet_ref.evaluate.coco_metrics]). The
subcommand ``cornernet-ref evaluate`` does it for a checkpoint or for the ground truth itself.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cornernet_ref import analysis
from cornernet_ref.data.coco import category_ids, load_coco
from cornernet_ref.errors import InputError, print_error
from cornernet_ref.inference import (
    NMS_METHODS,
    ImageDetections,
    OutputSource,
    TestConfig,
    detect_images,
    model_source,
)

if TYPE_CHECKING:
    from pycocotools.coco import COCO

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def detections_to_coco(
    image_id: int, detections: ImageDetections, categories: Sequence[int]
) -> list[dict]:
    r"""COCO result entries (``xywh``), rounded to 2 decimals as the official files are.

    ``categories[label]`` is the COCO id of a label
    ([category_ids][cornernet_ref.data.coco.category_ids]).
    """
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
                "category_id": categories[label],
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(score, 2),
            }
        )
    return results


def coco_metrics(coco: COCO, results: list[dict], image_ids: Iterable[int] | None = None) -> dict:
    r"""pycocotools bbox metrics of ``results`` against ``coco``.

    Returns:
        ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100`` as floats; 0 when there are no
        detections, ``-1`` where pycocotools finds no ground truth of that kind.
    """
    from pycocotools.cocoeval import COCOeval

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


def evaluate(
    source: OutputSource,
    coco: COCO,
    *,
    image_ids: Iterable[int] | None = None,
    results_out: str | Path | None = None,
    config: TestConfig = TestConfig(),
) -> dict:
    r"""Detect on every image of ``coco`` with ``source`` and score the results.

    Args:
        source: raw maps of an image
            ([model_source][cornernet_ref.inference.model_source], or the oracle of
            [cornernet_ref.analysis][]).
        coco: the annotations; labels are ranks of category ids
            ([category_ids][cornernet_ref.data.coco.category_ids]).
        image_ids: evaluate on these images only (default: all).
        results_out: where to write the COCO results JSON, if anywhere.
        config: how each image is tested
            ([detect_images][cornernet_ref.inference.detect_images]: a model's images
            are read by ``config.workers`` processes while the network runs).

    Returns:
        The metrics of :func:`coco_metrics`.
    """
    categories = category_ids(coco)
    image_ids = sorted(coco.getImgIds() if image_ids is None else image_ids)
    results = []
    for record, detections in detect_images(source, coco.loadImgs(image_ids), config):
        results += detections_to_coco(record["id"], detections, categories)
    if results_out is not None:
        Path(results_out).write_text(json.dumps(results))
    return coco_metrics(coco, results, image_ids)


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    r"""``cornernet-ref evaluate``: COCO metrics of a checkpoint or of the ground-truth oracle."""
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
    add_test_arguments(parser)
    parser.add_argument("--nms", choices=NMS_METHODS, default=TestConfig.nms_method)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="evaluate on the first N images only"
    )
    parser.add_argument("--results-out", type=Path, help="write the COCO results JSON here")
    parser.add_argument("--metrics-out", type=Path, required=True, help="write metrics JSON here")
    parser.set_defaults(func=_run)


def add_test_arguments(parser: argparse.ArgumentParser) -> None:
    r"""``--flip``/``--no-flip`` and ``--scales``, defaults of :class:`TestConfig`."""
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=TestConfig.flip,
        help="flip testing",
    )
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=TestConfig.scales,
        help="test scales, comma-separated (official multi-scale: 0.5,0.75,1,1.25,1.5)",
    )


def parse_scales(text: str) -> tuple[float, ...]:
    r"""``--scales 0.5,1,1.5`` -> ``(0.5, 1.0, 1.5)``, as :class:`TestConfig` accepts them."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
        return TestConfig(scales=scales).scales
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected positive scales such as 1 or 0.5,1,1.5, got {text!r}"
        ) from None


def positive_int(text: str) -> int:
    r"""An option that counts something: ``"3"`` -> ``3``; zero or less is refused."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    r"""A score threshold: ``"0.3"`` -> ``0.3``, within ``[0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    if args.ground_truth and not args.checkpoint:
        raise InputError(
            "--ground-truth needs --checkpoint (with --oracle all maps are ground truth)"
        )
    if not args.images.is_dir():
        raise InputError(f"image folder not found: {args.images}")
    coco = load_coco(args.annotations)
    num_classes = len(category_ids(coco))
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
    config = TestConfig(flip=args.flip, scales=args.scales, nms_method=args.nms)
    print(f"test config:\n{config}", file=sys.stderr)  # as training prints its config
    metrics = evaluate(
        source, coco, image_ids=image_ids, results_out=args.results_out, config=config
    )
    args.metrics_out.parent.mkdir(parents=True, exist_ok=True)
    args.metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    non_finite = [name for name, value in metrics.items() if not math.isfinite(value)]
    if non_finite:
        print_error(f"non-finite metrics {', '.join(non_finite)} (written to {args.metrics_out})")
        return 1
    return 0
