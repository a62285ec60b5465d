r"""The official training augmentation (paper §4.1, "Training Details").

The paper: "we apply random horizontal flipping, random scaling, random cropping and random
color jittering, which includes adjusting the brightness, saturation and contrast of an
image. Finally, we apply PCA to the input image." Where the paper is silent, the official
implementation decides, and this module follows it step by step:

1. **Random crop around a random centre.** Draw a scale $s$ from
   ``arange(0.6, 1.4, 0.1)`` $= \{0.6, \dots, 1.3\}$ and a centre $(c_x, c_y)$ at least a
   *border* away from the image edges (border 128 at input 511, halved while the image is
   too small for it). Copy the window of side $\lfloor 511 s \rfloor$ around the centre
   onto a zero canvas of that side, the centre landing in the middle of the canvas.
2. **Resize** the canvas to the input size (511 x 511); boxes scale with it.
3. **Clip** boxes to the image ($x \in [0, W - 1]$, $y \in [0, H - 1]$) and drop the
   degenerate ones (zero width or height).
4. **Horizontal flip** with probability 1/2: $x \mapsto W - x - 1$ (the official rule, in
   pixel-index coordinates; ``exact_flip=True`` uses the continuous $x \mapsto W - x$).
5. **Colour jitter** on the image scaled to $[0, 1]$: brightness, contrast and saturation, in
   random order, each with a factor $\alpha = 1 + U(-0.4, 0.4)$, blending with the mean grey
   level (contrast) or the grey image (saturation) of the *unjittered* image:
   $x \leftarrow \alpha x + (1 - \alpha) g$.
6. **PCA lighting noise**: $x \leftarrow x + V (\lambda \odot a)$ with
   $a \sim \mathcal N(0, 0.1^2 I_3)$, $\lambda$ the eigenvalues and $V$ the eigenvectors
   (columns) of the pixel covariance of ImageNet colours.

The official code works in BGR; this project in RGB. Rows of $V$ index colour channels, so
the RGB version reverses its rows (the eigen-directions themselves are unchanged), and the
grey level uses the RGB order of the ITU-R 601 weights. The tests check both against the BGR
computation on a channel-reversed image.

Geometric steps work on images with any number of channels, so a test can carry a mask of
each box through them beside the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cornernet_ref.data.image import resize_image
from cornernet_ref.printable import FieldError, PrintableConfig

# Official crop scales: numpy's arange(0.6, 1.4, 0.1), floating-point values kept as they are.
OFFICIAL_SCALES: tuple[float, ...] = tuple(float(s) for s in np.arange(0.6, 1.4, 0.1))

# PCA lighting constants of the official code. Eigenvector rows index channels, in BGR there.
EIGENVALUES = np.array([0.2141788, 0.01817699, 0.00341571], dtype=np.float32)
EIGENVECTORS_BGR = np.array(
    [
        [-0.58752847, -0.69563484, 0.41340352],
        [-0.5832747, 0.00994535, -0.81221408],
        [-0.56089297, 0.71832671, 0.41158938],
    ],
    dtype=np.float32,
)
EIGENVECTORS_RGB = np.ascontiguousarray(EIGENVECTORS_BGR[::-1])  # reverse the channel rows

# ITU-R 601 luma weights (OpenCV's BGR2GRAY), in RGB order.
GREY_WEIGHTS_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig(PrintableConfig):
    r"""What the training augmentation does; the defaults are the official ones at 511 x 511.

    Attributes:
        input_size: side of the square network input (511 officially).
        random_crop: random crop and scale (else the whole image, padded square, is resized).
        scales: crop side = ``int(input_size * scale)`` for a scale drawn from these.
        border: minimum distance of the crop centre from the image edges (128 at 511).
        flip: random horizontal flip with probability 1/2.
        exact_flip: flip ``x -> W - x`` instead of the official ``x -> W - x - 1``.
        color_jitter: brightness, contrast and saturation jitter.
        jitter: the jitter factors are drawn from ``1 + U(-jitter, jitter)``.
        lighting: PCA lighting noise (applied only together with colour jitter, as officially).
        lighting_std: standard deviation of the lighting coefficients.

    Raises:
        ValueError: naming the field out of its range.
    """

    input_size: int = 511
    random_crop: bool = True
    scales: tuple[float, ...] = OFFICIAL_SCALES
    border: int = 128
    flip: bool = True
    exact_flip: bool = False
    color_jitter: bool = True
    jitter: float = 0.4
    lighting: bool = True
    lighting_std: float = 0.1

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise FieldError("input_size", self.input_size, "must be positive")
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise FieldError("scales", self.scales, "must be positive numbers")
        if self.border < 0:
            raise FieldError("border", self.border, "must be at least 0")
        if not 0 <= self.jitter < 1:  # a factor 1 + U(-jitter, jitter) stays positive
            raise FieldError("jitter", self.jitter, "must lie in [0, 1)")
        if not (math.isfinite(self.lighting_std) and self.lighting_std >= 0):
            raise FieldError("lighting_std", self.lighting_std, "must be a finite number >= 0")


def crop_border(border: int, size: int) -> int:
    r"""The official border rule: halve ``border`` until the image side leaves room for it."""
    if size < 1:
        raise ValueError(f"image side must be positive, got {size}")
    divisor = 1
    while size - border // divisor <= border // divisor:
        divisor *= 2
    return border // divisor


def random_crop(
    image: np.ndarray, boxes: np.ndarray, crop_size: int, border: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    r"""Copy a ``crop_size`` window around a random centre onto a zero canvas (step 1).

    Args:
        image: ``(H, W, C)`` array, any channel count.
        boxes: ``(N, 4)`` xyxy boxes in image pixels.
        crop_size: side of the square canvas.
        border: border of the centre (see :func:`crop_border`).
        rng: the random generator.

    Returns:
        The ``(crop_size, crop_size, C)`` canvas and the boxes in canvas pixels (not clipped).
    """
    height, width = image.shape[:2]
    border_x, border_y = crop_border(border, width), crop_border(border, height)
    centre_x = int(rng.integers(border_x, width - border_x))
    centre_y = int(rng.integers(border_y, height - border_y))
    half = crop_size // 2
    x0, x1 = max(centre_x - half, 0), min(centre_x + half, width)
    y0, y1 = max(centre_y - half, 0), min(centre_y + half, height)
    # The window's corner (x0, y0) lands at (half - (centre - x0), ...) on the canvas.
    paste_x, paste_y = half - (centre_x - x0), half - (centre_y - y0)
    canvas = np.zeros((crop_size, crop_size, image.shape[2]), dtype=image.dtype)
    canvas[paste_y : paste_y + y1 - y0, paste_x : paste_x + x1 - x0] = image[y0:y1, x0:x1]
    shift = np.array([paste_x - x0, paste_y - y0] * 2, dtype=np.float32)
    return canvas, boxes + shift


def full_image_crop(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Centre the whole image on a zero square canvas of side ``max(H, W)`` (no random crop)."""
    height, width = image.shape[:2]
    side = max(height, width)
    offset_x, offset_y = side // 2 - width // 2, side // 2 - height // 2
    canvas = np.zeros((side, side, image.shape[2]), dtype=image.dtype)
    canvas[offset_y : offset_y + height, offset_x : offset_x + width] = image
    return canvas, boxes + np.array([offset_x, offset_y] * 2, dtype=np.float32)


