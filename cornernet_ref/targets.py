r"""Ground-truth targets: what the network is asked to predict (paper §3.2).

CornerNet predicts corners on an output grid about 4 times coarser than the input. Each
box becomes, for each of its two corners, a heatmap peak of its class surrounded by a
Gaussian bump, an offset (the fraction of a cell lost on the coarse grid) and the index of
its cell. The equations sit with the code that computes them:

* [build_targets][cornernet_ref.targets.build_targets]: the cell, the offset (Eq. 2), the
  index and the slots of one image;
* [gaussian_bump][cornernet_ref.targets.gaussian_bump]: the unnormalised Gaussian around
  a corner;
* [gaussian_radius][cornernet_ref.targets.gaussian_radius] (official) and
  [exact_radius][cornernet_ref.targets.exact_radius]: how far a corner may move and keep
  IoU $\ge t$ with the ground truth;
* [draw_gaussian][cornernet_ref.targets.draw_gaussian]: bumps merged by a maximum.

Conventions follow the official implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cornernet_ref.corner_pool import CORNERS
from cornernet_ref.printable import FieldError, PrintableConfig

RadiusVariant = Literal["official", "exact"]
TARGET_KEYS = ("tl_heat", "br_heat", "tl_ind", "br_ind", "mask", "tl_off", "br_off")
RADIUS_VARIANTS = ("official", "exact")


@dataclass(frozen=True)
class TargetConfig(PrintableConfig):
    r"""How :func:`build_targets` draws the targets; the defaults are the official ones.

    Attributes:
        gaussian_iou: the overlap $t$ that a pair of corners within the radius still keeps
            with the ground truth; sets the radius of the Gaussian bumps (§3.2). In $(0, 1)$.
        radius_variant: the radius formula, ``"official"`` or ``"exact"`` (corners anywhere
            within the radius); see :func:`gaussian_radius`.
        penalty_reduction: draw the Gaussian bumps. ``False`` leaves only the exact corner
            cells at 1, so that the focal loss penalises every other cell fully (the
            paper's ablation "w/o reducing penalty", §4.4).
        max_objects: number of object slots ``K`` per image; at least 1.

    Raises:
        ValueError: naming the field out of its range.
    """

    gaussian_iou: float = 0.3
    radius_variant: RadiusVariant = "official"
    penalty_reduction: bool = True
    max_objects: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.gaussian_iou < 1:
            raise FieldError("gaussian_iou", self.gaussian_iou, "must lie in (0, 1)")
        if self.radius_variant not in RADIUS_VARIANTS:
            raise FieldError(
                "radius_variant", self.radius_variant, f"must be one of {RADIUS_VARIANTS}"
            )
        if self.max_objects < 1:
            raise FieldError("max_objects", self.max_objects, "must be >= 1")


def gaussian_radius(
    height: float, width: float, min_overlap: float, *, variant: RadiusVariant = "official"
) -> float:
    r"""Radius (in cells) within which a corner may move and keep IoU >= ``min_overlap``.

    Both variants answer one question: how far may each corner of a ``width x height`` box
    move so that the box they span still has IoU $\ge t$ with it? The worst pair of moves
    always gives a box *nested* in the ground truth, of size $(w - A) \times (h - B)$ where
    $A$ and $B$ are the total horizontal and vertical moves of the two corners, so the
    answer is the largest $r$ for which every reachable $(A, B)$ keeps
    $(w - A)(h - B) \ge t\,wh$ (chapter 1 proves it).

    ``"official"`` is the formula of the official code: three quadratics in $r$, one per
    way the two corners can move (both inwards, both outwards, one each way: a shift),
    each assuming that a corner moves by $r$ along *both* axes at once, and the smallest
    of their roots:

    $$ \begin{aligned}
    \text{both in:}\quad & (w - 2r)(h - 2r) = t\,wh
      &&\Rightarrow\; 4r^2 - 2(w + h)r + (1 - t)\,wh = 0 \\
    \text{both out:}\quad & wh = t\,(w + 2r)(h + 2r)
      &&\Rightarrow\; 4t\,r^2 + 2t(w + h)r - (1 - t)\,wh = 0 \\
    \text{shift:}\quad & (w - r)(h - r) = t\,\big(2wh - (w - r)(h - r)\big)
      &&\Rightarrow\; r^2 - (w + h)r + \tfrac{1 - t}{1 + t}\,wh = 0
    \end{aligned} $$

    The shrinking root is always the smallest, and it is exact for corners that move at
    most $r$ along each axis (a square of side $2r$ around each corner).

    ``"exact"`` is the largest $r$ for corners anywhere within Euclidean distance $r$ (the
    circles of the paper's Fig. 5): half the distance from the point $(w, h)$ to the
    hyperbola $XY = t\,wh$ of box sizes with IoU exactly $t$. It lies between the
    official radius and $\sqrt 2$ times it. See :func:`exact_radius`.

    Args:
        height: box height $h$ (in cells), positive.
        width: box width $w$ (in cells), positive.
        min_overlap: the IoU $t$ to keep, in $(0, 1)$.
        variant: ``"official"`` (default) or ``"exact"``.

    Raises:
        ValueError: on a non-positive size, an overlap outside $(0, 1)$ or an unknown variant.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"box size must be positive, got height={height}, width={width}")
    if not 0 < min_overlap < 1:
        raise ValueError(f"min_overlap must lie in (0, 1), got {min_overlap}")
    if variant == "exact":
        return exact_radius(height, width, min_overlap)
    if variant != "official":
        raise ValueError(f"unknown radius variant {variant!r}; expected 'official' or 'exact'")
    t, h, w = min_overlap, height, width

    def smaller_root(a: float, b: float, c: float) -> float:  # of a r^2 + b r + c = 0
        return (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)

    def larger_root(a: float, b: float, c: float) -> float:
        return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)

    shift = smaller_root(1.0, -(h + w), w * h * (1 - t) / (1 + t))  # one in, one out
    shrink = smaller_root(4.0, -2 * (h + w), (1 - t) * w * h)  # both in
    grow = larger_root(4 * t, 2 * t * (h + w), (t - 1) * w * h)  # both out
    return min(shift, shrink, grow)  # always the shrinking root, kept as officially computed


