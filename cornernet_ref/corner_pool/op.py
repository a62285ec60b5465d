r"""Corner pooling as a PyTorch operator: ``torch.ops.cornernet_ref.corner_pool``.

``torch.compile`` and ``torch.export`` turn a model into a graph of PyTorch operators by
running its Python code on placeholder tensors. They cannot look inside a function of a
compiled extension such as the fused kernel: the tracing stops there (a graph break, or an
error with ``fullgraph=True``). Registered with ``torch.library``, corner pooling becomes
one operator, like ``aten::conv2d``: the tracers keep it whole, as one node of the graph,
and when the graph runs, the operator runs the implementation that suits the device.

Two operators, in the namespace ``cornernet_ref``:

* ``corner_pool(Tensor? a, Tensor? b, bool reverse, int sum_block) -> Tensor``:
  $V(a) + H(b)$;
* ``corner_pool_backward(Tensor? a, Tensor? b, Tensor grad, bool reverse, int sum_block)
  -> Tensor[]``: from the output gradient ``grad``, the gradients of the maps given,
  ``a``'s first, each line's sums taken in blocks of ``sum_block`` positions
  ([scan_max_backward][cornernet_ref.corner_pool.reference.scan_max_backward]; the
  forward only hands it on to the backward).

$V$ pools ``a`` along its columns and $H$ pools ``b`` along its rows, from the bottom and
right borders when ``reverse`` (``top(a) + left(b)``, the top-left pool), from the top and
left ones otherwise (``bottom(a) + right(b)``). This is the fused kernel's signature. A map
may be absent: one pooling direction is the operator with one map, ``pool(x, "top")`` is
``corner_pool(x, None, True)``, so one operator and one autograd formula serve both.

Each operator has

* **an implementation per device**: the fused kernel
  ([CudaKernels][cornernet_ref.corner_pool.fused.CudaKernels]) for CUDA tensors, the
  reference scan ([ReferenceKernels][cornernet_ref.corner_pool.reference.ReferenceKernels])
  for every other device. On a CUDA tensor whose kernel cannot be built (no compiler, say),
  the reference runs instead, with a warning the first time. An implementation runs
  eagerly when the graph runs, never under the tracer;
* **a fake implementation**, which gives the shape, dtype and device of the results without
  computing them: all the tracers need to follow a graph through the operator;

and the forward operator has **an autograd formula**: it saves the two maps, and its
backward calls the backward operator with the maps whose gradient is needed (an unneeded map
is not scanned). The backward operator has no formula of its own: differentiating twice
raises an error instead of silently treating the gradient as a constant.

[CornerPoolOps][cornernet_ref.corner_pool.op.CornerPoolOps] registers the two operators;
the package's ``OPS`` are those above. The tests register
the same operators in a namespace of their own over the kernel built for the CPU
(``tests/kernel_emulation.py``), to check the kernel through this very autograd formula.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from cornernet_ref.corner_pool.fused import CUDA_KERNELS, load_extension
from cornernet_ref.corner_pool.reference import DIRECTIONS, REFERENCE_KERNELS, SUM_BLOCK

FORWARD_SCHEMA = "(Tensor? a, Tensor? b, bool reverse, int sum_block) -> Tensor"
BACKWARD_SCHEMA = "(Tensor? a, Tensor? b, Tensor grad, bool reverse, int sum_block) -> Tensor[]"


class Kernels(Protocol):
    r"""What an implementation provides: the fused kernel's interface."""

    def forward(self, a: Tensor | None, b: Tensor | None, reverse: bool) -> Tensor:
        r"""``V(a) + H(b)``, contiguous; either map may be None."""

    def backward(
        self, a: Tensor | None, b: Tensor | None, grad: Tensor, reverse: bool, sum_block: int
    ) -> tuple[Tensor | None, Tensor | None]:
        r"""``(grad_a, grad_b)``, contiguous, summed in blocks of ``sum_block``; None for an
        absent map."""


_warned_fallback = False


def cuda_kernels() -> Kernels:
    r"""The fused kernel (built on first use); the reference where it cannot be built, with a
    warning the first time."""
    global _warned_fallback
    try:
        load_extension()
    except RuntimeError as error:
        if not _warned_fallback:
            warnings.warn(f"{error}; corner pooling falls back to the reference", stacklevel=2)
            _warned_fallback = True
        return REFERENCE_KERNELS
    return CUDA_KERNELS


def given(a: Tensor | None, b: Tensor | None) -> list[Tensor]:
    r"""The maps that are not None, ``a`` first; at least one."""
    maps = [x for x in (a, b) if x is not None]
    if not maps:
        raise ValueError("corner pooling needs at least one of the two maps")
    return maps


