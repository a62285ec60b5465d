"""The CUDA kernel of corner pooling built as host C++ and run on the CPU, for the tests.

``cornernet_ref/corner_pool/cuda/corner_pool.cu`` compiles unchanged with g++ when the folder
``cuda/emulation`` comes first on the include path: its ``cuda_runtime.h`` turns blocks into
``std::thread``s, ``__syncthreads()`` into a ``std::barrier`` and launches into plain calls
(see that header). :class:`EmulatedKernels` runs the result through ctypes with the interface
of the CUDA extension, so the equivalence tests run the real kernel source without a GPU;
the sanitizer builds link the same code into a program (``emulation/sanitize.cpp``).

Builds are cached in ``$CORNERNET_EMULATION_CACHE`` (default
``~/.cache/cornernet_ref/kernel_emulation``) under a hash of the sources, the flags and the
compiler version: a session builds each variant once, and later sessions reuse it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.cpp_extension import include_paths

from cornernet_ref.corner_pool import fused

SOURCE_DIR = fused.SOURCE_DIR  # cornernet_ref/corner_pool/cuda
EMULATION_DIR = SOURCE_DIR / "emulation"
CACHE_DIR = Path(
    os.environ.get(
        "CORNERNET_EMULATION_CACHE", Path.home() / ".cache" / "cornernet_ref" / "kernel_emulation"
    )
)
COMPILER = os.environ.get("CXX", "g++")
COMMON_FLAGS = ["-std=c++20", "-pthread", "-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas"]
# The kernel's own flags for each build: the library the tests load, and the two sanitizers.
VARIANTS: dict[str, list[str]] = {
    "library": ["-O2", "-fPIC", "-shared"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
    "undefined": ["-O1", "-g", "-fsanitize=undefined", "-fno-sanitize-recover=all"],
}
SIZES = [ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_bool]  # planes, H, W, reverse
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


class BuildError(RuntimeError):
    """The compiler is missing or rejected the sources; the message has its output."""


def compiler_version() -> str:
    try:
        result = subprocess.run([COMPILER, "--version"], capture_output=True, text=True)
    except FileNotFoundError as error:
        raise BuildError(f"no C++ compiler {COMPILER!r} (set CXX)") from error
    return result.stdout


def build(variant: str, source_dir: Path = SOURCE_DIR) -> Path:
    """Compile the kernels of ``source_dir`` (a copy of ``cuda/``, possibly altered) as
    ``variant``: the shared library (``"library"``) or the sanitizer program (``"thread"``,
    ``"undefined"``). Returns the path of the build, cached by content."""
    sources = [source_dir / "emulation" / "harness.cpp"]
    if variant != "library":
        sources.append(source_dir / "emulation" / "sanitize.cpp")
    inputs = sorted(source_dir.glob("*.cu")) + sorted(source_dir.glob("*.h"))
    inputs += sorted((source_dir / "emulation").glob("*"))
    flags = COMMON_FLAGS + VARIANTS[variant]
    flags += [f"-I{source_dir / 'emulation'}"]
    flags += [f"-isystem{path}" for path in include_paths()]
    digest = hashlib.sha256(compiler_version().encode() + " ".join(flags).encode())
    for path in inputs:
        digest.update(path.name.encode() + path.read_bytes())
    target = (
        CACHE_DIR
        / f"{variant}-{digest.hexdigest()[:20]}"
        / ("kernels.so" if variant == "library" else "sanitize")
    )
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        command = [COMPILER, *flags, *map(str, sources), "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(f"{' '.join(command)}\n{result.stderr[-4000:]}")
        partial.replace(target)  # atomic: a concurrent build never sees half a file
    return target


def sanitizer_missing(variant: str) -> str | None:
    """Why the compiler cannot build with this sanitizer (no runtime library), or None."""
    with tempfile.TemporaryDirectory() as scratch:
        program = Path(scratch) / "probe.cpp"
        program.write_text("int main() { return 0; }\n")
        command = [COMPILER, *VARIANTS[variant], str(program), "-o", str(Path(scratch) / "probe")]
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except FileNotFoundError:
            return f"no C++ compiler {COMPILER!r}"
        if result.returncode != 0:
            return f"{COMPILER} cannot link -fsanitize={variant}: {result.stderr.strip()[-300:]}"
    return None


def copy_sources(destination: Path) -> Path:
    """A copy of ``cuda/`` in ``destination``, to alter on purpose; returns its path."""
    copy = destination / "cuda"
    shutil.copytree(SOURCE_DIR, copy)
    return copy


def pointer(x: Tensor | None) -> ctypes.c_void_p | None:
    return None if x is None else ctypes.c_void_p(x.data_ptr())


ALIGNMENT = 512  # bytes: what PyTorch's CUDA caching allocator guarantees


def empty_aligned(shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A zeroed CPU tensor whose data starts on an ALIGNMENT-byte boundary, as a CUDA
    tensor's does (the CPU allocator aligns to 64 bytes only), at offset 0 of its storage."""
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    buffer = bytearray(count * torch.empty((), dtype=dtype).element_size() + ALIGNMENT)
    skip = -torch.frombuffer(buffer, dtype=torch.uint8).data_ptr() % ALIGNMENT
    return torch.frombuffer(buffer, dtype=dtype, count=count, offset=skip).view(shape)


