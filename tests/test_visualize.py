"""The pictures: label placement, upscaled detections, the heatmap panel, the files written."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cornernet_ref.data.shapes import write_shapes
from cornernet_ref.inference import ImageDetections, canvas_geometry, model_source, pad_image
from cornernet_ref.model import CornerNet, ModelConfig
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.visualize import (
    best_per_object,
    detections_caption,
    heatmap_panel,
    iou,
    overlaps,
    place_labels,
    render_detections,
    upscale_factor,
    write_pictures,
)

SMALL = {"n": 2, "nstack": 1, "dims": (8, 8, 8), "modules": (1, 1, 1)}
SMALL |= {"cnv_dim": 8, "pre_dim": 8, "pool_dim": 8}


def small_model(seed: int = 0) -> CornerNet:
    torch.manual_seed(seed)
    return CornerNet(ModelConfig(num_classes=3, **SMALL)).eval()


@st.composite
def labelled_boxes(draw):
    width, height = draw(st.integers(40, 300)), draw(st.integers(40, 300))
    count = draw(st.integers(0, 12))
    boxes, sizes = [], []
    for _ in range(count):
        x1, y1 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        x2, y2 = draw(st.integers(x1, width)), draw(st.integers(y1, height))
        boxes.append((x1, y1, x2, y2))
        sizes.append((draw(st.integers(1, 60)), draw(st.integers(1, 20))))
    return boxes, sizes, (width, height)


@given(labelled_boxes())
def test_placed_labels_never_overlap_and_stay_inside(case):
    boxes, sizes, (width, height) = case
    labels = place_labels(boxes, sizes, (width, height))
    assert len(labels) == len(boxes)
    placed = [label for label in labels if label is not None]
    for a, b in combinations(placed, 2):
        assert not overlaps(a, b), (a, b)
    for label, (w, h) in zip(labels, sizes, strict=True):
        if label is not None:
            assert 0 <= label[0] and label[2] <= width and 0 <= label[1] and label[3] <= height
            assert (label[2] - label[0], label[3] - label[1]) == (w, h)


@given(labelled_boxes())
def test_the_first_label_always_finds_a_spot_when_it_fits(case):
    boxes, sizes, (width, height) = case
    labels = place_labels(boxes, sizes, (width, height))
    if boxes and sizes[0][0] <= width and sizes[0][1] <= height:
        assert labels[0] is not None


def test_a_lone_label_sits_above_the_top_left_corner():
    assert place_labels([(10, 30, 50, 60)], [(20, 8)], (100, 100)) == [(10, 22, 30, 30)]
    # No room above: pushed down into the picture.
    assert place_labels([(10, 3, 50, 60)], [(20, 8)], (100, 100)) == [(10, 0, 30, 8)]


def test_labels_of_one_box_are_spread_out():
    labels = place_labels([(20, 20, 80, 80)] * 5, [(30, 10)] * 5, (100, 100))
    assert None not in labels
    assert labels[:4] == [(20, 10, 50, 20), (20, 20, 50, 30), (20, 80, 50, 90), (20, 70, 50, 80)]


def test_overlaps_counts_area_not_touching_edges():
    assert overlaps((0, 0, 10, 10), (5, 5, 15, 15))
    assert not overlaps((0, 0, 10, 10), (10, 0, 20, 10))
    assert not overlaps((0, 0, 10, 10), (0, 10, 10, 20))


def test_small_images_are_upscaled_to_a_readable_size():
    assert upscale_factor(127, 127) == 5  # 635 pixels
    assert upscale_factor(120, 90) == 5
    assert upscale_factor(480, 640) == 1


def test_render_detections_upscales_boxes_labels_the_best_and_fades_duplicates():
    image = np.zeros((120, 100, 3), dtype=np.uint8)
    boxes = torch.tensor([[10.0, 10, 60, 60], [12, 11, 58, 62], [70, 80, 95, 115], [0, 0, 5, 5]])
    detections = ImageDetections(
        boxes, torch.tensor([0.9, 0.8, 0.7, 0.1]), torch.tensor([0, 1, 2, 0])
    )
    picture, labels = render_detections(image, detections, ["a", "b", "c"], threshold=0.3)
    assert picture.width == 500 and picture.height > 600  # 5x, and the caption below
    assert len(labels) == 2  # box 1 overlaps box 0 (IoU 0.83): faint; box 3 scores 0.1
    for a, b in combinations(labels, 2):
        assert not overlaps(a, b)
    pixels = np.asarray(picture).astype(int)
    assert tuple(pixels[300, 50 * 5]) == (230, 25, 75)  # left edge of box 0, 5x, first colour
    # Box 1's left edge, second colour at 150/255 opacity over black: (35, 106, 44).
    np.testing.assert_allclose(
        pixels[250, 12 * 5], [60 * 150 / 255, 180 * 150 / 255, 75 * 150 / 255], atol=1
    )
    assert not pixels[5 * 2, 5 * 2].any()  # the unscored box 3 stays undrawn
    band = pixels[600:]
    assert band.max() == 255 and band.min() < 100  # white, with dark text


def test_the_caption_names_the_threshold_and_both_counts():
    assert detections_caption(0.3, 2, 5) == [
        "score >= 0.30: 2 boxes labelled, 5 faint",
        "(faint: overlapping a better box by IoU > 0.5)",
    ]
    assert detections_caption(0.25, 3, 0, top=3)[1] == (
        "(faint: after the best 3, as many as the objects in the image)"
    )


def test_with_the_number_of_objects_the_best_boxes_are_labelled_the_rest_faint():
    image = np.zeros((120, 100, 3), dtype=np.uint8)
    boxes = torch.tensor([[70.0, 80, 95, 115], [10, 10, 60, 60], [12, 11, 58, 62]])
    detections = ImageDetections(boxes, torch.tensor([0.5, 0.9, 0.4]), torch.tensor([2, 0, 1]))
    picture, labels = render_detections(image, detections, ["a", "b", "c"], top=1)
    assert len(labels) == 1  # the box scoring 0.9 alone
    pixels = np.asarray(picture).astype(int)
    assert tuple(pixels[250, 50]) == (230, 25, 75)  # its left edge, bold
    # The box scoring 0.5 (third colour) and 0.4 (second) are faint: 150/255 of their colour.
    np.testing.assert_allclose(pixels[500, 350], [0, 130 * 150 / 255, 200 * 150 / 255], atol=1)
    np.testing.assert_allclose(
        pixels[250, 60], [60 * 150 / 255, 180 * 150 / 255, 75 * 150 / 255], atol=1
    )


def test_iou_by_hand():
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1
    assert iou((0, 0, 1, 1), (1, 1, 2, 2)) == 0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0


@given(labelled_boxes(), st.sampled_from([0.0, 0.3, 0.5, 0.9]))
def test_best_per_object_keeps_boxes_apart_and_each_dropped_one_has_a_better_twin(case, max_iou):
    boxes = case[0]
    best = best_per_object(boxes, max_iou)
    kept = [box for box, is_best in zip(boxes, best, strict=True) if is_best]
    for a, b in combinations(kept, 2):
        assert iou(a, b) <= max_iou
    for k, (box, is_best) in enumerate(zip(boxes, best, strict=True)):
        if not is_best:
            assert any(
                iou(box, other) > max_iou
                for other, ok in zip(boxes[:k], best[:k], strict=True)
                if ok
            )
    assert best[:1] in ([], [True])


def test_heatmap_panel_shows_the_model_maps(tmp_path):
    """The maps of a model's source for an image file are those of the model on its canvas."""
    model = small_model()
    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    record, geometry = {"file_name": "a.png", "height": 50, "width": 60}, canvas_geometry(50, 60)
    panel = heatmap_panel(model_source(model, tmp_path)(record, geometry, False), geometry)
    canvas, padded = pad_image(image)
    with torch.no_grad():
        out = model(canvas[None])[-1]
    assert panel.geometry == padded == geometry
    torch.testing.assert_close(torch.from_numpy(panel.tl_heat), out.tl_heat[0].sigmoid().amax(0))
    torch.testing.assert_close(torch.from_numpy(panel.br_heat), out.br_heat[0].sigmoid().amax(0))


