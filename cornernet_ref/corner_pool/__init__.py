r"""Corner pooling (paper §3.4, Eq. 6).

A corner of a bounding box is usually outside the object: nothing at the top-left corner of
a person says "person". Corner pooling brings the evidence to the corner: the top-left pool
of a cell adds the largest response below it to the largest response to its right
([corner_pool][cornernet_ref.corner_pool.corner_pool] states Eq. 6); the bottom-right pool
looks above and to the left. Each of the four directions is a running maximum from a
border ([pool][cornernet_ref.corner_pool.pool]):

| direction | ``out[..., i, j]`` | the scan starts at |
|-----------|--------------------|--------------------|
| ``top`` | max of ``x[..., i:, j]`` (rows i..H-1) | the bottom row |
| ``bottom`` | max of ``x[..., :i+1, j]`` (rows 0..i) | the top row |
| ``left`` | max of ``x[..., i, j:]`` (columns j..W-1) | the rightmost column |
| ``right`` | max of ``x[..., i, :j+1]`` (columns 0..j) | the leftmost column |

**Gradient, ties and NaN.** Each output's gradient goes to the position of its maximum;
among equal maxima, to the one met first in the scan from the border, as the official
extension does ([scan_max][cornernet_ref.corner_pool.reference.scan_max] states the
rule, [scan_max_backward][cornernet_ref.corner_pool.reference.scan_max_backward] the
gradient). ``torch.cummax`` gives the same values but sends the gradient of a tie to the
last one met, the nearest. NaN counts as larger than every number
([greater][cornernet_ref.corner_pool.reference.greater]). A run of outputs that share a
maximum adds its gradients in scan order; on a line longer than ``sum_block`` (1024 by
default) a run that crosses a multiple of ``sum_block`` adds its partial sums block by block
instead, so that the blocks of a long line are walked in parallel. ``sum_block=0`` keeps
the official order on every line; on lines up to ``sum_block`` long the two are the same.

**Backends.** By default (``backend=None``) both functions call the operator
``torch.ops.cornernet_ref.corner_pool`` ([op][cornernet_ref.corner_pool.op]), which
``torch.compile`` and ``torch.export`` keep as one node of their graphs. On CUDA tensors
the operator runs the fused kernel ([fused][cornernet_ref.corner_pool.fused]), which
computes a whole corner pool in one pass over the two maps and agrees with the reference
bit for bit; where the kernel cannot be built, it warns once and runs the reference. On
every other device it runs the readable pure-PyTorch scan
([reference][cornernet_ref.corner_pool.reference]). ``backend="cuda"`` is the operator on
CUDA tensors, with an error saying what is missing if the kernel cannot be built;
``backend="reference"`` is the scan itself, differentiable PyTorch code on any device,
which ``torch.compile`` traces operation by operation. Outputs and gradients are contiguous
``(B, C, H, W)`` tensors whatever the layout of the inputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from cornernet_ref.corner_pool import reference
from cornernet_ref.corner_pool.fused import load_extension
from cornernet_ref.corner_pool.op import OPS
from cornernet_ref.corner_pool.reference import CORNERS, DIRECTIONS, SUM_BLOCK, check_sum_block

BACKENDS = ("reference", "cuda")


def _check(tensors: tuple[Tensor, ...], backend: str | None, sum_block: int) -> None:
    r"""Validate the inputs, the backend name and ``sum_block``; raise ValueError naming the
    problem (and RuntimeError for ``backend="cuda"`` when the kernel cannot be built)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    check_sum_block(sum_block)
    for x in tensors:
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point tensor, got {x.dtype}")
    first = tensors[0]
    for x in tensors[1:]:
        if x.shape != first.shape or x.dtype != first.dtype or x.device != first.device:
            raise ValueError(
                "the two maps must have the same shape, dtype and device, got "
                f"{tuple(first.shape)} {first.dtype} {first.device} and "
                f"{tuple(x.shape)} {x.dtype} {x.device}"
            )
    if backend == "cuda":
        if not first.is_cuda:
            raise ValueError(f"backend='cuda' needs CUDA tensors, got a tensor on {first.device}")
        load_extension()  # asked for by name: no fallback to the reference