def exact_radius(height: float, width: float, min_overlap: float) -> float:
    r"""The largest $r$ such that corners within distance $r$ always keep IoU $\ge t$.

    The worst pairs of corners span nested boxes $X \times Y$ with $XY = t\,wh$, both
    corners moving inwards by half of $(w - X, h - Y)$, so the radius is half the distance
    from $(w, h)$ to that hyperbola:

    $$ r^\ast = \tfrac12 \operatorname{dist}\!\big((w, h),\ \{XY = t\,wh\}\big). $$

    In units of the longer side, the box is $1 \times \rho$ ($\rho \le 1$) and the
    hyperbola $XY = t\rho$.

    The nearest point is the foot of a normal, $(1 - X, \rho - Y) = \mu\,(Y, X)$, on the
    side of the short axis ($0 < \mu < \rho$). With $s = \rho - \mu$ and
    $\delta = 1 - \rho$ the foot is

    $$ X = \frac{\delta + s + \mu\delta}{(\delta + s)(1 + \mu)}, \qquad
       Y = \frac{s}{(\delta + s)(1 + \mu)}, $$

    and $XY$ increases strictly with $s$ from 0 to $\rho$, so $XY = t\rho$ has one root,
    found by bisection (on $\log s$, as the root can be tiny for nearly square boxes).
    Then $r = \tfrac12 \mu \sqrt{X^2 + Y^2}$. A square box ($\delta = 0$) has the closed
    form $r = \tfrac12\sqrt 2 (1 - \sqrt t)$ for $t \ge \tfrac14$ (the worst move is
    diagonal) and $r = \tfrac12\sqrt{1 - 2t}$ below (two symmetric worst moves).

    Args:
        height: box height, positive.
        width: box width, positive.
        min_overlap: the IoU $t$ to keep, in $(0, 1)$.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"box size must be positive, got height={height}, width={width}")
    if not 0 < min_overlap < 1:
        raise ValueError(f"min_overlap must lie in (0, 1), got {min_overlap}")
    t = min_overlap
    long_side, short_side = max(height, width), min(height, width)
    # The box is 1 x rho in units of the longer side; delta = 1 - rho without cancellation.
    rho, delta = short_side / long_side, (long_side - short_side) / long_side
    if delta == 0:  # a square: the closed forms above, for t >= 1/4 and below
        distance = math.sqrt(2) * (1 - math.sqrt(t)) if t >= 0.25 else math.sqrt(1 - 2 * t)
        return long_side * distance / 2

    def foot(s: float) -> tuple[float, float, float]:  # (mu, X, Y) of the normal at s
        mu = rho - s
        denominator = (delta + s) * (1 + mu)
        return mu, (delta + s + mu * delta) / denominator, s / denominator

    low, high = t * rho * delta, rho  # XY < t rho at s = low, XY = rho > t rho at s = rho
    while low < (middle := math.sqrt(low * high)) < high:  # bisection on log s
        _, x, y = foot(middle)
        low, high = (middle, high) if x * y < t * rho else (low, middle)  # XY = t rho between
    mu, x, y = foot(high)  # the root, to machine precision
    return long_side * mu * math.hypot(x, y) / 2  # r = mu sqrt(X^2 + Y^2) / 2, in cells


def gaussian_bump(radius: int) -> np.ndarray:
    r"""The ``(2r+1, 2r+1)`` unnormalised Gaussian around a corner at $(c_x, c_y)$, peak 1.

    A corner predicted a few cells away still gives a box that overlaps the ground truth
    well, so the cells near a corner are negatives with a reduced penalty: the focal loss
    ([focal_loss][cornernet_ref.losses.focal_loss]) weighs them by $(1 - y_{ij})^\beta$,
    with the target

    $$ y_{ij} = \exp\!\left(-\frac{(i - c_x)^2 + (j - c_y)^2}{2\sigma^2}\right), \qquad
       \sigma = \frac{2r + 1}{6}, \qquad |i - c_x|, |j - c_y| \le r, $$

    $\sigma$ being a sixth of the diameter as in the official code (the paper says a third
    of the radius). The official code also zeroes the values below machine epsilon times
    the peak; none ever is, since the smallest, at the window's corners, exceeds
    $e^{-9}$ ($(i - c_x)^2 + (j - c_y)^2 = 2r^2 < 2\sigma^2 \cdot 9$), so that step is
    left out.
    """
    diameter = 2 * radius + 1
    sigma = diameter / 6
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    bump = np.exp(-(offsets[None, :] ** 2 + offsets[:, None] ** 2) / (2 * sigma * sigma))
    return bump


def draw_gaussian(heatmap: np.ndarray, center_xy: tuple[int, int], radius: int) -> None:
    r"""Merge a Gaussian bump centred on cell ``center_xy = (x, y)`` into ``heatmap`` (H, W).

    The bump is clipped at the borders and combined with an elementwise ``max``, in place.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    x, y = center_xy
    height, width = heatmap.shape
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"centre {center_xy} lies outside a heatmap of size {width}x{height}")
    bump = gaussian_bump(radius)
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    window = heatmap[y - top : y + bottom, x - left : x + right]
    patch = bump[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(window, patch, out=window)


def _size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    r"""``511`` or ``(511, 511)`` -> ``(height, width)``."""
    pair = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return pair


def build_targets(
    boxes: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    num_classes: int,
    input_size: int | Sequence[int],
    output_size: int | Sequence[int],
    config: TargetConfig = TargetConfig(),
) -> dict[str, torch.Tensor]:
    r"""Targets of one image.

    With the per-axis ratio $\rho = \text{output} / \text{input}$ (about $1/4$), a corner
    at $(x, y)$ input pixels falls in the cell

    $$ (\lfloor \rho x \rfloor, \lfloor \rho y \rfloor), $$

    whose flat index is $yW + x$ (the layout
    [gather_at][cornernet_ref.output.gather_at] reads). Its heatmap channel gets a bump of
    the radius of [gaussian_radius][cornernet_ref.targets.gaussian_radius] (box measured
    on the output grid, each side rounded up; radius truncated to an integer), and the
    fraction lost by the floor is the offset target (Eq. 2, written with the ratio
    instead of the paper's downsampling factor):

    $$ o_k = \left(\rho x_k - \lfloor \rho x_k \rfloor,\;
       \rho y_k - \lfloor \rho y_k \rfloor\right). $$

    Object $k$ (in input order) occupies slot $k$ of ``config.max_objects`` slots, and
    ``mask`` marks the occupied ones.

    Args:
        boxes: ``(N, 4)`` boxes ``x1, y1, x2, y2`` in input pixels.
        labels: ``(N,)`` 0-based class indices.
        num_classes: number of heatmap channels ``C``.
        input_size: ``(height, width)`` of the input (or one int for a square).
        output_size: ``(height, width)`` of the output grid (or one int).
        config: the overlap $t$ that sets the bump radius, the radius formula, penalty
            reduction and the number of slots ``K`` (:class:`TargetConfig`).

    Degenerate boxes: boxes are first clipped to the input image
    ``[0, width - 1] x [0, height - 1]`` (as the official pipeline does after
    augmentation); a box with no positive width or height after clipping is skipped, and
    the remaining objects keep their order.

    Returns:
        ``tl_heat``, ``br_heat`` ``(C, H, W)`` float32; ``tl_ind``, ``br_ind`` ``(K,)``
        int64 flat indices ``y * W + x``; ``mask`` ``(K,)`` bool; ``tl_off``, ``br_off``
        ``(K, 2)`` float32 offsets ``(dx, dy)``.

    Raises:
        ValueError: on malformed boxes or labels, or more than ``config.max_objects`` objects.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float64).detach().cpu().numpy()
    labels = torch.as_tensor(labels, dtype=torch.int64).detach().cpu().numpy()
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    if labels.shape != (boxes.shape[0],):
        raise ValueError(f"labels must have shape ({boxes.shape[0]},), got {labels.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError("boxes contain NaN or infinite coordinates")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {sorted(set(labels))}")
    in_h, in_w = _size_pair(input_size, "input_size")
    out_h, out_w = _size_pair(output_size, "output_size")

    boxes = boxes.copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, in_w - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, in_h - 1)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, labels = boxes[keep], labels[keep]
    max_objects = config.max_objects
    if len(boxes) > max_objects:
        raise ValueError(
            f"image has {len(boxes)} objects but max_objects={max_objects}; raise max_objects"
        )

    ratio_w, ratio_h = out_w / in_w, out_h / in_h
    heat = {corner: np.zeros((num_classes, out_h, out_w), np.float32) for corner in CORNERS}
    index = {corner: np.zeros(max_objects, np.int64) for corner in CORNERS}
    offset = {corner: np.zeros((max_objects, 2), np.float32) for corner in CORNERS}
    mask = np.zeros(max_objects, bool)

    for slot, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels, strict=True)):
        # Radius from the box size on the output grid, each side rounded up to whole cells
        # (at least one: a side so thin that the product underflows still covers a cell),
        # the radius truncated to an integer.
        box_h = max(1, math.ceil((y2 - y1) * ratio_h))
        box_w = max(1, math.ceil((x2 - x1) * ratio_w))
        radius = gaussian_radius(box_h, box_w, config.gaussian_iou, variant=config.radius_variant)
        radius = int(radius) if config.penalty_reduction else 0  # 0: the corner alone
        for corner, (x, y) in (("tl", (x1, y1)), ("br", (x2, y2))):
            scaled_x, scaled_y = x * ratio_w, y * ratio_h
            cell_x, cell_y = int(scaled_x), int(scaled_y)  # floor: coordinates are >= 0
            draw_gaussian(heat[corner][label], (cell_x, cell_y), radius)
            index[corner][slot] = cell_y * out_w + cell_x  # y * W + x
            offset[corner][slot] = (scaled_x - cell_x, scaled_y - cell_y)  # Eq. (2)
        mask[slot] = True

    targets = {f"{c}_heat": torch.from_numpy(heat[c]) for c in CORNERS}
    targets |= {f"{c}_ind": torch.from_numpy(index[c]) for c in CORNERS}
    targets["mask"] = torch.from_numpy(mask)
    targets |= {f"{c}_off": torch.from_numpy(offset[c]) for c in CORNERS}
    return targets


def collate_targets(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    r"""Stack per-image targets of :func:`build_targets` into ``(B, ...)`` tensors."""
    if not samples:
        raise ValueError("cannot collate an empty list of targets")
    missing = [key for key in TARGET_KEYS if any(key not in sample for sample in samples)]
    if missing:
        raise ValueError(f"targets lack keys {missing}")
    return {key: torch.stack([sample[key] for sample in samples]) for key in TARGET_KEYS}
