"""Test-time geometry, flip merging and COCO scoring on small hand-made data sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO
from torch import nn

from cornernet_ref.data.image import normalize
from cornernet_ref.evaluate import (
    ImageDetections,
    boxes_to_image,
    canvas_geometry,
    coco_metrics,
    detections_to_coco,
    evaluate,
    mirror_boxes,
    model_source,
    pad_image,
    postprocess,
)
from cornernet_ref.output import CornerNetOutput

sizes = st.integers(1, 700)


scales = st.sampled_from([1.0, 0.5, 0.75, 1.25, 1.5])  # the official test scales


@given(height=sizes, width=sizes, scale=scales)
def test_canvas_geometry_is_the_official_one(height: int, width: int, scale: float) -> None:
    assume(min(height, width) * scale >= 1)
    g = canvas_geometry(height, width, scale)
    assert g.image_size == (height, width)
    assert g.scaled_size == (int(height * scale), int(width * scale))
    for size, inp, out, border in zip(
        g.scaled_size, g.input_size, g.output_size, g.border, strict=True
    ):
        assert inp % 128 == 127 and size <= inp < size + 128  # size | 127
        assert out * 4 == inp + 1
        assert border == (inp - size) // 2  # centred


def test_a_scale_that_leaves_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="leaves nothing"):
        canvas_geometry(3, 100, 0.2)


@given(
    height=sizes,
    width=sizes,
    scale=scales,
    corners=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_boxes_round_trip_through_the_canvas(height, width, scale, corners) -> None:
    assume(min(height, width) * scale >= 1)
    g = canvas_geometry(height, width, scale)
    x1, x2 = sorted(corners[:2])
    y1, y2 = sorted(corners[2:])
    # Inside the image as resized (int(h * scale) may cut a fraction of a pixel off).
    height, width = g.scaled_size[0] / scale, g.scaled_size[1] / scale
    box = torch.tensor([x1 * width, y1 * height, x2 * width, y2 * height], dtype=torch.float64)
    top, left = g.border
    ratio_y, ratio_x = g.ratio
    on_canvas = box * scale + torch.tensor([left, top, left, top], dtype=torch.float64)
    on_grid = on_canvas * torch.tensor([ratio_x, ratio_y, ratio_x, ratio_y], dtype=torch.float64)
    assert boxes_to_image(on_grid, g).tolist() == pytest.approx(box.tolist(), abs=1e-9)


def test_boxes_are_clipped_to_the_image() -> None:
    g = canvas_geometry(100, 50)  # canvas 127 x 127, border (13, 38)
    far = torch.tensor([[0.0, 0.0, 32.0, 32.0]])  # the whole canvas
    assert boxes_to_image(far, g)[0].tolist() == pytest.approx([0.0, 0.0, 50.0, 100.0])


@given(boxes=st.lists(st.floats(-50, 50), min_size=4, max_size=4), width=st.floats(1, 100))
def test_mirror_is_an_involution(boxes, width) -> None:
    box = torch.tensor(boxes, dtype=torch.float64)
    assert mirror_boxes(mirror_boxes(box, width), width).tolist() == pytest.approx(boxes)


def test_pad_image_centres_the_image() -> None:
    image = np.full((100, 50, 3), 255, dtype=np.uint8)
    canvas, g = pad_image(image)
    assert canvas.shape == (3, 127, 127) and g.border == (13, 38)
    white, black = (
        normalize(np.full((1, 1, 3), 255, np.uint8)),
        normalize(np.zeros((1, 1, 3), np.uint8)),
    )
    inside = canvas[:, 13:113, 38:88]
    assert torch.allclose(inside, white.expand_as(inside))
    assert torch.allclose(canvas[:, :13], black.expand_as(canvas[:, :13]))
    assert torch.allclose(canvas[:, :, 88:], black.expand_as(canvas[:, :, 88:]))


def test_pad_image_resizes_by_the_scale_first() -> None:
    image = np.zeros((100, 60, 3), dtype=np.uint8)
    image[:, 30:] = 255  # right half white
    canvas, g = pad_image(image, 1.5)
    assert g.scaled_size == (150, 90) and canvas.shape == (3, *g.input_size) == (3, 255, 127)
    top, left = g.border
    white = normalize(np.full((1, 1, 3), 255, np.uint8))[:, 0, 0]
    black = normalize(np.zeros((1, 1, 3), np.uint8))[:, 0, 0]
    row = canvas[:, top + 75]  # a row through the middle of the resized image
    assert torch.allclose(row[:, left + 43], black) and torch.allclose(row[:, left + 46], white)
    assert torch.allclose(row[:, left + 89], white) and torch.allclose(row[:, left + 90], black)


def test_pad_image_drops_the_last_column_of_a_full_width_image() -> None:
    canvas, g = pad_image(np.full((10, 127, 3), 255, dtype=np.uint8))  # width already 127
    assert g.border == (58, 0)
    black = normalize(np.zeros((1, 1, 3), np.uint8))[:, 0, 0]
    assert torch.allclose(canvas[:, 60, 126], black)  # as the official crop does
    assert not torch.allclose(canvas[:, 60, 125], black)


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


# ------------------------------------------- a model that finds white rectangles


class RectangleFinder(nn.Module):
    """Detects the white rectangle in each half (left / right) of the canvas, class 0.

    It is mirror-equivariant, as a well-trained network should be: the mirrored canvas
    gives the mirrored boxes (the halves swap).
    """

    def forward(self, images: torch.Tensor) -> list[CornerNetOutput]:
        batch, _, in_h, in_w = images.shape
        out_h, out_w = (in_h + 1) // 4, (in_w + 1) // 4
        heat = torch.full((batch, 2, out_h, out_w), -10.0)
        maps = CornerNetOutput(
            heat,
            heat.clone(),
            torch.full((batch, 1, out_h, out_w), 100.0),  # background corners never pair
            torch.full((batch, 1, out_h, out_w), -100.0),
            torch.zeros(batch, 2, out_h, out_w),
            torch.zeros(batch, 2, out_h, out_w),
        )
        for b in range(batch):
            for half, columns in enumerate((range(0, in_w // 2), range(in_w // 2, in_w))):
                ys, xs = torch.nonzero(images[b, 0, :, columns] > 0, as_tuple=True)
                if len(xs) == 0:
                    continue
                xs = xs + columns[0]
                box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # pixel edges
                for corner, (x, y) in (("tl", box[:2]), ("br", box[2:])):
                    fx, fy = float(x) * out_w / in_w, float(y) * out_h / in_h
                    cx, cy = min(int(fx), out_w - 1), min(int(fy), out_h - 1)
                    getattr(maps, f"{corner}_heat")[b, 0, cy, cx] = 10.0
                    getattr(maps, f"{corner}_tag")[b, 0, cy, cx] = 5.0 * half
                    getattr(maps, f"{corner}_off")[b, :, cy, cx] = torch.tensor([fx - cx, fy - cy])
        return [maps]


def draw_images(folder: Path, boxes) -> None:
    for record in IMAGES:
        pixels = np.zeros((record["height"], record["width"], 3), dtype=np.uint8)
        for image_id, _, x, y, w, h, crowd in boxes:
            if image_id == record["id"] and not crowd:
                pixels[int(y) : int(y + h), int(x) : int(x + w)] = 255
        Image.fromarray(pixels).save(folder / record["file_name"])


@pytest.mark.parametrize("flip", [False, True])
def test_evaluate_a_model_end_to_end(tmp_path: Path, flip: bool) -> None:
    # One category, so that the finder's class 0 is the right one.
    boxes = [(i, 1, x, y, w, h, c) for i, _, x, y, w, h, c in BOXES if not c]
    coco = COCO(str(write_coco(tmp_path / "instances.json", IMAGES, boxes)))
    draw_images(tmp_path, boxes)
    results = tmp_path / "results.json"
    metrics = evaluate(
        model_source(RectangleFinder(), tmp_path), coco, flip=flip, results_out=results
    )
    assert metrics["AP"] == pytest.approx(1.0)
    assert {r["image_id"] for r in json.loads(results.read_text())} == {1, 2}


@pytest.mark.claim("soft-nms")
def test_flip_testing_of_a_symmetric_image_gives_symmetric_boxes(tmp_path: Path) -> None:
    record = IMAGES[1]  # width 201: equal borders, so the canvas mirror is the image mirror
    boxes = [b for b in BOXES if b[0] == 2]  # two rectangles, mirror images of each other
    draw_images(tmp_path, boxes)
    geometry = canvas_geometry(record["height"], record["width"])
    out = model_source(RectangleFinder(), tmp_path)(record, geometry, True)
    dets = postprocess(out, geometry, flip=True)

    def rounded(boxes: torch.Tensor) -> list[tuple]:
        return sorted(
            (*[round(v, 2) for v in box], round(score, 4))
            for box, score in zip(boxes.tolist(), dets.scores.tolist(), strict=True)
        )

    # Each rectangle is found twice (in the image and in its mirror); soft-NMS keeps both,
    # the second with a decayed score.
    assert len(dets.scores) == 4
    assert rounded(dets.boxes) == rounded(mirror_boxes(dets.boxes, record["width"]))


def test_postprocess_keeps_the_best_hundred() -> None:
    # 150 disjoint boxes of distinct scores along a 608-cell-wide grid.
    height, width = 32, 608
    geometry = canvas_geometry(height * 4 - 1, width * 4 - 1)
    heat = torch.full((1, 1, height, width), -30.0)
    tl, br = heat.clone(), heat.clone()
    for i in range(150):
        tl[0, 0, 2, 4 * i] = 10 - i / 20
        br[0, 0, 3, 4 * i + 1] = 10 - i / 20
    tags = torch.full((1, 1, height, width), 100.0)
    btags = -tags
    for i in range(150):
        tags[0, 0, 2, 4 * i] = btags[0, 0, 3, 4 * i + 1] = 2.0 * i
    zero = torch.zeros(1, 2, height, width)
    out = CornerNetOutput(tl, br, tags, btags, zero, zero)
    dets = postprocess(out, geometry, flip=False, K=200, num_dets=1000)
    assert len(dets.scores) == 100
    assert dets.scores.min() > 0.5  # the 100 best: sigmoid(10 - 99/20) ~ 0.994
    with pytest.raises(ValueError, match="batch of 2"):
        postprocess(out, geometry, flip=True)
