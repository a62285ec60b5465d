"""The corner pooling kernel's ways of sharing out the work: groups of lanes on narrow planes,
chunks on wide rows, and segments of long columns with their carried maxima.

The kernel cuts each plane's rows into segments when the planes alone give too few warps
(``corner_pool.h``, ``plan_forward``). The tests force the number of segments through the
CPU build of the kernel (``kernel_emulation.py``), so that every split, from one segment to
one per row, must give the reference's bits; on a GPU, the automatic choice is checked on
the shapes that trigger it, the tallest column included.
"""

from __future__ import annotations

import functools
import math
import os

import kernel_emulation
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cornernet_ref.corner_pool import corner_pool, pool
from cornernet_ref.corner_pool.op import CornerPoolOps
from cornernet_ref.corner_pool.reference import REFERENCE_KERNELS

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def kernels(segments: int = 0) -> kernel_emulation.EmulatedKernels:
    """The CPU build with ``segments`` forced (0: the kernel's choice)."""
    try:
        return kernel_emulation.emulated_kernels(segments)
    except kernel_emulation.BuildError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot build the kernel for the CPU: {error}")


@functools.cache
def split_ops(segments: int) -> CornerPoolOps:
    """The package's operators with the CPU build, ``segments`` forced, as their CPU
    implementation (a namespace per count: ``torch.ops.cornernet_ref_segments_<n>``)."""
    kernels(segments)  # built now, or the test skips
    return CornerPoolOps(f"cornernet_ref_segments_{segments}", {"cpu": lambda: kernels(segments)})


