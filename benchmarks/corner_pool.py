"""Speed of top-left corner pooling, ``top(a) + left(b)``: forward and forward + backward.

Implementations compared (all compute the same values; the gradients differ on ties as
noted):

* ``row_loop``: the official extension's algorithm step for step in PyTorch, in the
  tensor's own layout: a loop over rows (or columns) keeping the running maximum; backward,
  the official loop keeping a running argmax (strictly greater) and scatter-adding each
  row's gradient to it. Official tie rule.
* ``log_doubling``: the official forward, ``log2(H)`` passes of ``max(x[i], x[i + s])`` with
  ``s = 1, 2, 4, ...``; backward as ``row_loop``. The official extension is this forward
  with the ``row_loop`` backward.
* ``cummax``: ``torch.cummax`` on the flipped tensor; autograd's backward sends ties to the
  nearest maximum instead.
* ``reference``: ``cornernet_ref.corner_pool`` with ``backend="reference"``.
* ``operator``: ``cornernet_ref.corner_pool`` as a user calls it, on a CPU (the operator:
  a forward by ``running_max``, which doubles as the official forward does where that
  gives the same bits; a backward that scans again), which on a GPU is ``cuda``.
* ``cuda``: the fused kernel (``backend="cuda"``), on a GPU only.

The implementations run in turn, round after round, so that a change of load on the
machine affects them alike. Reported per implementation: the median and the best time over
``--repeats`` rounds; the median over rounds of the time relative to ``cummax``'s; the
bandwidth implied by the median time, counting only the bytes the operation must move
(forward: read a and b, write the output; backward: read a, b and the output gradient,
write two gradients); on a GPU, that bandwidth as a fraction of the device's copy
bandwidth (a 1 GiB device-to-device copy, read + write) timed the same way in the same
process, and the checks of the kernel's targets (``targets``).

How a call is timed (``time_once``). On a GPU, between two CUDA events recorded around the
call, after a write of 256 MiB that flushes the L2 cache, so that each run reads its maps
from memory, and after a 3 ms wait queued on the GPU, so that the host's work for the call
(Python, dispatch, launches) is done before the GPU reaches it: the events time the GPU's
work alone, and the host's time is reported beside it. The median of 20 runs after a
warm-up. On a CPU, by the wall clock. On a GPU the maps hold 2^25 numbers or more, float32
and bfloat16, at the two main shapes and at thin, one-row, one-column, tall and wide maps
(``GPU_SHAPES``); the other implementations run at the main shapes only (elsewhere the
Python loops over H or W steps, and ``cummax`` on long lines, take minutes).

    python benchmarks/corner_pool.py                 # on the GPU if there is one, else CPU
    python benchmarks/corner_pool.py --device cpu --repeats 5
    python benchmarks/corner_pool.py --dry-run       # every line at toy size on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from report import header, write_result
from torch import Tensor

from cornernet_ref.corner_pool import corner_pool

ROOT = Path(__file__).resolve().parents[1]
# name -> (B, C, H, W). On a GPU every map holds 2^25 numbers or more (128 MiB in float32,
# 64 MiB in bfloat16): the three maps of a forward never fit in the 60 MB L2 of an H200.
GPU_SHAPES = {
    "training": (16, 128, 128, 128),  # a training batch's pooling input
    "large": (4, 256, 192, 256),  # wider than one chunk of float32, fewer planes
    "thin": (2048, 16, 32, 32),  # small planes: several per warp
    "one_row": (16, 128, 1, 16384),
    "one_column": (16, 128, 16384, 1),
    "tall": (1, 1, 2**23, 4),  # one plane: the kernel cuts its columns into segments
    "wide": (1, 1, 4, 2**23),
}
MAIN_SHAPES = ("training", "large")  # where the targets hold; elsewhere within 2x
CPU_SHAPES = {"training": (2, 128, 128, 128), "large": (1, 128, 192, 256)}
DRY_RUN_SHAPES = {
    "training": (1, 8, 16, 16),
    "large": (1, 4, 12, 20),
    "one_row": (1, 2, 1, 40),
    "one_column": (1, 2, 40, 1),
    "tall": (1, 1, 64, 4),
}
MAPS_MOVED = {"forward": 3, "forward_backward": 8}  # maps read or written per call
TARGET_FRACTION = 0.8  # of the copy bandwidth, at the main shapes


# --- The implementations ----------------------------------------------------------------


def official_backward(x: Tensor, grad: Tensor, dim: int) -> Tensor:
    """The official backward of ``top`` (dim 2) or ``left`` (dim 3): from the far border,
    a running maximum and argmax (moved by a strictly greater value), and each row's
    gradient scatter-added to its argmax."""
    length = x.shape[dim]
    result = torch.zeros_like(x)
    best = x.select(dim, length - 1).clone()
    best_at = torch.full_like(best, length - 1, dtype=torch.long)
    result.select(dim, length - 1).copy_(grad.select(dim, length - 1))
    for i in range(length - 2, -1, -1):
        current = x.select(dim, i)
        moved = current > best
        best = torch.where(moved, current, best)
        best_at.masked_fill_(moved, i)
        result.scatter_add_(dim, best_at.unsqueeze(dim), grad.select(dim, i).unsqueeze(dim))
    return result


def row_loop_forward(x: Tensor, dim: int) -> Tensor:
    """Running maximum from the far border, one row (or column) per step."""
    result = x.clone()
    for i in range(x.shape[dim] - 2, -1, -1):
        row = result.select(dim, i)
        torch.maximum(row, result.select(dim, i + 1), out=row)
    return result


def log_doubling_forward(x: Tensor, dim: int) -> Tensor:
    """The official forward: ``result[i] = max(result[i], result[i + s])``, s = 1, 2, 4..."""
    result = x.clone()
    length, step = x.shape[dim], 1
    while step < length:
        head = result.narrow(dim, 0, length - step)
        torch.maximum(head, result.narrow(dim, step, length - step).clone(), out=head)
        step *= 2
    return result


def official_style(forward: Callable[[Tensor, int], Tensor]) -> type[torch.autograd.Function]:
    """An autograd function with the given forward and the official backward."""

    class OfficialStylePool(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: Tensor, dim: int) -> Tensor:
            ctx.save_for_backward(x)
            ctx.dim = dim
            return forward(x, dim)

        @staticmethod
        def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
            (x,) = ctx.saved_tensors
            return official_backward(x, grad.contiguous(), ctx.dim), None

    return OfficialStylePool


RowLoop = official_style(row_loop_forward)
LogDoubling = official_style(log_doubling_forward)


def cummax_top_left(a: Tensor, b: Tensor) -> Tensor:
    return a.flip(2).cummax(2).values.flip(2) + b.flip(3).cummax(3).values.flip(3)


IMPLEMENTATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "row_loop": lambda a, b: RowLoop.apply(a, 2) + RowLoop.apply(b, 3),
    "log_doubling": lambda a, b: LogDoubling.apply(a, 2) + LogDoubling.apply(b, 3),
    "cummax": cummax_top_left,
    "reference": lambda a, b: corner_pool(a, b, "tl", backend="reference"),
    "operator": lambda a, b: corner_pool(a, b, "tl"),
    "cuda": lambda a, b: corner_pool(a, b, "tl", backend="cuda"),
}


# --- Timing -----------------------------------------------------------------------------

L2_FLUSH_BYTES = 256 * 2**20  # more than the L2 cache of any GPU this runs on (60 MB on H200)
_flush: dict[torch.device, Tensor] = {}
HOLD_MS = 3.0  # the GPU waits this long before each timed call (see time_once)
_hold: dict[torch.device, int] = {}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hold_cycles(device: torch.device, hold_ms: float = HOLD_MS) -> int:
    """GPU clock cycles that ``torch.cuda._sleep`` spins for to keep the GPU busy about
    ``hold_ms`` (timed once with CUDA events)."""
    if device not in _hold:
        cycles = 2**20
        torch.cuda._sleep(cycles)  # warm-up: the clocks rise from idle
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        _hold[device] = int(cycles * hold_ms / start.elapsed_time(end))
    return _hold[device]


def time_once(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Seconds taken by one call of ``run``: (device time, host time).

    On a GPU the device time is measured between two CUDA events recorded around the call.
    Before them, the L2 cache is flushed (256 MiB written), so that no run reads what the
    one before left in it, and the GPU is then held busy for ``HOLD_MS`` (``_sleep``): the
    host queues the call (Python, dispatch, allocations, launches) while the GPU waits, so
    the events time the GPU's work alone. Without the hold, a call whose host work outlasts
    the flush is timed from the end of the flush to the end of its kernels, and a kernel
    of 0.1 ms measures as the host's 0.3 ms. The host time is the wall clock around the
    call's queuing; a sample whose host time exceeds the hold is not a device time, and
    :func:`measure` counts them (``host_bound_samples``). On a CPU both are the wall clock
    around the call."""
    if device.type == "cuda":
        if device not in _flush:
            _flush[device] = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _flush[device].zero_()
        torch.cuda._sleep(hold_cycles(device))
        start.record()
        host_start = time.perf_counter()
        run()
        host = time.perf_counter() - host_start
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, host
    start_time = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start_time
    return elapsed, elapsed


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Bytes per second of a large ``copy_`` (read + write), median of ``repeats`` runs timed
    as the implementations are (:func:`time_once`)."""
    numel = 256 * 2**20 if device.type == "cuda" else 16 * 2**20  # 1 GiB / 64 MiB of float32
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up
    sync(device)
    median = statistics.median(
        time_once(lambda: target.copy_(source), device)[0] for _ in range(repeats)
    )
    return 2 * source.numel() * source.element_size() / median


def measure(
    names: list[str],
    shape: tuple[int, ...],
    device: torch.device,
    repeats: int,
    copy_bytes_per_s: float,
    dtype: torch.dtype = torch.float32,
    modes: tuple[str, ...] = tuple(MAPS_MOVED),
) -> dict:
    """Times of every implementation at one shape and dtype, forward and (in ``modes``)
    forward + backward, run in turn in each round, so that a change of load on the machine
    affects them all alike."""
    generator = torch.Generator(device).manual_seed(0)
    a, b, grad = (
        torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(3)
    )
    a_leaf, b_leaf = a.clone().requires_grad_(), b.clone().requires_grad_()

    def runs(implementation: Callable[[Tensor, Tensor], Tensor]) -> dict:
        def forward() -> None:
            with torch.no_grad():
                implementation(a, b)

        def forward_backward() -> None:
            a_leaf.grad = b_leaf.grad = None
            implementation(a_leaf, b_leaf).backward(grad)

        both = {"forward": forward, "forward_backward": forward_backward}
        return {mode: both[mode] for mode in modes}

    calls = {name: runs(IMPLEMENTATIONS[name]) for name in names}
    for modes in calls.values():  # warm-up (builds the CUDA kernel on first use)
        for run in modes.values():
            run()
    sync(device)
    times = {name: {mode: [] for mode in modes} for name, modes in calls.items()}
    for _ in range(repeats):
        for name, modes in calls.items():
            for mode, run in modes.items():
                times[name][mode].append(time_once(run, device))

    bytes_per_map = a.numel() * a.element_size()
    result = {}
    for name, modes in times.items():
        result[name] = {}
        for mode, timed in modes.items():
            samples = [device_time for device_time, _ in timed]
            median = statistics.median(samples)
            entry = {
                "median_ms": round(median * 1e3, 4),
                "best_ms": round(min(samples) * 1e3, 4),
                "gb_per_s": round(MAPS_MOVED[mode] * bytes_per_map / median / 1e9, 2),
            }
            if device.type == "cuda":  # the host's queuing time, and where it was longer
                host = [host_time for _, host_time in timed]
                entry["host_median_ms"] = round(statistics.median(host) * 1e3, 4)
                entry["host_bound_samples"] = sum(t * 1e3 > HOLD_MS for t in host)
            if "cummax" in times:  # median over rounds of the time relative to cummax's
                pairs = zip(samples, times["cummax"][mode], strict=True)
                entry["median_ratio_to_cummax"] = round(
                    statistics.median(t / reference[0] for t, reference in pairs), 3
                )
            if device.type == "cuda":
                entry["fraction_of_copy_bandwidth"] = round(
                    MAPS_MOVED[mode] * bytes_per_map / median / copy_bytes_per_s, 3
                )
            result[name][mode] = entry
    return result


# --- What the kernel must show on a GPU -----------------------------------------------


def targets(results: dict) -> list[dict]:
    """The checks of the kernel's figures against its targets: forward and forward +
    backward at TARGET_FRACTION of the copy bandwidth or more at the main shapes, in
    float32 and bfloat16; every other shape within 2x of that (half of it)."""
    checks = []
    for dtype, shapes in results.items():
        for key, entries in shapes.items():
            main = key in MAIN_SHAPES
            for mode in MAPS_MOVED:
                fraction = entries.get("cuda", {}).get(mode, {}).get("fraction_of_copy_bandwidth")
                if fraction is None:
                    continue
                needed = TARGET_FRACTION if main else TARGET_FRACTION / 2
                checks.append({
                    "dtype": dtype, "shape": key, "mode": mode, "fraction": fraction,
                    "needed": needed, "met": fraction >= needed,
                })  # fmt: skip
    return checks


def run_all(
    device: torch.device,
    shapes: dict[str, tuple[int, ...]],
    dtypes: list[torch.dtype],
    repeats: int,
    names: list[str],
    on_result: Callable[[dict], None] = lambda partial: None,
) -> dict:
    """Every shape and dtype: the copy bandwidth first, then ``measure`` (the implementations
    other than the kernel at the main shapes only: at the others their Python loops of H or
    W steps, or ``cummax`` along long lines, take minutes). ``on_result`` sees the result
    after each measurement."""
    copy_bytes_per_s = copy_bandwidth(device, repeats)
    report = {
        "implementations": names,
        "repeats": repeats,
        "copy_gb_per_s": round(copy_bytes_per_s / 1e9, 2),
        "bytes_counted": "forward 3 maps (read a, b; write out); backward 5 (read a, b, grad; "
        "write 2 grads); forward_backward 8",
        "shapes": {key: list(shape) for key, shape in shapes.items()},
        "results": {},
    }
    for dtype in dtypes:
        by_shape = report["results"].setdefault(str(dtype).removeprefix("torch."), {})
        for key, shape in shapes.items():
            here = [n for n in names if key in MAIN_SHAPES or n == "cuda"]
            try:
                by_shape[key] = measure(
                    here, shape, device, repeats, copy_bytes_per_s, dtype, tuple(MAPS_MOVED)
                )
            except Exception as error:  # one dtype or shape failing keeps the others
                by_shape[key] = {"error": f"{type(error).__name__}: {error}"}
            for name, entry in by_shape[key].items():
                print(dtype, key, name, json.dumps(entry), flush=True)
            on_result(report)
    if device.type == "cuda":
        report["targets"] = targets(report["results"])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="default: 20 GPU, 7 CPU")
    parser.add_argument("--only", nargs="*", choices=list(IMPLEMENTATIONS), default=None)
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU, no file")
    parser.add_argument("--note", default="", help="free text stored in the result")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else args.device)
    on_gpu = device.type == "cuda"
    repeats = 2 if args.dry_run else args.repeats or (20 if on_gpu else 7)
    names = args.only or [n for n in IMPLEMENTATIONS if n != ("operator" if on_gpu else "cuda")]
    shapes = DRY_RUN_SHAPES if args.dry_run else GPU_SHAPES if on_gpu else CPU_SHAPES
    dtypes = [torch.float32, torch.bfloat16] if on_gpu or args.dry_run else [torch.float32]
    load_start = os.getloadavg()
    report = header("corner_pool", device) | {"corner": "tl", "threads": torch.get_num_threads()}
    report |= run_all(device, shapes, dtypes, repeats, names)
    if not on_gpu:  # other processes on the machine slow a CPU measurement down
        report["load_average_1min_start_end"] = [load_start[0], os.getloadavg()[0]]
    if args.note:
        report["note"] = args.note
    if args.dry_run:
        print("dry run: nothing written")
        return
    out = args.out or ROOT / "benchmarks/results" / f"corner_pool_{device.type}.json"
    write_result(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
