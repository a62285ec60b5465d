"""The training augmentation: geometry keeps boxes on their objects; colours match the BGR code."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cornernet_ref.data.augment import (
    EIGENVECTORS_BGR,
    OFFICIAL_SCALES,
    AugmentConfig,
    augment,
    clip_boxes,
    color_jitter_,
    crop_border,
    geometric_augment,
    horizontal_flip,
    lighting_,
    random_crop,
)


def box_masks(height: int, width: int, boxes: np.ndarray) -> np.ndarray:
    """One channel per integer box, 1 on the pixels it covers."""
    masks = np.zeros((height, width, len(boxes)), np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[y0:y1, x0:x1, k] = 1.0
    return masks


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight xyxy box (exclusive right/bottom) of the pixels above one half."""
    rows, cols = np.nonzero(mask > 0.5)
    if len(rows) == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


@st.composite
def images_with_boxes(draw):
    height = draw(st.integers(40, 160))
    width = draw(st.integers(40, 160))
    boxes = []
    for _ in range(draw(st.integers(1, 5))):
        x0 = draw(st.integers(0, width - 8))
        y0 = draw(st.integers(0, height - 8))
        boxes.append([x0, y0, draw(st.integers(x0 + 8, width)), draw(st.integers(y0 + 8, height))])
    return height, width, np.array(boxes, np.float32)


@pytest.mark.claim("augmentation")
@given(
    images_with_boxes(),
    st.integers(0, 2**32 - 1),
    st.sampled_from([63, 127]),
    st.booleans(),
    st.booleans(),
)
def test_boxes_follow_their_pixels(sample, seed, input_size, random, exact_flip):
    """Carry a mask of each box through crop, resize, clip and flip beside the image."""
    height, width, boxes = sample
    config = AugmentConfig(
        input_size=input_size, border=input_size // 4, random_crop=random, exact_flip=exact_flip
    )
    labels = np.arange(len(boxes))
    masks, out_boxes, out_labels = geometric_augment(
        box_masks(height, width, boxes), boxes, labels, config, np.random.default_rng(seed)
    )
    assert masks.shape == (input_size, input_size, len(boxes))
    # One pixel for the bilinear edge, one for clipping to W - 1, one for the official flip.
    tolerance = 2.0 + (0.0 if exact_flip else 1.0)
    for box, label in zip(out_boxes, out_labels, strict=True):
        assert (box[:2] >= 0).all() and (box[2:] <= input_size - 1 + exact_flip).all()
        assert box[2] > box[0] and box[3] > box[1]
        seen = mask_box(masks[..., label])
        assert seen is not None, f"box {box} kept but its pixels are gone"
        np.testing.assert_allclose(seen, box, atol=tolerance)
    for label in set(labels.tolist()) - set(out_labels.tolist()):
        seen = mask_box(masks[..., label])  # a dropped box leaves at most a sliver
        assert seen is None or min(seen[2] - seen[0], seen[3] - seen[1]) <= 2


