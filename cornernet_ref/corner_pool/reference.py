r"""The reference implementation: directional max pooling as a scan from the border.

Each direction pools along one axis of a ``(B, C, H, W)`` tensor, starting at the border the
pooling comes from: the bottom row for ``top``, the rightmost column for ``left``, the top
row for ``bottom``, the leftmost column for ``right``.
[scan_max][cornernet_ref.corner_pool.reference.scan_max] keeps a running maximum and
where the argmax moved (the official tie rule is stated there),
[scan_max_backward][cornernet_ref.corner_pool.reference.scan_max_backward] sends each
output's gradient to its argmax, and [greater][cornernet_ref.corner_pool.reference.greater]
is the comparison, NaN included. The CUDA kernel adds the same numbers in the same order,
so the two agree bit for bit.

The loops run over the $L$ rows and handle a whole row of every image and channel per
step, so their Python overhead is $O(L)$ operations. Each step makes new row tensors, and
the rows are stacked once at the end: nothing is written in place, so ``torch.compile``
traces the scan like any other PyTorch code (unrolled, a few operations per row). Columns
are pooled as the rows of the transposed map.

Two ways to run it. [pool][cornernet_ref.corner_pool.reference.pool] is differentiable
([RowPool][cornernet_ref.corner_pool.reference.RowPool]) and keeps one boolean per input
for the backward (where the argmax moved): the ``"reference"`` backend.
[ReferenceKernels][cornernet_ref.corner_pool.reference.ReferenceKernels] has the interface
of the fused kernel, keeps nothing and scans again in the backward: the corner-pool
operator's implementation for tensors that are not on a GPU. Its forward needs the pooled
map alone, which [running_max][cornernet_ref.corner_pool.reference.running_max] computes in
a few whole-map passes where that gives the scan's bits (a map without NaN or $-0.0$).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

# direction -> (pooled dimension of a (B, C, H, W) tensor, whether the scan starts at its end)
DIRECTIONS: dict[str, tuple[int, bool]] = {
    "top": (2, True),  # max over rows i..H-1: scan from the bottom row up
    "bottom": (2, False),  # max over rows 0..i: scan from the top row down
    "left": (3, True),  # max over columns j..W-1: scan from the rightmost column
    "right": (3, False),  # max over columns 0..j: scan from the leftmost column
}
# corner -> (direction pooling the first map, direction pooling the second map)
CORNERS: dict[str, tuple[str, str]] = {"tl": ("top", "left"), "br": ("bottom", "right")}


def scan_positions(length: int, from_end: bool) -> list[int]:
    r"""Indices along the pooled axis in scan order: the border first."""
    return list(range(length - 1, -1, -1)) if from_end else list(range(length))


def greater(value: Tensor, best: Tensor) -> Tensor:
    r"""The comparison that moves the argmax: strictly greater, NaN above every number.

    A NaN counts as larger than every number, and a later NaN is not larger than an earlier
    one: the first NaN met is the maximum from there on and receives the gradient. Like
    ``torch.maximum``, a NaN propagates to every output it can reach.

    Written as the kernel writes it, ``not (value <= best) and best == best``: "not at
    most ``best``" holds for a greater value and for a NaN, and nothing is greater than a
    NaN ``best``. Four operations on a row instead of six for ``value > best or (value is
    NaN and best is not)``, the same truth table.
    """
    return torch.le(value, best).logical_not_().logical_and_(torch.eq(best, best))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    r"""Gradient sums are kept in float32 for 16-bit inputs, in the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def stack_rows(rows: dict[int, Tensor]) -> Tensor:
    r"""``(B, C, H, W)`` from the rows ``{i: (B, C, W)}``, put back in order, contiguous."""
    return torch.stack([rows[i] for i in sorted(rows)], dim=2)


