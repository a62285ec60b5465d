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

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cornernet_ref.errors import InputError

# Official constants (BGR in the official code), reversed to RGB.
MEAN_RGB = np.array([0.47026115, 0.44719302, 0.40789654], dtype=np.float32)
STD_RGB = np.array([0.27809835, 0.27408164, 0.28863828], dtype=np.float32)


class ImageReadError(InputError, RuntimeError):
    r"""An image file is missing or cannot be decoded; the message names the file."""


def read_image(path: str | Path) -> np.ndarray:
    r"""Read an image file as an ``(H, W, 3)`` uint8 RGB array.

    Grayscale, palette, CMYK and RGBA images are converted to RGB (alpha dropped).

    Raises:
        ImageReadError: the file is missing, unreadable or not a decodable image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as error:
        raise ImageReadError(f"image file not found: {path}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot decode image file {path}: {error}") from error


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
