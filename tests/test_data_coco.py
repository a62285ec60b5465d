"""The COCO reader: boxes, labels, crowds, empty images, odd image modes, unreadable files,
and malformed annotation files, each named by file, record and field."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cornernet_ref.analysis import image_boxes
from cornernet_ref.data.coco import AnnotationError, CocoDetection, load_coco
from cornernet_ref.data.coco import category_ids as ordered_category_ids
from cornernet_ref.data.examples import class_names
from cornernet_ref.data.image import ImageReadError
from cornernet_ref.errors import InputError
from cornernet_ref.evaluate import detections_to_coco
from cornernet_ref.inference import ImageDetections


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


def test_missing_file_stops_construction_corrupt_file_stops_reading(tiny_coco):
    folder, path = tiny_coco
    (folder / "a.png").unlink()
    message = (
        rf"{re.escape(str(path))}: images\[0\] \(id 7\): field 'file_name': .*a\.png not found"
    )
    with pytest.raises(AnnotationError, match=message + r" \(1 of 3 image files missing"):
        CocoDetection(path, folder)
    with pytest.raises(InputError, match="image folder not found: .*nowhere"):
        CocoDetection(path, folder / "nowhere")
    Image.new("RGB", (30, 20)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    dataset = CocoDetection(path, folder)  # exists: decoded only when read
    with pytest.raises(ImageReadError, match="b.png"):
        dataset[0]


def test_skip_unreadable_drops_missing_files_and_skips_corrupt_ones(tiny_coco):
    folder, path = tiny_coco
    (folder / "a.png").unlink()
    with pytest.warns(UserWarning, match=r"skipping 1 of 3 image files missing .*: a\.png"):
        dataset = CocoDetection(path, folder, skip_unreadable=True)
    assert dataset.image_ids == [3, 9]
    (folder / "b.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="b.png"):
        sample = dataset[0]
    assert sample.image_id == 9  # the next readable image
    for name in ("b.png", "c.jpg"):
        (folder / name).unlink()
    with pytest.raises(AnnotationError, match="3 of 3 image files missing"):
        CocoDetection(path, folder, skip_unreadable=True)  # nothing left to train on


def test_an_image_of_another_size_than_its_record_stops_training(tiny_coco):
    """A 1 x 1 file recorded as 30 x 20 would train on boxes outside the image."""
    folder, path = tiny_coco
    Image.new("RGB", (1, 1)).save(folder / "a.png")
    dataset = CocoDetection(path, folder)
    message = rf"^{re.escape(str(folder / 'a.png'))}: the image is 1 x 1 pixels, its record says "
    with pytest.raises(ImageReadError, match=message + r"30 x 20$"):
        dataset[1]
    with pytest.warns(
        UserWarning, match=r"skipping unreadable image: .*a\.png: the image is 1 x 1"
    ):
        sample = CocoDetection(path, folder, skip_unreadable=True)[1]
    assert sample.image_id == 9  # the next image of the right size


def test_a_record_of_the_stored_size_of_a_rotated_photo_is_named_as_such(tiny_coco):
    """EXIF orientation 6 turns the stored 30 x 20 pixels upright, 20 x 30: the record (30 x 20)
    describes the stored pixels, which the official reader (cv2.imread) would turn too."""
    folder, path = tiny_coco
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 20)).save(folder / "a.png", exif=exif.tobytes())
    with pytest.raises(ImageReadError, match=r"20 x 30 pixels, its record says 30 x 20 \(sides"):
        CocoDetection(path, folder)[1]
    in_memory = json.loads(path.read_text())
    dataset = CocoDetection(in_memory, image_reader=lambda name: np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ImageReadError, match=r"^b\.png: the image is 3 x 2 pixels, its record"):
        dataset[0]


# --- Malformed annotation files: one case each, the message names file, record and field ---


def _without(section: str):
    return lambda data: data.pop(section)


def _set(section: str, index: int, field: str, value):
    def edit(data):
        data[section][index][field] = value

    return edit


def _drop_field(section: str, index: int, field: str):
    return lambda data: data[section][index].pop(field)


MALFORMED = {
    "no images": (_without("images"), r"field 'images' must be a list, found nothing"),
    "no annotations": (_without("annotations"), r"field 'annotations' must be a list"),
    "no categories": (_without("categories"), r"field 'categories' must be a list"),
    "images not a list": (
        lambda data: data.update(images={}),
        r"field 'images' must be a list, found dict",
    ),
    "unknown image id": (
        _set("annotations", 1, "image_id", 99),
        r"annotations\[1\] \(id 2\): field 'image_id': 99 is not the id of any of the images",
    ),
    "unknown category id": (
        _set("annotations", 3, "category_id", 1),
        r"annotations\[3\] \(id 4\): field 'category_id': 1 is not the id of any of the categories",
    ),
    "negative width": (
        _set("annotations", 0, "bbox", [1, 2, -3, 4]),
        r"annotations\[0\] \(id 1\): field 'bbox': negative width or height in \[1, 2, -3, 4\]",
    ),
    "negative height": (
        _set("annotations", 2, "bbox", [1, 2, 3, -0.5]),
        r"annotations\[2\] \(id 3\): field 'bbox': negative width or height",
    ),
    "box of three numbers": (
        _set("annotations", 0, "bbox", [1, 2, 3]),
        r"annotations\[0\] \(id 1\): field 'bbox': expected four finite numbers",
    ),
    "box with text": (
        _set("annotations", 0, "bbox", [1, 2, "3", 4]),
        r"annotations\[0\] \(id 1\): field 'bbox': expected four finite numbers",
    ),
    "annotation without id": (
        _drop_field("annotations", 2, "id"),
        r"annotations\[2\]: field 'id': expected an integer, got None",
    ),
    "category id as text": (
        _set("categories", 1, "id", "2"),
        r"categories\[1\]: field 'id': expected an integer, got '2'",
    ),
    "image id twice": (
        _set("images", 2, "id", 7),
        r"images\[2\] \(id 7\): field 'id': 7 occurs twice",
    ),
    "image without file name": (
        _drop_field("images", 1, "file_name"),
        r"images\[1\] \(id 3\): field 'file_name': expected a non-empty string, got None",
    ),
    "image without height": (
        _drop_field("images", 2, "height"),
        r"images\[2\] \(id 9\): field 'height': expected a positive integer, got None",
    ),
    "image of width 0": (
        _set("images", 0, "width", 0),
        r"images\[0\] \(id 7\): field 'width': expected a positive integer, got 0",
    ),
    "category without name": (
        _drop_field("categories", 0, "name"),
        r"categories\[0\] \(id 90\): field 'name': expected a non-empty string",
    ),
    "crowd flag 2": (
        _set("annotations", 0, "iscrowd", 2),
        r"annotations\[0\] \(id 1\): field 'iscrowd': expected 0 or 1, got 2",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_annotations_are_named(tiny_coco, case):
    folder, path = tiny_coco
    edit, message = MALFORMED[case]
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=re.escape(str(path)) + ": " + message):
        CocoDetection(path, folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [("{ not json", r"not valid JSON \(.*line 1 column 3"), ("[1, 2]", "expected a JSON object")],
)
def test_not_a_coco_json_file(tiny_coco, text, message):
    folder, path = tiny_coco
    path.write_text(text)
    with pytest.raises(AnnotationError, match=re.escape(str(path)) + ": " + message):
        CocoDetection(path, folder)


def test_an_annotation_dict_is_named_too(tiny_coco):
    data = json.loads(tiny_coco[1].read_text())
    data["annotations"][0]["category_id"] = 5
    with pytest.raises(AnnotationError, match=r"<annotation dict>: annotations\[0\] \(id 1\)"):
        CocoDetection(data, image_reader=lambda name: np.zeros((4, 4, 3), np.uint8))


def test_crowd_flag_and_area_default_as_coco_evaluation_needs(tiny_coco):
    data = json.loads(tiny_coco[1].read_text())
    for annotation in data["annotations"]:
        del annotation["iscrowd"]
    coco = load_coco(data)
    assert [a["iscrowd"] for a in coco.dataset["annotations"]] == [0, 0, 0, 0]
    assert [a["area"] for a in coco.dataset["annotations"]] == [12, 20, 600, 0]
    explicit = copy.deepcopy(data)
    explicit["annotations"][1]["area"] = 7.5  # a given area (of a mask, say) is kept
    assert load_coco(explicit).anns[2]["area"] == 7.5


@given(
    category_ids=st.lists(st.integers(-(10**9), 10**9), min_size=1, max_size=6, unique=True),
    picks=st.lists(st.integers(0, 5), max_size=8),
)
def test_labels_are_the_ranks_of_any_category_ids(category_ids, picks):
    chosen = [category_ids[i % len(category_ids)] for i in picks]
    data = {
        "images": [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}],
        "categories": [{"id": c, "name": f"c{c}"} for c in category_ids],
        "annotations": [
            {"id": k, "image_id": 1, "category_id": c, "bbox": [0, 0, 1 + k, 2]}
            for k, c in enumerate(chosen)
        ],
    }
    dataset = CocoDetection(data, image_reader=lambda name: np.zeros((4, 4, 3), np.uint8))
    ranks = sorted(category_ids)
    assert dataset.class_names == [f"c{c}" for c in ranks]
    labels = [ranks.index(c) for c in chosen]
    np.testing.assert_array_equal(dataset.annotations(0)[1], labels)
    # Every reader of labels uses the one rule: the oracle's ground truth, the scoring and
    # the example figures' names.
    assert ordered_category_ids(dataset.coco) == ranks
    assert image_boxes(dataset.coco, 1)[1].tolist() == labels
    detections = ImageDetections(
        torch.zeros(len(labels), 4), torch.ones(len(labels)), torch.tensor(labels, dtype=torch.long)
    )
    coco_ids = [r["category_id"] for r in detections_to_coco(1, detections, ranks)]
    assert coco_ids == chosen
    assert class_names(dataset.coco) == dataset.class_names


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
