"""Image reading and normalisation (cornernet_ref.data.image)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cornernet_ref.data.image import (
    MEAN_RGB,
    STD_RGB,
    ImageReadError,
    normalize,
    read_image,
    resize_image,
)

# The official constants in the official (BGR) order, from shared/reference/official_constants.md.
OFFICIAL_MEAN_BGR = [0.40789654, 0.44719302, 0.47026115]
OFFICIAL_STD_BGR = [0.28863828, 0.27408164, 0.27809835]


def test_constants_are_official_ones_in_rgb_order() -> None:
    np.testing.assert_array_equal(MEAN_RGB, np.float32(OFFICIAL_MEAN_BGR[::-1]))
    np.testing.assert_array_equal(STD_RGB, np.float32(OFFICIAL_STD_BGR[::-1]))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "RGB"])
def test_read_image_converts_every_mode_to_rgb(tmp_path, mode) -> None:
    rgb = np.zeros((5, 7, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # a red image survives every conversion as a red-ish one
    path = tmp_path / f"img_{mode}.png" if mode != "CMYK" else tmp_path / "img.jpg"
    Image.fromarray(rgb).convert(mode).save(path)
    image = read_image(path)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    if mode != "L":
        assert image[..., 0].mean() > image[..., 2].mean()


def test_missing_and_corrupt_files_name_the_file(tmp_path) -> None:
    with pytest.raises(ImageReadError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        read_image(corrupt)


def test_normalize_by_hand() -> None:
    image = np.full((2, 3, 3), 255, dtype=np.uint8)
    image[..., 1] = 0
    out = normalize(image)
    assert out.shape == (3, 2, 3)
    expected = [
        (1 - MEAN_RGB[0]) / STD_RGB[0],
        (0 - MEAN_RGB[1]) / STD_RGB[1],
        (1 - MEAN_RGB[2]) / STD_RGB[2],
    ]
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="RGB"):
        normalize(np.zeros((4, 4), dtype=np.uint8))


def test_grayscale_image_is_read_as_three_equal_channels(tmp_path) -> None:
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7  # every value different
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (5, 7, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_palette_image_is_read_as_its_palette_colours(tmp_path) -> None:
    palette = np.array([[0, 0, 0], [255, 0, 0], [10, 200, 30], [1, 2, 250]], dtype=np.uint8)
    indices = (np.arange(35).reshape(5, 7) % 4).astype(np.uint8)
    picture = Image.fromarray(indices, mode="P")
    picture.putpalette(palette.flatten().tolist())
    picture.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png"), palette[indices])


def test_resize_has_half_pixel_centres():
    """OpenCV's INTER_LINEAR: output pixel i samples the input at (i + 0.5) / 2 - 0.5 when
    doubling, clamped at the border: [0, 4] becomes [0, 1, 3, 4]."""
    image = np.array([[[0.0], [4.0]]], np.float32)  # (1, 2, 1)
    np.testing.assert_allclose(resize_image(image, (1, 4))[0, :, 0], [0, 1, 3, 4])