class EmulatedKernels:
    """The kernels of ``corner_pool.cu`` on the CPU, with the interface of the CUDA
    extension's binding: CPU tensors in, contiguous CPU tensors out. ``segments``: how many
    segments the forward cuts each plane's rows into; 0 lets the kernel choose, as on a GPU."""

    def __init__(self, library: Path, segments: int = 0) -> None:
        self.segments = segments
        self.library = ctypes.CDLL(str(library))
        self.library.corner_pool_forward.restype = ctypes.c_char_p
        self.library.corner_pool_forward.argtypes = [
            ctypes.c_int,
            *[ctypes.c_void_p] * 3,
            *SIZES,
            ctypes.c_int,  # segments
        ]
        self.library.corner_pool_backward.restype = ctypes.c_char_p
        self.library.corner_pool_backward.argtypes = [
            ctypes.c_int,
            *[ctypes.c_void_p] * 5,
            *SIZES,
            ctypes.c_int,  # sum_block
        ]
        self.library.corner_pool_trace_end.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self.library.emulation_shuffle.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p]

    SHUFFLES = ("sync", "up", "down", "xor")

    def shuffle(self, kind: str, operand: int, width: int) -> list[int]:
        """The lane each of the 32 lanes of a warp reads in one shuffle of the emulation:
        ``__shfl_<kind>_sync`` (``sync``: ``__shfl_sync``) with ``operand`` (the source lane,
        the delta or the mask) and ``width``."""
        got = (ctypes.c_int * 32)()
        self.library.emulation_shuffle(
            self.SHUFFLES.index(kind), operand, width, ctypes.cast(got, ctypes.c_void_p)
        )
        return list(got)

    @contextlib.contextmanager
    def trace(self) -> Iterator[list[dict[str, int]]]:
        """The global memory requests of the kernels launched inside the ``with`` block,
        one warp instruction each (``cuda/emulation/cuda_runtime.h``): a list, filled on
        exit, of ``{"store", "lanes", "bytes", "sectors", "lines", "count"}``, ``count``
        requests of each kind (``sectors`` of 32 bytes and cache ``lines`` of 128 bytes
        touched by one request). The loads and stores of the maps only, not the carries."""
        requests: list[dict[str, int]] = []
        self.library.corner_pool_trace_begin()
        try:
            yield requests
        finally:
            size = 1 << 16
            while True:  # the trace stays until the next begins: ask again if it was cut
                text = ctypes.create_string_buffer(size)
                needed = self.library.corner_pool_trace_end(text, size)
                if needed < size:
                    break
                size = needed + 1
            keys = ("store", "lanes", "bytes", "sectors", "lines", "count")
            for line in text.value.decode().splitlines():
                requests.append(dict(zip(keys, map(int, line.split()), strict=True)))

    def top_left_requests(
        self, direction: str, a: Tensor, b: Tensor, grad: Tensor
    ) -> list[dict[str, int]]:
        """The requests (see :meth:`trace`) of one top-left pool of ``a`` and ``b``:
        ``direction`` ``"forward"``, or ``"backward"`` with ``grad`` the output's gradient."""
        with self.trace() as requests:
            if direction == "forward":
                self.forward(a, b, reverse=True)
            else:
                self.backward(a, b, grad, reverse=True, sum_block=1024)
        return requests

    @staticmethod
    def check(error: bytes | None) -> None:
        if error is not None:
            raise RuntimeError(error.decode())

    def forward(self, a: Tensor | None, b: Tensor | None, reverse: bool) -> Tensor:
        map_ = a if a is not None else b
        a, b = (None if x is None else x.contiguous() for x in (a, b))
        out = empty_aligned(map_.shape, map_.dtype)
        if out.numel():
            planes, height, width = map_.shape[0] * map_.shape[1], *map_.shape[2:]
            self.check(
                self.library.corner_pool_forward(
                    DTYPE_CODES[map_.dtype],
                    pointer(a),
                    pointer(b),
                    pointer(out),
                    planes,
                    height,
                    width,
                    reverse,
                    self.segments,
                )
            )
        return out

    def backward(
        self, a: Tensor | None, b: Tensor | None, grad: Tensor, reverse: bool, sum_block: int
    ) -> tuple[Tensor | None, Tensor | None]:
        a, b = (None if x is None else x.contiguous() for x in (a, b))
        grad = grad.contiguous()
        grad_a, grad_b = (None if x is None else empty_aligned(x.shape, x.dtype) for x in (a, b))
        if grad.numel():
            planes, height, width = grad.shape[0] * grad.shape[1], *grad.shape[2:]
            self.check(
                self.library.corner_pool_backward(
                    DTYPE_CODES[grad.dtype],
                    pointer(a),
                    pointer(b),
                    pointer(grad),
                    pointer(grad_a),
                    pointer(grad_b),
                    planes,
                    height,
                    width,
                    reverse,
                    sum_block,
                )
            )
        return grad_a, grad_b


@functools.cache
def emulated_kernels(segments: int = 0) -> EmulatedKernels:
    """The CPU build of the kernels, compiled once (and cached across sessions); ``segments``
    as in :class:`EmulatedKernels`."""
    return EmulatedKernels(build("library"), segments)
