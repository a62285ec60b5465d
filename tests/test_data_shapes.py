"""The synthetic shapes dataset: deterministic, valid COCO, boxes tight around the shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cornernet_ref.data.coco import CocoDetection
from cornernet_ref.data.shapes import (
    CLASS_NAMES,
    render_shapes_image,
    shapes_detection,
    write_shapes,
)


@given(st.integers(0, 10_000), st.integers(0, 10_000))
@settings(max_examples=20)
def test_same_seed_same_image(seed, index):
    first, second = render_shapes_image(seed, index), render_shapes_image(seed, index)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ():
    assert not np.array_equal(render_shapes_image(0, 0)[0], render_shapes_image(1, 0)[0])


@given(st.integers(0, 10_000), st.integers(0, 100))
@settings(max_examples=20)
def test_boxes_inside_image_and_labels_valid(seed, index):
    image, boxes, labels = render_shapes_image(seed, index, size=96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert 1 <= len(boxes) == len(labels) <= 4
    assert (boxes >= 0).all() and (boxes <= 96).all()
    assert (boxes[:, 2:] - boxes[:, :2] >= 10).all()  # sides drawn from [96 // 9, 96 // 2] px
    assert set(labels.tolist()) <= set(range(len(CLASS_NAMES)))


def test_last_shape_fills_its_box_edges():
    """The last shape drawn is not covered: every edge row/column of its box holds its colour."""
    for index in range(30):
        image, boxes, labels = render_shapes_image(5, index)
        x0, y0, x1, y1 = boxes[-1].astype(int)
        patch = image[y0:y1, x0:x1].reshape(-1, 3)
        colours, counts = np.unique(patch, axis=0, return_counts=True)
        colour = colours[counts.argmax()]  # the shape's flat colour dominates its box
        inside = (image[y0:y1, x0:x1] == colour).all(-1)
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        if labels[-1] == 0:  # a rectangle fills its box
            assert inside.all()


def test_folder_and_memory_versions_agree(tmp_path):
    image_dir, annotations = write_shapes(tmp_path, 5, seed=3, size=64)
    from_files, in_memory = (
        CocoDetection(annotations, image_dir),
        shapes_detection(5, seed=3, size=64),
    )
    assert from_files.class_names == list(CLASS_NAMES)
    for index in range(5):
        a, b = from_files[index], in_memory[index]
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        _, boxes, labels = render_shapes_image(3, index, size=64)
        np.testing.assert_allclose(a.boxes, boxes)
    assert write_shapes(tmp_path, 5, seed=3, size=64) == (image_dir, annotations)  # reused
