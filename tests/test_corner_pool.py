"""Corner pooling (paper §3.4): forward semantics, the official tie rule of the gradient, the
difference with ``torch.cummax``, layouts and sizes, errors, and the fused CUDA kernel.

The expected values are computed independently of the implementation: the forward by an
explicit maximum over slices, the gradient by a plain Python loop that applies the rule
("the first maximum met from the border receives the gradient"). The equivalence tests run
for every backend: ``reference`` everywhere; ``emulated`` everywhere, the CUDA kernel's
source built as host C++ and run on the CPU (``kernel_emulation.py``) by the package's
corner-pool operator, registered again in a namespace of the tests with that build as its
CPU implementation; ``cuda`` on a machine with a GPU (marked ``cuda``, skipped otherwise).
Both kernel backends must also equal the reference bit for bit.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from helpers import emulated_kernels, emulated_ops
from hypothesis import given
from hypothesis import strategies as st

from cornernet_ref.corner_pool import CornerPool, corner_pool, fused, pool

HAS_CUDA = torch.cuda.is_available()
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
KERNELS = ["emulated", pytest.param("cuda", marks=needs_cuda)]
BACKENDS = ["reference", *KERNELS]
DIRECTION_NAMES = ("top", "bottom", "left", "right")
CORNER_DIRECTIONS = {"tl": ("top", "left"), "br": ("bottom", "right")}
NAN = float("nan")


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def pool_with(backend: str, x: torch.Tensor, direction: str) -> torch.Tensor:
    """``pool(x, direction)`` with ``backend`` (``"emulated"``: the kernel, on the CPU)."""
    if backend == "emulated":
        return emulated_ops().pool(x, direction)
    return pool(x, direction, backend=backend)


def corner_pool_with(backend: str, a: torch.Tensor, b: torch.Tensor, corner: str) -> torch.Tensor:
    """``corner_pool(a, b, corner)`` with ``backend``, as :func:`pool_with`."""
    if backend == "emulated":
        return emulated_ops().corner_pool(a, b, corner)
    return corner_pool(a, b, corner, backend=backend)


# --- Independent expectations -------------------------------------------------------------


def first_met_maximum(cells: list[torch.Tensor]) -> torch.Tensor:
    """The maximum of ``cells`` (taken in scan order) by the rule: a cell replaces the one
    kept only if strictly greater, NaN above every number; so among equal values (``0.0``
    and ``-0.0`` too) the first met is kept. ``amax`` would pick one of them unspecified."""
    best = cells[0]
    for cell in cells[1:]:
        moved = (cell > best) | (cell.isnan() & ~best.isnan())
        best = torch.where(moved, cell, best)
    return best


def brute_force_pool(x: torch.Tensor, direction: str) -> torch.Tensor:
    """The maximum over the slice each output looks at, taken slice by slice."""
    height, width = x.shape[2:]
    if direction == "top":  # rows i..H-1, met from the bottom
        rows = [[x[:, :, k] for k in range(height - 1, i - 1, -1)] for i in range(height)]
        return torch.stack([first_met_maximum(cells) for cells in rows], dim=2)
    if direction == "bottom":
        rows = [[x[:, :, k] for k in range(i + 1)] for i in range(height)]
        return torch.stack([first_met_maximum(cells) for cells in rows], dim=2)
    if direction == "left":
        columns = [[x[..., k] for k in range(width - 1, j - 1, -1)] for j in range(width)]
        return torch.stack([first_met_maximum(cells) for cells in columns], dim=3)
    columns = [[x[..., k] for k in range(j + 1)] for j in range(width)]
    return torch.stack([first_met_maximum(cells) for cells in columns], dim=3)


def scan_line(direction: str, i: int, j: int, height: int, width: int) -> list[tuple[int, int]]:
    """The cells output (i, j) looks at, in scan order: from the border towards (i, j)."""
    if direction == "top":
        return [(k, j) for k in range(height - 1, i - 1, -1)]
    if direction == "bottom":
        return [(k, j) for k in range(i + 1)]
    if direction == "left":
        return [(i, k) for k in range(width - 1, j - 1, -1)]
    return [(i, k) for k in range(j + 1)]


def is_greater(value: float, best: float, ties_to_last: bool) -> bool:
    """The official rule (strictly greater, NaN above numbers) or cummax's (greater or equal)."""
    if ties_to_last:
        return value >= best
    return value > best or (math.isnan(value) and not math.isnan(best))