class PlantedCorners:
    """The maps of a 120-pixel image holding two objects: corners, classes and tags planted."""

    OBJECTS = (  # (class, top-left cell (x, y), bottom-right cell, tag), best first
        (1, (4, 6), (20, 25), 0.8),
        (0, (10, 2), (28, 12), -0.6),
    )

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.maps = CornerNetOutput(
            tl_heat=torch.full((1, 2, 32, 32), -6.0),
            br_heat=torch.full((1, 2, 32, 32), -6.0),
            tl_tag=torch.randn(1, 1, 32, 32, generator=generator) * 3,
            br_tag=torch.randn(1, 1, 32, 32, generator=generator) * 3,
            tl_off=torch.rand(1, 2, 32, 32, generator=generator),
            br_off=torch.rand(1, 2, 32, 32, generator=generator),
        )
        for k, (label, (x1, y1), (x2, y2), tag) in enumerate(self.OBJECTS):
            logit = 3.0 - k
            self.maps.tl_heat[0, label, y1, x1] = self.maps.br_heat[0, label, y2, x2] = logit
            self.maps.tl_tag[0, 0, y1, x1] = tag
            self.maps.br_tag[0, 0, y2, x2] = tag + 0.1


def test_heatmap_panel_finds_the_corners_and_embeddings_of_the_detected_boxes():
    model = PlantedCorners()
    image = np.zeros((120, 120, 3), dtype=np.uint8)
    # A planted corner paired with any weak one scores about 0.48: above 0.6, only the objects.
    panel = heatmap_panel(model.maps, canvas_geometry(*image.shape[:2]), threshold=0.6)
    maps = model.maps
    assert [pair.label for pair in panel.pairs] == [label for label, *_ in model.OBJECTS]
    for pair, (_, (x1, y1), (x2, y2), tag) in zip(panel.pairs, model.OBJECTS, strict=True):
        for corner, (x, y), offsets, embedding in (
            (pair.top_left, (x1, y1), maps.tl_off, tag),
            (pair.bottom_right, (x2, y2), maps.br_off, tag + 0.1),
        ):
            expected = (x + offsets[0, 0, y, x], y + offsets[0, 1, y, x], embedding)
            assert tuple(corner) == pytest.approx(tuple(map(float, expected)))
    assert heatmap_panel(model.maps, canvas_geometry(120, 120), threshold=0.99).pairs == []


