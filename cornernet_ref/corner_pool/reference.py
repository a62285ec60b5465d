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
step, so their Python overhead is $O(L)$ operations. Columns are pooled as the rows of the
transposed map. Memory: the backward keeps one boolean per input (where the argmax moved).
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


def scan_positions(length: int, from_end: bool) -> list[int]:
    r"""Indices along the pooled axis in scan order: the border first."""
    return list(range(length - 1, -1, -1)) if from_end else list(range(length))


def greater(value: Tensor, best: Tensor, out: Tensor) -> Tensor:
    r"""The comparison that moves the argmax: strictly greater, NaN above every number.

    A NaN counts as larger than every number, and a later NaN is not larger than an earlier
    one: the first NaN met is the maximum from there on and receives the gradient. Like
    ``torch.maximum``, a NaN propagates to every output it can reach.
    """
    torch.gt(value, best, out=out)
    return out.logical_or_(value.isnan() & ~best.isnan())


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    r"""Gradient sums are kept in float32 for 16-bit inputs, in the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


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
    pooled = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    moved = torch.empty(x.shape, dtype=torch.bool, device=x.device)
    if x.numel() == 0:
        return pooled, moved
    rows = scan_positions(x.shape[2], from_end)
    pooled[:, :, rows[0]] = x[:, :, rows[0]]  # the border row is the first maximum
    moved[:, :, rows[0]] = True
    for previous, i in pairwise(rows):
        # One step handles row i of every image and channel at once.
        greater(x[:, :, i], pooled[:, :, previous], out=moved[:, :, i])  # a tie keeps the first
        torch.where(moved[:, :, i], x[:, :, i], pooled[:, :, previous], out=pooled[:, :, i])
    return pooled, moved


def scan_max_backward(grad: Tensor, moved: Tensor, from_end: bool) -> Tensor:
    r"""Gradient of :func:`scan_max` with respect to ``x``, given that of ``pooled``.

    Each output sends its gradient to its argmax $p_k$:

    $$ \frac{\partial L}{\partial x_q} = \sum_{k : p_k = q} \frac{\partial L}{\partial y_k} $$

    The outputs that share an argmax $q$ are consecutive: from $q$ up to the step before
    the next new maximum (a *run*). The sum is taken in scan order, starting with $q$'s
    own output; it is kept in float32 for float16 and bfloat16 inputs (in the input dtype
    otherwise) and rounded once.

    Two passes over the rows: in scan order, a running sum of the gradients that restarts
    at every new maximum; then back from the far border, each maximum receives the sum at
    the end of its run. The result is in the accumulation dtype.
    """
    grad = grad.to(accumulation_dtype(grad.dtype)).contiguous()
    running = torch.empty_like(grad)
    result = torch.empty_like(grad)
    if grad.numel() == 0:
        return result
    rows = scan_positions(grad.shape[2], from_end)
    running[:, :, rows[0]] = grad[:, :, rows[0]]
    for previous, i in pairwise(rows):
        # Output i adds to the current run, unless it is a new maximum, which starts one.
        torch.add(running[:, :, previous], grad[:, :, i], out=running[:, :, i])
        torch.where(moved[:, :, i], grad[:, :, i], running[:, :, i], out=running[:, :, i])
    zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
    run_total = running[:, :, rows[-1]]  # the run that reaches the far border is complete
    for step in range(len(rows) - 1, -1, -1):
        i = rows[step]
        torch.where(moved[:, :, i], run_total, zero, out=result[:, :, i])  # only maxima
        if step > 0:  # the run before a maximum ends one step earlier
            run_total = torch.where(moved[:, :, i], running[:, :, rows[step - 1]], run_total)
    return result


class RowPool(torch.autograd.Function):
    r"""Autograd function of row pooling (``top`` or ``bottom``) with the official tie rule."""

    @staticmethod
    def forward(ctx, x: Tensor, from_end: bool) -> Tensor:
        pooled, moved = scan_max(x, from_end)
        ctx.save_for_backward(moved)
        ctx.from_end = from_end
        return pooled

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (moved,) = ctx.saved_tensors
        return scan_max_backward(grad, moved, ctx.from_end).to(grad.dtype), None


def pool(x: Tensor, direction: str) -> Tensor:
    r"""One pooling direction of a ``(B, C, H, W)`` tensor (see the module docstring)."""
    dim, from_end = DIRECTIONS[direction]
    if dim == 3:
        # Columns: pool the rows of the transposed map, so that every step of the scan
        # reads a row of contiguous memory instead of one number per cache line.
        return RowPool.apply(x.transpose(2, 3).contiguous(), from_end).transpose(2, 3).contiguous()
    return RowPool.apply(x, from_end)
