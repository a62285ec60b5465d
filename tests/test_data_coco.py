"""The COCO reader: boxes, labels, crowds, empty images, odd image modes, unreadable files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cornernet_ref.data.coco import AnnotationError, CocoDetection
from cornernet_ref.data.image import ImageReadError


@pytest.fixture
def tiny_coco(tmp_path):
    """Three images (RGB, grayscale, CMYK), categories with gaps, a crowd and a flat box."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(tmp_path / "b.png")
    Image.new("CMYK", (8, 6), (10, 20, 30, 0)).save(tmp_path / "c.jpg")
    annotations = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 30, "height": 20},
            {"id": 3, "file_name": "b.png", "width": 12, "height": 10},
            {"id": 9, "file_name": "c.jpg", "width": 8, "height": 6},
        ],
        "categories": [{"id": 90, "name": "z"}, {"id": 2, "name": "x"}, {"id": 17, "name": "y"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 17, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 90, "bbox": [5, 5, 10, 2], "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 30, 20], "iscrowd": 1},
            {"id": 4, "image_id": 3, "category_id": 2, "bbox": [1, 1, 0, 5], "iscrowd": 0},
        ],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(annotations))
    return tmp_path, path


def test_boxes_labels_crowds_and_empty_images(tiny_coco):
    folder, path = tiny_coco
    dataset = CocoDetection(path, folder)
    assert dataset.class_names == ["x", "y", "z"]  # sorted by category id: 2, 17, 90
    assert dataset.image_ids == [3, 7, 9]
    sample = dataset[1]  # image 7
    assert sample.image_id == 7 and sample.image.shape == (20, 30, 3)
    np.testing.assert_allclose(sample.boxes, [[1, 2, 4, 6], [5, 5, 15, 7]])
    np.testing.assert_array_equal(sample.labels, [1, 2])  # crowd box excluded
    empty = dataset[0]  # image 3: its only box has no width
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)


def test_grayscale_and_cmyk_become_rgb(tiny_coco):
    dataset = CocoDetection(tiny_coco[1], tiny_coco[0])
    grey, cmyk = dataset[0].image, dataset[2].image
    assert grey.shape == (10, 12, 3) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    assert cmyk.shape == (6, 8, 3)


def test_in_memory_reader_and_argument_errors(tiny_coco):
    folder, path = tiny_coco
    annotations = json.loads(path.read_text())
    pixels = np.zeros((20, 30, 3), np.uint8)
    dataset = CocoDetection(annotations, image_reader=lambda name: pixels)
    assert dataset[1].image is pixels
    with pytest.raises(ValueError, match="exactly one"):
        CocoDetection(annotations)
    with pytest.raises(IndexError):
        dataset[3]
    with pytest.raises(AnnotationError, match="nothing.json"):
        CocoDetection(folder / "nothing.json", folder)


def test_missing_and_corrupt_files_name_the_file(tiny_coco):
    folder, path = tiny_coco
    (folder / "a.png").unlink()
    (folder / "b.png").write_bytes(b"not an image")
    dataset = CocoDetection(path, folder)
    with pytest.raises(ImageReadError, match="a.png"):
        dataset[1]
    with pytest.raises(ImageReadError, match="b.png"):
        dataset[0]


def test_skip_unreadable_warns_and_moves_on(tiny_coco):
    folder, path = tiny_coco
    (folder / "a.png").unlink()
    dataset = CocoDetection(path, folder, skip_unreadable=True)
    with pytest.warns(UserWarning, match="a.png"):
        sample = dataset[1]
    assert sample.image_id == 9  # the next readable image


@pytest.mark.shared
def test_coco128_counts(coco128):
    images, annotation_file = coco128
    dataset = CocoDetection(annotation_file, images)
    raw = json.loads(annotation_file.read_text())
    non_crowd = [a for a in raw["annotations"] if not a["iscrowd"] and min(a["bbox"][2:]) > 0]
    assert len(dataset) == len(raw["images"]) == 128
    assert dataset.num_classes == 80
    assert sum(len(dataset.annotations(i)[1]) for i in range(len(dataset))) == len(non_crowd)
    assert len(non_crowd) < len(raw["annotations"])  # the sample holds crowd boxes
    assert any(len(dataset.annotations(i)[1]) == 0 for i in range(len(dataset)))
