r"""The fused CUDA kernel of corner pooling: one pass computes a whole corner pool.

For each (image, channel) plane, a group of lanes (a whole warp on rows of 32 vectors or
more, fewer on narrow planes, so that a warp holds several) reads the two maps once, row by
row in 16-byte vectors (4 float32, 8 bfloat16 per lane), keeps the vertical running maxima
in registers, scans each row across its lanes with shuffles and writes the sum: three
tensors of traffic, the minimum for this operation. When the planes are too few to keep the
GPU's memory busy (a single tall column, say), each plane's rows are cut into segments
walked in parallel, each starting from the column maxima of the segments before it (a first
pass over ``a`` computes them, a small kernel combines them), and a few wide planes' rows
are cut the same way into column segments. The backward pass reads the two maps and the output
gradient and writes both input gradients, with the tie rule of the reference and the same
order of additions, without atomics: each scanned line belongs to one thread, since its
sums must be added in scan order, or, on lines longer than ``sum_block``, each block of it,
and a last small kernel joins the runs that cross blocks. The source,
``cuda/corner_pool.cu``, is commented for readers new to CUDA; ``cuda/binding.cpp`` is its
PyTorch binding. The same source also builds for the CPU (``cuda/emulation``), which is how
the tests check it on machines without a GPU.
[CudaKernels][cornernet_ref.corner_pool.fused.CudaKernels] calls the two kernels; the
corner-pool operator ([op][cornernet_ref.corner_pool.op]) gives them their autograd
formula and lets ``torch.compile`` and ``torch.export`` keep them as one node.

The extension is compiled on first use by ``torch.utils.cpp_extension.load`` (nvcc and
ninja, which compiles the four dtypes' kernels at the same time; under a minute) into
PyTorch's extension cache (``$TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``), and loaded from there afterwards. Supported dtypes:
float32, float64, float16, bfloat16; planes of up to 2^31 - 257 values; any layout (inputs
are made contiguous).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE_DIR = Path(__file__).resolve().parent / "cuda"
# corner_pool.cu once per dtype, so that the build compiles the four at the same time.
DTYPES = ("float32", "float64", "float16", "bfloat16")
SOURCES = (SOURCE_DIR / "binding.cpp", *(SOURCE_DIR / f"corner_pool_{d}.cu" for d in DTYPES))
EXTENSION_NAME = "cornernet_corner_pool"

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

    The corner-pool operator ([op][cornernet_ref.corner_pool.op]) runs them for CUDA
    tensors; the tests run the CPU build of the same source, which has the same two methods
    (``tests/kernel_emulation.py``).
    """

    def forward(self, a: Tensor | None, b: Tensor | None, reverse: bool) -> Tensor:
        r"""``V(a) + H(b)`` (either map may be None), contiguous."""
        present = a if a is not None else b
        stream = torch.cuda.current_stream(present.device).cuda_stream
        return load_extension().forward(a, b, reverse, stream)

    def backward(
        self, a: Tensor | None, b: Tensor | None, grad: Tensor, reverse: bool, sum_block: int
    ) -> tuple[Tensor | None, Tensor | None]:
        r"""``(grad_a, grad_b)`` from the output gradient, summed in blocks of
        ``sum_block``; None for an absent map."""
        stream = torch.cuda.current_stream(grad.device).cuda_stream
        return tuple(load_extension().backward(a, b, grad, reverse, sum_block, stream))


CUDA_KERNELS = CudaKernels()
