"""The test procedure of §4.1: canvas geometry, boxes back to the image, flip, scales, merging."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import RectangleFinder, draw_rectangles
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from cornernet_ref.data.image import normalize
from cornernet_ref.decode import DecodeConfig
from cornernet_ref.errors import InputError
from cornernet_ref.inference import (
    CanvasGeometry,
    TestConfig,
    boxes_to_image,
    canvas_batch,
    canvas_geometry,
    detect_image,
    merge_detections,
    mirror_boxes,
    model_source,
    pad_image,
    scale_detections,
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


# ------------------------------------------- a model that finds white rectangles

# Width 201: equal borders, so the canvas mirror is the image mirror. Two rectangles, mirror
# images of each other, as (image_id, category_id, x, y, w, h, iscrowd).
RECORD = {"id": 2, "file_name": "two.png", "height": 90, "width": 201}
MIRRORED_PAIR = [(2, 1, 20.0, 10.0, 40.0, 60.0, 0), (2, 1, 141.0, 10.0, 40.0, 60.0, 0)]


@pytest.mark.claim("soft-nms")
def test_flip_testing_of_a_symmetric_image_gives_symmetric_boxes(tmp_path: Path) -> None:
    draw_rectangles(tmp_path, [RECORD], MIRRORED_PAIR)
    dets = detect_image(model_source(RectangleFinder(), tmp_path), RECORD, TestConfig(flip=True))

    def rounded(boxes: torch.Tensor) -> list[tuple]:
        return sorted(
            (*[round(v, 2) for v in box], round(score, 4))
            for box, score in zip(boxes.tolist(), dets.scores.tolist(), strict=True)
        )

    # Each rectangle is found twice (in the image and in its mirror); soft-NMS keeps both,
    # the second with a decayed score.
    assert len(dets.scores) == 4
    assert rounded(dets.boxes) == rounded(mirror_boxes(dets.boxes, RECORD["width"]))


@pytest.mark.parametrize("width", [201, 200])  # equal borders, and borders a pixel apart
def test_flip_testing_maps_the_mirror_s_boxes_back_onto_the_image(tmp_path, width) -> None:
    record = {**RECORD, "width": width}
    draw_rectangles(tmp_path, [record], MIRRORED_PAIR[:1])  # one rectangle, on the left
    dets = detect_image(model_source(RectangleFinder(), tmp_path), record, TestConfig(flip=True))
    _, _, x, y, w, h, _ = MIRRORED_PAIR[0]
    # Found in the canvas and in its mirror, both times where it is in the image.
    assert dets.boxes.tolist() == [pytest.approx([x, y, x + w, y + h], abs=0.5)] * 2


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5])
def test_each_scale_finds_the_boxes_of_the_original_image(tmp_path: Path, scale: float) -> None:
    draw_rectangles(tmp_path, [RECORD], MIRRORED_PAIR)
    asked: list[CanvasGeometry] = []
    model = model_source(RectangleFinder(), tmp_path)

    def source(record: dict, geometry: CanvasGeometry, flip: bool) -> CornerNetOutput:
        asked.append(geometry)
        return model(record, geometry, flip)

    dets = detect_image(source, RECORD, TestConfig(flip=False, scales=(scale,)))
    assert [g.scale for g in asked] == [scale]
    expected = sorted([x, y, x + w, y + h] for _, _, x, y, w, h, _ in MIRRORED_PAIR)
    # The finder sees the resized image, whose edges move by up to a pixel of it.
    assert sorted(dets.boxes.tolist()) == [pytest.approx(box, abs=1 / scale) for box in expected]


def test_the_detections_of_all_scales_are_pooled_before_soft_nms(tmp_path: Path) -> None:
    draw_rectangles(tmp_path, [RECORD], MIRRORED_PAIR)
    source = model_source(RectangleFinder(), tmp_path)
    one = detect_image(source, RECORD, TestConfig(flip=False, scales=(1.0,)))
    two = detect_image(source, RECORD, TestConfig(flip=False, scales=(1.0, 1.0)))
    assert len(two.scores) == 2 * len(one.scores) == 4  # each box and its decayed twin
    assert sorted(two.scores.tolist())[2:] == pytest.approx(sorted(one.scores.tolist()))
    assert two.scores.min() < one.scores.min()  # the twins decayed


def ranked_boxes(count: int) -> tuple[CornerNetOutput, CanvasGeometry]:
    """Maps of ``count`` disjoint boxes of distinct scores along a 608-cell-wide grid."""
    height, width = 32, 608
    geometry = canvas_geometry(height * 4 - 1, width * 4 - 1)
    heat = torch.full((1, 1, height, width), -30.0)
    tl, br = heat.clone(), heat.clone()
    for i in range(count):
        tl[0, 0, 2, 4 * i] = 10 - i / 20
        br[0, 0, 3, 4 * i + 1] = 10 - i / 20
    tags = torch.full((1, 1, height, width), 100.0)
    btags = -tags
    for i in range(count):
        tags[0, 0, 2, 4 * i] = btags[0, 0, 3, 4 * i + 1] = 2.0 * i
    zero = torch.zeros(1, 2, height, width)
    return CornerNetOutput(tl, br, tags, btags, zero, zero), geometry


@pytest.mark.claim("soft-nms")
@pytest.mark.parametrize("max_per_image", [100, 7])
def test_merging_keeps_the_best_max_per_image(max_per_image: int) -> None:
    out, geometry = ranked_boxes(150)
    config = TestConfig(flip=False, max_per_image=max_per_image, decode=DecodeConfig(K=200))
    dets = merge_detections([scale_detections(out, geometry, config)], config)
    assert len(dets.scores) == max_per_image
    last = 10 - (max_per_image - 1) / 20  # box i scores sigmoid(10 - i / 20): the best kept
    assert float(dets.scores.min()) == pytest.approx(float(torch.sigmoid(torch.tensor(last))))


@pytest.mark.parametrize("k", [100, 120])
def test_the_decoding_options_reach_the_decoder(k: int) -> None:
    out, geometry = ranked_boxes(150)
    config = TestConfig(flip=False, decode=DecodeConfig(K=k))  # K corners: K of the boxes
    scores = scale_detections(out, geometry, config).scores
    assert int((scores > -1).sum()) == min(k, 150)  # the valid pairs; the others score -1


def test_flip_needs_the_mirrored_canvas_in_the_batch() -> None:
    out, geometry = ranked_boxes(3)
    with pytest.raises(ValueError, match="batch of 2"):
        scale_detections(out, geometry, TestConfig(flip=True))


def test_the_test_batch_is_the_canvas_and_its_mirror(tmp_path: Path) -> None:
    record = {"id": 1, "file_name": "a.png", "height": 40, "width": 60}
    draw_rectangles(tmp_path, [record], [(1, 1, 5, 7, 20, 10, 0)])
    geometry = canvas_geometry(40, 60)
    canvas, _ = pad_image(np.asarray(Image.open(tmp_path / "a.png").convert("RGB")))
    single = canvas_batch(tmp_path, record, geometry, flip=False)
    pair = canvas_batch(tmp_path, record, geometry, flip=True)
    assert single.shape == (1, 3, 127, 127) and torch.equal(single[0], canvas)
    assert torch.equal(pair[0], canvas) and torch.equal(pair[1], canvas.flip(-1))


def test_an_image_whose_size_differs_from_its_record_is_named(tmp_path: Path) -> None:
    record = {"id": 1, "file_name": "a.png", "height": 40, "width": 60}
    draw_rectangles(tmp_path, [record | {"height": 41}], [])
    with pytest.raises(
        InputError, match=r"a\.png: image is \(41, 60\), annotations say \(40, 60\)"
    ):
        canvas_batch(tmp_path, record, canvas_geometry(40, 60), flip=True)