def rule_gradient(
    x: torch.Tensor, grad: torch.Tensor, direction: str, ties_to_last: bool = False
) -> torch.Tensor:
    """The gradient by the rule, one output at a time, in plain Python.

    For every output, scan its line from the border keeping the maximum met first (or, with
    ``ties_to_last``, the last one, as ``torch.cummax`` does), and add the output's gradient
    to that position. The additions go in scan order, in float32 (the accumulation type of
    float32, float16 and bfloat16), and the sums are rounded once to the dtype of ``x``.
    """
    values = x.double().tolist()
    grads = grad.float().numpy()
    batch, channels, height, width = x.shape
    expected = np.zeros((batch, channels, height, width), dtype=np.float32)
    for n in range(batch):
        for c in range(channels):
            plane, plane_grad = values[n][c], grads[n, c]
            for i in range(height):
                for j in range(width):
                    line = scan_line(direction, i, j, height, width)
                    at = line[0]
                    for cell in line[1:]:
                        if is_greater(plane[cell[0]][cell[1]], plane[at[0]][at[1]], ties_to_last):
                            at = cell
                    expected[n, c, at[0], at[1]] += plane_grad[i, j]
    return torch.from_numpy(expected).to(x.dtype)


def run_ordered_gradient(x: torch.Tensor, grad: torch.Tensor, direction: str) -> torch.Tensor:
    """The gradient by runs, with the additions in the order the implementation promises.

    The outputs that share a maximum are consecutive in scan order (a run); the maximum
    receives ``((g_first + g_second) + g_third) + ...`` in float32, rounded once. Unlike
    :func:`rule_gradient`, whose loops visit outputs in memory order, this fixes the order of
    the additions, so with non-integer gradients it pins the result bit for bit.
    """
    values = x.double().tolist()
    grads = grad.float().numpy()
    batch, channels, height, width = x.shape
    expected = np.zeros((batch, channels, height, width), dtype=np.float32)
    vertical = direction in ("top", "bottom")
    for n in range(batch):
        for c in range(channels):
            for line_index in range(width if vertical else height):
                # The whole line: the scan of the output farthest from the border.
                if vertical:
                    end = (0 if direction == "top" else height - 1, line_index)
                else:
                    end = (line_index, 0 if direction == "left" else width - 1)
                line = scan_line(direction, *end, height, width)
                at, total = line[0], np.float32(0)
                for step, cell in enumerate(line):
                    value = values[n][c][cell[0]][cell[1]]
                    if step == 0 or is_greater(value, values[n][c][at[0]][at[1]], False):
                        if step > 0:
                            expected[n, c, at[0], at[1]] = total
                        at, total = cell, grads[n, c, cell[0], cell[1]]
                    else:
                        total = np.float32(total + grads[n, c, cell[0], cell[1]])
                expected[n, c, at[0], at[1]] = total
    return torch.from_numpy(expected).to(x.dtype)


