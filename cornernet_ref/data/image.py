r"""Reading images, resizing them and normalising them the way the official network expects.

The official code reads images with OpenCV, so its constants are in **BGR** order. This
project works in **RGB** throughout: the constants below are the official ones reversed
to RGB, and :func:`cornernet_ref.convert.convert_official_state_dict` reverses the input
channels of the first convolution, so official weights see exactly the numbers they were
trained on.

Normalisation (official, per channel ``c``, image scaled to ``[0, 1]``):

$$ \hat x_c = \frac{x_c / 255 - \mu_c}{\sigma_c} $$
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from cornernet_ref.errors import InputError

# Official constants (BGR in the official code), reversed to RGB.
MEAN_RGB = np.array([0.47026115, 0.44719302, 0.40789654], dtype=np.float32)
STD_RGB = np.array([0.27809835, 0.27408164, 0.28863828], dtype=np.float32)


class ImageReadError(InputError, RuntimeError):
    r"""An image file is missing or cannot be decoded; the message names the file."""


def read_image(path: str | Path) -> np.ndarray:
    r"""Read an image file as an ``(H, W, 3)`` uint8 RGB array, as the official ``cv2.imread``.

    * **Orientation.** An EXIF orientation tag is applied, so the array is the picture a
      viewer shows; ``cv2.imread`` (the official reader) does the same by default.
    * **Modes.** Grayscale (``1``, ``L``), palette, CMYK and RGBA images are converted to RGB;
      alpha is dropped, not blended, as ``cv2.imread`` drops it. 16-bit grayscale
      (``I;16``, and ``I`` holding 16-bit values) keeps its high byte, $x \gg 8$, the
      8-bit value ``cv2.imread`` gives (a plain conversion would clip every value above
      255 to white). Floating-point images have no agreed scale and are refused.
    * **Refused.** Anything that is not a regular file (a folder, a FIFO that would block
      the read, a device), and images over ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's
      guard against decompression bombs), each in one line before any pixel is decoded.

    Raises:
        ImageReadError: naming the file: missing, not a regular file, unreadable (with the
            operating system's reason), too large or not a decodable image.
    """
    path = Path(path)
    try:
        kind = os.stat(path).st_mode  # before opening: opening a FIFO would block
    except FileNotFoundError as error:
        raise ImageReadError(f"image file not found: {path}") from error
    except OSError as error:
        raise ImageReadError(f"cannot read image file {path}: {error.strerror}") from error
    if not stat.S_ISREG(kind):
        what = "a folder" if stat.S_ISDIR(kind) else "not a regular file"
        raise ImageReadError(f"image file {path} is {what}")
    try:
        with warnings.catch_warnings():  # Pillow only warns between 1 and 2 times its limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return _to_rgb(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"refusing image file {path}: {error}") from error
    except PermissionError as error:
        raise ImageReadError(f"cannot read image file {path}: {error.strerror}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot decode image file {path}: {error}") from error


def _to_rgb(image: Image.Image) -> np.ndarray:
    r"""The ``(H, W, 3)`` uint8 RGB pixels of an opened image of any mode."""
    if image.mode.startswith("I"):  # 16-bit grayscale (I;16, I;16B, ...) or 32-bit I
        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)  # x >> 8: the high byte
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        raise ValueError("32-bit floating-point pixels have no agreed 0-255 scale")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def normalize(
    image: np.ndarray, mean: np.ndarray = MEAN_RGB, std: np.ndarray = STD_RGB
) -> torch.Tensor:
    r"""``(H, W, 3)`` RGB uint8 (or float in [0, 255]) -> ``(3, H, W)`` float32 tensor."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    scaled = image.astype(np.float32) / 255.0
    normalised = (scaled - mean) / std  # (x/255 - mu) / sigma
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    r"""Bilinear resize of ``(H, W, C)`` to ``size = (height, width)``, float32 out.

    Half-pixel centres and no antialiasing, as OpenCV's ``INTER_LINEAR``.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = tensor.permute(2, 0, 1)[None]
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).numpy()
