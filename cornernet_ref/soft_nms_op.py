r"""The compiled soft-NMS: the official per-class loop in C++, on the CPU and on a GPU.

[soft_nms][cornernet_ref.decode.soft_nms] states the equation, and
[soft_nms_vectorised][cornernet_ref.decode.soft_nms_vectorised] computes it as tensor
operations, one step per box of the largest class. Each step is a few dozen operations, and
an eager operation costs microseconds on a CPU whatever its size: the loop itself, compiled,
is much faster. It is written once, as a function of one class (``csrc/soft_nms.h``), and
built twice:

- CPU (``csrc/soft_nms_cpu.cpp``): the classes one after the other, on one core;
- CUDA (``csrc/soft_nms_cuda.cu``): one thread per class, launched on the current stream;
  the host waits for nothing.

Why not ``torch.utils.cpp_extension``: the sources use no PyTorch header, so they build in
about a second with ``g++`` (an extension takes a minute on a small machine), which keeps
the first test run of a fresh environment short, and the build does not depend on the
PyTorch version. They are compiled on first use into ``$CORNERNET_CACHE`` (by default
``~/.cache/cornernet_ref``), named by a hash of the sources, the compiler and its flags, and
called through ``ctypes`` on the tensors' memory.

[soft_nms_compiled][cornernet_ref.soft_nms_op.soft_nms_compiled] is also the operator
``torch.ops.cornernet_ref.soft_nms`` (a ``torch.library.custom_op``, with a fake
implementation for ``torch.compile``); [soft_nms_all][cornernet_ref.decode.soft_nms_all]
calls the function directly, since on a typical image the dispatcher adds a large share of
the time (``benchmarks/soft_nms.py``: ``torch_op`` beside ``soft_nms_all``).
[available][cornernet_ref.soft_nms_op.available] says whether the build for a device works
(a failure is remembered, with its reason).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
METHODS = {"linear": 1, "gaussian": 2}  # the official codes, as in csrc/soft_nms.h
BUILD_TIMEOUT_S = 300  # a compiler that hangs must not hang the caller

# device type -> (compiler, flags, sources). No contraction into fused multiply-adds, so
# that both builds round as the official float32 code does.
BUILDS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "cpu": (
        os.environ.get("CXX", "g++"),
        ("-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off"),
        ("soft_nms_cpu.cpp",),
    ),
    "cuda": (
        "nvcc",
        ("-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "--fmad=false", "-arch=native"),
        ("soft_nms_cuda.cu",),
    ),
}
_libraries: dict[str, ctypes.CDLL] = {}
_build_errors: dict[str, str] = {}


def cache_dir() -> Path:
    r"""Where the built libraries are kept: ``$CORNERNET_CACHE`` or ``~/.cache/cornernet_ref``."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cornernet_ref"
    return Path(os.environ.get("CORNERNET_CACHE", default))


def build(device_type: str) -> Path:
    r"""Compile the library for ``"cpu"`` or ``"cuda"`` unless the cache has it; its path.

    Raises:
        RuntimeError: no compiler, or the compiler failed; the message says which.
    """
    compiler, flags, sources = BUILDS[device_type]
    found = shutil.which(compiler)
    if found is None:
        raise RuntimeError(f"the compiled soft-NMS for {device_type} needs {compiler}")
    paths = [SOURCE_DIR / name for name in (*sources, "soft_nms.h")]
    digest = hashlib.sha256("\0".join((found, *flags)).encode())
    for path in paths:
        digest.update(path.read_bytes())
    target = cache_dir() / f"soft_nms_{device_type}_{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed: a concurrent build or reader never sees half a file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [found, *flags, "-o", str(built), *(str(SOURCE_DIR / s) for s in sources)]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(
                f"building the compiled soft-NMS took over {BUILD_TIMEOUT_S} s"
            ) from error
        if result.returncode != 0:
            raise RuntimeError(f"building the compiled soft-NMS failed: {result.stderr.strip()}")
        os.replace(built, target)
    return target


def load(device_type: str) -> ctypes.CDLL:
    r"""The library for ``"cpu"`` or ``"cuda"``, built on first use.

    Raises:
        RuntimeError: as :func:`build`; a failure is remembered and raised again.
    """
    if device_type in _libraries:
        return _libraries[device_type]
    if device_type not in BUILDS:
        raise RuntimeError(f"no compiled soft-NMS for {device_type} tensors")
    if device_type not in _build_errors:
        try:
            library = ctypes.CDLL(str(build(device_type)))
            options = [ctypes.c_int] + [ctypes.c_float] * 3
            if device_type == "cpu":  # total, 6 tensors, options; total, 4 tensors, options
                library.soft_nms_cpu.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 6, *options]
                library.soft_nms_cpu.restype = None
                library.soft_nms_rows.argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 4, *options]
                library.soft_nms_rows.restype = None
            else:  # total, 4 tensors, options, device, stream
                pointers = [ctypes.c_int64, *[ctypes.c_void_p] * 4]
                place = [ctypes.c_int, ctypes.c_void_p]
                library.soft_nms_cuda.argtypes = [*pointers, *options, *place]
                library.soft_nms_cuda.restype = ctypes.c_int
            _libraries[device_type] = library
            return library
        except (RuntimeError, OSError) as error:
            _build_errors[device_type] = str(error)
    raise RuntimeError(_build_errors[device_type])