def pool_with_grad(
    x: torch.Tensor, direction: str, grad: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().clone().requires_grad_()
    out = pool_with(backend, leaf, direction)
    out.backward(grad)
    return out.detach(), leaf.grad


def same_bits(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal bit for bit (signed zeros told apart); NaN only where NaN is expected."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    actual, expected = actual.cpu(), expected.cpu()
    nan = expected.isnan()
    if not torch.equal(actual.isnan(), nan):
        return False
    integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    return torch.equal(actual[~nan].view(integer), expected[~nan].view(integer))


# --- Strategies ---------------------------------------------------------------------------


@st.composite
def maps(draw, max_side: int = 7, count: int = 1, ties: bool | None = None):
    """``count`` float32 ``(B, C, H, W)`` maps of one shape: small integers (ties) or floats."""
    shape = (
        draw(st.integers(0, 2)),
        draw(st.integers(1, 2)),
        draw(st.integers(1, max_side)),
        draw(st.integers(1, max_side)),
    )
    numel = math.prod(shape)
    tied = draw(st.booleans()) if ties is None else ties
    element = (
        st.integers(-3, 3).map(float)
        if tied
        else st.floats(-100, 100, allow_nan=False, width=32, allow_subnormal=False)
    )
    tensors = [
        torch.tensor(draw(st.lists(element, min_size=numel, max_size=numel)), dtype=torch.float32)
        for _ in range(count)
    ]
    return [t.view(shape) for t in tensors]


def integer_grad(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Integer-valued output gradients: their sums are exact in any order."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, shape, generator=generator).float()


# --- Forward semantics --------------------------------------------------------------------


@pytest.mark.claim("pool-semantics")
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=maps(), direction=st.sampled_from(DIRECTION_NAMES))
def test_pool_is_the_maximum_of_the_slice(backend, data, direction):
    (x,) = data
    x = x.to(device_of(backend))
    assert same_bits(pool_with(backend, x, direction), brute_force_pool(x, direction))


@pytest.mark.claim("pool-semantics")
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=maps(count=2), corner=st.sampled_from(("tl", "br")))
def test_corner_pool_adds_the_two_directions(backend, data, corner):
    a, b = (t.to(device_of(backend)) for t in data)
    vertical, horizontal = CORNER_DIRECTIONS[corner]
    expected = brute_force_pool(a, vertical) + brute_force_pool(b, horizontal)
    assert same_bits(corner_pool_with(backend, a, b, corner), expected)


@pytest.mark.claim("pool-semantics")
@pytest.mark.parametrize("backend", BACKENDS)
def test_top_left_by_hand(backend):
    """Below-maxima plus right-maxima, worked out by hand on a 3 x 3 map (a = b)."""
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [2.0, 0.0, 1.0]], device=device_of(backend))
    x = x.view(1, 1, 3, 3)
    top = torch.tensor([[2.0, 3.0, 2.0], [2.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    left = torch.tensor([[2.0, 2.0, 2.0], [3.0, 3.0, 0.0], [2.0, 1.0, 1.0]])
    assert torch.equal(pool_with(backend, x, "top").cpu().view(3, 3), top)
    assert torch.equal(pool_with(backend, x, "left").cpu().view(3, 3), left)
    assert torch.equal(corner_pool_with(backend, x, x, "tl").cpu().view(3, 3), top + left)


# --- The tie rule of the gradient ---------------------------------------------------------


@pytest.mark.claim("pool-tie-rule")
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=maps(ties=True), direction=st.sampled_from(DIRECTION_NAMES), seed=st.integers(0, 99))
def test_gradient_goes_to_the_first_maximum_met(backend, data, direction, seed):
    (x,) = data
    grad = integer_grad(x.shape, seed)
    device = device_of(backend)
    _, actual = pool_with_grad(x.to(device), direction, grad.to(device), backend)
    assert same_bits(actual, rule_gradient(x, grad, direction))


@pytest.mark.claim("pool-tie-rule")
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=maps(count=2, ties=True), corner=st.sampled_from(("tl", "br")), seed=st.integers(0, 99))
def test_corner_pool_gradient_follows_the_rule_in_both_maps(backend, data, corner, seed):
    a, b = data
    grad = integer_grad(a.shape, seed)
    device = device_of(backend)
    a_leaf, b_leaf = (t.to(device).requires_grad_() for t in (a, b))
    corner_pool_with(backend, a_leaf, b_leaf, corner).backward(grad.to(device))
    vertical, horizontal = CORNER_DIRECTIONS[corner]
    assert same_bits(a_leaf.grad, rule_gradient(a, grad, vertical))
    assert same_bits(b_leaf.grad, rule_gradient(b, grad, horizontal))


@pytest.mark.claim("pool-tie-rule")
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=maps(ties=True), direction=st.sampled_from(DIRECTION_NAMES), seed=st.integers(0, 99))
def test_gradient_sums_are_added_in_scan_order(backend, data, direction, seed):
    """Non-integer gradients: the float32 sums must come out of the promised order exactly."""
    (x,) = data
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    device = device_of(backend)
    _, actual = pool_with_grad(x.to(device), direction, grad.to(device), backend)
    assert same_bits(actual, run_ordered_gradient(x, grad, direction))


