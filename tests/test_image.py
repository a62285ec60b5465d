"""Image reading and normalisation (cornernet_ref.data.image)."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

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


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares ``width x height`` 8-bit RGB pixels and that holds none."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def _rotated_jpeg(path: Path) -> None:
    """A 16 x 8 (W x H) JPEG, left half black, right half white, tagged EXIF orientation 6
    ("rotate 90 degrees clockwise to display"): shown 8 wide and 16 high, black on top."""
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, 8:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # the Orientation tag
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=100)


def _expect_rotated(image: np.ndarray) -> None:
    assert image.shape == (16, 8, 3)
    assert image[:6].max() < 16 and image[10:].min() > 240  # JPEG blurs the middle rows only


SIXTEEN_BIT = np.array([[0, 255, 256, 5000], [32768, 40000, 65280, 65535]], np.uint16)
HIGH_BYTES = np.array([[0, 0, 1, 19], [128, 156, 255, 255]], np.uint8)  # x >> 8, by hand


def _gray(values: np.ndarray) -> Callable[[np.ndarray], None]:
    def check(image: np.ndarray) -> None:
        np.testing.assert_array_equal(image, np.repeat(values[..., None], 3, axis=2))

    return check


def _rgba(path: Path) -> None:
    pixels = np.array([[[10, 20, 30, 0], [40, 50, 60, 128], [70, 80, 90, 255]]], np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(path)


# Each case: (file name, how to write it, a check of the pixels read or the error's message).
IMAGE_CASES = {
    "16-bit grayscale PNG: the high byte, not clipped to white": (
        "sixteen.png",
        lambda path: Image.fromarray(SIXTEEN_BIT).save(path),
        _gray(HIGH_BYTES),
    ),
    "32-bit integer TIFF of 16-bit values, clipped to 0..65535 first": (
        "int32.tif",
        lambda path: Image.fromarray(np.array([[-5, 5000, 70000]], np.int32)).save(path),
        _gray(np.array([[0, 19, 255]], np.uint8)),
    ),
    "bilevel PNG: 0 and 255": (
        "bilevel.png",
        lambda path: Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1").save(path),
        _gray(np.array([[0, 255, 0]], np.uint8)),
    ),
    "RGBA PNG: alpha dropped, colours kept whatever the alpha": (
        "rgba.png",
        _rgba,
        lambda image: np.testing.assert_array_equal(
            image, [[[10, 20, 30], [40, 50, 60], [70, 80, 90]]]
        ),
    ),
    "EXIF orientation 6: turned upright": ("rotated.jpg", _rotated_jpeg, _expect_rotated),
    "a PNG declaring 30000 x 30000 pixels: refused before decoding": (
        "bomb.png",
        lambda path: _png_header(path, 30000, 30000),
        r"refusing image file .*bomb\.png: Image size \(900000000 pixels\) exceeds limit",
    ),
    "a PNG declaring 10000 x 10000 pixels (Pillow only warns): refused too": (
        "large.png",
        lambda path: _png_header(path, 10000, 10000),
        r"refusing image file .*large\.png: Image size \(100000000 pixels\) exceeds limit",
    ),
    "32-bit float TIFF: no agreed scale": (
        "float.tif",
        lambda path: Image.fromarray(np.ones((2, 2), np.float32)).save(path),
        r"cannot decode image file .*float\.tif: 32-bit floating-point pixels",
    ),
    "a folder": ("folder.jpg", lambda path: path.mkdir(), r"image file .*folder\.jpg is a folder"),
    "a FIFO, refused without opening it": (
        "fifo.jpg",
        os.mkfifo,
        r"image file .*fifo\.jpg is not a regular file",
    ),
    "a missing file": ("missing.jpg", lambda path: None, r"image file not found: .*missing\.jpg"),
    "bytes that are no image": (
        "corrupt.jpg",
        lambda path: path.write_bytes(b"not an image at all"),
        r"cannot decode image file .*corrupt\.jpg: cannot identify image file",
    ),
}


def _read_within(path: Path, seconds: float = 20.0) -> np.ndarray:
    """``read_image(path)``, failing the test instead of hanging if the read blocks."""
    outcome: dict[str, object] = {}

    def read() -> None:
        try:
            outcome["image"] = read_image(path)
        except ImageReadError as error:
            outcome["error"] = error

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(seconds)
    if reader.is_alive():
        if path.is_fifo():  # a writer releases the blocked reader
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"read_image({path.name}) blocked for {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["image"]


# Outside the tests Pillow's warning is only printed: read_image must refuse it by itself.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", IMAGE_CASES)
def test_every_kind_of_file_is_read_right_or_refused_in_one_line(tmp_path, case) -> None:
    name, write, expected = IMAGE_CASES[case]
    path = tmp_path / name
    write(path)
    if isinstance(expected, str):
        with pytest.raises(ImageReadError, match=expected) as raised:
            _read_within(path)
        assert "\n" not in str(raised.value)
    else:
        image = _read_within(path)
        assert image.dtype == np.uint8
        expected(image)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_names_the_cause(tmp_path) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (2, 2)).save(path)
    path.chmod(0)
    with pytest.raises(ImageReadError, match=r"cannot read image file .*locked\.png: Permission"):
        read_image(path)


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