@given(st.integers(1, 600), st.sampled_from([0, 1, 32, 128]))
def test_crop_border_rule(size, border):
    result = crop_border(border, size)
    halvings = [border // 2**k for k in range(12)]
    # The first of border, border/2, border/4, ... (integer halvings) that fits twice.
    expected = next(b for b in halvings if size - b > b or b == 0)
    assert result == expected


def test_crop_border_hand_cases():
    assert crop_border(128, 640) == 128
    assert crop_border(128, 256) == 64  # 256 - 128 <= 128, 256 - 64 > 64
    assert crop_border(128, 100) == 32


def test_official_scales():
    np.testing.assert_allclose(OFFICIAL_SCALES, [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    assert int(511 * OFFICIAL_SCALES[0]) == 306


@given(st.integers(20, 120), st.integers(20, 120), st.integers(10, 200), st.integers(0, 2**32 - 1))
def test_random_crop_is_a_shifted_copy(height, width, crop_size, seed):
    """Every canvas pixel is the source pixel shifted by the box shift, or zero outside it."""
    image = np.arange(1, height * width + 1, dtype=np.int64).reshape(height, width, 1)
    canvas, shifted = random_crop(
        image, np.zeros((1, 4), np.float32), crop_size, 16, np.random.default_rng(seed)
    )
    shift_x, shift_y = int(shifted[0, 0]), int(shifted[0, 1])
    assert canvas.shape == (crop_size, crop_size, 1)
    centre_x, centre_y = crop_size // 2 - shift_x, crop_size // 2 - shift_y
    assert crop_border(16, width) <= centre_x < width - crop_border(16, width)
    assert crop_border(16, height) <= centre_y < height - crop_border(16, height)
    rows, cols = np.nonzero(canvas[..., 0])
    np.testing.assert_array_equal(canvas[rows, cols, 0], image[rows - shift_y, cols - shift_x, 0])
    # Inside the window of half-side crop_size // 2 around the centre, nothing is missing.
    half = crop_size // 2
    x0, x1 = max(centre_x - half, 0), min(centre_x + half, width)
    y0, y1 = max(centre_y - half, 0), min(centre_y + half, height)
    assert len(rows) == (x1 - x0) * (y1 - y0)


def test_flip_twice_is_identity_and_official_is_one_pixel_left():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (7, 9, 3)).astype(np.uint8)
    boxes = np.array([[1.0, 2.0, 4.5, 6.0]], np.float32)
    for exact in (False, True):
        twice, back = horizontal_flip(*horizontal_flip(image, boxes, exact=exact), exact=exact)
        np.testing.assert_array_equal(twice, image)
        np.testing.assert_allclose(back, boxes)
    _, official = horizontal_flip(image, boxes)
    _, exact = horizontal_flip(image, boxes, exact=True)
    np.testing.assert_allclose(exact, [[9 - 4.5, 2.0, 9 - 1.0, 6.0]])
    np.testing.assert_allclose(official, exact - [[1, 0, 1, 0]])


def test_clip_drops_degenerate_boxes():
    boxes = np.array([[-5, -5, 3, 3], [10, 1, 20, 4], [2, 2, 2, 5], [1, 1, 4, 4]], np.float32)
    kept, labels = clip_boxes(boxes, np.arange(4), width=8, height=8)
    np.testing.assert_array_equal(labels, [0, 3])  # box 1 lies right of x = 7; box 2 is flat
    np.testing.assert_allclose(kept, [[0, 0, 3, 3], [1, 1, 4, 4]])


def bgr_color_jitter(image_bgr: np.ndarray, rng: np.random.Generator, strength: float) -> None:
    """The official BGR computation, written out independently."""
    grey = 0.114 * image_bgr[..., 0] + 0.587 * image_bgr[..., 1] + 0.299 * image_bgr[..., 2]
    operations = ["brightness", "contrast", "saturation"]
    for step in rng.permutation(3):
        alpha = 1.0 + rng.uniform(-strength, strength)
        if operations[step] == "brightness":
            image_bgr *= alpha
        elif operations[step] == "contrast":
            image_bgr[:] = alpha * image_bgr + (1 - alpha) * grey.mean()
        else:
            image_bgr[:] = alpha * image_bgr + (1 - alpha) * grey[..., None]


@pytest.mark.claim("augmentation")
@given(st.integers(0, 2**32 - 1))
def test_rgb_colour_steps_equal_bgr_steps_on_reversed_image(seed):
    image = np.random.default_rng(seed).uniform(0, 1, (5, 6, 3)).astype(np.float32)
    rgb = image.copy()
    color_jitter_(rgb, np.random.default_rng(seed + 1), 0.4)
    lighting_(rgb, np.random.default_rng(seed + 2), 0.1)
    bgr = image[..., ::-1].copy()
    bgr_color_jitter(bgr, np.random.default_rng(seed + 1), 0.4)
    lighting_(bgr, np.random.default_rng(seed + 2), 0.1, eigenvectors=EIGENVECTORS_BGR)
    np.testing.assert_allclose(rgb, bgr[..., ::-1], rtol=1e-5, atol=1e-5)


def test_lighting_adds_the_same_colour_everywhere():
    image = np.random.default_rng(0).uniform(0, 1, (4, 4, 3)).astype(np.float32)
    lit = image.copy()
    lighting_(lit, np.random.default_rng(1), 0.1)
    offset = lit - image
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0, 0], offset.shape), atol=1e-6)
    assert np.abs(offset).max() > 0


# The official PCA lighting constants, shared/reference/official_constants.md (BGR rows).
OFFICIAL_EIGENVALUES = [0.2141788, 0.01817699, 0.00341571]
OFFICIAL_EIGENVECTORS_BGR = [
    [-0.58752847, -0.69563484, 0.41340352],
    [-0.5832747, 0.00994535, -0.81221408],
    [-0.56089297, 0.71832671, 0.41158938],
]


