"""The reference corner pooling against loops over one line at a time: outputs, the argmax that
receives each gradient (ties and NaN included) and the 16-bit gradient sums."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cornernet_ref.corner_pool import reference
from cornernet_ref.corner_pool.reference import pool

# direction -> (pooled dimension, whether the scan starts at the end of that dimension)
SCANS = {"top": (2, True), "bottom": (2, False), "left": (3, True), "right": (3, False)}


def loop_pool(x: torch.Tensor, grad: torch.Tensor, direction: str, sum_block: int = 0):
    """(pooled, input gradient) by loops: each output is the maximum of the inputs from the
    border to itself; its gradient goes to the first of them (from the border) that holds the
    maximum, a NaN counting as larger than every number. Sums in float32 for 16-bit inputs,
    in scan order; with ``sum_block``, in scan order within each block of positions ``[n
    sum_block, (n + 1) sum_block)``, then the blocks' partial sums one after the other."""
    dim, from_end = SCANS[direction]
    sum_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    moved_shape = x.movedim(dim, -1).shape
    lines = x.movedim(dim, -1).reshape(-1, x.shape[dim])
    grads = grad.movedim(dim, -1).reshape(-1, x.shape[dim]).to(sum_dtype)
    out_lines = torch.empty_like(lines)
    grad_lines = torch.zeros_like(grads)
    length = x.shape[dim]
    for line, line_grad, out, out_grad in zip(lines, grads, out_lines, grad_lines, strict=True):
        scan = list(range(length - 1, -1, -1)) if from_end else list(range(length))
        best = scan[0]
        partials: dict[int, list[list]] = {}  # maximum -> [block, partial sum] in scan order
        for k in scan:
            value, top = float(line[k]), float(line[best])
            if (math.isnan(value) and not math.isnan(top)) or value > top:
                best = k
            out[k] = line[best]
            block = k // sum_block if sum_block else 0
            pieces = partials.setdefault(best, [])
            if pieces and pieces[-1][0] == block:
                pieces[-1][1] = pieces[-1][1] + line_grad[k]
            else:
                pieces.append([block, line_grad[k]])
        for maximum, pieces in partials.items():
            total = pieces[0][1]
            for _, partial in pieces[1:]:
                total = total + partial
            out_grad[maximum] = total

    def back(lines: torch.Tensor) -> torch.Tensor:
        return lines.reshape(moved_shape).movedim(-1, dim)

    return back(out_lines), back(grad_lines).to(x.dtype)


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 5), st.integers(1, 5)),
    direction=st.sampled_from(sorted(SCANS)),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    nan=st.booleans(),
)
def test_reference_pool_equals_loops(seed, shape, direction, dtype, nan) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=g).to(dtype)  # few values: many ties
    if nan:
        x[torch.rand(shape, generator=g) < 0.2] = torch.nan
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    expected, expected_grad = loop_pool(x, grad, direction)
    x.requires_grad_(True)
    pooled = pool(x, direction)
    pooled.backward(grad)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0, equal_nan=True)
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad, expected_grad, rtol=0, atol=0, equal_nan=True)