def resize(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Resize to ``size x size`` (step 2); the boxes scale with the image."""
    height, width = image.shape[:2]
    scale = np.array([size / width, size / height] * 2, dtype=np.float32)
    return resize_image(image, (size, size)), boxes * scale


def clip_boxes(
    boxes: np.ndarray, labels: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""Clip boxes to ``[0, W-1] x [0, H-1]`` and drop those left without width or height."""
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, width - 1)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, height - 1)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped[keep], labels[keep]


def horizontal_flip(
    image: np.ndarray, boxes: np.ndarray, *, exact: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    r"""Mirror the image; boxes map ``x -> W - x - 1`` (official) or ``x -> W - x`` (exact)."""
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, [0, 2]] = width - boxes[:, [2, 0]] - (0 if exact else 1)
    return np.ascontiguousarray(image[:, ::-1]), flipped


def color_jitter_(image: np.ndarray, rng: np.random.Generator, strength: float = 0.4) -> None:
    r"""Brightness, contrast and saturation jitter in random order, in place (step 5).

    Args:
        image: ``(H, W, 3)`` float RGB image in ``[0, 1]``, modified in place.
        rng: the random generator.
        strength: factors are ``1 + U(-strength, strength)``.
    """
    grey = image @ GREY_WEIGHTS_RGB  # grey image of the unjittered input, as officially
    grey_mean = float(grey.mean())
    for step in rng.permutation(3):
        alpha = 1.0 + rng.uniform(-strength, strength)
        if step == 0:  # brightness: x <- alpha x
            image *= alpha
        elif step == 1:  # contrast: x <- alpha x + (1 - alpha) mean(grey)
            image *= alpha
            image += (1.0 - alpha) * grey_mean
        else:  # saturation: x <- alpha x + (1 - alpha) grey
            image *= alpha
            image += (1.0 - alpha) * grey[..., None]


def lighting_(
    image: np.ndarray,
    rng: np.random.Generator,
    std: float = 0.1,
    eigenvectors: np.ndarray = EIGENVECTORS_RGB,
) -> None:
    r"""PCA lighting noise, in place: ``x <- x + V (lambda * a)``, ``a ~ N(0, std^2)`` (step 6).

    ``eigenvectors`` rows follow the image's channel order (RGB by default).
    """
    alpha = rng.normal(0.0, std, size=3).astype(np.float32)
    image += eigenvectors @ (EIGENVALUES * alpha)


def geometric_augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Steps 1-4: crop (random or full), resize, clip, flip. Any channel count; float32 out."""
    if config.random_crop:
        scale = config.scales[int(rng.integers(len(config.scales)))]
        image, boxes = random_crop(image, boxes, int(config.input_size * scale), config.border, rng)
    else:
        image, boxes = full_image_crop(image, boxes)
    image, boxes = resize(image, boxes, config.input_size)
    boxes, labels = clip_boxes(boxes, labels, config.input_size, config.input_size)
    if config.flip and rng.uniform() > 0.5:
        image, boxes = horizontal_flip(image, boxes, exact=config.exact_flip)
    return image, boxes, labels


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The full official training augmentation of one sample.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        boxes: ``(N, 4)`` float xyxy boxes in image pixels.
        labels: ``(N,)`` 0-based class labels.
        config: what to apply.
        rng: the random generator (every random choice comes from it).

    Returns:
        ``(input_size, input_size, 3)`` float32 RGB image on the 0-255 scale (ready for
        :func:`cornernet_ref.data.image.normalize`), the surviving boxes and their labels.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(labels):
        raise ValueError(
            f"expected (N, 4) boxes and (N,) labels, got {boxes.shape}, {labels.shape}"
        )
    image, boxes, labels = geometric_augment(
        image, boxes.astype(np.float32), np.asarray(labels), config, rng
    )
    if config.color_jitter:
        image /= 255.0
        color_jitter_(image, rng, config.jitter)
        if config.lighting:
            lighting_(image, rng, config.lighting_std)
        image *= 255.0
    return image, boxes, labels
