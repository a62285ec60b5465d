r"""COCO evaluation of the detections of the test procedure (paper §4.3).

[evaluate][cornernet_ref.evaluate.evaluate] detects on every image of a COCO annotation file
([detect_images][cornernet_ref.inference.detect_images]), writes the boxes in COCO's ``xywh``
results format ([detections_to_coco][cornernet_ref.evaluate.detections_to_coco]) and scores
them with pycocotools ([coco_metrics][cornernet_ref.evaluate.coco_metrics]). The
subcommand ``cornernet-ref evaluate`` (:mod:`cornernet_ref.cli`) does it for a checkpoint or
for the ground truth itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cornernet_ref.data.coco import category_ids
from cornernet_ref.inference import (
    ImageDetections,
    OutputSource,
    TestConfig,
    detect_images,
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
