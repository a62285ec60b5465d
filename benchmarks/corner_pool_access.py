"""A second proxy that needs no GPU: the memory requests of the corner pooling kernel.

The instruction count (``corner_pool_sass.py``) says whether the warps can issue fast
enough; this says what their loads and stores ask of the memory system. The kernel's
source runs on the CPU (``tests/kernel_emulation.py``), noting every load and store of the
maps; a warp's instruction is one *request*, and each request is counted by the 32-byte
*sectors* and 128-byte cache *lines* its lanes touch. For each kernel, dtype and shape:

* ``sector_bytes_per_byte``: the bytes of the sectors requested, per byte used (1.0: every
  sector a request touches is used whole; 2.0: half of each, the other half left for a
  later request, which must then find it in the L1 cache);
* ``l1_tag_cycles_per_kilobyte``: the cycles the L1 cache's tag stage spends per KB, at
  4 cache lines a cycle (the rate NVIDIA gives for Volta and later: 4 sets x 4 sectors per
  cycle), beside ``l1_cycles_per_kilobyte_at_copy_bandwidth``, the cycles an SM of an H200
  has for each KB when the whole chip moves bytes at the copy bandwidth: the tag stage
  keeps up if it needs a small share of those;
* the same, and the shares of the bytes and of the requests, for each kind of request: a
  full warp's 16-byte vectors or other accesses (the backward's scattered stores of a run's
  sum, say), loads or stores, sectors used whole or in part.

Maps are allocated 512-byte aligned, as PyTorch's CUDA allocator gives them, and filled with
random numbers (whose running maxima change a few times per line, as in a trained
network's maps). Small shapes: the pattern of a warp's requests does not depend on the
number of planes.

    python benchmarks/corner_pool_access.py    # writes benchmarks/results/corner_pool_access.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from corner_pool_sass import H200
from report import RESULTS, header, sources_digest, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the CPU build of the kernel lives with the tests
from kernel_emulation import ALIGNMENT, SOURCE_DIR, empty_aligned, emulated_kernels  # noqa: E402

# What the record depends on: the kernel, and the CPU build that runs it and notes its
# accesses (``sources_sha256``).
SOURCES = [SOURCE_DIR / "corner_pool.cu", SOURCE_DIR / "corner_pool.h"]
SOURCES += [SOURCE_DIR / "emulation" / "cuda_runtime.h", SOURCE_DIR / "emulation" / "harness.cpp"]
TAG_LINES_PER_CYCLE = 4
# The cycles an SM has per KB when the chip moves bytes at the copy bandwidth.
CYCLES_PER_KILOBYTE = H200["sms"] * H200["clock_ghz"] * 1e9 / (H200["copy_gb_per_s"] * 1e9 / 1024)
# The shapes of corner_pool.py's GPU_SHAPES with fewer planes or shorter lines, chosen so
# that the kernel takes the same paths (shape, and the forward's segments per plane: 1 as
# for many planes, 0 for the kernel's choice on few). A warp's requests do not depend on
# how many warps there are.
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "training": ((1, 8, 128, 128), 1),
    "large": ((1, 4, 192, 256), 1),
    "thin": ((1, 64, 32, 32), 1),
    "one_row": ((1, 64, 1, 4096), 1),  # lines longer than sum_block: the backward's blocks
    "one_column": ((1, 1024, 2048, 1), 1),  # 1024 planes or more: pooled as rows
    "tall": ((1, 1, 2**15, 4), 0),  # one plane: cut into segments
    "wide": ((1, 1, 4, 2**15), 0),  # one plane: cut into column segments
    # Not in GPU_SHAPES: fewer than 1024 planes of one column, too tall to be pooled as rows
    # (section 4 of chapter 3): cut into segments, a lane each.
    "few_tall_columns": ((1, 64, 2048, 1), 0),
}
# Rows narrower than a vector that cannot be packed (section 4 of chapter 3): a height that
# is not a multiple of P = VEC / W (bfloat16 here; in float32 a row of 4 is a whole vector),
# and a width that does not divide VEC. They are read number by number, a lane per plane:
# recorded under "not_packed", and not held to the budget. Hourglass-104 never makes them
# (its maps are a multiple of 32 wide).
NOT_PACKED_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "odd_height_of_4_columns": ((1, 64, 33, 4), 1),
    "rows_of_3": ((1, 64, 32, 3), 1),
}


def random_map(
    shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    """Random numbers, aligned as on a GPU."""
    return empty_aligned(shape, dtype).copy_(torch.randn(shape, generator=generator))


def kind(request: dict[str, int]) -> str:
    """The kind of a request: a full warp's 16-byte vectors or other accesses, loads or
    stores, and whether it uses the sectors it touches whole or in part."""
    vectors = request["lanes"] == 32 and request["bytes"] == 32 * 16
    whole = request["sectors"] * 32 == request["bytes"]
    return "_".join(
        [
            "vector" if vectors else "other",
            "stores" if request["store"] else "loads",
            "whole" if whole else "partial",
            "sectors",
        ]
    )


def figures(requests: list[dict[str, int]]) -> dict:
    """The figures of the module docstring for some kinds of request."""
    count = sum(r["count"] for r in requests)
    used = sum(r["count"] * r["bytes"] for r in requests)
    lines = sum(r["count"] * r["lines"] for r in requests)
    sector_bytes = sum(r["count"] * r["sectors"] * 32 for r in requests)
    tag_cycles = sum(r["count"] * math.ceil(r["lines"] / TAG_LINES_PER_CYCLE) for r in requests)
    return {
        "requests": count,
        "bytes": used,
        "mean_lines_per_request": round(lines / count, 2),
        "sector_bytes_per_byte": round(sector_bytes / used, 3),
        "l1_tag_cycles_per_kilobyte": round(tag_cycles / (used / 1024), 2),
    }


def summary(requests: list[dict[str, int]]) -> dict:
    """The figures of all the requests of a kernel, and of each kind."""
    total = figures(requests)
    by_kind = {}
    for name in sorted({kind(r) for r in requests}):
        part = figures([r for r in requests if kind(r) == name])
        by_kind[name] = part | {
            "share_of_bytes": round(part["bytes"] / total["bytes"], 3),
            "share_of_requests": round(part["requests"] / total["requests"], 3),
        }
    return total | {
        "l1_cycles_per_kilobyte_at_copy_bandwidth": round(CYCLES_PER_KILOBYTE, 1),
        "by_kind": by_kind,
    }


def measure(shapes: dict[str, tuple[tuple[int, ...], int]]) -> dict:
    """Forward and backward (top-left) of each shape in float32 and bfloat16."""
    results: dict = {}
    for dtype in (torch.float32, torch.bfloat16):
        for shape_name, (shape, segments) in shapes.items():
            kernels = emulated_kernels(segments)
            generator = torch.Generator().manual_seed(0)  # the same maps, whatever the list
            a, b, grad = (random_map(shape, dtype, generator) for _ in range(3))
            forward, backward = (
                kernels.top_left_requests(direction, a, b, grad)
                for direction in ("forward", "backward")
            )
            results.setdefault(str(dtype).removeprefix("torch."), {})[shape_name] = {
                "shape": list(shape),
                "segments": segments,
                "forward": summary(forward),
                "backward": summary(backward),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "corner_pool_access.json")
    args = parser.parse_args()
    result = header("corner_pool_access") | {
        "kernel": "cornernet_ref/corner_pool/cuda/corner_pool.cu, built for the CPU "
        "(tests/kernel_emulation.py)",
        "sources_sha256": sources_digest(SOURCES),
        "model": {
            "request": "one warp instruction: the k-th load or store each lane notes",
            "l1_tag_lines_per_cycle": TAG_LINES_PER_CYCLE,
            "cycle_budget": H200,
            "alignment_bytes": ALIGNMENT,
        },
        "results": measure(SHAPES),
        "not_packed": measure(NOT_PACKED_SHAPES),
    }
    write_result(args.out, result)
    for dtype, shapes in result["results"].items():
        for shape, kernels in (shapes | result["not_packed"][dtype]).items():
            for direction in ("forward", "backward"):
                kernel = kernels[direction]
                print(
                    f"{dtype:9} {shape:9} {direction:9} sector bytes/byte "
                    f"{kernel['sector_bytes_per_byte']:.2f}, L1 tag cycles/KB "
                    f"{kernel['l1_tag_cycles_per_kilobyte']:5.1f} of "
                    f"{kernel['l1_cycles_per_kilobyte_at_copy_bandwidth']}"
                )


if __name__ == "__main__":
    main()
