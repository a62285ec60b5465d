"""A proxy for the speed of the corner pooling kernel that needs no GPU: its machine code.

Corner pooling moves bytes and does almost no arithmetic, so the kernel reaches the memory
bandwidth only if its warps issue few enough instructions per byte. This script compiles
``cornernet_ref/corner_pool/cuda/corner_pool.cu`` for the H100/H200 (sm_90) with the flags of
CI, disassembles it (``cuobjdump -sass``) and reports, for each kernel and dtype:

* from ``ptxas -v``: registers per thread, shared memory per block, and the occupancy they
  allow (resident warps per SM, from the sm_90 limits below);
* from the SASS: the *steady-state loop*, the loop whose body (outside its own inner loops)
  holds the most global loads and stores, and the warp instructions one pass of it executes,
  per KB the pass moves between the kernel and global memory (3 maps forward, 5 backward);
* the *loads in flight* of that loop: the most vector loads a lane has issued and not yet
  waited for (see ``loads_in_flight``), which with the warps decides the bytes on their way
  from memory.

How a pass is counted. Every instruction of the loop body counts once per warp that runs the
pass; an instruction of an inner loop counts once per inner iteration, by the warps that run
that inner loop (both given per kernel version in ``VERSIONS``, read off its design). Both
sides of every branch inside the loop count, as do code paths for an absent map that the
steady state does not take: the figure is an upper bound of what a warp issues. It is a
proxy, not a speed: latency, occupancy and the memory system decide the rest, and only a GPU
measures those (``benchmarks/corner_pool.py``).

    python benchmarks/corner_pool_sass.py      # writes benchmarks/results/corner_pool_sass.json

The versions compared are git commits of the kernel (``"before"``, the kernel before its
16-byte vectors; ``"measured"``, the kernel timed on an H200 in
``benchmarks/results/corner_pool_cuda.json``; ``"two_vectors_a_lane"``, a variant not kept)
and the working tree (``"after"``). Needs nvcc, and cuobjdump with nvdisasm: the
``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm`` wheels provide them
(``pip install -e ".[sass]"``).
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from report import RESULTS, header, sources_digest, write_result
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

ROOT = Path(__file__).resolve().parents[1]
KERNEL = Path("cornernet_ref/corner_pool/cuda/corner_pool.cu")
# What the working tree's record depends on ("sources_sha256" of the version "after").
KERNEL_SOURCES = [ROOT / KERNEL, ROOT / KERNEL.parent / "corner_pool.h"]
ARCH = "sm_90"
DTYPES = {"IfE": ("float32", 4), "IN3c108BFloat16EE": ("bfloat16", 2)}  # mangled -> name, bytes
# read a, b (and grad_out); write out (or 2 grads)
MAPS_MOVED = {"forward": 3, "forward_packed": 3, "backward": 5, "backward_packed": 5}
# The kernels of packed narrow rows are recorded for rows of half a vector, two to a vector:
# the widest that pack (4 bfloat16 numbers: the tall benchmark plane's rows).
PACKED_WIDTH = {"float32": "2", "bfloat16": "4"}
# sm_90 limits per SM: registers, shared memory (bytes, 1 KB of it reserved per block),
# threads, warps, blocks; registers are allocated per warp in units of 256.
SM_REGISTERS, SM_SHARED, SM_THREADS, SM_BLOCKS = 65536, 233472, 2048, 32

# What a pass of each version's steady-state loop covers: the cells of each map it moves, the
# warps of a block that run it, and for each inner loop (in address order) its iterations
# per pass and the warps that run it.
VERSIONS: dict[str, dict] = {
    "before": {
        "commit": "e993414",
        "block_warps": 4,
        "design": "no shared memory: forward, one warp per plane, a pass is 4 rows of a "
        "128-column chunk (lane l: 4 columns, one vector load per map and row, the loads of "
        "the 4 rows first; vertical scan in registers, horizontal by 5 shuffle steps); "
        "backward, one warp per plane for each gradient, a pass is 4 row steps of the "
        "vertical warp (4 columns per lane) and 4 column steps of the horizontal warp "
        "(lane l: row l, 4 columns a step)",
        "forward": {"cells": 512, "warps": 1, "inner": []},
        "backward": {"cells": 512, "warps": 1, "loops": 2, "inner": []},
    },
    "measured": {
        "commit": "9be6feb",
        "block_warps": 4,
        "design": "16-byte vectors in every dtype (4 float32, 8 bfloat16 per lane); forward, "
        "a group of lanes per plane (32 on rows of 32 vectors or more, fewer on narrow "
        "planes, several planes per warp), a pass is 8 rows (4 for bfloat16) of a chunk of 32 "
        "vectors, each row's values widened to float as they are loaded; long columns cut "
        "into segments by a first pass of column maxima (not counted: it runs only when the "
        "planes give too few warps); backward, column walkers (a thread owns one 16-byte "
        "vector of columns of a plane and walks its rows) and row walkers (a thread owns one "
        "row and walks it a vector at a time), their warps interleaved in one launch, a pass "
        "is 4 steps of each kind, and a step of a run without branches (a run starts at the "
        "border as maximum -inf with sum -0.0, so there is no case for the first value)",
        "forward": {"cells": {"float32": 1024, "bfloat16": 1024}, "warps": 1, "inner": []},
        "backward": {
            "cells": {"float32": 512, "bfloat16": 1024},
            "warps": 1,
            "loops": 2,
            "inner": [],
        },
    },
    "after": {
        "commit": None,
        "block_warps": 4,
        "design": "as measured, but a batch of loads is kept as loaded (four 32-bit words "
        "per 16-byte vector) and each number is unpacked and widened where it is used, so "
        "that no instruction waits for a load before the batch's last load has left; the "
        "kernels have an instance for vector-aligned rows (chosen on the host), so the "
        "loads are predicated instead of branched around, and in the forward a row past the "
        "end keeps what its registers held instead of being set to -inf; forward passes of 8 "
        "rows, 6 for bfloat16 (1536 cells); backward passes of 4 steps of each kind",
        "forward": {
            "cells": {"float32": 1024, "bfloat16": 1536},
            "warps": 1,
            "inner": [],
            "unaligned_path_inside": False,
        },
        # Rows narrower than a vector, packed two to a vector: a lane per plane or segment,
        # passes of 8 vectors (6 in bfloat16) of each map, as the forward's.
        "forward_packed": {
            "cells": {"float32": 1024, "bfloat16": 1536},
            "warps": 1,
            "inner": [],
            "unaligned_path_inside": False,
        },
        "backward": {
            "cells": {"float32": 512, "bfloat16": 1024},
            "warps": 1,
            "loops": 2,
            "inner": [],
            "unaligned_path_inside": False,
        },
        # Packed rows: a column walker steps a vector of 2 rows, a row walker takes the 2
        # rows of a vector; passes of 4 steps of each kind, as the backward's.
        "backward_packed": {
            "cells": {"float32": 512, "bfloat16": 1024},
            "warps": 1,
            "loops": 2,
            "inner": [],
            "unaligned_path_inside": False,
        },
    },
}
# Not kept (chapter 3, section 7): fewer instructions per byte, but half the lanes on a map,
# and so half the bytes in flight on the benchmark's shapes. A pass covers what after's does.
VERSIONS["two_vectors_a_lane"] = VERSIONS["after"] | {
    "commit": "abcad3f",
    "design": "as after, but a lane of the forward holds two vectors of a 2-byte type (16 "
    "bfloat16 columns, a chunk of 512), in batches of 3 rows (1536 cells), so that a row's "
    "shuffle steps and bookkeeping serve twice the numbers; built on commit 5fad691, whose "
    "float32 and packed rows it leaves as they were (after has changed since)",
}

# The bandwidth target in instructions. A warp scheduler issues at most one warp instruction
# per cycle; an H200 has 132 SMs of 4 schedulers at up to 1.98 GHz (datasheet boost clock),
# and its copy bandwidth, measured by benchmarks/gpu_check.py on 2026-12-04 (read + write),
# was 4222 GB/s. At that bandwidth the chip can issue at most ISSUE_CEILING warp
# instructions per KB moved; a kernel that needs more cannot reach the bandwidth, and one
# that needs a large share of it leaves the schedulers too little slack to hide latency.
H200 = {"sms": 132, "schedulers_per_sm": 4, "clock_ghz": 1.98, "copy_gb_per_s": 4222.3}
ISSUE_CEILING = (
    H200["sms"] * H200["schedulers_per_sm"] * H200["clock_ghz"] * 1e9
    / (H200["copy_gb_per_s"] * 1e9 / 1024)
)  # fmt: skip
TARGET_SHARE = 0.4  # of the ceiling: the design aims below it, for every kernel and dtype


def tool(name: str) -> str:
    """The path of a CUDA tool: on PATH, or in the nvidia wheels of this Python."""
    found = shutil.which(name)
    if found:
        return found
    for base in map(Path, sys.path):
        candidate = base / "nvidia" / "cu13" / "bin" / name
        if candidate.is_file():
            return str(candidate)
    raise SystemExit(f"{name} not found: put it on PATH, or pip install -e '.[sass]'")


def compile_kernel(source: Path, scratch: Path) -> tuple[str, str]:
    """(ptxas -v report, SASS listing) of the kernel compiled for ARCH as CI compiles it."""
    cubin = scratch / "corner_pool.cubin"
    flags = [f"-I{path}" for path in include_paths()] + COMMON_NVCC_FLAGS
    command = [tool("nvcc"), "-std=c++20", "-O3", *flags, f"-I{source.parent}"]
    command += [f"-arch={ARCH}", "-cubin", "-Xptxas", "-v", str(source), "-o", str(cubin)]
    report = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    environment = {"PATH": str(Path(tool("nvdisasm")).parent) + ":/usr/bin:/bin"}
    sass = subprocess.run(
        [tool("cuobjdump"), "-sass", str(cubin)],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    ).stdout
    return report, sass


def kernel_name(mangled: str) -> tuple[str, str, str] | None:
    """(``forward`` or ``backward``, dtype name, corner) of a mangled kernel name, or None
    for the instances the steady state of the main shapes does not run: other dtypes, rows
    that are not vector-aligned, the forward's first pass over segments (it runs only when
    the planes are too few to fill the GPU), and the backward's launches of a few long
    lines, which load deeper ahead, run one kind of walker or walk blocks of lines (the
    backward counted runs both kinds of walker, AHEAD = 4). The corner is ``""`` for a
    kernel that takes it as an argument, else ``tl`` or ``br``.

    The template's flags, by version: ``<Reverse>``, then ``<Reverse, Maxima>`` in the
    forward, then ``<Reverse, Vectorized, Maxima>`` (and ``<Reverse, Vectorized>`` before
    the backward's steps ahead, ``<Reverse, Vectorized, ..., Blocked>`` after its blocks);
    ``<..., Maxima, Packed>`` in the forward and ``<..., Blocked, Packed>`` in the backward
    after the packed rows: the main shapes run ``Packed`` = 0 (rows as they are); the
    instances of ``PACKED_WIDTH`` are recorded as ``forward_packed`` and
    ``backward_packed``, the other widths not."""
    found = re.search(
        r"(forward|backward)_kernelI(f|N3c108BFloat16E)((?:Lb[01]E)*)((?:Li\d+E)*)((?:Lb[01]E)*)"
        r"((?:Li\d+E)*)E",
        mangled,
    )
    if not found:
        return None
    kind, flags = found.group(1), re.findall(r"Lb([01])E", found.group(3))
    vectorized = flags[1] if len(flags) == (3 if kind == "forward" else 2) else "1"
    maxima = flags[-1] if kind == "forward" and len(flags) > 1 else "0"
    numbers, last = (re.findall(r"Li(\d+)E", found.group(g)) for g in (4, 6))
    ahead, packed = (numbers, last) if kind == "backward" else ([], numbers)
    packed = "".join(packed) or "0"
    blocked = "1" in re.findall(r"Lb([01])E", found.group(5))
    dtype = DTYPES["IfE" if found.group(2) == "f" else "IN3c108BFloat16EE"][0]
    if packed == PACKED_WIDTH[dtype]:
        kind += "_packed"
    elif packed != "0":
        return None
    if vectorized == "0" or maxima == "1" or blocked or any(a != "4" for a in ahead):
        return None
    corner = {"1": "tl", "0": "br"}[flags[0]] if flags else ""
    return kind, dtype, corner


def resources(report: str) -> dict[tuple[str, str], dict]:
    """Registers and shared memory of each kernel, from ptxas -v."""
    found = {}
    for function, used in re.findall(
        r"Compiling entry function '(\w+)' for '\w+'\n(?:.*\n)*?ptxas info\s*: Used (.*)", report
    ):
        name = kernel_name(function)
        if name:
            registers = int(re.search(r"(\d+) registers", used).group(1))
            shared = re.search(r"(\d+) bytes smem", used)
            found[name] = {
                "registers": registers,
                "shared_bytes": int(shared.group(1)) if shared else 0,
            }
    return found


Kernel = tuple[str, str, str]  # kernel_name's (kind, dtype, corner)


def instructions(
    sass: str,
) -> tuple[dict[Kernel, list[tuple[int, str]]], dict[Kernel, dict[int, int]]]:
    """The (address, instruction) list of each kernel in a cuobjdump listing, and the
    control bits of each of its instructions by address (``control_bits``)."""
    kernels, controls, name = {}, {}, None
    lines = sass.splitlines()
    for number, line in enumerate(lines):
        function = re.match(r"\s+Function : (\w+)", line)
        if function:
            name = kernel_name(function.group(1))
            kernels[name], controls[name] = [], {}
            continue
        instruction = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if instruction and name is not None:
            address = int(instruction.group(1), 16)
            kernels[name].append((address, instruction.group(2)))
            # An instruction is 128 bits, printed as two 64-bit words on two lines.
            high = re.search(r"/\* 0x([0-9a-f]{16}) \*/", lines[number + 1])
            controls[name][address] = control_bits(int(high.group(1), 16))
    kernels.pop(None, None)
    controls.pop(None, None)
    return kernels, controls


# A branch and its target: "BRA 0x...", "@P0 BRA 0x...", "BRA P1, 0x..." (taken when P1 is
# also true), "BRA `(.L_x_3) 0x..."; not BRA.DIV (see divergence_fallbacks).
BRANCH = re.compile(r"\bBRA(?:\.U)? (?:!?P\d, )?(?:`\(.*?\) )?0x([0-9a-f]+)")


def opcode(text: str) -> str:
    return text.split()[1 if text.startswith("@") else 0].split(".")[0]


def control_bits(high_word: int) -> int:
    """The scheduling bits of an sm_70+ instruction (bits 105 to 125 of the 128): from the
    lowest, 4 bits of stall cycles, the yield bit, 3 bits naming the scoreboard a
    variable-latency instruction (a load) sets when it issues (7: none), 3 bits for the one
    it sets on reading its operands, a 6-bit mask of the scoreboards this instruction waits
    for before it issues, and 4 bits of operand reuse."""
    return high_word >> 41 & (1 << 21) - 1


def loads_in_flight(code: list[tuple[int, str]], controls: dict[int, int]) -> int:
    """The most vector loads (8 or 16 bytes) a lane has issued and not yet waited for, on any
    path through ``code`` (a loop body: its forward branches are followed, the backward one
    is the loop).

    A load does not stall the warp; it sets a scoreboard, and the first instruction that
    needs its registers waits for that scoreboard (its wait mask), and with it for every
    load counted on it. The count is how many vectors each lane keeps on their way from
    memory: the warps times 32 lanes times 16 bytes times this number is what the chip has
    in flight, which must reach the bandwidth-latency product (about 4 MB on an H200).
    Where paths join, each scoreboard keeps the larger count of loads."""
    position = {address: i for i, address in enumerate(address for address, _ in code)}
    joining: dict[int, list[int]] = {}  # instruction index -> loads pending per scoreboard

    def join(into: list[int] | None, other: list[int]) -> list[int]:
        return other if into is None else [max(x, y) for x, y in zip(into, other, strict=True)]

    pending: list[int] | None = [0] * 6
    most = 0
    for i, (address, text) in enumerate(code):
        if i in joining:
            pending = join(pending, joining.pop(i))
        if pending is None:  # reached by no forward path from the loop's head
            continue
        bits = controls[address]
        waits, sets = bits >> 11 & 0x3F, bits >> 5 & 0x7
        pending = [0 if waits >> b & 1 else count for b, count in enumerate(pending)]
        if opcode(text) == "LDG" and re.search(r"\.(64|128)\b", text.split("[")[0]) and sets < 6:
            pending[sets] += 1
            most = max(most, sum(pending))
        branch = BRANCH.search(text)
        if branch and position.get(int(branch.group(1), 16), -1) > i:
            target = position[int(branch.group(1), 16)]
            joining[target] = join(joining.get(target), pending)
        unconditional = branch and not text.startswith("@") and ", 0x" not in text
        if unconditional or opcode(text) in ("EXIT", "RET"):
            pending = None
    return most


def divergence_fallbacks(code: list[tuple[int, str]]) -> set[int]:
    """Addresses of the out-of-line code that a ``BRA.DIV`` jumps to when the warp is not
    converged (up to its branch back): the steady state, converged, never runs it."""
    targets = {
        int(m.group(1), 16) for _, t in code if (m := re.search(r"BRA\.DIV \S+ 0x([0-9a-f]+)", t))
    }
    fallback, inside = set(), False
    for address, text in code:
        inside = inside or address in targets
        if inside:
            fallback.add(address)
            if opcode(text) == "BRA" and not text.startswith("@"):
                inside = False
    return fallback


def loops(code: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last) address of every loop: each backward branch and its target."""
    found, fallback = set(), divergence_fallbacks(code)
    for address, text in code:
        branch = BRANCH.search(text)
        if branch and int(branch.group(1), 16) < address and address not in fallback:
            found.add((int(branch.group(1), 16), address))
    return sorted(found)


def steady_state(
    code: list[tuple[int, str]],
    controls: dict[int, int],
    kind: str,
    spec: dict,
    dtype: str,
    dtype_bytes: int,
) -> dict:
    """The steady-state loop(s) of a kernel and the instructions per KB one pass executes.

    A pass runs ``spec["loops"]`` loops once each (the ones with the most global accesses
    outside their inner loops: the vertical and the horizontal scan when different warps run
    them), each by ``spec["warps"]`` warps, and moves ``spec["cells"]`` cells of each map."""
    all_loops = loops(code)

    def inner_loops(outer):
        nested = [loop for loop in all_loops if loop != outer and outer[0] <= loop[0] <= outer[1]]
        return [loop for loop in nested if not any(o != loop and o[0] <= loop[0] and
                                                   loop[1] <= o[1] for o in nested)]  # fmt: skip

    def body(loop, exclude=()):
        return [
            (address, text)
            for address, text in code
            if loop[0] <= address <= loop[1]
            and not any(inner[0] <= address <= inner[1] for inner in exclude)
        ]

    def global_accesses(loop):
        return sum(opcode(t) in ("LDG", "STG") for _, t in body(loop, inner_loops(loop)))

    ranked = sorted(all_loops, key=lambda candidate: (-global_accesses(candidate), candidate[0]))
    chosen = sorted(ranked[: spec.get("loops", 1)])
    trips = iter(spec["inner"])
    found, executed = [], 0
    for loop in chosen:
        inner = inner_loops(loop)
        counts = {i: next(trips) for i in inner}
        # A kernel that picks vector or single-number accesses at run time has the path of
        # unaligned rows inside the loop; the instances of the current kernel do not.
        untaken = scalar_twins(body(loop)) if spec.get("unaligned_path_inside", True) else set()
        path = longest_path(body(loop), loop, counts, untaken)
        executed += spec["warps"] * path
        mix: dict[str, int] = {}
        for _, text in body(loop):
            mix[opcode(text)] = mix.get(opcode(text), 0) + 1
        found.append({
            "range": [hex(loop[0]), hex(loop[1])],
            "static_instructions": len(body(loop)),
            "inner_loops": [
                {"range": [hex(i[0]), hex(i[1])], "instructions": len(body(i)), "iterations": t}
                for i, t in counts.items()
            ],
            "longest_path_per_warp": path,
            "loads_in_flight": loads_in_flight(body(loop), controls),
            "opcodes": dict(sorted(mix.items(), key=lambda item: -item[1])[:16]),
        })  # fmt: skip
    if next(trips, None) is not None:
        raise SystemExit(f"{kind}: fewer inner loops in the SASS than given")
    cells = spec["cells"] if isinstance(spec["cells"], int) else spec["cells"][dtype]
    kilobytes = cells * MAPS_MOVED[kind] * dtype_bytes / 1024
    return {
        "steady_state_loops": found,
        # The fewest of the loops: a pass waits for its slowest kind of warp.
        "loads_in_flight": min(loop["loads_in_flight"] for loop in found),
        "executed_warp_instructions_per_pass": executed,
        "kilobytes_moved_per_pass": kilobytes,
        "warp_instructions_per_cell": round(executed / cells, 3),
        "warp_instructions_per_kilobyte": round(executed / kilobytes, 1),
        "share_of_issue_ceiling": round(executed / kilobytes / ISSUE_CEILING, 2),
    }


def scalar_twins(code: list[tuple[int, str]]) -> set[int]:
    """Single-element loads and stores that have a vector twin (a 64- or 128-bit access from
    the same address register): the path for rows that are not vector-aligned, which the
    steady state does not take."""

    def base(text):
        found = re.search(r"\[(R\d+)\.64", text)
        return found and found.group(1)

    accesses = [(a, t) for a, t in code if opcode(t) in ("LDG", "STG")]
    vector = {base(t) for _, t in accesses if re.search(r"\.(64|128) ", t.split("[")[0] + " ")}
    return {
        a
        for a, t in accesses
        if base(t) in vector and not re.search(r"\.(64|128) ", t.split("[")[0] + " ")
    }


def longest_path(
    code: list[tuple[int, str]],
    loop: tuple[int, int],
    inner: dict[tuple[int, int], int],
    untaken: set[int] = frozenset(),
) -> int:
    """Instructions on the longest path from the head of ``loop`` to its backward branch.

    Each instruction issues once (predicated ones too); an inner loop counts as its whole
    body times its iterations; no path goes through the addresses in ``untaken``. Taking the
    longer side of every branch follows the steady state (both maps present, full tiles)
    wherever the code has cheaper special cases, and counts both sides of a branch that
    divides the lanes of a warp, which a warp runs one after the other."""
    addresses = [address for address, _ in code]
    position = {address: i for i, address in enumerate(addresses)}
    best = [-math.inf] * (len(code) + 1)
    best[0] = 0
    i = 0
    while i < len(code):
        address, text = code[i]
        region = next((r for r in inner if r[0] == address), None)
        if region is not None:  # the whole inner loop, then what follows it
            last = max(j for j, a in enumerate(addresses) if a <= region[1])
            cost = (last - i + 1) * inner[region]
            branches = [t for a, t in code[i : last + 1]]
            targets = [j for j in range(len(code)) if j > last and any(
                f"0x{addresses[j]:x} " in t + " " for t in branches)]  # fmt: skip
            for successor in [last + 1, *targets]:
                best[successor] = max(best[successor], best[i] + cost)
            i = last + 1
            continue
        if address in untaken:  # no path goes through it
            i += 1
            continue
        successors = []
        branch = BRANCH.search(text)
        unconditional = (branch and not text.startswith("@") and ", 0x" not in text) or opcode(
            text
        ) in ("EXIT", "RET")
        if branch and int(branch.group(1), 16) in position:
            target = position[int(branch.group(1), 16)]
            if target > i:
                successors.append(target)
        if not unconditional or address == loop[1]:
            successors.append(i + 1)
        for successor in successors:
            best[successor] = max(best[successor], best[i] + 1)
        i += 1
    return int(best[len(code)])


def occupancy(registers: int, shared: int, warps: int) -> dict:
    """Resident blocks and warps per SM under the sm_90 limits."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    blocks = min(
        SM_REGISTERS // (per_warp * warps),
        SM_SHARED // (shared + 1024),
        SM_THREADS // (32 * warps),
        SM_BLOCKS,
    )
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * warps}


def analyse(source: Path, version: dict) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        report, sass = compile_kernel(source, Path(scratch))
    used, (code, controls) = resources(report), instructions(sass)
    kernels = {}
    for (kind, dtype, corner), listing in sorted(code.items()):
        dtype_bytes = next(size for name, size in DTYPES.values() if name == dtype)
        spec = version[kind]
        block_warps = version.get("block_warps", spec["warps"])
        name = (kind, dtype, corner)
        kernels["_".join(filter(None, name))] = (
            used[name]
            | occupancy(used[name]["registers"], used[name]["shared_bytes"], block_warps)
            | steady_state(listing, controls[name], kind, spec, dtype, dtype_bytes)
        )  # fmt: skip
    return {"design": version["design"], "kernels": kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "corner_pool_sass.json")
    args = parser.parse_args()
    result = header("corner_pool_sass") | {
        "nvcc": subprocess.run([tool("nvcc"), "--version"], capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1],
        "arch": ARCH,
        "bandwidth_target": H200
        | {
            "issue_ceiling_warp_instructions_per_kilobyte": round(ISSUE_CEILING, 1),
            "target_share_of_ceiling": TARGET_SHARE,
            "arithmetic": "132 SMs x 4 schedulers x 1.98e9 cycles/s = 1.045e12 warp "
            "instructions/s; 4222.3e9 B/s / 1024 = 4.12e9 KB/s; ceiling = 1.045e12 / 4.12e9 "
            f"= {ISSUE_CEILING:.0f} warp instructions per KB moved. A cell moves 3 values "
            "forward (read a, b; write out) and 5 backward (read a, b, grad; write 2 "
            "grads): per cell, float32 forward 12 bytes, so at most 12 / 1024 x ceiling "
            f"= {12 / 1024 * ISSUE_CEILING:.2f} warp instructions (x 32 lanes: per-thread "
            "instructions per 32 cells), bfloat16 forward half that.",
        },
        "versions": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for label, version in VERSIONS.items():
            source = ROOT / KERNEL
            if version.get("commit"):  # the kernel and its header as they were then
                source = Path(scratch) / label / KERNEL.name
                source.parent.mkdir()
                for name in (KERNEL.name, "corner_pool.h"):
                    show = ["git", "show", f"{version['commit']}:{KERNEL.parent / name}"]
                    text = subprocess.run(show, cwd=ROOT, capture_output=True, text=True).stdout
                    (source.parent / name).write_text(text)
            analysis = analyse(source, version)
            result["versions"][label] = {"commit": version.get("commit")} | analysis
            if not version.get("commit"):
                result["versions"][label]["sources_sha256"] = sources_digest(KERNEL_SOURCES)
            print(label, {
                k: (v["warp_instructions_per_kilobyte"], v["loads_in_flight"])
                for k, v in analysis["kernels"].items()
            })  # fmt: skip
    write_result(args.out, result)


if __name__ == "__main__":
    main()