@pytest.mark.claim("pool-tie-rule")
@pytest.mark.parametrize("backend", BACKENDS)
def test_tie_rule_by_hand(backend):
    """A column 1, 3, 3, 2, 3 (top to bottom) and an output gradient of ones.

    ``bottom`` scans from the top: the 3 in row 1 is met first and stays the maximum (the
    later 3s are not greater), so it receives the gradients of rows 1-4. ``top`` scans from
    the bottom: the 3 in row 4 is met first and receives all five.
    """
    x = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0], device=device_of(backend)).view(1, 1, 5, 1)
    ones = torch.ones_like(x)
    _, bottom = pool_with_grad(x, "bottom", ones, backend)
    _, top = pool_with_grad(x, "top", ones, backend)
    assert bottom.flatten().tolist() == [1.0, 4.0, 0.0, 0.0, 0.0]
    assert top.flatten().tolist() == [0.0, 0.0, 0.0, 0.0, 5.0]
    _, right = pool_with_grad(x.view(1, 1, 1, 5), "right", ones.view(1, 1, 1, 5), backend)
    assert right.flatten().tolist() == [1.0, 4.0, 0.0, 0.0, 0.0]


@pytest.mark.claim("pool-tie-rule")
@pytest.mark.parametrize("backend", BACKENDS)
def test_signed_zeros_keep_the_first_met(backend):
    """``0.0`` and ``-0.0`` are equal, so the first met stays the maximum, sign included: a
    column 0.0, -0.0 pools to 0.0, 0.0 from the top and to -0.0, -0.0 from the bottom."""
    x = torch.tensor([0.0, -0.0], device=device_of(backend)).view(1, 1, 2, 1)
    for direction, sign in (("bottom", 1.0), ("top", -1.0)):
        out = pool_with(backend, x, direction).cpu().flatten()
        assert out.eq(0).all() and torch.equal(torch.ones(2).copysign(out), torch.full((2,), sign))
        assert same_bits(out.view(x.shape), brute_force_pool(x.cpu(), direction))


@pytest.mark.claim("pool-tie-rule")
def test_cummax_gives_ties_to_the_nearest_maximum():
    """``torch.cummax`` pools the same values, but on ties its index (and so the gradient)
    moves to the latest equal value, the one nearest the output; see the column of
    :func:`test_tie_rule_by_hand`."""
    x = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]).view(1, 1, 5, 1)
    values, indices = x.cummax(2)
    assert indices.flatten().tolist() == [0, 1, 2, 2, 4]
    leaf = x.clone().requires_grad_()
    leaf.cummax(2).values.sum().backward()
    assert leaf.grad.flatten().tolist() == [1.0, 1.0, 2.0, 0.0, 1.0]
    _, official = pool_with_grad(x, "bottom", torch.ones_like(x), "reference")
    assert official.flatten().tolist() == [1.0, 4.0, 0.0, 0.0, 0.0]
    assert torch.equal(values, pool(x, "bottom"))


