"""The code the chapters quote is the code that runs.

Chapters show the lines that compute each equation as ``python`` code blocks. Every such
line must stand, as written, in the package source: when the code changes, the quote in the
chapter fails here instead of drifting. A line starting with ``...`` marks an elision.
"""

from __future__ import annotations

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
