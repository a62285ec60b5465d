r"""The fused CUDA kernel of corner pooling: one pass computes a whole corner pool.

For each (image, channel) plane, a group of lanes (a whole warp on rows of 32 vectors or
more, fewer on narrow planes, so that a warp holds several) reads the two maps once, row by
row in 16-byte vectors (4 float32, 8 bfloat16 per lane), keeps the vertical running maxima
in registers, scans each row across its lanes with shuffles and writes the sum: three
tensors of traffic, the minimum for this operation. When the planes are too few to keep the
GPU's memory busy (a single tall column, say), each plane's rows are cut into segments
walked in parallel, each starting from the column maxima of the segments before it (a first
pass over ``a`` computes them). The backward pass reads the two maps and the output
gradient and writes both input gradients, with the tie rule of the reference and the same
order of additions, without atomics: each scanned line belongs to one thread, since its
sums must be added in scan order. The source, ``cuda/corner_pool.cu``, is commented for
readers new to CUDA; ``cuda/binding.cpp`` is its PyTorch binding. The same source also
builds for the CPU (``cuda/emulation``), which is how the tests check it on machines without
a GPU.

The extension is compiled on first use by ``torch.utils.cpp_extension.load`` (nvcc and
ninja; a minute or so) into PyTorch's extension cache (``$TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``), and loaded from there afterwards. Supported dtypes:
float32, float64, float16, bfloat16; planes of up to 2^31 - 257 values; any layout (inputs
are made contiguous).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

SOURCE_DIR = Path(__file__).resolve().parent / "cuda"
SOURCES = (SOURCE_DIR / "binding.cpp", SOURCE_DIR / "corner_pool.cu")
EXTENSION_NAME = "cornernet_corner_pool"

# direction -> (the map it pools in the kernel: 0 = a, along columns; 1 = b, along rows,
# whether the kernel runs reversed, i.e. scans from the bottom / right border)
KERNEL_DIRECTIONS: dict[str, tuple[int, bool]] = {
    "top": (0, True),
    "bottom": (0, False),
    "left": (1, True),
    "right": (1, False),
}
KERNEL_CORNERS: dict[str, bool] = {"tl": True, "br": False}  # corner -> reversed

_extension: ModuleType | None = None
_build_error: str | None = None


def missing_requirement() -> str | None:
    r"""Why the kernel cannot be built here, or None if nothing is missing."""
    from torch.utils.cpp_extension import CUDA_HOME, is_ninja_available

    if not torch.cuda.is_available():
        return "the corner pooling CUDA kernel needs a GPU (torch.cuda.is_available() is False)"
    if CUDA_HOME is None:
        return "the corner pooling CUDA kernel needs the CUDA toolkit (nvcc): set CUDA_HOME"
    if not is_ninja_available():
        return "the corner pooling CUDA kernel needs ninja to build (pip install ninja)"
    return None


def load_extension() -> ModuleType:
    r"""Build (on first use) and return the extension module.

    Raises:
        RuntimeError: no GPU, no compiler, or the build failed; the message says which.
            A failure is remembered: later calls raise it again without rebuilding.
    """
    global _extension, _build_error
    if _extension is not None:
        return _extension
    if _build_error is None:
        _build_error = missing_requirement()
    if _build_error is None:
        from torch.utils.cpp_extension import load

        try:
            _extension = load(
                EXTENSION_NAME, [str(path) for path in SOURCES], extra_cuda_cflags=["-O3"]
            )
            return _extension
        except Exception as error:  # compiler errors come as several exception types
            _build_error = f"building the corner pooling CUDA kernel failed: {error}"
    raise RuntimeError(_build_error)


class CudaKernels:
    r"""The kernels of the compiled extension, run on the current CUDA stream.

    :class:`FusedCornerPool` takes any object with these two methods; the tests pass the
    CPU build of the same source (``tests/kernel_emulation.py``).
    """

    def forward(self, a: Tensor | None, b: Tensor | None, reverse: bool) -> Tensor:
        r"""``V(a) + H(b)`` (either map may be None), contiguous."""
        present = a if a is not None else b
        stream = torch.cuda.current_stream(present.device).cuda_stream
        return load_extension().forward(a, b, reverse, stream)

    def backward(
        self, a: Tensor | None, b: Tensor | None, grad: Tensor, reverse: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        r"""``(grad_a, grad_b)`` from the output gradient; None for an absent map."""
        stream = torch.cuda.current_stream(grad.device).cuda_stream
        return tuple(load_extension().backward(a, b, grad, reverse, stream))


CUDA_KERNELS = CudaKernels()


class FusedCornerPool(torch.autograd.Function):
    r"""Autograd function around the kernels: ``V(a) + H(b)``, either map may be None.

    The backward is a kernel, not a graph of differentiable operations: a second derivative
    through it (``create_graph=True``, then backward again) raises an error instead of
    silently treating the gradient as a constant.
    """

    @staticmethod
    def forward(
        ctx, a: Tensor | None, b: Tensor | None, reverse: bool, kernels: CudaKernels
    ) -> Tensor:
        ctx.save_for_backward(a, b)
        ctx.reverse, ctx.kernels = reverse, kernels
        return kernels.forward(a, b, reverse)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        a, b = ctx.saved_tensors
        # Skip the scan of a map whose gradient nobody needs.
        a = a if ctx.needs_input_grad[0] else None
        b = b if ctx.needs_input_grad[1] else None
        if a is None and b is None:
            return None, None, None, None
        grad_a, grad_b = ctx.kernels.backward(a, b, grad, ctx.reverse)
        return grad_a, grad_b, None, None


def pool(x: Tensor, direction: str, kernels: CudaKernels = CUDA_KERNELS) -> Tensor:
    r"""One pooling direction of a CUDA ``(B, C, H, W)`` tensor with the fused kernel."""
    which, reverse = KERNEL_DIRECTIONS[direction]
    maps = (x, None) if which == 0 else (None, x)
    return FusedCornerPool.apply(*maps, reverse, kernels)


def corner_pool(a: Tensor, b: Tensor, corner: str, kernels: CudaKernels = CUDA_KERNELS) -> Tensor:
    r"""``top(a) + left(b)`` (``"tl"``) or ``bottom(a) + right(b)`` (``"br"``), fused."""
    return FusedCornerPool.apply(a, b, KERNEL_CORNERS[corner], kernels)