def pool(
    x: Tensor, direction: str, backend: str | None = None, sum_block: int = SUM_BLOCK
) -> Tensor:
    r"""Max-pool a ``(B, C, H, W)`` tensor in one direction (``top``, ``bottom``, ``left``,
    ``right``; see the table above).

    Args:
        x: the feature map.
        direction: where each output looks: ``"top"`` pools the rows below (the maximum of
            everything below, itself included), ``"left"`` the columns to the right,
            ``"bottom"`` the rows above, ``"right"`` the columns to the left.
        backend: ``"reference"``, ``"cuda"`` or None (automatic).
        sum_block: the gradient's blocks (see above): 0 or a positive multiple of 16.

    Returns:
        The pooled map, contiguous, same shape and dtype.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {tuple(DIRECTIONS)}, got {direction!r}")
    _check((x,), backend, sum_block)
    if backend == "reference":
        return reference.pool(x, direction, sum_block)
    return OPS.pool(x, direction, sum_block)


def corner_pool(
    a: Tensor, b: Tensor, corner: str, backend: str | None = None, sum_block: int = SUM_BLOCK
) -> Tensor:
    r"""Corner pooling of two ``(B, C, H, W)`` maps: ``top(a) + left(b)`` for ``"tl"``,
    ``bottom(a) + right(b)`` for ``"br"``.

    To decide whether cell $(i, j)$ is a top-left corner, the pool looks down column $j$
    of $f_t$ (``a``) for the object's left boundary and right along row $i$ of $f_l$
    (``b``) for its top boundary. For maps of size $H \times W$ (Eq. 6, with 0-based
    indices):

    $$ t_{ij} = \begin{cases} \max\big(f_{t,ij},\; t_{(i+1)j}\big) & i < H - 1 \\
    f_{t,(H-1)j} & i = H - 1 \end{cases}
    \qquad
    l_{ij} = \begin{cases} \max\big(f_{l,ij},\; l_{i(j+1)}\big) & j < W - 1 \\
    f_{l,i(W-1)} & j = W - 1 \end{cases} $$

    and the output is $t_{ij} + l_{ij}$, computed in the input dtype: the maximum of $f_t$
    over everything below $(i, j)$, itself included, plus the maximum of $f_l$ over
    everything to its right. The bottom-right pool mirrors it: the maximum above plus the
    maximum to the left.

    Args:
        a: the map pooled along columns (its maximum below for ``tl``, above for ``br``).
        b: the map pooled along rows (its maximum to the right for ``tl``, left for ``br``).
        corner: ``"tl"`` or ``"br"``.
        backend: ``"reference"``, ``"cuda"`` or None (automatic).
        sum_block: the gradient's blocks (see above): 0 or a positive multiple of 16.

    Returns:
        The pooled map, contiguous, same shape and dtype as ``a``.
    """
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {tuple(CORNERS)}, got {corner!r}")
    _check((a, b), backend, sum_block)
    if backend == "reference":
        vertical, horizontal = CORNERS[corner]
        return reference.pool(a, vertical, sum_block) + reference.pool(b, horizontal, sum_block)
    return OPS.corner_pool(a, b, corner, sum_block)


class CornerPool(nn.Module):
    r"""Corner pooling as a module (no parameters): ``forward(a, b)`` is
    [corner_pool][cornernet_ref.corner_pool.corner_pool]``(a, b, corner)``.

    Args:
        corner: ``"tl"`` or ``"br"``.
        backend: ``"reference"``, ``"cuda"`` or None (automatic).
        sum_block: the gradient's blocks (see above): 0 or a positive multiple of 16.
    """

    def __init__(self, corner: str, backend: str | None = None, sum_block: int = SUM_BLOCK) -> None:
        super().__init__()
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {tuple(CORNERS)}, got {corner!r}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        check_sum_block(sum_block)
        self.corner, self.backend, self.sum_block = corner, backend, sum_block

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return corner_pool(a, b, self.corner, self.backend, self.sum_block)

    def extra_repr(self) -> str:
        return f"corner={self.corner!r}, backend={self.backend!r}, sum_block={self.sum_block}"


__all__ = ["BACKENDS", "CORNERS", "DIRECTIONS", "SUM_BLOCK", "CornerPool", "corner_pool", "pool"]