def cummax_pool(x: torch.Tensor, direction: str) -> torch.Tensor:
    """Directional pooling with ``torch.cummax`` on the flipped tensor, as it is often done."""
    dim, flip = {"top": (2, True), "bottom": (2, False), "left": (3, True), "right": (3, False)}[
        direction
    ]
    if flip:
        return x.flip(dim).cummax(dim).values.flip(dim)
    return x.cummax(dim).values


@pytest.mark.claim("pool-tie-rule")
@given(data=maps(ties=True), direction=st.sampled_from(DIRECTION_NAMES), seed=st.integers(0, 99))
def test_cummax_pool_equals_forward_but_routes_ties_to_the_last(data, direction, seed):
    (x,) = data
    grad = integer_grad(x.shape, seed)
    leaf = x.clone().requires_grad_()
    values = cummax_pool(leaf, direction)
    values.backward(grad)
    assert torch.equal(values.detach(), pool(x, direction))
    assert same_bits(leaf.grad, rule_gradient(x, grad, direction, ties_to_last=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("corner", ["tl", "br"])
def test_gradcheck_in_float64(backend, corner):
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 2, 2, 5, 6, generator=generator, dtype=torch.float64)  # no ties
    device = device_of(backend)
    a, b = (t.to(device).requires_grad_() for t in (a, b))
    # The kernels (emulated: a few threads per launch; CUDA: a launch and a sync per column
    # of the Jacobian, 20 s in all on an H200) get the fast (random projection) check; the
    # tests comparing them bit for bit with the reference cover the rest.
    fast = backend != "reference"
    check = torch.autograd.gradcheck
    assert check(lambda a, b: corner_pool_with(backend, a, b, corner), (a, b), fast_mode=fast)
    for direction in CORNER_DIRECTIONS[corner]:
        assert check(lambda x, d=direction: pool_with(backend, x, d), (a,), fast_mode=fast)


# --- Sizes, layouts, dtypes, NaN ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 3, 1, 5), (2, 3, 5, 1), (1, 1, 1, 1), (0, 3, 4, 4)])
@pytest.mark.parametrize("direction", DIRECTION_NAMES)
def test_thin_and_empty_maps(backend, shape, direction):
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, shape, generator=generator).float()
    grad = integer_grad(shape, 2)
    device = device_of(backend)
    out, actual = pool_with_grad(x.to(device), direction, grad.to(device), backend)
    assert out.shape == x.shape
    assert same_bits(out, brute_force_pool(x, direction) if x.numel() else x)
    assert same_bits(actual, rule_gradient(x, grad, direction))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda t: t.contiguous(memory_format=torch.channels_last), id="channels_last"),
        pytest.param(lambda t: t.transpose(2, 3).contiguous().transpose(2, 3), id="transposed"),
        pytest.param(lambda t: torch.stack([t, t], dim=-1)[..., 0], id="strided"),
    ],
)
def test_any_layout_gives_the_same_bits(backend, layout):
    generator = torch.Generator().manual_seed(3)
    a, b, grad = torch.randint(-2, 3, (3, 2, 3, 5, 7), generator=generator).float()
    grad = grad + 0.25 * torch.randn(grad.shape, generator=generator)
    device = device_of(backend)
    results = []
    for transform in (lambda t: t.contiguous(), layout):
        a_in, b_in = (transform(t.to(device)).detach().requires_grad_() for t in (a, b))
        out = corner_pool_with(backend, a_in, b_in, "tl")
        out.backward(transform(grad.to(device)))
        assert out.is_contiguous()
        results.append((out.detach(), a_in.grad, b_in.grad))
    for contiguous, other in zip(*results, strict=True):
        assert same_bits(other, contiguous)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_round_once_like_float32(backend, dtype):
    """Maxima are exact in any dtype; the corner sum is a + b in the dtype (float32 sum
    rounded once), the gradient sums are float32 sums rounded once."""
    generator = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 2, 3, 9, 11, generator=generator).to(dtype)
    a[..., ::3, :] = b[..., ::3, :] = 0  # ties, as after a ReLU
    grad = torch.randn(a.shape, generator=generator).to(dtype)
    device = device_of(backend)
    a_in, b_in = (t.to(device).requires_grad_() for t in (a, b))
    out = corner_pool_with(backend, a_in, b_in, "br")
    out.backward(grad.to(device))
    expected = (brute_force_pool(a.float(), "bottom") + brute_force_pool(b.float(), "right")).to(
        dtype
    )
    assert same_bits(out.detach(), expected)
    assert same_bits(a_in.grad, run_ordered_gradient(a, grad, "bottom"))
    assert same_bits(b_in.grad, run_ordered_gradient(b, grad, "right"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates_and_the_first_nan_gets_the_gradient(backend):
    """A NaN counts as larger than every number: it propagates to every output after it in
    the scan, and the first NaN met receives the gradient of those outputs."""
    x = torch.tensor([1.0, NAN, 5.0, NAN, 7.0], device=device_of(backend)).view(1, 1, 5, 1)
    out, grad = pool_with_grad(x, "bottom", torch.ones_like(x), backend)
    assert out.flatten()[0] == 1.0 and out.flatten()[1:].isnan().all()
    assert grad.flatten().tolist() == [1.0, 4.0, 0.0, 0.0, 0.0]
    out, grad = pool_with_grad(x, "top", torch.ones_like(x), backend)
    assert out.flatten()[4] == 7.0 and out.flatten()[:4].isnan().all()
    assert grad.flatten().tolist() == [0.0, 0.0, 0.0, 4.0, 1.0]


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=maps(max_side=5), direction=st.sampled_from(DIRECTION_NAMES), seed=st.integers(0, 99))
def test_nan_anywhere_matches_the_rule(backend, data, direction, seed):
    (x,) = data
    generator = torch.Generator().manual_seed(seed)
    x = x.masked_fill(torch.rand(x.shape, generator=generator) < 0.2, NAN)
    grad = integer_grad(x.shape, seed)
    device = device_of(backend)
    out, actual = pool_with_grad(x.to(device), direction, grad.to(device), backend)
    assert same_bits(out, brute_force_pool(x, direction) if x.numel() else x)
    assert same_bits(actual, rule_gradient(x, grad, direction))


# --- API and errors -----------------------------------------------------------------------


def test_corner_pool_module_has_no_parameters_and_matches_the_function():
    module = CornerPool("br")
    assert list(module.parameters()) == [] and module.state_dict() == {}
    a, b = torch.randn(2, 1, 3, 4, 5)
    assert torch.equal(module(a, b), corner_pool(a, b, "br"))
    assert "br" in repr(module)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: pool(x, "up"), "'up'"),
        (lambda x: corner_pool(x, x, "tr"), "'tr'"),
        (lambda x: CornerPool("bl"), "'bl'"),
        (lambda x: CornerPool("tl", backend="triton"), "'triton'"),
        (lambda x: pool(x, "top", backend="numpy"), "'numpy'"),
        (lambda x: pool(x[0], "top"), "(3, 4, 5)"),
        (lambda x: pool(x.long(), "top"), "torch.int64"),
        (lambda x: corner_pool(x, x[:, :, :3], "tl"), "(1, 3, 3, 5)"),
        (lambda x: corner_pool(x, x.double(), "tl"), "torch.float64"),
        (lambda x: pool(x, "top", backend="cuda"), "needs CUDA tensors"),
    ],
)
def test_bad_input_names_the_problem(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(torch.zeros(1, 3, 4, 5))


@pytest.mark.skipif(HAS_CUDA, reason="checks the message shown without a GPU")
def test_kernel_without_a_gpu_says_so():
    with pytest.raises(RuntimeError, match="needs a GPU"):
        fused.load_extension()
    x = torch.randn(1, 2, 3, 4)
    assert torch.equal(pool(x, "left"), pool(x, "left", backend="reference"))  # auto on CPU


def test_the_extension_compiles_every_dtype_of_the_kernel_once():
    """The extension compiles corner_pool.cu once per dtype (CORNER_POOL_ONLY): its sources
    must instantiate each dtype the whole file does, and no other, each once; a dtype
    missing here would fail only when the extension is linked, on a GPU."""
    kernel = (fused.SOURCE_DIR / "corner_pool.cu").read_text()
    every = kernel[kernel.index("#else") : kernel.index("#endif", kernel.index("#else"))]
    whole = re.findall(r"CORNER_POOL_INSTANTIATE\(([\w:]+)\)", every)
    one_each = [
        re.search(r"#define CORNER_POOL_ONLY ([\w:]+)", path.read_text()).group(1)
        for path in fused.SOURCES
        if path.suffix == ".cu"
    ]
    assert sorted(one_each) == sorted(whole) and len(whole) == 4


# --- The kernel against the reference ----------------------------------------------------

# Shapes that reach every path of the kernel: a row as wide as one 128-column chunk (the
# training shape), one short of it and one past it; several chunks (the row carry between
# them); widths that are and are not multiples of 4 (vector and single loads and stores); 31,
# 32, 33, 64 and 65 rows and columns (the 32-lane groups); single rows and columns; rows
# narrower than a vector, packed several to a vector (a column of 300 float32 too).
KERNEL_SHAPES = [
    (2, 3, 5, 7),
    (1, 2, 32, 32),
    (1, 1, 31, 33),
    (1, 1, 33, 31),
    (1, 1, 64, 65),
    (1, 1, 65, 64),
    (2, 2, 33, 65),
    (1, 3, 70, 100),
    (1, 2, 9, 127),
    (5, 1, 9, 128),
    (1, 2, 9, 129),
    (1, 1, 1, 300),
    (1, 1, 300, 1),
    (1, 2, 40, 520),
    (2, 3, 16, 2),
    (1, 2, 64, 4),
]


def kernel_and_reference(
    backend: str, dtype: torch.dtype, shape: tuple[int, ...], corner: str, seed: int
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(out, grad_a, grad_b) of the kernel backend and of the reference on the CPU, on
    ReLU-like maps full of ties and a random output gradient."""
    generator = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(2, *shape, generator=generator) * 4).round().clamp(min=0).to(dtype)
    grad = torch.randn(shape, generator=generator).to(dtype)
    results = {}
    for name, device in (("reference", "cpu"), (backend, device_of(backend))):
        # Fresh leaves for each run: on the CPU, .to(device) would return a itself, and the
        # second backward would add into the first one's gradient.
        a_in, b_in = (t.to(device, copy=True).requires_grad_() for t in (a, b))
        out = corner_pool_with(name, a_in, b_in, corner)
        out.backward(grad.to(device))
        results[name] = (out.detach(), a_in.grad, b_in.grad)
    return results[backend], results["reference"]


@pytest.mark.claim("pool-cuda-equivalence")
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=str)
@pytest.mark.parametrize("corner", ["tl", "br"])
def test_kernel_equals_the_reference_bit_for_bit(backend, dtype, shape, corner):
    """Forward and both gradients, with many ties (a ReLU-like map with repeated values),
    against the reference run on the CPU in the same dtype."""
    kernel, reference = kernel_and_reference(backend, dtype, shape, corner, seed=5)
    for actual, expected in zip(kernel, reference, strict=True):
        assert same_bits(actual, expected)


@pytest.mark.claim("pool-cuda-equivalence")
@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("direction", DIRECTION_NAMES)
def test_kernel_single_direction_equals_the_reference_and_is_deterministic(backend, direction):
    generator = torch.Generator().manual_seed(6)
    x = torch.randint(0, 3, (2, 3, 37, 260), generator=generator).float()  # 3 chunks
    grad = torch.randn(x.shape, generator=generator)
    expected = pool_with_grad(x, direction, grad, "reference")
    device = device_of(backend)
    for _ in range(2):
        actual = pool_with_grad(x.to(device), direction, grad.to(device), backend)
        assert all(same_bits(a, e) for a, e in zip(actual, expected, strict=True))
    if backend == "cuda":
        assert torch.equal(pool(x.cuda(), direction).cpu(), expected[0])  # automatic choice


@pytest.mark.claim("pool-cuda-equivalence")
@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_handles_maps_that_start_off_a_vector_boundary(backend):
    """Contiguous maps that start one element into their storage (as views do): rows of 128
    whose first element is not 16-byte aligned must take the single-element path."""
    generator = torch.Generator().manual_seed(7)
    shape = (2, 2, 9, 128)
    storage = torch.randint(0, 3, (2, math.prod(shape) + 1), generator=generator).float()
    grad = torch.randn(storage.shape[1], generator=generator).to(device_of(backend))[1:]
    grad = grad.view(shape)
    for direction, row in (("top", storage[0]), ("right", storage[1])):
        expected = pool_with_grad(row[1:].view(shape), direction, grad.cpu(), "reference")
        leaf = row.to(device_of(backend), copy=True).requires_grad_()
        x = leaf[1:].view(shape)
        assert x.is_contiguous() and x.data_ptr() % 16 != 0 and grad.data_ptr() % 16 != 0
        out = pool_with(backend, x, direction)
        out.backward(grad)
        assert same_bits(out.detach(), expected[0])
        assert same_bits(leaf.grad[1:].view(shape), expected[1]) and leaf.grad[0] == 0


@pytest.mark.parametrize("backend", KERNELS)
def test_kernel_refuses_a_second_derivative(backend):
    """The backward operator has no autograd formula: differentiating it again must fail
    loudly, not treat the gradient as a constant."""
    x = torch.randn(1, 1, 3, 4, device=device_of(backend), requires_grad=True)
    loss = pool_with(backend, x, "top").square().sum()  # the output gradient depends on x
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="corner_pool_backward.* no autograd formula"):
        (grad.square().sum() + loss).backward()


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ((0, 4, 4), "at least 1"),
        ((2**31, 4, 4), "2^31 - 1 planes"),
        ((1, 2**31 - 1, 1), "2^31 - 257 values"),  # H within 31 of 2^31 - 1
        ((1, 1, 2**31 - 20), "2^31 - 257 values"),
        ((1, 2**16, 2**15), "2^31 - 257 values"),
    ],
    ids=str,
)
def test_kernel_launch_rejects_sizes_it_cannot_run(sizes, message):
    """The launch checks the sizes before it runs anything (so null pointers are safe), and
    says what is wrong instead of silently writing nothing."""
    library = emulated_kernels().library
    for launch in (library.corner_pool_forward, library.corner_pool_backward):
        forward = launch is library.corner_pool_forward
        pointers = [None] * (3 if forward else 5)
        error = launch(0, *pointers, *sizes, False, 0)  # 0: segments, or sum_block
        assert error is not None and message in error.decode()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_kernel_pools_the_tallest_column_it_accepts():
    """H = 2^31 - 257, the largest plane the 32-bit offsets allow: the counts of chunks and
    rows must not overflow (4 GiB per map in float16)."""
    height = 2**31 - 257
    x = torch.zeros(1, 1, height, 1, dtype=torch.float16, device="cuda")
    x[0, 0, 1000] = 1
    x[0, 0, height - 5] = 2
    out = pool(x, "bottom", backend="cuda").view(-1)
    assert out[:1000].eq(0).all() and out[1000 : height - 5].eq(1).all()
    assert out[height - 5 :].eq(2).all()