def available(device_type: str) -> bool:
    r"""Whether the compiled soft-NMS builds and loads for ``"cpu"`` or ``"cuda"`` tensors."""
    try:
        load(device_type)
    except RuntimeError:
        return False
    return True


def soft_nms_compiled(
    boxes: Tensor,
    scores: Tensor,
    keys: Tensor,
    method: int,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Soft-NMS of ``N`` boxes, each class on its own, with outputs of a fixed size.

    Args:
        boxes: ``(N, 4)`` ``(x1, y1, x2, y2)``, on the CPU or a GPU (computed in float32).
        scores: ``(N,)``.
        keys: ``(N,)`` int64 class of each box, ``-1`` for a box to leave out.
        method: ``METHODS["linear"]`` or ``METHODS["gaussian"]``.
        sigma: as :func:`cornernet_ref.decode.soft_nms`.
        iou_threshold: as :func:`cornernet_ref.decode.soft_nms`.
        score_threshold: as :func:`cornernet_ref.decode.soft_nms`.

    Returns:
        ``(order, new_scores, kept)``, each ``(N,)``: every box index once, the kept boxes
        first (grouped by key ascending, in the order kept within a class), then the
        others; the decayed score of box ``order[n]``; whether it is kept.

    Raises:
        RuntimeError: the library does not build for the tensors' device (:func:`load`).
    """
    device = boxes.device.type
    library = load(device)  # raises before anything is allocated
    boxes, scores, keys = boxes.float().contiguous(), scores.float().contiguous(), keys.contiguous()
    total = len(keys)
    if device == "cpu":
        order, new_scores = torch.empty_like(keys), torch.empty_like(scores)
        kept = torch.empty(total, dtype=torch.bool)
        tensors = (boxes, scores, keys, order, new_scores, kept)
        library.soft_nms_cpu(
            total, *(t.data_ptr() for t in tensors), method, sigma, iou_threshold, score_threshold
        )
        return order, new_scores, kept
    stream = torch.cuda.current_stream(boxes.device).cuda_stream

    def launch(*args: int | float) -> None:
        error = library.soft_nms_cuda(*args, boxes.device.index, stream)
        if error != 0:
            raise RuntimeError(f"the soft-NMS kernel did not launch: CUDA error {error}")

    return soft_nms_sorted_rows(
        boxes, scores, keys, method, sigma, iou_threshold, score_threshold, launch
    )


def soft_nms_sorted_rows(
    boxes: Tensor,
    scores: Tensor,
    keys: Tensor,
    method: int,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
    launch: Callable[..., None],
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The device's way of :func:`soft_nms_compiled`: the rows sorted by class with
    PyTorch, then ``launch`` runs the loop of each class (on a GPU, the CUDA kernel; the
    tests pass the CPU build of the same loop, ``soft_nms_rows``)."""
    sorted_keys, order = torch.sort(keys, stable=True)  # a class is a run of equal keys
    rows = torch.cat((boxes, scores[:, None]), dim=1)[order]  # (N, 5): x1 y1 x2 y2 s
    kept = torch.empty(len(keys), dtype=torch.bool, device=keys.device)
    pointers = (t.data_ptr() for t in (sorted_keys, rows, order, kept))
    launch(len(keys), *pointers, method, sigma, iou_threshold, score_threshold)
    return kept_first(order, rows[:, 4], kept)


def kept_first(order: Tensor, scores: Tensor, kept: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(N,)`` ``order``, ``scores`` and ``kept`` reordered: the kept boxes first, in their
    order, then the others (a stable sort on "not kept", done on the tensors' device)."""
    first = torch.sort((~kept).to(torch.uint8), stable=True).indices
    return order[first], scores[first], kept[first]


# The same function as a PyTorch operator, for torch.compile, export and torch.library.opcheck.
# soft_nms_all calls the function itself: on a typical image the dispatcher adds a large share
# of the time (benchmarks/soft_nms.py: torch_op beside soft_nms_all).
soft_nms_op = torch.library.custom_op("cornernet_ref::soft_nms", mutates_args=())(soft_nms_compiled)


@soft_nms_op.register_fake
def _(boxes, scores, keys, method, sigma, iou_threshold, score_threshold):
    total = keys.shape[0]
    return (
        keys.new_empty(total),
        boxes.new_empty(total, dtype=torch.float32),
        keys.new_empty(total, dtype=torch.bool),
    )


__all__ = [
    "METHODS",
    "available",
    "build",
    "cache_dir",
    "load",
    "kept_first",
    "soft_nms_compiled",
    "soft_nms_sorted_rows",
    "soft_nms_op",
]