@pytest.mark.claim("augmentation")
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.5]))
def test_lighting_moves_along_each_eigenvector_by_its_eigenvalue_times_the_draw(seed, std):
    """x <- x + V (lambda * a): in the (orthonormal) eigenbasis, the colour offset has the
    coordinates lambda_i a_i, with a the three normal numbers drawn from the generator."""
    image = np.zeros((2, 3, 3), np.float32)
    lighting_(image, np.random.default_rng(seed), std)
    eigenvectors_rgb = np.array(OFFICIAL_EIGENVECTORS_BGR)[::-1]  # rows: R, G, B
    coordinates = eigenvectors_rgb.T @ image[1, 2].astype(np.float64)
    drawn = np.random.default_rng(seed).normal(0.0, std, size=3)
    np.testing.assert_allclose(
        coordinates, np.array(OFFICIAL_EIGENVALUES) * drawn, rtol=1e-4, atol=1e-8
    )


def test_augment_output_and_errors():
    image = np.full((50, 70, 3), 128, np.uint8)
    config = AugmentConfig(input_size=63, border=16)
    out, boxes, labels = augment(
        image, np.array([[5, 5, 30, 40]], np.float32), np.array([2]), config,
        np.random.default_rng(0),
    )  # fmt: skip
    assert out.shape == (63, 63, 3) and out.dtype == np.float32
    assert len(boxes) == len(labels) <= 1
    with pytest.raises(ValueError, match="RGB image"):
        augment(image[..., 0], boxes, labels, config, np.random.default_rng(0))
    with pytest.raises(ValueError, match="boxes"):
        augment(image, np.zeros((2, 3), np.float32), np.zeros(2), config, np.random.default_rng(0))


def test_default_configuration_is_the_official_one():
    """shared/reference/official_constants.md: 511 input, crop border 128, jitter 0.4,
    lighting std 0.1, random crop, flip (the official one pixel off), jitter and lighting on."""
    config = AugmentConfig()
    assert (config.input_size, config.border, config.jitter, config.lighting_std) == (
        511, 128, 0.4, 0.1
    )  # fmt: skip
    assert config.random_crop and config.flip and config.color_jitter and config.lighting
    assert not config.exact_flip
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.border = 64  # frozen: a configuration is never changed in place


def test_crop_border_rejects_an_empty_side():
    with pytest.raises(ValueError, match="positive"):
        crop_border(128, 0)


def test_clip_keeps_boxes_inside_the_last_pixel():
    kept, labels = clip_boxes(np.array([[-3.0, -2, 20, 30]]), np.array([5]), width=8, height=10)
    np.testing.assert_array_equal(kept, [[0, 0, 7, 9]])  # [0, W - 1] x [0, H - 1]
    assert labels.tolist() == [5]


def test_crop_side_is_the_input_size_times_the_scale():
    """One scale, 0.5: a crop of int(63 * 0.5) = 31 pixels around the centre, resized to 63."""
    image = np.zeros((200, 200, 3), np.uint8)
    config = AugmentConfig(
        input_size=63, scales=(0.5,), border=99, flip=False, color_jitter=False
    )  # the crop centre is 99 or 100: the box stays inside the crop
    _, boxes, _ = augment(
        image, np.array([[90.0, 92, 110, 108]]), np.array([0]), config, np.random.default_rng(0)
    )
    widths = boxes[:, 2:] - boxes[:, :2]
    np.testing.assert_allclose(widths, [[20 * 63 / 31, 16 * 63 / 31]], rtol=1e-5)


def test_no_flip_when_flipping_is_off():
    image = np.zeros((50, 70, 3), np.uint8)
    config = AugmentConfig(input_size=63, random_crop=False, flip=False, color_jitter=False)
    results = [
        augment(image, np.array([[5.0, 5, 30, 40]]), np.array([0]), config,
                np.random.default_rng(seed))[1]
        for seed in range(8)
    ]  # fmt: skip
    for boxes in results:
        np.testing.assert_array_equal(boxes, results[0])
    assert results[0][0, 0] < 63 / 2  # the box on the left, where it is in the image


@given(st.integers(0, 2**32 - 1))
def test_colour_steps_keep_the_pixel_scale(seed):
    """Jitter and lighting work on [0, 1] and the result is scaled back: a grey image of 128
    stays between 0.6 and 1.4 times 128 (brightness; contrast and saturation leave a grey image
    grey), give or take the lighting offset (|V (lambda a)| < 0.2 for |a| < 4 std)."""
    image = np.full((20, 20, 3), 128, np.uint8)
    config = AugmentConfig(input_size=15, random_crop=False, flip=False)
    out, _, _ = augment(image, np.zeros((0, 4), np.float32), np.zeros(0), config,
                        np.random.default_rng(seed))  # fmt: skip
    assert 0.6 * 128 - 0.2 * 255 < out.min() <= out.max() < 1.4 * 128 + 0.2 * 255