def same_bits(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal bit for bit (signed zeros and NaN payloads included)."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    return torch.equal(actual.cpu().view(integer), expected.cpu().view(integer))


def corner_forward(kernel, a: torch.Tensor, b: torch.Tensor | None, corner: str) -> torch.Tensor:
    """The forward alone, straight through the kernel interface (no autograd)."""
    return kernel.forward(a, b, corner == "tl")  # tl scans from the bottom and right


def reference_forward(a: torch.Tensor, b: torch.Tensor | None, corner: str) -> torch.Tensor:
    vertical, horizontal = {"tl": ("top", "left"), "br": ("bottom", "right")}[corner]
    pooled = pool(a, vertical, backend="reference")
    return pooled if b is None else pooled + pool(b, horizontal, backend="reference")


def relu_like(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Small non-negative integers, half of them 0: ties everywhere, as after a ReLU."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 3).round().clamp(min=0).to(dtype)


def add_special_values(x: torch.Tensor, special: str, generator: torch.Generator) -> None:
    """Put ``special`` values ("nan", "-inf", "signed zeros": -0.0 for 0.0, ties of two
    bits; "none": nothing) at 3% of the places of ``x``, in place."""
    where = torch.rand(x.shape, generator=generator) < 0.03
    if special == "signed zeros":
        x.copy_(torch.where(where & (x == 0), -0.0, x))
    elif special != "none":
        x.masked_fill_(where, math.nan if special == "nan" else -math.inf)


def shifted(x: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of ``x`` that starts ``offset`` numbers into a new allocation (aligned): 1
    puts it off the 16-byte boundary."""
    return torch.cat([x.new_zeros(offset), x.flatten()])[offset:].view(x.shape)


def assert_forward_is_exact(
    segments: int, a: torch.Tensor, b: torch.Tensor, maps: str, corner: str
) -> None:
    """The CPU build's forward, ``segments`` forced, of both maps, ``a`` alone or ``b`` alone
    (``maps``), has the reference's bits, and NaN where the reference has."""
    if maps == "b":  # b alone: its horizontal pool
        actual = corner_forward(kernels(segments), None, b, corner)
        expected = pool(b, {"tl": "left", "br": "right"}[corner], backend="reference")
    else:
        b = b if maps == "both" else None
        actual = corner_forward(kernels(segments), a, b, corner)
        expected = reference_forward(a, b, corner)
    assert torch.equal(actual.isnan(), expected.isnan())
    assert same_bits(actual.nan_to_num(), expected.nan_to_num())


def documented_shuffle(kind: str, operand: int, width: int, lane: int) -> int:
    """The lane that ``lane`` reads in a shuffle of ``width`` lanes, as the CUDA C++
    Programming Guide ("Warp Shuffle Functions") describes it: the warp is cut into groups of
    ``width`` lanes; a lane whose source would lie before its group's start (``up``) or past
    its end (``down``), or in a later group (``xor``), reads itself, and ``__shfl_sync``
    takes its source lane modulo the width."""
    start = lane // width * width
    if kind == "sync":
        return start + operand % width  # Python's modulo: -1 is the group's last lane
    if kind == "up":
        return lane - operand if lane - start >= operand else lane
    if kind == "down":
        return lane + operand if lane - start + operand < width else lane
    return lane ^ operand if lane ^ operand < start + width else lane


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("kind", kernel_emulation.EmulatedKernels.SHUFFLES)
def test_the_emulated_shuffles_are_cudas(kind, width):
    """The CPU build's shuffles, which the row scan runs with the width of a group of lanes,
    read the lanes CUDA's do, for every operand."""
    operands = range(-8, 40) if kind == "sync" else range(33) if kind != "xor" else range(32)
    for operand in operands:
        expected = [documented_shuffle(kind, operand, width, lane) for lane in range(32)]
        assert kernels().shuffle(kind, operand, width) == expected, operand


def test_a_shuffle_up_within_groups_of_8_keeps_each_groups_first_lanes():
    got = kernels().shuffle("up", 3, 8)
    assert got[:8] == [0, 1, 2, 0, 1, 2, 3, 4]
    assert got[8:11] == [8, 9, 10] and got[31] == 28


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("segments", [2, 3, 7, 1000])
@pytest.mark.parametrize("shape", [(2, 1, 37, 5), (1, 2, 20, 129), (3, 1, 9, 300)], ids=str)
@pytest.mark.parametrize("corner", ["tl", "br"])
def test_every_split_of_the_rows_gives_the_reference_bits(dtype, segments, shape, corner):
    """Segments of 1 row (1000 > H) up to half the plane; narrow planes (several per warp),
    one and several chunks per row."""
    a, b = relu_like(shape, dtype, 1), relu_like(shape, dtype, 2)
    expected = reference_forward(a, b, corner)
    assert same_bits(corner_forward(kernels(segments), a, b, corner), expected)
    assert same_bits(corner_forward(kernels(segments), a, None, corner), reference_forward(
        a, None, corner))  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 40), st.integers(1, 70)),
    segments=st.integers(0, 12),
    corner=st.sampled_from(["tl", "br"]),
    nan=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_split_forward_matches_the_reference_with_nan_and_signed_zeros(
    shape, segments, corner, nan, seed
):
    """Any shape, any number of segments: the carried maxima keep the first of equal values
    (0.0 and -0.0 told apart) and rank NaN above every number, as the reference does."""
    generator = torch.Generator().manual_seed(seed)
    pair = relu_like((2, *shape), torch.float32, seed)
    sign = torch.where(torch.rand(pair.shape, generator=generator) < 0.5, -1.0, 1.0)
    a, b = pair * sign  # -0.0 beside 0.0
    if nan:
        a = a.masked_fill(torch.rand(a.shape, generator=generator) < 0.05, math.nan)
    expected = reference_forward(a, b, corner)
    actual = corner_forward(kernels(segments), a, b, corner)
    assert torch.equal(actual.isnan(), expected.isnan())
    assert same_bits(actual.nan_to_num(), expected.nan_to_num())


@settings(max_examples=20, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 9), st.integers(1100, 5200)),
    segments=st.integers(0, 3),
    maps=st.sampled_from(["both", "a", "b"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    corner=st.sampled_from(["tl", "br"]),
    seed=st.integers(0, 2**16),
)
def test_wide_rows_of_few_planes_are_split_into_column_segments_exactly(
    shape, segments, maps, dtype, corner, seed
):
    """A plane or two of rows of 9 to 40 chunks: too few warps, so each row's chunks are cut
    into column segments, each starting from the row maxima of the segments before it (a
    first pass over b and a prefix); with rows also cut into segments, each group has one of
    each. Signed zeros and NaN where the carried maxima decide."""
    generator = torch.Generator().manual_seed(seed)
    pair = relu_like((2, shape[0], 1, *shape[1:]), torch.float32, seed)
    sign = torch.where(torch.rand(pair.shape, generator=generator) < 0.5, -1.0, 1.0)
    a, b = (pair * sign).to(dtype)
    b = b.masked_fill(torch.rand(b.shape, generator=generator) < 0.001, math.nan)
    assert_forward_is_exact(segments, a, b, maps, corner)


@st.composite
def narrow_planes(draw, most_vectors: int) -> tuple[torch.dtype, tuple[int, ...]]:
    """A dtype and a (1, planes, H, W) shape of rows of 1 to 4 numbers, H a multiple of the
    rows per 16-byte vector (packed, if narrower than a vector), or one more (not packed)."""
    dtype = draw(st.sampled_from(DTYPES))
    width = draw(st.sampled_from([1, 2, 3, 4]))
    per_vector = max(1, 16 // torch.empty((), dtype=dtype).element_size() // width)
    height = draw(st.integers(1, most_vectors)) * per_vector + draw(st.booleans())
    return dtype, (1, draw(st.integers(1, 3)), height, width)


# Maps at the start of a new allocation (aligned) or one number after it (not aligned).
OFFSETS = st.sampled_from([0, 0, 1])


@settings(max_examples=40, deadline=None)
@given(
    narrow=narrow_planes(300),
    segments=st.integers(0, 12),
    maps=st.sampled_from(["both", "a", "b"]),
    offset=OFFSETS,
    corner=st.sampled_from(["tl", "br"]),
    seed=st.integers(0, 2**16),
)
def test_narrow_rows_packed_in_vectors_give_the_reference_bits(
    narrow, segments, maps, offset, corner, seed
):
    """Rows narrower than a vector, several to a vector (``packed_width`` in corner_pool.h)
    when the height is a multiple of the rows per vector and the maps are aligned, any number
    of segments: the vertical scan carried from row to row inside a vector and across
    vectors, each row's horizontal scan inside its vector. One row more, or maps one number
    off alignment, take the unpacked path, which must agree too. Signed zeros, NaN, ties."""
    dtype, plane_shape = narrow
    shape = (2, *plane_shape)
    generator = torch.Generator().manual_seed(seed)
    pair = relu_like(shape, torch.float32, seed)
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    pair = (pair * sign).masked_fill(torch.rand(shape, generator=generator) < 0.01, math.nan)
    a, b = (shifted(x, offset) for x in pair.to(dtype))
    assert_forward_is_exact(segments, a, b, maps, corner)


@pytest.mark.parametrize("direction", ["top", "bottom"])
def test_a_tall_column_is_split_and_pooled_exactly(direction):
    """One plane, 20 000 rows, 3 columns: too few warps, so the kernel cuts it into
    segments by itself; with the largest value near the border the column maxima carried
    across segments decide almost every output."""
    x = relu_like((1, 1, 20_000, 3), torch.float32, 3)
    x[0, 0, 5] = x[0, 0, -5] = 100.0
    actual = split_ops(0).pool(x, direction)
    assert same_bits(actual, pool(x, direction, backend="reference"))


def test_the_gradient_does_not_depend_on_the_split():
    """The backward scans each line whole (its sums must keep the reference's order): a
    forward split into segments leaves the gradients as they were."""
    a, b = relu_like((2, 1, 2, 30, 7), torch.float32, 4)
    grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(5))
    results = []
    for segments in (1, 4):
        a_in, b_in = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = split_ops(segments).corner_pool(a_in, b_in, "tl")
        out.backward(grad)
        results.append((out.detach(), a_in.grad, b_in.grad))
    for one, four in zip(*results, strict=True):
        assert same_bits(one, four)


def gradients(ops, a: torch.Tensor, b: torch.Tensor, corner: str, grad: torch.Tensor) -> tuple:
    a_in, b_in = a.clone().requires_grad_(), b.clone().requires_grad_()
    out = ops(a_in, b_in, corner)
    out.backward(grad)
    return out.detach(), a_in.grad, b_in.grad


def assert_walks_like_the_reference(shape: tuple, dtype: torch.dtype, corner: str, seed: int):
    """Outputs and both gradients of the CPU build equal the reference's, bit for bit, on
    ReLU-like maps (ties everywhere) with a random output gradient."""
    a, b = relu_like(shape, dtype, seed), relu_like(shape, dtype, seed + 1)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)
    expected = gradients(
        lambda x, y, c: corner_pool(x, y, c, backend="reference"), a, b, corner, grad
    )
    actual = gradients(split_ops(0).corner_pool, a, b, corner, grad)
    for got, wanted in zip(actual, expected, strict=True):
        assert same_bits(got, wanted)


