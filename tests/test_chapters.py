"""The code the chapters quote is the code that runs.

Chapters show the lines that compute each equation as ``python`` code blocks. Every such
line must stand, as written, in the package source: when the code changes, the quote in the
chapter fails here instead of drifting. A line starting with ``...`` marks an elision.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "chapters").glob("*.md"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def source_lines() -> set[str]:
    return {
        line.strip()
        for path in (REPO / "cornernet_ref").rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
    }


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_quoted_code_stands_in_the_source(chapter: Path) -> None:
    known = source_lines()
    quoted = [
        line.strip()
        for block in PYTHON_BLOCK.findall(chapter.read_text(encoding="utf-8"))
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("...")
    ]
    missing = [line for line in quoted if line not in known]
    assert not missing, f"{chapter.name} quotes lines that are not in cornernet_ref/: {missing}"


def test_the_check_finds_a_changed_line(tmp_path: Path) -> None:
    chapter = tmp_path / "00_x.md"
    chapter.write_text("text\n\n```python\nreturn heat * (window_max == heat)  # step 1\n```\n")
    [block] = PYTHON_BLOCK.findall(chapter.read_text())
    assert block.strip() not in source_lines()  # the comment differs from decode.py's


def markdown_rows(chapter: str, first_cell: str) -> list[str]:
    """The cells of the table row of ``chapter`` that starts with ``first_cell``."""
    text = (REPO / "chapters" / chapter).read_text(encoding="utf-8")
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"{chapter} has no table row starting with {first_cell!r}")


def rounded(value: float) -> str:
    return f"{value:.3f}"


def test_training_chapter_quotes_the_measured_main_command() -> None:
    run = json.loads((REPO / "benchmarks/results/train_small_shapes.json").read_text())
    metrics = run["metrics"]
    row = markdown_rows("06_training.md", rounded(metrics["AP"]))
    names = ("AP50", "AP75", "APs", "APm", "AR100")
    assert row == [rounded(metrics[name]) for name in names]
    assert f"took {round(run['wall_clock_s'])} s" in (REPO / "chapters/06_training.md").read_text()


@pytest.mark.parametrize(
    ("run", "label"),
    [
        ("baseline", "as the paper (`small_shapes`)"),
        ("no_corner_pooling", "without corner pooling"),
        ("no_penalty_reduction", "without penalty reduction"),
        ("exact_radius", "exact radius"),
        ("seed_1", "seed 1"),
        ("seed_2", "seed 2"),
    ],
)
def test_ablation_table_quotes_the_measured_runs(run: str, label: str) -> None:
    runs = json.loads((REPO / "benchmarks/results/ablations_shapes.json").read_text())["runs"]
    metrics = runs[run]["metrics"]
    row = markdown_rows("07_error_analysis.md", label)
    assert row == [rounded(metrics[name]) for name in ("AP", "AP50", "AP75")]
