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
* ``cuda``: the fused kernel (``backend="cuda"``), on a GPU only.

The implementations run in turn, round after round, so that a change of load on the
machine affects them alike. Reported per implementation: the median and the best time over
``--repeats`` rounds; the median over rounds of the time relative to ``cummax``'s; the
bandwidth implied by the median time, counting only the bytes the operation must move
(forward: read a and b, write the output; backward: read a, b and the output gradient,
write two gradients); on a GPU, that bandwidth as a fraction of the device's measured copy
bandwidth (a large device-to-device copy, read + write). On a CPU, the copy bandwidth of
``Tensor.copy_`` is given for scale.

    python benchmarks/corner_pool.py                 # on the GPU if there is one, else CPU
    python benchmarks/corner_pool.py --device cpu --repeats 5
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
GPU_SHAPES = [(8, 128, 128, 128), (2, 128, 192, 256)]  # training; a large test canvas
CPU_SHAPES = [(2, 128, 128, 128), (1, 128, 192, 256)]


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
    "cuda": lambda a, b: corner_pool(a, b, "tl", backend="cuda"),
}


# --- Timing -----------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(run: Callable[[], object], device: torch.device) -> float:
    """Seconds taken by one call."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    start_time = time.perf_counter()
    run()
    return time.perf_counter() - start_time


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Bytes per second of a large ``copy_`` (read + write) on the device."""
    numel = 256 * 2**20 if device.type == "cuda" else 16 * 2**20  # 1 GiB / 64 MiB of float32
    source = torch.randn(numel, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    sync(device)
    best = min(time_once(lambda: target.copy_(source), device) for _ in range(repeats))
    return 2 * source.numel() * source.element_size() / best


def measure(
    names: list[str],
    shape: tuple[int, ...],
    device: torch.device,
    repeats: int,
    copy_bytes_per_s: float,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Times of every implementation at one shape and dtype, run in turn in each round, so
    that a change of load on the machine affects them all alike."""
    generator = torch.Generator().manual_seed(0)
    a, b, grad = (torch.randn(shape, generator=generator).to(device, dtype) for _ in range(3))
    a_leaf, b_leaf = a.clone().requires_grad_(), b.clone().requires_grad_()

    def runs(implementation: Callable[[Tensor, Tensor], Tensor]) -> dict:
        def forward() -> None:
            with torch.no_grad():
                implementation(a, b)

        def forward_backward() -> None:
            a_leaf.grad = b_leaf.grad = None
            implementation(a_leaf, b_leaf).backward(grad)

        return {"forward": forward, "forward_backward": forward_backward}

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
    maps_moved = {"forward": 3, "forward_backward": 8}
    result = {}
    for name, modes in times.items():
        result[name] = {}
        for mode, samples in modes.items():
            median = statistics.median(samples)
            entry = {
                "median_ms": round(median * 1e3, 3),
                "best_ms": round(min(samples) * 1e3, 3),
                "gb_per_s": round(maps_moved[mode] * bytes_per_map / median / 1e9, 2),
            }
            if "cummax" in times:  # median over rounds of the time relative to cummax's
                pairs = zip(samples, times["cummax"][mode], strict=True)
                entry["median_ratio_to_cummax"] = round(
                    statistics.median(t / reference for t, reference in pairs), 3
                )
            if device.type == "cuda":
                entry["fraction_of_copy_bandwidth"] = round(
                    maps_moved[mode] * bytes_per_map / median / copy_bytes_per_s, 3
                )
            result[name][mode] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="default: 20 GPU, 7 CPU")
    parser.add_argument("--only", nargs="*", choices=list(IMPLEMENTATIONS), default=None)
    parser.add_argument("--note", default="", help="free text stored in the result")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    repeats = args.repeats or (20 if on_gpu else 7)
    names = args.only or [n for n in IMPLEMENTATIONS if on_gpu or n != "cuda"]
    shapes = GPU_SHAPES if on_gpu else CPU_SHAPES
    load_start = os.getloadavg()
    copy_bytes_per_s = copy_bandwidth(device, repeats)
    results = {}
    for shape in shapes:
        key = "x".join(map(str, shape))
        results[key] = measure(names, shape, device, repeats, copy_bytes_per_s)
        for name, entry in results[key].items():
            print(key, name, json.dumps(entry), flush=True)
    report = header("corner_pool", device) | {
        "corner": "tl",
        "dtype": "float32",
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "copy_gb_per_s": round(copy_bytes_per_s / 1e9, 2),
        "bytes_counted": "forward 3 maps (read a, b; write out); backward 5 (read a, b, grad; "
        "write 2 grads); forward_backward 8",
        "results": results,
    }
    if not on_gpu:  # other processes on the machine slow a CPU measurement down
        report["load_average_1min_start_end"] = [load_start[0], os.getloadavg()[0]]
    if args.note:
        report["note"] = args.note
    out = args.out or ROOT / "benchmarks/results" / f"corner_pool_{device.type}.json"
    write_result(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