# The backward's walkers (corner_pool.cu): a kind of walker fewer than 32768 threads loads
# deeper ahead, in a launch of its own; an H x 1 plane is walked as 1 x H, maps swapped (and
# pooled so by the forward when its column is short or the planes many: corner_pool.h).
WALKER_SHAPES = {
    "many rows, few column vectors": (1, 512, 64, 8),  # 32768 row walkers
    "many column vectors, few rows": (1, 1024, 8, 256),  # 32768 column walkers of bfloat16
    "one column": (2, 3, 50, 1),
    "one long column, few planes": (1, 2, 300, 1),  # the forward cuts it into segments
    "one long column, many planes": (1, 1024, 200, 1),  # the forward walks it as a row
    "one row": (2, 3, 1, 50),
    "one number": (3, 2, 1, 1),
    # Rows of 2 packed in vectors (2 rows of float32, 4 of bfloat16): a column walker per
    # plane, a row walker per vector; few of them, or enough of both kinds for one launch.
    "narrow rows, few planes": (1, 2, 64, 2),
    "narrow rows, many planes": (1, 32768, 8, 2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", list(WALKER_SHAPES.values()), ids=list(WALKER_SHAPES))
@pytest.mark.parametrize("corner", ["tl", "br"])
def test_every_kind_of_walker_gives_the_reference_gradients(dtype, shape, corner):
    """Ties everywhere (ReLU-like maps): each walker must send each run's sum, added in the
    reference's order, to the first maximum of its line; the transposed one-column planes
    must give the outputs and both gradients in their places."""
    assert_walks_like_the_reference(shape, dtype, corner, seed=6)


@pytest.mark.parametrize(("corner", "dtype"), [("tl", torch.float32), ("br", torch.bfloat16)])
def test_many_walkers_of_both_kinds_share_one_launch_exactly(corner, dtype):
    """32768 row walkers and 32768 column vectors or more (65536 in float32): one launch,
    its column warps interleaved among the row warps; every unit walked once."""
    assert_walks_like_the_reference((1, 2048, 16, 128), dtype, corner, seed=9)


def assert_backward_is_exact(a, b, grad: torch.Tensor, reverse: bool, sum_block: int) -> None:
    """The CPU build's gradients (None for an absent map) have the reference's blocked sums'
    bits, and NaN where the reference has."""
    actual = kernels().backward(a, b, grad, reverse, sum_block)
    expected = REFERENCE_KERNELS.backward(a, b, grad, reverse, sum_block)
    for got, wanted in zip(actual, expected, strict=True):
        assert (got is None) == (wanted is None)
        if got is not None:
            assert torch.equal(got.isnan(), wanted.isnan())
            assert same_bits(got.nan_to_num(), wanted.nan_to_num())


@settings(max_examples=30, deadline=None)
@given(
    planes=st.integers(1, 3),
    height=st.integers(1, 70),
    width=st.integers(1, 70),
    sum_block=st.sampled_from([16, 32, 48]),
    maps=st.sampled_from(["both", "a", "b"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    reverse=st.booleans(),
    special=st.sampled_from(["none", "nan", "-inf", "signed zeros"]),
    seed=st.integers(0, 2**16),
)
def test_blocked_lines_give_the_reference_gradients(
    planes, height, width, sum_block, maps, dtype, reverse, special, seed
):
    """Lines longer than ``sum_block`` are walked block by block, each block entering the
    run of the blocks before it with their maximum (block_maxima_kernel, prefix_kernel), and
    the runs that cross blocks joined afterwards (join_kernel): both gradients equal the
    reference's blocked sums bit for bit. Rows and columns of any length (blocks that end
    inside a vector or a plane), ties, NaN and -inf where the entered maximum decides, and
    widths that are not a whole number of vectors (the unaligned walkers)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (1, planes, height, width)
    steps = torch.arange(height * width, dtype=torch.float64).view(1, 1, height, width)
    a, b = ((steps / 64 + relu_like(shape, torch.float64, seed + k)).round() for k in (0, 1))
    for x in (a, b):
        add_special_values(x, special, generator)
    a, b = a.to(dtype), b.to(dtype)
    a, b = (None, b) if maps == "b" else (a, None) if maps == "a" else (a, b)
    grad = (torch.randn(shape, generator=generator, dtype=torch.float64) * 100).to(dtype)
    assert_backward_is_exact(a, b, grad, reverse, sum_block)


@settings(max_examples=40, deadline=None)
@given(
    narrow=narrow_planes(40),
    sum_block=st.sampled_from([0, 16, 32]),
    maps=st.sampled_from(["both", "a", "b"]),
    offset=OFFSETS,
    reverse=st.booleans(),
    special=st.sampled_from(["none", "nan", "-inf", "signed zeros"]),
    seed=st.integers(0, 2**16),
)
def test_narrow_rows_packed_in_vectors_give_the_reference_gradients(
    narrow, sum_block, maps, offset, reverse, special, seed
):
    """The backward of rows narrower than a vector (``packed_width``): a column walker steps
    a vector of rows at a time through its plane's W columns, in blocks or whole; a row
    walker takes the rows of one vector, each its own run. Heights that are not a multiple
    of the rows per vector, and maps one number off alignment, take the unpacked walkers.
    Ties, NaN, -inf and signed zeros where the first maximum decides."""
    dtype, plane_shape = narrow
    shape = (3, *plane_shape)
    generator = torch.Generator().manual_seed(seed)
    steps = torch.arange(math.prod(plane_shape), dtype=torch.float64).view(plane_shape)
    maps_ = (steps / 64 + relu_like(shape, torch.float64, seed)).round()
    maps_[2] = torch.randn(shape[1:], generator=generator, dtype=torch.float64) * 100  # grad
    for x in maps_[:2]:
        add_special_values(x, special, generator)
    a, b, grad = (shifted(x, offset) for x in maps_.to(dtype))
    a, b = (None, b) if maps == "b" else (a, None) if maps == "a" else (a, b)
    assert_backward_is_exact(a, b, grad, reverse, sum_block)


@pytest.mark.parametrize("maxima", ["border", "every 300"])
@pytest.mark.parametrize("reverse", [True, False])
def test_a_run_across_many_blocks_is_joined_in_order(maxima, reverse):
    """Lines of 50 blocks of 16: with the maximum at the border, one run crosses every block
    (join_kernel follows it over more blocks than it loads at a time); with a new maximum
    every 300 positions, runs cross 18 or 19 blocks. Large gradients, so that a head added
    out of order changes the float32 sum."""
    length, sum_block = 800, 16
    steps = torch.arange(length, dtype=torch.float32)
    from_border = steps.flip(0) if reverse else steps  # 0 at the border
    line = -from_border if maxima == "border" else (from_border // 300) * 1000 - from_border
    rows = torch.stack([line, line.roll(7)]).view(1, 1, 2, length)  # b: two rows
    grad = torch.randn(rows.shape, generator=torch.Generator().manual_seed(21)) * 1e6
    columns, column_grad = rows.transpose(2, 3).contiguous(), grad.transpose(2, 3).contiguous()
    for a, b, g in ((None, rows, grad), (columns, None, column_grad)):  # a: two columns
        actual = kernels().backward(a, b, g, reverse, sum_block)
        expected = REFERENCE_KERNELS.backward(a, b, g, reverse, sum_block)
        for got, wanted in zip(actual, expected, strict=True):
            assert (got is None) == (wanted is None)
            assert got is None or same_bits(got, wanted)


@pytest.mark.parametrize("shape", [(1, 1, 2100, 3), (2, 3, 1, 2100), (1, 2, 2100, 1)], ids=str)
def test_the_default_blocks_cut_long_lines_as_the_reference_does(shape):
    """Through the operator and its autograd formula, with the default ``sum_block`` (1024):
    a tall map, long rows, and a long column pooled as a row (the maps swapped). The
    maxima trend away from the border, so runs cross blocks."""
    steps = torch.arange(shape[2] * shape[3], dtype=torch.float32).view(1, 1, *shape[2:])
    a = (relu_like(shape, torch.float32, 11) - steps / 50).round()
    b = (relu_like(shape, torch.float32, 12) - steps / 50).round()
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(13)) * 1e4
    expected = gradients(
        lambda x, y, c: corner_pool(x, y, c, backend="reference"), a, b, "br", grad
    )
    actual = gradients(split_ops(0).corner_pool, a, b, "br", grad)
    for got, wanted in zip(actual, expected, strict=True):
        assert same_bits(got, wanted)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape", [(1, 1, 4096, 3), (1, 1, 4096, 2), (1, 2, 3000, 200), (1, 1, 2, 5000)], ids=str
)
def test_cuda_kernel_splits_like_the_reference(dtype, shape):
    """Shapes with too few planes for the GPU, whose rows the kernel cuts into segments
    (of rows packed in vectors in the second, of rows of 2 chunks in the third); and a wide
    one, 40 chunks per row in float32. Forward and gradients against the reference (whose
    Python loops over H or W steps keep the sizes small); the backward walks the long lines
    in blocks of 1024."""
    a, b = relu_like((2, *shape), dtype, 6)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    results = []
    for device, backend in (("cpu", "reference"), ("cuda", "cuda")):
        a_in, b_in = (t.to(device, copy=True).requires_grad_() for t in (a, b))
        out = corner_pool(a_in, b_in, "tl", backend=backend)
        out.backward(grad.to(device))
        results.append((out.detach(), a_in.grad, b_in.grad))
    for expected, actual in zip(*results, strict=True):
        assert same_bits(actual, expected)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("corner", ["tl", "br"])
def test_cuda_kernel_sums_blocks_like_the_reference(dtype, corner):
    """Blocks of 16 on rows of 70 and columns of 300 (19 blocks): the three kernels of
    blocked lines on the GPU, against the reference's blocked sums."""
    shape = (1, 2, 300, 70)
    steps = torch.arange(300 * 70, dtype=torch.float32).view(1, 1, 300, 70)
    a, b = ((relu_like(shape, torch.float32, k) - steps / 500).round().to(dtype) for k in (3, 4))
    grad = (torch.randn(shape, generator=torch.Generator().manual_seed(5)) * 1e4).to(dtype)
    results = []
    for device, backend in (("cpu", "reference"), ("cuda", "cuda")):
        a_in, b_in = (t.to(device, copy=True).requires_grad_() for t in (a, b))
        corner_pool(a_in, b_in, corner, backend=backend, sum_block=16).backward(grad.to(device))
        results.append((a_in.grad, b_in.grad))
    for expected, actual in zip(*results, strict=True):
        assert same_bits(actual, expected)


@pytest.mark.parametrize("direction", ["top", "bottom", "left", "right"])
def test_lines_that_start_at_minus_infinity_or_nan_keep_the_reference_gradient(direction):
    """Each line's run starts as "maximum -inf, sum -0.0" at its border position. A border
    value of -inf must then extend that run (its -0.0 gradients summing to -0.0, not +0.0),
    and a border NaN start a run there, whose sum replaces what the start stored."""
    inf, nan = math.inf, math.nan
    line = torch.tensor([[-inf, -inf, 2.0, 2.0], [nan, 1.0, nan, 3.0], [-inf, 5.0, -inf, 1.0]])
    grad = torch.tensor([[-0.0, -0.0, -0.0, 1.5], [1.0, -0.0, 2.0, 0.25], [-0.0, 1.0, 2.0, 3.0]])
    if direction in ("top", "bottom"):  # the same lines as columns
        line, grad = line.T.contiguous(), grad.T.contiguous()
    if direction in ("top", "left"):  # scans from the far end: put each line's start there
        flip = 0 if direction == "top" else 1
        line, grad = line.flip(flip).contiguous(), grad.flip(flip).contiguous()
    x, grad = line.view(1, 1, *line.shape), grad.view(1, 1, *line.shape)
    results = []
    for pooling in (
        lambda t: pool(t, direction, backend="reference"),
        lambda t: split_ops(0).pool(t, direction),
    ):
        leaf = x.clone().requires_grad_()
        pooling(leaf).backward(grad)
        results.append(leaf.grad)
    reference, kernel = results
    assert same_bits(kernel.nan_to_num(), reference.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "shape", [(1, 3, 5, 40), (2, 1, 7, 13), (1, 2, 6, 2), (1, 1, 9, 1), (1, 1, 1, 300)], ids=str
)
def test_each_map_is_read_once_by_each_kind_of_line_that_needs_it(dtype, shape):
    """The forward reads a and b once and writes each output once; the backward reads a (its
    column walkers), b (its row walkers) and the output gradient (both) once per kind of
    walker. So nothing is loaded past a line's end or twice, whatever a batch of rows or
    steps leaves over (heights of 5, 7 and 9 against batches of 4 to 8), on aligned rows,
    rows loaded number by number (13 columns), packed rows (2) and single columns and rows.
    The requests are the CPU build's trace (bytes the active lanes ask for)."""
    size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    generator = torch.Generator().manual_seed(0)
    a, b, grad = (torch.randn(shape, generator=generator).to(dtype) for _ in range(3))

    def moved(requests: list[dict[str, int]], store: int) -> int:
        return sum(r["bytes"] * r["count"] for r in requests if r["store"] == store)

    forward, backward = (
        kernels().top_left_requests(direction, a, b, grad) for direction in ("forward", "backward")
    )
    assert moved(forward, store=0) == 2 * size and moved(forward, store=1) == size
    assert moved(backward, store=0) == 4 * size
