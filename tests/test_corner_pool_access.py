"""The memory requests of the corner pooling kernel, counted on the CPU build of its source
(``kernel_emulation.py``, ``EmulatedKernels.trace``): a warp instruction is one request, and
the 32-byte sectors and 128-byte lines its lanes touch decide what the L1 cache does for it
(``benchmarks/corner_pool_access.py`` records the figures; chapter 3, section 7, reads
them). The forward reads and writes whole sectors; the requests stay well within what the
L1 cache can serve at the copy bandwidth, on every benchmark shape."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_corner_pool_kernel import kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import corner_pool_access  # noqa: E402 (benchmarks/ is not a package)


def traced(direction: str, shape: tuple[int, ...], dtype: torch.dtype, segments: int = 0):
    """The requests of one top-left forward or backward on random maps aligned as on a GPU."""
    generator = torch.Generator().manual_seed(0)
    a, b, grad = (corner_pool_access.random_map(shape, dtype, generator) for _ in range(3))
    return kernels(segments).top_left_requests(direction, a, b, grad)


def test_the_record_is_of_the_kernel_as_it_stands():
    """``benchmarks/results/corner_pool_access.json`` (which chapter 3 quotes) was counted
    on the kernel and its CPU build as they are now."""
    record = corner_pool_access.RESULTS / "corner_pool_access.json"
    recorded = json.loads(record.read_text())["sources_sha256"]
    current = corner_pool_access.sources_digest(corner_pool_access.SOURCES)
    assert recorded == current, "the kernel changed: run python benchmarks/corner_pool_access.py"


def test_a_row_of_128_float32_is_three_whole_requests():
    """By hand: 32 lanes, 16 bytes each, 512 consecutive bytes = 16 sectors, 4 lines; one
    request for a, one for b, one for the output."""
    whole = {"lanes": 32, "bytes": 512, "sectors": 16, "lines": 4}
    assert traced("forward", (1, 1, 1, 128), torch.float32) == [
        {"store": 0, **whole, "count": 2},
        {"store": 1, **whole, "count": 1},
    ]


@settings(max_examples=15, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    planes=st.integers(1, 6),
    height=st.integers(1, 40),
    sectors_per_row=st.integers(1, 24),
    segments=st.sampled_from([0, 1]),
)
def test_the_forward_moves_whole_sectors(dtype, planes, height, sectors_per_row, segments):
    """Rows of whole sectors, aligned: every request of the forward, split or not, uses every
    byte of each sector it touches (a lane reading columns apart from its neighbours' would
    touch sectors it uses in part)."""
    width = sectors_per_row * 32 // torch.empty((), dtype=dtype).element_size()
    requests = traced("forward", (1, planes, height, width), dtype, segments)
    partial = [r for r in requests if r["sectors"] * 32 != r["bytes"]]
    assert requests and not partial


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(corner_pool_access.SHAPES))
def test_the_l1_cache_keeps_up_with_every_benchmark_shape(name, dtype, direction):
    """At most a third of the cycles an SM has for each KB at the copy bandwidth go to the
    L1 tag stage, on the benchmark's shapes as corner_pool_access.py runs them: the
    backward's row walkers (a lane per row, 32 lines a request) and its scattered stores of
    a run's sum included, and rows narrower than a vector (read number by number, a segment
    or block per lane, they took up to 129 cycles per KB before they were packed)."""
    shape, segments = corner_pool_access.SHAPES[name]
    figures = corner_pool_access.summary(traced(direction, shape, dtype, segments))
    budget = figures["l1_cycles_per_kilobyte_at_copy_bandwidth"]
    assert figures["l1_tag_cycles_per_kilobyte"] <= budget / 3
