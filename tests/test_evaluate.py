"""COCO scoring on small hand-made data sets, and a model evaluated end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import RectangleFinder, draw_rectangles
from pycocotools.coco import COCO

from cornernet_ref.evaluate import coco_metrics, detections_to_coco, evaluate
from cornernet_ref.inference import ImageDetections, TestConfig, model_source

# ------------------------------------------------------------------ COCO scoring


def write_coco(path: Path, images: list[dict], boxes: list[tuple]) -> Path:
    """A COCO file; ``boxes`` are (image_id, category_id, x, y, w, h, iscrowd)."""
    annotations = [
        {
            "id": i + 1,
            "image_id": image_id,
            "category_id": cat,
            "bbox": [x, y, w, h],
            "area": w * h,
            "iscrowd": crowd,
        }
        for i, (image_id, cat, x, y, w, h, crowd) in enumerate(boxes)
    ]
    categories = [{"id": i, "name": f"c{i}"} for i in (1, 3, 7)]  # ids with gaps
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


IMAGES = [
    {"id": 1, "file_name": "one.png", "height": 120, "width": 160},
    {"id": 2, "file_name": "two.png", "height": 90, "width": 201},
    {"id": 3, "file_name": "empty.png", "height": 64, "width": 64},  # no annotations
]
BOXES = [
    (1, 3, 10.0, 20.0, 60.0, 50.0, 0),
    (2, 7, 20.0, 10.0, 40.0, 60.0, 0),
    (2, 7, 141.0, 10.0, 40.0, 60.0, 0),
    (1, 1, 100.0, 60.0, 50.0, 50.0, 1),  # a crowd region
]


@pytest.fixture
def tiny_coco(tmp_path: Path) -> COCO:
    return COCO(str(write_coco(tmp_path / "instances.json", IMAGES, BOXES)))


def results_for(boxes, shift: float = 0.0, score: float = 0.9) -> list[dict]:
    return [
        {"image_id": i, "category_id": c, "bbox": [x + shift, y, w, h], "score": score}
        for i, c, x, y, w, h, crowd in boxes
        if not crowd
    ]


def test_perfect_results_score_one(tiny_coco: COCO) -> None:
    metrics = coco_metrics(tiny_coco, results_for(BOXES))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)


def test_shifted_results_score_what_their_iou_allows(tiny_coco: COCO) -> None:
    # Each box shifted right by a fifth of its width: IoU (4/5) / (6/5) = 2/3, a match at
    # the IoU thresholds 0.50, 0.55, 0.60, 0.65 and a miss at 0.70 ... 0.95.
    shifted = [
        {**r, "bbox": [r["bbox"][0] + r["bbox"][2] / 5, *r["bbox"][1:]]} for r in results_for(BOXES)
    ]
    metrics = coco_metrics(tiny_coco, shifted)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(4 / 10)  # 4 of the 10 IoU thresholds


def test_detections_on_a_crowd_region_are_not_false_positives(tiny_coco: COCO) -> None:
    on_crowd = {"image_id": 1, "category_id": 1, "bbox": [100.0, 60.0, 50.0, 50.0], "score": 0.99}
    metrics = coco_metrics(tiny_coco, [on_crowd, *results_for(BOXES)])
    assert metrics["AP"] == pytest.approx(1.0)


def test_no_results_score_zero(tiny_coco: COCO) -> None:
    assert coco_metrics(tiny_coco, [])["AP"] == 0.0


def test_results_use_coco_ids_and_xywh() -> None:
    detections = ImageDetections(
        torch.tensor([[1.0, 2.0, 11.5, 22.25]]), torch.tensor([0.876]), torch.tensor([2])
    )
    [entry] = detections_to_coco(5, detections, [1, 3, 7])
    assert entry == {
        "image_id": 5,
        "category_id": 7,
        "bbox": [1.0, 2.0, 10.5, 20.25],
        "score": 0.88,
    }


# ------------------------------------------- a model evaluated end to end


@pytest.mark.parametrize("flip", [False, True])
def test_evaluate_a_model_end_to_end(tmp_path: Path, flip: bool) -> None:
    # One category, so that the finder's class 0 is the right one.
    boxes = [(i, 1, x, y, w, h, c) for i, _, x, y, w, h, c in BOXES if not c]
    coco = COCO(str(write_coco(tmp_path / "instances.json", IMAGES, boxes)))
    draw_rectangles(tmp_path, IMAGES, boxes)
    results = tmp_path / "results.json"
    source = model_source(RectangleFinder(), tmp_path)
    metrics = evaluate(source, coco, results_out=results, config=TestConfig(flip=flip))
    assert metrics["AP"] == pytest.approx(1.0)
    assert {r["image_id"] for r in json.loads(results.read_text())} == {1, 2}