def scan_max(x: Tensor, from_end: bool) -> tuple[Tensor, Tensor]:
    r"""Pool the rows of ``x``: running maximum down (or, ``from_end``, up) each column.

    Number the rows in *scan order* $k = 0, 1, \dots, L - 1$ from the border. The scan
    keeps a running maximum $m$ and the step $p$ where it was met:

    $$ m_0 = x_0,\; p_0 = 0; \qquad (m_k, p_k) = \begin{cases} (x_k, k) & x_k > m_{k-1} \\
    (m_{k-1}, p_{k-1}) & \text{otherwise} \end{cases} \qquad y_k = m_k = x_{p_k} $$

    $y_k$ is the maximum of everything between the border and step $k$. The argmax moves
    only on a *strictly* greater value (:func:`greater`, which also ranks NaN): among
    equal maxima the one met first, the farthest from $k$, is kept, as in the official
    extension.

    Returns:
        ``(pooled, moved)``, both ``(B, C, H, W)`` and contiguous: the running maximum, and
        a boolean mask that is True where the argmax moved, i.e. at every input that is a
        maximum for some output (the border included).
    """
    if x.numel() == 0:
        empty = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        return empty, torch.empty_like(empty, dtype=torch.bool)
    rows = scan_positions(x.shape[2], from_end)
    best = x[:, :, rows[0]]  # m_0 = x_0: the border row is the first maximum
    pooled = {rows[0]: best}
    moved = {rows[0]: torch.ones_like(best, dtype=torch.bool)}
    for i in rows[1:]:
        # One step handles row i of every image and channel at once.
        moved[i] = greater(x[:, :, i], best)  # x_k > m_{k-1}: a tie keeps the first
        best = pooled[i] = torch.where(moved[i], x[:, :, i], best)  # m_k
    return stack_rows(pooled), stack_rows(moved)


# Positions per block of the backward's sums (:func:`scan_max_backward`): lines up to this
# long, every map CornerNet makes from images of up to 4096 pixels a side, are summed in the
# official order; 0 sums every line as one block.
SUM_BLOCK = 1024


def check_sum_block(sum_block: int) -> None:
    r"""Raise ValueError unless ``sum_block`` is 0 or a positive multiple of 16 (a block then
    holds whole 16-byte vectors of every dtype, as the kernel reads them)."""
    integer = isinstance(sum_block, int) and not isinstance(sum_block, bool)
    if not integer or sum_block < 0 or sum_block % 16:
        raise ValueError(f"sum_block must be 0 or a positive multiple of 16, got {sum_block!r}")


def block_starts(length: int, from_end: bool, sum_block: int) -> set[int]:
    r"""The rows where a block of ``sum_block`` rows begins in scan order (the border's block
    excepted): block $b$ holds rows $b \cdot \text{sum\_block}$ to $(b + 1) \cdot
    \text{sum\_block} - 1$, met from its top row, or from its bottom row ``from_end``."""
    if not sum_block:
        return set()
    if from_end:
        return set(range(sum_block - 1, length - 1, sum_block))
    return set(range(sum_block, length, sum_block))


def scan_max_backward(
    grad: Tensor, moved: Tensor, from_end: bool, sum_block: int = SUM_BLOCK
) -> Tensor:
    r"""Gradient of :func:`scan_max` with respect to ``x``, given that of ``pooled``.

    Each output sends its gradient to its argmax $p_k$:

    $$ \frac{\partial L}{\partial x_q} = \sum_{k : p_k = q} \frac{\partial L}{\partial y_k} $$

    The outputs that share an argmax $q$ are consecutive: from $q$ up to the step before
    the next new maximum (a *run*). The sum is taken in scan order, starting with $q$'s
    own output; it is kept in float32 for float16 and bfloat16 inputs (in the input dtype
    otherwise) and rounded once.

    **Blocks.** The rows are cut at every multiple of ``sum_block`` (row index $i$ lies in
    block $\lfloor i / \text{sum\_block} \rfloor$). A run that lies in one block is summed
    as above; a run that crosses blocks is summed in scan order within each block, and
    those partial sums $s_1, s_2, s_3, \dots$ are added in scan order, $((s_1 + s_2) + s_3)
    + \dots$, so that the kernel can walk the blocks of a long line in parallel. A line of at
    most ``sum_block`` rows, or any line when ``sum_block`` is 0, is one block: the order of
    the official extension.

    Two passes over the rows: in scan order, the running sum of the current run (its partial
    sum in the current block, and its total over the blocks before); then back from the far
    border, each maximum receives the total at the end of its run. The result is
    contiguous, in the accumulation dtype.
    """
    grad = grad.to(accumulation_dtype(grad.dtype))
    if grad.numel() == 0:
        return torch.empty_like(grad, memory_format=torch.contiguous_format)
    rows = scan_positions(grad.shape[2], from_end)
    starts = block_starts(len(rows), from_end, sum_block)
    partial = total = grad[:, :, rows[0]]  # the run's sum in this block; over all blocks
    totals = {rows[0]: total}
    before = started_here = None  # the run's total over the blocks before; whether it has none
    for previous, i in pairwise(rows):
        if i in starts:  # the current run's sum so far is the total of the earlier blocks
            before, started_here = totals[previous], moved[:, :, i]
            partial = grad[:, :, i]
        else:
            # Output i adds to the current run, unless it is a new maximum, which starts one.
            partial = torch.where(moved[:, :, i], grad[:, :, i], partial + grad[:, :, i])
            if before is not None:
                started_here = started_here | moved[:, :, i]
        total = partial if before is None else torch.where(started_here, partial, before + partial)
        totals[i] = total
    result = {}
    run_total = totals[rows[-1]]  # the run that reaches the far border is complete
    for step in range(len(rows) - 1, -1, -1):
        i = rows[step]
        result[i] = torch.where(moved[:, :, i], run_total, 0)  # only maxima
        if step > 0:  # the run before a maximum ends one step earlier
            run_total = torch.where(moved[:, :, i], totals[rows[step - 1]], run_total)
    return stack_rows(result)


