"""Ground-truth targets: the Gaussian radius (official and exact), bumps, layout, collation.

The radius tests never reuse the derivation of :func:`exact_radius`: they move the two
corners of a box on their circles, measure the IoU of the box they span with a plain IoU
function, and search the worst pair by a grid over both angles refined by zooming.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cornernet_ref.targets import (
    TARGET_KEYS,
    TargetConfig,
    build_targets,
    collate_targets,
    draw_gaussian,
    exact_radius,
    gaussian_bump,
    gaussian_radius,
)

sides = st.floats(0.5, 300.0)
overlaps = st.floats(0.1, 0.9)


def moved_iou(width, height, tl_dx, tl_dy, br_dx, br_dy):
    """IoU of the box ``[0, w] x [0, h]`` with the box of its corners moved (numpy arrays)."""
    x1, y1, x2, y2 = tl_dx, tl_dy, width + br_dx, height + br_dy
    inter_w = np.clip(np.minimum(x2, width) - np.maximum(x1, 0), 0, None)
    inter_h = np.clip(np.minimum(y2, height) - np.maximum(y1, 0), 0, None)
    inter = inter_w * inter_h
    return inter / (width * height + (x2 - x1) * (y2 - y1) - inter)


def iou_on_circles(width, height, radius, tl_angle, br_angle):
    return moved_iou(
        width,
        height,
        radius * np.cos(tl_angle),
        radius * np.sin(tl_angle),
        radius * np.cos(br_angle),
        radius * np.sin(br_angle),
    )


def worst_iou_on_circles(width, height, radius):
    """Smallest IoU over both corners on their circles: grid, then zoom on the best cells."""
    angles = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    grid = iou_on_circles(width, height, radius, angles[:, None], angles[None, :])
    best = float(grid.min())
    for flat in np.argsort(grid, axis=None)[:8]:
        tl, br = angles[flat // len(angles)], angles[flat % len(angles)]
        span = angles[1]
        for _ in range(40):
            steps = np.linspace(-span, span, 11)
            local = iou_on_circles(width, height, radius, tl + steps[:, None], br + steps[None, :])
            i, j = np.unravel_index(local.argmin(), local.shape)
            tl, br, span = tl + steps[i], br + steps[j], span / 3
        best = min(best, float(local.min()))
    return best


def solve_decreasing(function, target, low, high):
    """Root of ``function(r) = target`` for a function decreasing on ``[low, high]``."""
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if function(middle) > target else (low, middle)
    return (low + high) / 2


def official_by_cases(width, height, t):
    """The three official cases solved on the IoU itself, each corner moved by (r, r)."""
    side = min(width, height)
    shrink = solve_decreasing(lambda r: moved_iou(width, height, r, r, -r, -r), t, 0, side / 2)
    grow = solve_decreasing(lambda r: moved_iou(width, height, -r, -r, r, r), t, 0, 100 * width)
    shift = solve_decreasing(lambda r: moved_iou(width, height, r, r, r, r), t, 0, side)
    return shrink, grow, shift


# --- The radius -------------------------------------------------------------------------


@pytest.mark.claim("radius-official")
@given(sides, sides, overlaps)
def test_official_radius_solves_the_three_cases(width, height, t):
    shrink, grow, shift = official_by_cases(width, height, t)
    official = gaussian_radius(height, width, t)
    assert official == pytest.approx(min(shrink, grow, shift), rel=1e-9)
    # The shrinking case is always the binding one.
    assert shrink <= grow * (1 + 1e-12) and shrink <= shift * (1 + 1e-12)


@pytest.mark.claim("radius-official")
def test_official_radius_by_hand():
    # 10 x 10, t = 0.7: the shrinking root solves (10 - 2r)^2 = 70.
    assert gaussian_radius(10, 10, 0.7) == pytest.approx((10 - math.sqrt(70)) / 2, rel=1e-12)
    # 3 x 2, t = 0.3: 4r^2 - 10r + 4.2 = 0.
    assert gaussian_radius(3, 2, 0.3) == pytest.approx((10 - math.sqrt(32.8)) / 8, rel=1e-12)


@pytest.mark.claim("radius-official")
@given(sides, sides, overlaps)
def test_official_radius_is_exact_for_moves_along_each_axis(width, height, t):
    """Each corner anywhere in the square of half-side r keeps IoU >= t, and r is the largest."""
    r = gaussian_radius(height, width, t)
    corners = np.array([-1.0, 0.0, 1.0]) * r  # IoU is monotone in each move: extremes suffice
    moves = np.stack(np.meshgrid(corners, corners, corners, corners), -1).reshape(-1, 4)
    assert moved_iou(width, height, *moves.T).min() >= t * (1 - 1e-9)
    r *= 1 + 1e-6
    assert moved_iou(width, height, r, r, -r, -r) < t


@pytest.mark.claim("radius-exact-guarantee")
@settings(max_examples=40)
@given(sides, sides, overlaps)
def test_exact_radius_guarantee_is_tight_on_the_circles(width, height, t):
    r = gaussian_radius(height, width, t, variant="exact")
    assert worst_iou_on_circles(width, height, r) >= t * (1 - 1e-9)
    assert worst_iou_on_circles(width, height, r * (1 + 1e-5)) < t


@pytest.mark.claim("radius-exact-guarantee")
@given(
    sides,
    sides,
    overlaps,
    st.lists(st.floats(0, 2 * math.pi), min_size=2, max_size=2),
    st.lists(st.one_of(st.just(1.0), st.floats(0, 1)), min_size=2, max_size=2),
)
def test_exact_radius_guarantee_inside_the_discs(width, height, t, angles, fractions):
    r = exact_radius(height, width, t)
    (tl_angle, br_angle), (tl_len, br_len) = angles, fractions
    iou = moved_iou(
        width,
        height,
        tl_len * r * math.cos(tl_angle),
        tl_len * r * math.sin(tl_angle),
        br_len * r * math.cos(br_angle),
        br_len * r * math.sin(br_angle),
    )
    assert iou >= t * (1 - 1e-9)


@pytest.mark.claim("radius-exact-guarantee")
def test_exact_radius_of_square_boxes_by_hand():
    # t >= 1/4: the worst move is diagonal, sqrt(2) times the official radius.
    assert exact_radius(10, 10, 0.7) == pytest.approx(math.sqrt(2) * (10 - math.sqrt(70)) / 2)
    # t < 1/4: two worst moves off the diagonal, where X + Y = w and XY = t w^2.
    assert exact_radius(10, 10, 0.1) == pytest.approx(5 * math.sqrt(0.8), rel=1e-12)
    for t in (0.1, 0.25, 0.3, 0.7):  # the square formula is the limit of nearly square boxes
        assert exact_radius(10, 10 * (1 + 1e-9), t) == pytest.approx(exact_radius(10, 10, t))


@given(sides, sides, overlaps, st.floats(0.01, 100))
def test_exact_radius_scales_with_the_box_and_ignores_orientation(width, height, t, scale):
    r = exact_radius(height, width, t)
    assert exact_radius(width, height, t) == r
    assert exact_radius(scale * height, scale * width, t) == pytest.approx(scale * r, rel=1e-12)


@pytest.mark.claim("radius-exact-guarantee")
@given(sides, sides, overlaps)
def test_official_radius_is_between_exact_over_sqrt2_and_exact(width, height, t):
    official = gaussian_radius(height, width, t)
    exact = gaussian_radius(height, width, t, variant="exact")
    assert exact / math.sqrt(2) * (1 - 1e-12) <= official < exact


def test_official_radius_approaches_exact_for_thin_boxes():
    ratios = [gaussian_radius(1, side, 0.3) / exact_radius(1, side, 0.3) for side in (1, 4, 1000)]
    assert ratios[0] == pytest.approx(1 / math.sqrt(2)) and ratios[0] < ratios[1] < ratios[2]
    assert ratios[2] > 0.99


@pytest.mark.parametrize(
    ("height", "width", "t", "variant", "message"),
    [
        *[
            (height, width, t, variant, message)
            for variant in ("official", "exact")
            for height, width, t, message in (
                (0, 5, 0.3, "box size"),
                (5, 0, 0.3, "box size"),
                (-1, 5, 0.3, "box size"),
                (5, -1, 0.3, "box size"),
                (5, 5, 1.0, "min_overlap"),
                (5, 5, 0.0, "min_overlap"),
            )
        ],
        (5, 5, 0.3, "circle", "unknown radius variant"),
    ],
)
def test_radius_rejects_bad_input(height, width, t, variant, message):
    with pytest.raises(ValueError, match=message):
        gaussian_radius(height, width, t, variant=variant)
    if variant == "exact":  # the exact radius checks its input itself
        with pytest.raises(ValueError, match=message):
            exact_radius(height, width, t)


@pytest.mark.parametrize("variant", ["official", "exact"])
def test_radius_accepts_the_edges_of_its_domain(variant):
    """The smallest box sizes and overlaps just inside (0, 1) give a radius, not an error."""
    for height, width, t in (
        (1e-9, 1.0, 0.3),
        (1.0, 1e-9, 0.3),
        (2.0, 3.0, 1e-9),
        (2.0, 3.0, 1 - 1e-9),
    ):
        radius = gaussian_radius(height, width, t, variant=variant)
        assert 0 <= radius < max(height, width) / t


def stable_roots(width, height, t):
    """The shrink, grow and shift roots of the three official quadratics, each written as
    ``2c / (-b -+ sqrt(b^2 - 4ac))`` so that no difference of near-equal terms is taken."""
    area, perimeter = width * height, width + height
    shrink = (1 - t) * area / (perimeter + math.sqrt((width - height) ** 2 + 4 * t * area))
    grow_term = (t * perimeter) ** 2 + 4 * t * (1 - t) * area
    grow = (1 - t) * area / (t * perimeter + math.sqrt(grow_term))
    k = (1 - t) / (1 + t)
    shift = 2 * k * area / (perimeter + math.sqrt(perimeter**2 - 4 * k * area))
    return shrink, grow, shift


@pytest.mark.claim("radius-official")
@given(st.floats(1e-4, 1.0), st.floats(1e-6, 1 - 1e-6))
def test_shrinking_root_is_the_smallest_over_the_whole_domain(aspect, t):
    """Every root is proportional to the box, so a unit long side covers all sizes."""
    width, height = 1.0, aspect
    shrink, grow, shift = stable_roots(width, height, t)
    area, perimeter = width * height, width + height
    for residual in (  # each is a root of its own quadratic
        4 * shrink**2 - 2 * perimeter * shrink + (1 - t) * area,
        4 * t * grow**2 + 2 * t * perimeter * grow - (1 - t) * area,
        shift**2 - perimeter * shift + (1 - t) / (1 + t) * area,
    ):
        assert abs(residual) <= 1e-9 * area
    assert min(shrink, grow, shift) > 0
    assert shrink <= grow * (1 + 1e-12) and shrink <= shift * (1 + 1e-12)
    # With room to spare: the both-out quadratic is still <= 0 at the shrink root with 5t
    # in place of 4t, i.e. (4 + 5t) r <= 2 (1 - t)(w + h).
    assert (4 + 5 * t) * shrink <= 2 * (1 - t) * perimeter * (1 + 1e-12)
    # Both-in moves stop at half the shorter side.
    assert shrink <= height / 2


@pytest.mark.claim("radius-official")
def test_official_radius_of_square_boxes_by_hand():
    # A w x w square: (w - 2r)^2 = t w^2, so r = w (1 - sqrt t) / 2, at any t and any size.
    for side in (0.2, 1.0, 10.0, 500.0):
        for t in (0.01, 0.05, 0.3, 0.9, 0.99):
            expected = side * (1 - math.sqrt(t)) / 2
            assert gaussian_radius(side, side, t) == pytest.approx(expected, rel=1e-12)


@given(sides, sides, overlaps, st.floats(1e-3, 1e3))
def test_official_radius_scales_with_the_box(width, height, t, scale):
    r = gaussian_radius(height, width, t)
    assert gaussian_radius(scale * height, scale * width, t) == pytest.approx(scale * r, rel=1e-9)


@given(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3), st.floats(1e-6, 1 - 1e-6))
def test_radius_is_never_negative(width, height, t):
    """build_targets truncates the radius to an int; a negative radius would need a clamp."""
    for variant in ("official", "exact"):
        assert gaussian_radius(height, width, t, variant=variant) >= 0


def test_exact_radius_of_a_square_agrees_on_both_sides_of_one_quarter():
    # At t = 1/4 the diagonal move and the two off-diagonal moves are both worst:
    # sqrt(2) (1 - sqrt t) = sqrt(1 - 2t) = sqrt(1/2), in floating point too.
    assert math.sqrt(2) * (1 - math.sqrt(0.25)) == math.sqrt(1 - 2 * 0.25)
    assert exact_radius(10, 10, 0.25) == 5 * math.sqrt(0.5)
    below, above = exact_radius(10, 10, 0.25 - 1e-12), exact_radius(10, 10, 0.25 + 1e-12)
    assert below > exact_radius(10, 10, 0.25) > above
    assert below == pytest.approx(above, rel=1e-10)


# --- Bumps ------------------------------------------------------------------------------


@pytest.mark.claim("gaussian-bump")
def test_bump_by_hand():
    bump = gaussian_bump(2)  # diameter 5, sigma = 5 / 6, 2 sigma^2 = 50 / 36
    assert bump.shape == (5, 5) and bump[2, 2] == 1.0 and bump.max() == 1.0
    assert bump[2, 3] == pytest.approx(math.exp(-36 / 50))
    assert bump[0, 0] == pytest.approx(math.exp(-8 * 36 / 50))
    assert bump[1, 4] == pytest.approx(math.exp(-5 * 36 / 50))
    assert gaussian_bump(0).tolist() == [[1.0]]


@pytest.mark.claim("gaussian-bump")
@given(st.integers(0, 30))
def test_bump_is_symmetric_and_decreasing(radius):
    bump = gaussian_bump(radius)
    np.testing.assert_array_equal(bump, bump.T)
    np.testing.assert_array_equal(bump, bump[::-1])
    np.testing.assert_array_equal(bump, bump[:, ::-1])
    row = bump[radius, radius:]
    assert row[0] == 1.0 and (np.diff(row) < 0).all() and row[-1] > 0


@given(st.integers(0, 400))
def test_bump_never_reaches_the_epsilon_threshold(radius):
    """The corner of the window is the smallest value, exp(-36 r^2 / (2r + 1)^2) > exp(-9):
    far above the float64 epsilon below which the official code zeroes a value."""
    bump = gaussian_bump(radius)
    corner = math.exp(-36 * radius**2 / (2 * radius + 1) ** 2)
    assert bump.min() == pytest.approx(corner, rel=1e-12) and corner > math.exp(-9)
    assert bump.min() > np.finfo(np.float64).eps * bump.max()


def brute_force_draw(heatmap, center, radius):
    bump = gaussian_bump(radius)
    out = heatmap.copy()
    for y in range(heatmap.shape[0]):
        for x in range(heatmap.shape[1]):
            dx, dy = x - center[0], y - center[1]
            if abs(dx) <= radius and abs(dy) <= radius:
                out[y, x] = max(out[y, x], bump[dy + radius, dx + radius])
    return out


@pytest.mark.claim("gaussian-bump")
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 11),
    st.integers(0, 11),
    st.integers(0, 8),
    st.integers(0, 2**32 - 1),
)
def test_draw_gaussian_clips_and_takes_the_maximum(height, width, x, y, radius, seed):
    x, y = x % width, y % height
    heatmap = np.random.default_rng(seed).random((height, width)).astype(np.float32)
    expected = brute_force_draw(heatmap, (x, y), radius)
    draw_gaussian(heatmap, (x, y), radius)
    np.testing.assert_array_equal(heatmap, expected)
    assert heatmap[y, x] == 1.0


def test_draw_gaussian_rejects_bad_input():
    heatmap = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="radius"):
        draw_gaussian(heatmap, (1, 1), -1)
    with pytest.raises(ValueError, match="outside"):
        draw_gaussian(heatmap, (6, 1), 1)


@pytest.mark.parametrize("center", [(-1, 1), (6, 1), (1, -1), (1, 4), (-1, -1), (6, 4)])
def test_draw_gaussian_rejects_each_outside_centre(center):
    heatmap = np.zeros((4, 6), np.float32)  # x in [0, 6), y in [0, 4)
    with pytest.raises(ValueError, match="outside"):
        draw_gaussian(heatmap, center, 1)
    assert not heatmap.any()


@pytest.mark.parametrize("center", [(0, 0), (5, 0), (0, 3), (5, 3)])
def test_draw_gaussian_accepts_the_corner_cells(center):
    heatmap = np.zeros((4, 6), np.float32)
    expected = brute_force_draw(heatmap, center, 1)
    draw_gaussian(heatmap, center, 1)
    np.testing.assert_array_equal(heatmap, expected)


# --- Layout -----------------------------------------------------------------------------


@pytest.mark.claim("target-layout")
def test_build_targets_by_hand():
    # Input 64 x 64, output 16 x 16 (ratio 1/4). Box (5, 9)-(61, 58), class 1 of 2.
    targets = build_targets(
        np.array([[5.0, 9.0, 61.0, 58.0]]),
        np.array([1]),
        num_classes=2,
        input_size=64,
        output_size=16,
        config=TargetConfig(max_objects=3),
    )
    # Top-left (1.25, 2.25) -> cell (1, 2); bottom-right (15.25, 14.5) -> cell (15, 14).
    assert targets["tl_ind"].tolist() == [2 * 16 + 1, 0, 0]
    assert targets["br_ind"].tolist() == [14 * 16 + 15, 0, 0]
    assert targets["tl_off"][0].tolist() == [0.25, 0.25]
    assert targets["br_off"][0].tolist() == [0.25, 0.5]
    assert targets["mask"].tolist() == [True, False, False]
    assert targets["tl_heat"][0].abs().sum() == 0 and targets["br_heat"][0].abs().sum() == 0
    # On the output grid the box is ceil(12.25) = 13 high and 14 wide: the official radius
    # solves 4r^2 - 54r + 0.7 * 182 = 0, r = 3.05 -> 3; sigma = 7 / 6, 2 sigma^2 = 98 / 36.
    tl = targets["tl_heat"][1]
    assert tl[2, 1] == 1.0
    assert tl[2, 2].item() == pytest.approx(math.exp(-36 / 98), rel=1e-6)
    assert tl[0, 4].item() == pytest.approx(math.exp(-13 * 36 / 98), rel=1e-6)
    assert tl[5, 1] > 0 and tl[6, 1] == 0 and tl[2, 4] > 0 and tl[2, 5] == 0
    br = targets["br_heat"][1]
    assert br[14, 15] == 1.0 and br[11, 15] > 0 and br[10, 15] == 0 and br[14, 12] > 0
    assert br[14, 11] == 0
    # The exact radius of a nearly square box is about sqrt(2) times larger: 4 cells.
    exact = build_targets(
        np.array([[5.0, 9.0, 61.0, 58.0]]),
        np.array([1]),
        num_classes=2,
        input_size=64,
        output_size=16,
        config=TargetConfig(radius_variant="exact"),
    )
    assert int(exact_radius(13, 14, 0.3)) == 4
    assert exact["tl_heat"][1, 6, 1] > 0 and exact["tl_heat"][1, 7, 1] == 0


@st.composite
def images(draw):
    in_h, in_w = draw(st.integers(8, 96)), draw(st.integers(8, 96))
    out_h, out_w = draw(st.integers(2, 24)), draw(st.integers(2, 24))
    count = draw(st.integers(0, 6))
    coordinate = st.floats(-10, 110, allow_nan=False)
    boxes = np.array(draw(st.lists(st.tuples(*[coordinate] * 4), min_size=count, max_size=count)))
    labels = np.array(draw(st.lists(st.integers(0, 2), min_size=count, max_size=count)), np.int64)
    return boxes.reshape(-1, 4), labels, (in_h, in_w), (out_h, out_w)


@pytest.mark.claim("target-layout")
@given(images())
def test_build_targets_layout(image):
    boxes, labels, (in_h, in_w), (out_h, out_w) = image
    targets = build_targets(
        boxes, labels, num_classes=3, input_size=(in_h, in_w), output_size=(out_h, out_w)
    )
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, in_w - 1)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, in_h - 1)
    valid = [k for k, (x1, y1, x2, y2) in enumerate(clipped) if x2 > x1 and y2 > y1]
    assert targets["mask"].tolist() == [True] * len(valid) + [False] * (128 - len(valid))
    for slot, k in enumerate(valid):  # objects keep their input order
        for corner, (x, y) in (("tl", clipped[k, :2]), ("br", clipped[k, 2:])):
            sx, sy = x * out_w / in_w, y * out_h / in_h
            cx, cy = math.floor(sx), math.floor(sy)
            assert targets[f"{corner}_ind"][slot] == cy * out_w + cx
            np.testing.assert_allclose(
                targets[f"{corner}_off"][slot], [sx - cx, sy - cy], rtol=1e-6, atol=1e-6
            )
            assert targets[f"{corner}_heat"][labels[k], cy, cx] == 1.0
    for corner in ("tl", "br"):
        heat = targets[f"{corner}_heat"]
        assert heat.shape == (3, out_h, out_w) and heat.dtype == torch.float32
        assert heat.min() >= 0 and heat.max() <= 1
        assert (heat == 1).sum() <= len(valid)
        assert targets[f"{corner}_ind"].dtype == torch.int64
        assert targets[f"{corner}_off"].shape == (128, 2)
        assert targets[f"{corner}_off"].dtype == torch.float32
        assert not targets[f"{corner}_off"][len(valid) :].any()
    assert targets["mask"].dtype == torch.bool


@given(images())
def test_without_penalty_reduction_only_the_corners_are_positive(image):
    """``TargetConfig(penalty_reduction=False)`` (the paper's ablation): no bump, the rest
    unchanged."""
    boxes, labels, input_size, output_size = image
    options = dict(num_classes=3, input_size=input_size, output_size=output_size)
    plain = build_targets(boxes, labels, config=TargetConfig(penalty_reduction=False), **options)
    gaussian = build_targets(boxes, labels, **options)
    for key in ("tl_ind", "br_ind", "mask", "tl_off", "br_off"):
        assert torch.equal(plain[key], gaussian[key]), key
    for corner in ("tl", "br"):
        heat = plain[f"{corner}_heat"]
        assert torch.equal(heat, (gaussian[f"{corner}_heat"] == 1).float())
        assert (heat == 1).sum() == heat.sum()  # nothing but zeros and ones


def test_degenerate_boxes_are_skipped_and_order_kept():
    boxes = np.array(
        [
            [10.0, 10.0, 20.0, 30.0],
            [5.0, 5.0, 5.0, 9.0],  # zero width
            [-9.0, 2.0, -1.0, 8.0],  # left of the image: zero width after clipping
            [30.0, 40.0, 10.0, 50.0],  # inverted
            [2.0, 3.0, 6.0, 7.0],
        ]
    )
    targets = build_targets(
        boxes, np.array([0, 1, 1, 1, 1]), num_classes=2, input_size=64, output_size=16
    )
    assert targets["mask"].sum() == 2
    assert targets["tl_ind"][:2].tolist() == [2 * 16 + 2, 0 * 16 + 0]
    assert targets["br_ind"][:2].tolist() == [7 * 16 + 5, 1 * 16 + 1]


def test_numpy_and_torch_inputs_agree():
    boxes = np.array([[3.3, 4.1, 40.7, 50.2], [10.0, 1.5, 20.25, 9.75]], np.float32)
    labels = np.array([2, 0])
    kwargs = dict(
        num_classes=3, input_size=(64, 48), output_size=(16, 12), config=TargetConfig(max_objects=4)
    )
    from_numpy = build_targets(boxes, labels, **kwargs)
    from_torch = build_targets(torch.from_numpy(boxes), torch.from_numpy(labels), **kwargs)
    for key in TARGET_KEYS:
        assert torch.equal(from_numpy[key], from_torch[key]), key


def test_no_objects_gives_empty_targets():
    targets = build_targets(np.zeros((0, 4)), np.zeros(0), num_classes=2, input_size=32,
                            output_size=8, config=TargetConfig(max_objects=5))  # fmt: skip
    assert not targets["mask"].any() and not targets["tl_heat"].any()
    assert targets["tl_heat"].shape == (2, 8, 8)


@pytest.mark.parametrize(
    ("boxes", "labels", "message"),
    [
        (np.zeros((2, 3)), np.zeros(2), "boxes must have shape"),
        (np.zeros((2, 4)), np.zeros(3), "labels must have shape"),
        (np.array([[0, 0, np.nan, 4]]), np.zeros(1), "NaN"),
        (np.array([[0, 0, 4, 4]]), np.array([5]), "labels must lie"),
    ],
)
def test_build_targets_rejects_bad_input(boxes, labels, message):
    with pytest.raises(ValueError, match=message):
        build_targets(boxes, labels, num_classes=2, input_size=32, output_size=8)


def test_too_many_objects_raise():
    boxes = np.tile([[1.0, 1.0, 20.0, 20.0]], (4, 1))
    with pytest.raises(ValueError, match="max_objects=3"):
        build_targets(boxes, np.zeros(4), num_classes=1, input_size=32, output_size=8,
                      config=TargetConfig(max_objects=3))  # fmt: skip
    with pytest.raises(ValueError, match="output_size"):
        build_targets(boxes[:1], np.zeros(1), num_classes=1, input_size=32, output_size=(8, 0))


def targets_with(boxes, labels, num_classes, input_size, output_size, **options):
    """build_targets with the :class:`TargetConfig` fields given as ``options``."""
    return build_targets(
        boxes, labels, num_classes=num_classes, input_size=input_size, output_size=output_size,
        config=TargetConfig(**options),
    )  # fmt: skip


@pytest.mark.claim("gaussian-bump")
@given(images(), st.sampled_from([0.3, 0.7]), st.sampled_from(["official", "exact"]))
def test_heatmaps_equal_bumps_drawn_cell_by_cell(image, t, variant):
    """Each kept box draws, at both corner cells, the bump of the radius of its size on the
    output grid (each side rounded up, the radius truncated), merged by a maximum."""
    boxes, labels, (in_h, in_w), (out_h, out_w) = image
    targets = targets_with(boxes, labels, 3, (in_h, in_w), (out_h, out_w),
                           gaussian_iou=t, radius_variant=variant)  # fmt: skip
    ratio_w, ratio_h = out_w / in_w, out_h / in_h
    expected = {corner: np.zeros((3, out_h, out_w), np.float32) for corner in ("tl", "br")}
    for (x1, y1, x2, y2), label in zip(boxes, labels, strict=True):
        x1, x2 = (min(max(x, 0), in_w - 1) for x in (x1, x2))
        y1, y2 = (min(max(y, 0), in_h - 1) for y in (y1, y2))
        if x2 <= x1 or y2 <= y1:
            continue
        size = math.ceil((y2 - y1) * ratio_h), math.ceil((x2 - x1) * ratio_w)
        radius = int(gaussian_radius(*size, t, variant=variant))
        for corner, (x, y) in (("tl", (x1, y1)), ("br", (x2, y2))):
            cell = math.floor(x * ratio_w), math.floor(y * ratio_h)
            heat = expected[corner][label]
            heat[...] = brute_force_draw(heat, cell, radius)
    for corner in ("tl", "br"):
        np.testing.assert_array_equal(targets[f"{corner}_heat"].numpy(), expected[corner])


@pytest.mark.claim("gaussian-bump")
def test_bump_radius_by_hand_away_from_the_origin():
    # Input 64, output 16. The box (40, 40)-(56, 56) spans cells (10, 10)-(14, 14), 4 x 4
    # on the grid: 4r^2 - 16r + 0.7 * 16 = 0 gives r = 0.90 -> 0, so only the two corner
    # cells are positive. A 5 x 5 box, (40, 40)-(60, 60): 4r^2 - 20r + 17.5 = 0, r = 1.13
    # -> 1, a 3 x 3 bump around each corner.
    small = targets_with(np.array([[40.0, 40.0, 56.0, 56.0]]), np.array([0]), 1, 64, 16)
    for corner, (x, y) in (("tl", (10, 10)), ("br", (14, 14))):
        heat = small[f"{corner}_heat"][0]
        assert heat[y, x] == 1.0 and heat.sum() == 1.0
    large = targets_with(np.array([[40.0, 40.0, 60.0, 60.0]]), np.array([0]), 1, 64, 16)
    for corner, (x, y) in (("tl", (10, 10)), ("br", (15, 15))):
        heat = large[f"{corner}_heat"][0]
        assert heat[y, x] == 1.0 and heat[y, x - 1] == pytest.approx(math.exp(-36 / 18))
        assert (heat > 0).sum() == {"tl": 9, "br": 4}[corner]  # br is clipped at the border
        assert heat[y - 1, x - 1] == pytest.approx(math.exp(-2 * 36 / 18))


def test_one_cell_output_grid():
    # A 1 x 1 output: both corners of any box fall in cell 0, the offsets are the scaled
    # coordinates themselves.
    targets = targets_with(np.array([[0.5, 1.0, 3.0, 2.0]]), np.array([1]), 2, 4, (1, 1),
                           max_objects=2)  # fmt: skip
    assert targets["tl_heat"].tolist() == [[[0.0]], [[1.0]]]
    assert targets["br_heat"].tolist() == [[[0.0]], [[1.0]]]
    assert targets["tl_ind"].tolist() == [0, 0] and targets["br_ind"].tolist() == [0, 0]
    assert targets["tl_off"][0].tolist() == [0.125, 0.25]
    assert targets["br_off"][0].tolist() == [0.75, 0.5]
    assert targets["mask"].tolist() == [True, False]


@pytest.mark.parametrize("empty", [[], np.zeros(0), torch.zeros(0)])
def test_empty_boxes_of_any_shape_give_empty_targets(empty):
    targets = targets_with(empty, empty, 2, 32, 8, max_objects=3)
    assert targets["mask"].tolist() == [False] * 3
    assert targets["tl_heat"].shape == (2, 8, 8) and not targets["br_heat"].any()


@pytest.mark.parametrize("labels", [[-1], [1, -1], [2], [0, 2]], ids=str)
def test_labels_outside_the_classes_are_rejected(labels):
    """Two classes: -1 and 2 are out, alone or next to a valid label."""
    boxes = np.tile([[1.0, 1.0, 20.0, 20.0]], (len(labels), 1))
    with pytest.raises(ValueError, match="labels must lie"):
        targets_with(boxes, np.array(labels), 2, 32, 8)


def test_one_box_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="boxes must have shape"):
        targets_with(np.zeros(1), np.zeros(1), 2, 32, 8)


@pytest.mark.parametrize("box", [[0.0, 0.0, 1.0, 5e-324], [0.0, 0.0, 5e-324, 1.0]])
def test_a_box_below_the_float_resolution_of_the_grid_is_kept(box):
    # A side of 5e-324 (the smallest float) is positive, so the box is kept; on a 4x coarser
    # grid it is less than a cell, which rounds up to one: radius 0, both corners in cell 0.
    targets = targets_with(np.array([box]), np.array([0]), 1, 8, 2)
    assert targets["mask"][0] and targets["tl_heat"][0, 0, 0] == 1.0


def radius_of(side: int, other: int) -> int:
    return int(gaussian_radius(side, other, 0.3))


@pytest.mark.parametrize("axis", ["height", "width"])
def test_each_side_is_measured_in_whole_cells_rounded_up(axis):
    """A side of 10.25 cells is measured as 11, not 10: the bump drawn is that of 11, for a
    box whose other side is chosen so that 10 would give another radius."""
    other = next(o for o in range(1, 60) if radius_of(11, o) != radius_of(10, o))
    ratio = 4  # input pixels per output cell
    side_px, other_px = 10.25 * ratio, other * ratio
    height, width = (side_px, other_px) if axis == "height" else (other_px, side_px)
    grid = 2 * (other + 12)  # room for the bump around the top-left corner at (12, 12)
    box = np.array([[12 * ratio, 12 * ratio, 12 * ratio + width, 12 * ratio + height]])
    heat = targets_with(box, np.array([0]), 1, grid * ratio, grid)["tl_heat"][0].numpy()
    expected = np.zeros((grid, grid), np.float32)
    draw_gaussian(expected, (12, 12), radius_of(11, other))
    np.testing.assert_array_equal(heat, expected)


@settings(max_examples=300)
@given(sides, sides, overlaps, st.sampled_from(["official", "exact"]))
def test_radius_is_below_half_the_shorter_side(height, width, t, variant):
    """Both corners moving in by r must leave a box: r < min(h, w) / 2. So a side of 1 or 2
    cells always gets the radius 0 once truncated."""
    assert gaussian_radius(height, width, t, variant=variant) < min(height, width) / 2


def test_exactly_max_objects_fit():
    boxes = np.array([[1.0, 1.0, 20.0, 20.0], [2.0, 3.0, 9.0, 30.0], [5.0, 5.0, 6.0, 6.0]])
    targets = targets_with(boxes, np.zeros(3), 1, 32, 8, max_objects=3)
    assert targets["mask"].tolist() == [True, True, True]
    assert targets["tl_ind"].tolist() == [0 * 8 + 0, 0 * 8 + 0, 1 * 8 + 1]
    assert targets["br_ind"].tolist() == [5 * 8 + 5, 7 * 8 + 2, 1 * 8 + 1]


def test_collate_stacks_every_key():
    samples = [
        build_targets(np.array([[1.0, 2.0, 20.0, 30.0]]), np.array([k]), num_classes=2,
                      input_size=32, output_size=8, config=TargetConfig(max_objects=3))
        for k in (0, 1)
    ]  # fmt: skip
    batch = collate_targets(samples)
    assert set(batch) == set(TARGET_KEYS)
    for key in TARGET_KEYS:
        assert batch[key].shape == (2, *samples[0][key].shape)
        for index, sample in enumerate(samples):
            assert torch.equal(batch[key][index], sample[key])
    with pytest.raises(ValueError, match="empty"):
        collate_targets([])
    with pytest.raises(ValueError, match="mask"):
        collate_targets([{k: v for k, v in samples[0].items() if k != "mask"}])


def test_target_config_defaults_are_the_official_ones():
    assert TargetConfig() == TargetConfig(
        gaussian_iou=0.3, radius_variant="official", penalty_reduction=True, max_objects=128
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gaussian_iou": 0.0}, r"gaussian_iou must lie in \(0, 1\), got 0.0"),
        ({"gaussian_iou": 1.0}, r"gaussian_iou must lie in \(0, 1\), got 1.0"),
        ({"radius_variant": "round"}, r"radius_variant must be one of .*'round'"),
        ({"max_objects": 0}, "max_objects must be >= 1, got 0"),
    ],
)
def test_target_config_refuses_each_field_out_of_range(fields, message):
    with pytest.raises(ValueError, match=message):
        TargetConfig(**fields)


@pytest.mark.parametrize("fields", [{"gaussian_iou": 1e-6}, {"gaussian_iou": 1 - 1e-6},
                                    {"radius_variant": "exact"}, {"max_objects": 1}])  # fmt: skip
def test_target_config_accepts_the_edges_of_each_range(fields):
    assert getattr(TargetConfig(**fields), next(iter(fields))) == next(iter(fields.values()))


@given(overlap=overlaps)
def test_the_bump_radius_follows_the_configured_overlap(overlap):
    """The same box as by hand (13 x 14 cells on the grid, top-left corner in cell (1, 2)):
    the bump reaches ``int(gaussian_radius(13, 14, t))`` cells either side, clipped."""
    config = TargetConfig(gaussian_iou=overlap)
    targets = build_targets(np.array([[5.0, 9.0, 61.0, 58.0]]), np.array([0]), num_classes=1,
                            input_size=64, output_size=16, config=config)  # fmt: skip
    radius = int(gaussian_radius(13, 14, overlap))
    row = targets["tl_heat"][0, 2]
    assert int((row > 0).sum()) == min(1, radius) + 1 + min(radius, 14)


def test_the_target_configuration_is_frozen():
    """It is the default argument of build_targets: a mutable one would carry a change made
    in one call into every later call."""
    config = TargetConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gaussian_iou = 0.5  # type: ignore[misc]
    assert TargetConfig().gaussian_iou == 0.3