def test_heatmap_panel_shows_one_pair_per_object():
    """A second top-left corner two cells from object 0's makes a second box on it (IoU
    0.88): the decoder finds it, the panel leaves it out."""
    model = PlantedCorners()
    model.maps.tl_heat[0, 1, 6, 6] = 2.5  # a local maximum: two cells from (4, 6)
    model.maps.tl_tag[0, 0, 6, 6] = 0.8
    panel = heatmap_panel(model.maps, canvas_geometry(120, 120), threshold=0.6)
    assert [pair.label for pair in panel.pairs] == [1, 0]
    assert panel.pairs[0].top_left.x == pytest.approx(4 + float(model.maps.tl_off[0, 0, 6, 4]))


def test_write_pictures_writes_the_three_pictures(tmp_path):
    images, annotations = write_shapes(tmp_path / "val", 3, seed=1, size=56)
    terms = ("total", "focal", "pull", "push", "offset")
    history = [{"iteration": i, **dict.fromkeys(terms, 1 / i)} for i in (1, 2, 3)]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    model = small_model().train()
    folder = write_pictures(model, tmp_path, (images, annotations), ["a", "b", "c"], count=2)
    assert folder == tmp_path / "pictures"
    assert sorted(path.name for path in folder.iterdir()) == [
        "detections.png",
        "heatmaps.png",
        "loss.png",
    ]
    assert model.training, "the model is left in the mode it was in"
    with Image.open(folder / "detections.png") as picture:  # two 56-pixel images, 10x, a gap
        assert picture.width == 2 * 560 + 8 and picture.height > 560  # and their captions


def test_without_validation_only_the_loss_curve(tmp_path):
    (tmp_path / "history.jsonl").write_text(
        json.dumps({"iteration": 1, "total": 1, "focal": 1, "pull": 1, "push": 1, "offset": 1})
    )
    folder = write_pictures(small_model(), tmp_path, None, ["a", "b", "c"])
    assert [path.name for path in folder.iterdir()] == ["loss.png"]
