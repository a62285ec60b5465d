"""The evaluation loader: canvases read and padded in worker processes give exactly what the
image-by-image path gives, in order, and a bad image stops it with one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAINING, RectangleFinder, draw_rectangles
from PIL import Image
from pycocotools.coco import COCO

from cornernet_ref.errors import InputError
from cornernet_ref.evaluate import detections_to_coco, evaluate
from cornernet_ref.inference import (
    TestConfig,
    canvas_batch,
    canvas_geometry,
    canvas_loader,
    detect_image,
    detect_images,
    model_source,
)
from cornernet_ref.model import CornerNet

pytestmark = pytest.mark.usefixtures("one_thread")

# Sides chosen so that the canvases differ in size from one image to the next.
IMAGES = [
    {"id": 7, "file_name": "a.png", "height": 120, "width": 160},
    {"id": 3, "file_name": "b.png", "height": 90, "width": 201},
    {"id": 5, "file_name": "c.png", "height": 130, "width": 64},
]
BOXES = [
    (7, 1, 10.0, 20.0, 60.0, 50.0, 0),
    (3, 1, 20.0, 10.0, 40.0, 60.0, 0),
    (3, 1, 141.0, 10.0, 40.0, 60.0, 0),
    (5, 1, 2.0, 30.0, 20.0, 80.0, 0),  # in the left half of its canvas, for the finder
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    draw_rectangles(tmp_path, IMAGES, BOXES)
    return tmp_path


@pytest.fixture
def coco(folder: Path) -> COCO:
    annotations = [
        {"id": n + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": w * h}
        | {"iscrowd": crowd}
        for n, (i, c, x, y, w, h, crowd) in enumerate(BOXES)
    ]
    dataset = {"images": IMAGES, "annotations": annotations, "categories": [{"id": 1}]}
    path = folder / "instances.json"
    path.write_text(json.dumps(dataset))
    return COCO(str(path))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(("flip", "scales"), [(False, (1.0,)), (True, (0.5, 1.0))])
def test_the_loader_gives_each_images_canvases_in_order(folder, workers, flip, scales):
    config = TestConfig(flip=flip, scales=scales, workers=workers)
    loaded = list(canvas_loader(folder, IMAGES, config))
    assert [record for record, _ in loaded] == IMAGES
    for record, canvases in loaded:
        assert len(canvases) == len(scales)
        for scale, canvas in zip(scales, canvases, strict=True):
            geometry = canvas_geometry(record["height"], record["width"], scale)
            assert torch.equal(canvas, canvas_batch(folder, record, geometry, flip))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_networks_detections_equal_the_image_by_image_path(folder, workers):
    """A random two-stack network (distinct scores everywhere), flip and two scales: the
    loader's detections are those of detect_image reading each image itself, bit for bit."""
    torch.manual_seed(0)
    source = model_source(CornerNet(replace(TINY_TRAINING.model, num_classes=1)), folder)
    config = TestConfig(flip=True, scales=(0.75, 1.0), workers=workers)
    found = list(detect_images(source, IMAGES, config))
    assert [record for record, _ in found] == IMAGES
    for record, detections in found:
        expected = detect_image(source, record, config)
        assert len(expected.scores) > 0
        for got, want in zip(detections, expected, strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluate_with_workers_writes_the_sequential_results(folder, coco, workers):
    """evaluate through the loader against the per-image path it replaced."""
    source = model_source(RectangleFinder(), folder)
    config = TestConfig(workers=workers)
    out = folder / "results.json"
    metrics = evaluate(source, coco, results_out=out, config=config)
    sequential = []
    for image_id in sorted(coco.getImgIds()):
        detections = detect_image(source, coco.loadImgs(image_id)[0], config)
        sequential += detections_to_coco(image_id, detections, [1])
    assert json.loads(out.read_text()) == sequential
    assert len(sequential) >= len(BOXES)
    assert metrics["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_of_the_wrong_size_stops_with_one_line(folder, workers):
    Image.fromarray(np.zeros((50, 50, 3), dtype=np.uint8)).save(folder / "b.png")
    with pytest.raises(InputError) as raised:
        list(canvas_loader(folder, IMAGES, TestConfig(workers=workers)))
    message = str(raised.value)
    assert message == "b.png: image is (50, 50), annotations say (90, 201)"


def test_a_missing_image_stops_with_one_line(folder):
    (folder / "c.png").unlink()
    with pytest.raises(InputError, match=r"^image file not found: .*c\.png$"):
        list(canvas_loader(folder, IMAGES, TestConfig(workers=1)))


def test_negative_workers_are_refused():
    with pytest.raises(ValueError, match="workers must be 0 or more"):
        TestConfig(workers=-1)