# The signed integer of each float's width: a float's bits read as one.
SAME_WIDTH_INTEGER = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def has_nan_or_negative_zero(x: Tensor) -> bool:
    r"""Whether ``x`` (not empty) holds a NaN or a $-0.0$, in two reductions and no
    temporary map: ``max`` propagates NaN, and $-0.0$, whose bits are the sign bit alone,
    is the only float whose bits read as a signed integer are the smallest integer of its
    width (any other negative float has mantissa or exponent bits set)."""
    bits = x.view(SAME_WIDTH_INTEGER[x.element_size()])
    return bool(x.max().isnan()) or bool(bits.min() == torch.iinfo(bits.dtype).min)


def running_max(x: Tensor, dim: int, from_end: bool) -> Tensor:
    r"""The pooled map of :func:`scan_max` along ``dim`` (2 or 3) alone, without the record of
    where the argmax moved: what a forward needs. Contiguous, ``(B, C, H, W)``.

    Where it gives the same bits, it takes the official extension's doubling: $\lceil
    \log_2 L \rceil$ passes of ``torch.maximum`` over the whole map, each combining every
    position with the one $s = 1, 2, 4, \dots$ steps nearer the border,

    $$ y^{(0)} = x, \qquad y^{(t+1)}_k = \max\big(y^{(t)}_k,\ y^{(t)}_{k \pm 2^t}\big), $$

    so that after the last pass $y_k$ is the maximum from the border to $k$. A scan keeps the
    first of equal values and ``torch.maximum`` may keep either, and equal numbers have the
    same bits but two: $-0.0$ and $+0.0$. With a NaN, which of several NaN payloads survives
    also depends on the order. So a map holding no NaN and no $-0.0$ (ReLU outputs, say) is
    pooled by doubling, bit for bit the scan's result, in a few passes instead of $L$ steps;
    any other map by :func:`scan_max`.
    """
    if x.numel() == 0 or has_nan_or_negative_zero(x):
        pooled, _ = scan_max(rows_along(x, dim), from_end)
        return rows_along(pooled, dim)
    length = x.shape[dim]
    if length == 1:
        return x.clone(memory_format=torch.contiguous_format)
    # Each pass reads one map and writes the other, so that nothing overlaps and nothing is
    # copied but the positions within `step` of the border, which keep their values.
    maps = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(2)]
    current = x
    step, passes = 1, 0
    while step < length:
        # Position k takes the maximum with k + step (from_end) or k - step.
        updated, nearer, border = (0, step, length - step) if from_end else (step, 0, 0)
        target, passes = maps[passes % 2], passes + 1
        torch.maximum(
            current.narrow(dim, updated, length - step),
            current.narrow(dim, nearer, length - step),
            out=target.narrow(dim, updated, length - step),
        )
        target.narrow(dim, border, step).copy_(current.narrow(dim, border, step))
        current, step = target, step * 2
    return current