def fake_forward(a: Tensor | None, b: Tensor | None, reverse: bool, sum_block: int) -> Tensor:
    r"""The result without the data: contiguous, the shape, dtype and device of the maps."""
    x = given(a, b)[0]
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def fake_backward(
    a: Tensor | None, b: Tensor | None, grad: Tensor, reverse: bool, sum_block: int
) -> list[Tensor]:
    r"""One contiguous gradient like ``grad`` per map given."""
    return [torch.empty(grad.shape, dtype=grad.dtype, device=grad.device) for _ in given(a, b)]


def save_maps(ctx, inputs: tuple[Tensor | None, Tensor | None, bool, int], output: Tensor) -> None:
    r"""What the backward needs: the two maps (it finds their argmax again), ``reverse`` and
    ``sum_block``."""
    a, b, reverse, sum_block = inputs
    ctx.save_for_backward(a, b)
    ctx.reverse, ctx.sum_block = reverse, sum_block


def reference_kernels() -> Kernels:
    r"""The reference: the implementation for every device without one of its own."""
    return REFERENCE_KERNELS


def forward_by(kernels: Callable[[], Kernels]) -> Callable[..., Tensor]:
    r"""The forward operator's implementation by ``kernels()``."""

    def forward(a: Tensor | None, b: Tensor | None, reverse: bool, sum_block: int) -> Tensor:
        return kernels().forward(a, b, reverse)

    return forward


def backward_by(kernels: Callable[[], Kernels]) -> Callable[..., list[Tensor]]:
    r"""The backward operator's implementation by ``kernels()``."""

    def backward(
        a: Tensor | None, b: Tensor | None, grad: Tensor, reverse: bool, sum_block: int
    ) -> list[Tensor]:
        # An operator cannot return an absent tensor: the gradients of the maps given only.
        return [g for g in kernels().backward(a, b, grad, reverse, sum_block) if g is not None]

    return backward


class CornerPoolOps:
    r"""The two corner-pool operators of ``namespace``, registered on construction.

    Args:
        namespace: the operators are ``torch.ops.<namespace>.corner_pool`` and
            ``torch.ops.<namespace>.corner_pool_backward``.
        kernels: device type (``"cuda"``, ``"cpu"``, ...) -> a function that returns the
            implementation for that device; it is called at each run, so that a kernel is
            built on first use. Other devices run the reference.
    """

    def __init__(self, namespace: str, kernels: dict[str, Callable[[], Kernels]]) -> None:
        self.forward = torch.library.custom_op(
            f"{namespace}::corner_pool",
            forward_by(reference_kernels),
            mutates_args=(),
            schema=FORWARD_SCHEMA,
        )
        self.backward = torch.library.custom_op(
            f"{namespace}::corner_pool_backward",
            backward_by(reference_kernels),
            mutates_args=(),
            schema=BACKWARD_SCHEMA,
        )
        for device, implementation in kernels.items():
            self.forward.register_kernel(device, forward_by(implementation))
            self.backward.register_kernel(device, backward_by(implementation))
        self.forward.register_fake(fake_forward)
        self.backward.register_fake(fake_backward)
        self.forward.register_autograd(self.differentiate, setup_context=save_maps)

    def differentiate(self, ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        r"""The autograd formula: the gradients of ``a`` and ``b`` (None for ``reverse`` and
        ``sum_block``)."""
        a, b = ctx.saved_tensors
        # Only the maps whose gradient is needed are scanned.
        a = a if ctx.needs_input_grad[0] else None
        b = b if ctx.needs_input_grad[1] else None
        gradients = iter(self.backward(a, b, grad, ctx.reverse, ctx.sum_block))
        return (
            None if a is None else next(gradients),
            None if b is None else next(gradients),
            None,
            None,
        )

    def pool(self, x: Tensor, direction: str, sum_block: int = SUM_BLOCK) -> Tensor:
        r"""One pooling direction: ``x`` is the map ``b`` (``left``, ``right``) or ``a``."""
        dim, from_end = DIRECTIONS[direction]
        if dim == 3:
            return self.forward(None, x, from_end, sum_block)
        return self.forward(x, None, from_end, sum_block)

    def corner_pool(self, a: Tensor, b: Tensor, corner: str, sum_block: int = SUM_BLOCK) -> Tensor:
        r"""``top(a) + left(b)`` (``"tl"``) or ``bottom(a) + right(b)`` (``"br"``)."""
        return self.forward(a, b, corner == "tl", sum_block)  # tl scans from the bottom, right


OPS = CornerPoolOps("cornernet_ref", {"cuda": cuda_kernels})
