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


def loop_pool(x: torch.Tensor, grad: torch.Tensor, direction: str):
    """(pooled, input gradient) by loops: each output is the maximum of the inputs from the
    border to itself; its gradient goes to the first of them (from the border) that holds the
    maximum, a NaN counting as larger than every number. Sums in float32 for 16-bit inputs."""
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
        for k in scan:
            value, top = float(line[k]), float(line[best])
            if (math.isnan(value) and not math.isnan(top)) or value > top:
                best = k
            out[k] = line[best]
            out_grad[best] += line_grad[k]

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