def rows_along(x: Tensor, dim: int) -> Tensor:
    r"""``x`` with its pooled dimension (2, rows; or 3, columns) as the rows, contiguous.

    Columns are pooled as the rows of the transposed map, so that every step of the scan
    reads a row of contiguous memory instead of one number per cache line. Applied to a
    result, it puts the dimensions back.
    """
    return x.transpose(2, 3).contiguous() if dim == 3 else x.contiguous()


class RowPool(torch.autograd.Function):
    r"""Autograd function of row pooling (``top`` or ``bottom``) with the official tie rule."""

    @staticmethod
    def forward(ctx, x: Tensor, from_end: bool, sum_block: int) -> Tensor:
        pooled, moved = scan_max(x, from_end)
        ctx.save_for_backward(moved)
        ctx.from_end, ctx.sum_block = from_end, sum_block
        return pooled

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (moved,) = ctx.saved_tensors
        gradient = scan_max_backward(grad, moved, ctx.from_end, ctx.sum_block)
        return gradient.to(grad.dtype), None, None


def pool(x: Tensor, direction: str, sum_block: int = SUM_BLOCK) -> Tensor:
    r"""One pooling direction of a ``(B, C, H, W)`` tensor (see the module docstring), with
    its gradient by [RowPool][cornernet_ref.corner_pool.reference.RowPool], summed in blocks
    of ``sum_block`` (:func:`scan_max_backward`)."""
    dim, from_end = DIRECTIONS[direction]
    return rows_along(RowPool.apply(rows_along(x, dim), from_end, sum_block), dim)


class ReferenceKernels:
    r"""The scans of this module with the interface of the fused kernel
    ([CudaKernels][cornernet_ref.corner_pool.fused.CudaKernels]): no autograd, contiguous
    results. The corner-pool operator ([op][cornernet_ref.corner_pool.op]) runs them for
    tensors on any device but CUDA, and on CUDA where the kernel cannot be built.

    The map ``a`` is pooled along its columns, ``b`` along its rows; ``reverse`` scans from
    the bottom and right borders (``top(a) + left(b)``, the top-left pool), otherwise from
    the top and left ones (``bottom(a) + right(b)``).
    """

    def forward(self, a: Tensor | None, b: Tensor | None, reverse: bool) -> Tensor:
        r"""``V(a) + H(b)``, ``(B, C, H, W)``; either map may be None (then the other alone)."""
        vertical, horizontal = CORNERS["tl" if reverse else "br"]
        if b is None:
            return self.pooled(a, vertical)
        if a is None:
            return self.pooled(b, horizontal)
        return self.pooled(a, vertical) + self.pooled(b, horizontal)

    def backward(
        self, a: Tensor | None, b: Tensor | None, grad: Tensor, reverse: bool, sum_block: int
    ) -> tuple[Tensor | None, Tensor | None]:
        r"""``(grad_a, grad_b)``, each ``(B, C, H, W)`` in the dtype of ``grad``, from the
        output gradient ``grad``, summed in blocks of ``sum_block``
        (:func:`scan_max_backward`); None for an absent map."""
        vertical, horizontal = CORNERS["tl" if reverse else "br"]
        return (
            None if a is None else self.gradient(a, grad, vertical, sum_block),
            None if b is None else self.gradient(b, grad, horizontal, sum_block),
        )

    @staticmethod
    def pooled(x: Tensor, direction: str) -> Tensor:
        r"""``pool(x, direction)`` without autograd, by :func:`running_max`."""
        dim, from_end = DIRECTIONS[direction]
        return running_max(x, dim, from_end)

    @staticmethod
    def gradient(x: Tensor, grad: Tensor, direction: str, sum_block: int) -> Tensor:
        r"""The gradient of ``pool(x, direction, sum_block)`` with respect to ``x``: the scan
        again, for where the argmax moved, then :func:`scan_max_backward`."""
        dim, from_end = DIRECTIONS[direction]
        _, moved = scan_max(rows_along(x, dim), from_end)
        gradient = scan_max_backward(rows_along(grad, dim), moved, from_end, sum_block)
        return rows_along(gradient.to(grad.dtype), dim)


REFERENCE_KERNELS = ReferenceKernels()
