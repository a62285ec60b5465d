"""Chapter 3 quotes the SASS proxy of the corner pooling kernel as recorded in
``benchmarks/results/corner_pool_sass.json`` (written by ``benchmarks/corner_pool_sass.py``,
which needs nvcc): the table must be that file's figures, before and after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "corner_pool_sass.json"
CHAPTER = REPO / "chapters" / "03_corner_pooling.md"
KERNELS = ["forward_float32", "forward_bfloat16", "backward_float32", "backward_bfloat16"]


def table_row(kernel: str, before: dict, after: dict) -> str:
    """The chapter's row for ``kernel``: instructions per KB, registers, warps per SM."""
    cells = [kernel.replace("_", ", ")]
    for figures in (before, after):
        cells += [
            f"{figures['warp_instructions_per_kilobyte']:.0f}",
            str(figures["registers"]),
            str(figures["warps_per_sm"]),
        ]
    return "| " + " | ".join(cells) + " |"


@pytest.mark.parametrize("kernel", KERNELS)
def test_chapter_quotes_the_recorded_proxy(kernel):
    versions = json.loads(RESULT.read_text())["versions"]
    before = versions["before"]["kernels"][kernel]
    after = versions["after"]["kernels"][f"{kernel}_tl"]
    assert table_row(kernel, before, after) in CHAPTER.read_text(encoding="utf-8")