@given(
    seed=st.integers(0, 2**31 - 1),
    lines=st.integers(1, 3),
    length=st.integers(1, 80),
    sum_block=st.sampled_from([16, 32, 48]),
    direction=st.sampled_from(sorted(SCANS)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    nan=st.booleans(),
)
def test_blocked_sums_equal_loops_over_blocks(
    seed, lines, length, sum_block, direction, dtype, nan
) -> None:
    """Lines longer than ``sum_block``: each run's partial sums per block, added in scan
    order. The maxima are rare (a trend towards the border), so runs cross blocks."""
    g = torch.Generator().manual_seed(seed)
    dim, from_end = SCANS[direction]
    shape = [1, lines, length, length]
    shape[5 - dim] = 1  # one position across the pooled axis
    steps = torch.arange(length, dtype=torch.float64)
    trend = (steps if from_end else -steps).view([-1, 1] if dim == 2 else [1, -1])
    x = ((trend + 8 * torch.rand(shape, generator=g, dtype=torch.float64)) / 4).round()
    if nan:
        x[torch.rand(shape, generator=g) < 0.02] = torch.nan
    x = x.to(dtype)
    grad = (torch.randn(shape, generator=g, dtype=torch.float64) * 1e3).to(dtype)
    expected, expected_grad = loop_pool(x, grad, direction, sum_block)
    x.requires_grad_(True)
    pooled = pool(x, direction, sum_block)
    pooled.backward(grad)
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(x.grad, expected_grad, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("direction", ["right", "top"])
def test_blocks_change_the_sum_where_float32_rounding_says(direction) -> None:
    """One run over 32 positions, its gradients 2^24 then 31 ones. Added one after the
    other, every 1 is lost to rounding (2^24 + 1 is not a float32): 2^24. In blocks of 16,
    the first block's partial sum loses its 15 ones, the second's is 16, and their sum is
    2^24 + 16, which is a float32. With one block of 1024 positions: the official 2^24."""
    line = torch.zeros(32)
    line[0] = 10.0  # the maximum, at the border of a scan from the left
    grad_line = torch.ones(32)
    grad_line[0] = 2.0**24
    if direction == "right":
        x, grad = line.view(1, 1, 1, 32), grad_line.view(1, 1, 1, 32)
    else:  # the same line as a column scanned from the bottom row
        x, grad = line.flip(0).view(1, 1, 32, 1), grad_line.flip(0).view(1, 1, 32, 1)
    border = (0, 0, 0, 0) if direction == "right" else (0, 0, 31, 0)
    sums = {}
    for sum_block in (16, 1024, 0):
        leaf = x.clone().requires_grad_()
        pool(leaf, direction, sum_block).backward(grad)
        sums[sum_block] = leaf.grad[border].item()
        assert torch.count_nonzero(leaf.grad) == 1  # the whole run goes to the maximum
    assert sums == {16: 2.0**24 + 16, 1024: 2.0**24, 0: 2.0**24}


@pytest.mark.parametrize("sum_block", [-16, 8, 17, 1.5, True, False])
def test_a_sum_block_the_kernel_cannot_walk_is_refused(sum_block) -> None:
    with pytest.raises(ValueError, match="sum_block must be 0 or a positive multiple of 16"):
        reference.check_sum_block(sum_block)


@pytest.mark.parametrize("sum_block", [0, 16, 1024])
def test_whole_lines_and_multiples_of_16_are_accepted(sum_block) -> None:
    reference.check_sum_block(sum_block)


@pytest.mark.parametrize("from_end", [True, False])
@pytest.mark.parametrize("length", [1, 15, 16, 17, 31, 32, 33, 48, 50])
@pytest.mark.parametrize("sum_block", [0, 16])
def test_block_starts_are_where_the_block_changes_in_scan_order(length, from_end, sum_block):
    """Against the definition: a row after the border whose block (row // sum_block) is not
    the block of the row met before it; lengths that leave the border alone in its block."""
    rows = reference.scan_positions(length, from_end)
    expected = {
        row
        for previous, row in zip(rows, rows[1:], strict=False)
        if sum_block and row // sum_block != previous // sum_block
    }
    assert reference.block_starts(length, from_end, sum_block) == expected


@pytest.mark.parametrize("direction", sorted(SCANS))
def test_reference_pool_of_an_empty_map(direction) -> None:
    for shape in [(1, 2, 0, 3), (1, 2, 3, 0), (0, 1, 2, 2)]:
        x = torch.zeros(shape, requires_grad=True)
        pooled = pool(x, direction)
        assert pooled.shape == shape
        pooled.sum().backward()
        assert x.grad.shape == shape


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Equal as stored: -0.0 differs from +0.0, and NaN payloads are compared too."""
    width = reference.SAME_WIDTH_INTEGER[x.element_size()]
    return x.shape == y.shape and torch.equal(x.view(width), y.view(width))


@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 9), st.integers(1, 9)),
    direction=st.sampled_from(sorted(SCANS)),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    special=st.sampled_from(["none", "negative zero", "nan", "inf"]),
)
def test_running_max_has_the_bits_of_the_scan(seed, shape, direction, dtype, special) -> None:
    """The forward's pooled map, by doubling or by the scan, is the scan's bit for bit: ties of
    +0.0 and -0.0 keep the first met, a NaN's payload is the first NaN's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=g).to(dtype).relu()  # ReLU-like: many +0.0 ties
    where = torch.rand(shape, generator=g) < 0.3
    if special == "negative zero":
        x[where] = -0.0
    elif special == "nan":  # two payloads, so that the one kept is seen
        x[where] = torch.nan
        x.view(reference.SAME_WIDTH_INTEGER[x.element_size()])[
            where & (torch.rand(shape, generator=g) < 0.5)
        ] -= 1
    elif special == "inf":
        x[where] = torch.inf
    dim, from_end = SCANS[direction]
    scanned, _ = reference.scan_max(reference.rows_along(x, dim), from_end)
    assert same_bits(reference.running_max(x, dim, from_end), reference.rows_along(scanned, dim))


def test_running_max_doubles_a_map_without_nan_or_negative_zero(monkeypatch) -> None:
    """A ReLU map is pooled by the doubling, not by the scan (which would fail here); one
    -0.0 or one NaN sends the map to the scan."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)).relu()
    assert not reference.has_nan_or_negative_zero(x)

    def no_scan(*args):
        raise AssertionError("scanned")

    with monkeypatch.context() as patch:
        patch.setattr(reference, "scan_max", no_scan)
        for dim, from_end in SCANS.values():
            reference.running_max(x, dim, from_end)
    for special in (-0.0, math.nan):
        y = x.clone()
        y[1, 2, 3, 4] = special
        assert reference.has_nan_or_negative_zero(y)
        with monkeypatch.context() as patch, pytest.raises(AssertionError, match="scanned"):
            patch.setattr(reference, "scan_max", no_scan)
            reference.running_max(y, 3, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_negative_zero_test_sees_only_negative_zero(dtype) -> None:
    """The bits of -0.0 read as an integer are the smallest integer; those of the most
    negative numbers, of -inf and of the smallest negative subnormal are not."""
    info = torch.finfo(dtype)
    for value in (-info.max, -math.inf, -info.smallest_normal, -info.tiny / 2**3, 0.0, -1.0):
        assert not reference.has_nan_or_negative_zero(torch.tensor([value, 1.0], dtype=dtype))
    assert reference.has_nan_or_negative_zero(torch.tensor([-0.0, 1.0], dtype=dtype))
