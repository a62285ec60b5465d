"""Every notebook in ``notebooks/`` runs top to bottom (in its small CPU mode).

Notebooks are stored as jupytext percent scripts (``notebooks/*.py``): plain Python a
reader can diff and run, which jupytext turns into a notebook. Each one is executed cell
by cell with nbclient by ``docs/hooks.py`` (``executed_notebook``), the same function the
site build uses: a notebook executed by the one is reused by the other while its script,
the package's source and the versions are unchanged, so CI executes each notebook once.
A cell that raises fails here; the worked solutions of the chapters' exercises assert
their answers, so a wrong solution raises too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import docs_hooks

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.py"))


def outputs(notebook: dict) -> list[dict]:
    return [
        output
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_shows_a_figure(path: Path) -> None:
    pytest.importorskip("jupytext")
    pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    executed = docs_hooks().executed_notebook(path)
    notebook = nbformat.read(executed, as_version=4)
    errors = [output for output in outputs(notebook) if output["output_type"] == "error"]
    assert not errors, errors
    figures = [output for output in outputs(notebook) if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} draws no figure"


def test_the_cache_key_follows_the_script(tmp_path: Path) -> None:
    hooks = docs_hooks()
    script = NOTEBOOK_DIR / "01_targets.py"
    copy, changed = tmp_path / "same" / script.name, tmp_path / "changed" / script.name
    for path, extra in ((copy, ""), (changed, "\n# %%\nprint(1)\n")):
        path.parent.mkdir()
        path.write_text(script.read_text(encoding="utf-8") + extra, encoding="utf-8")
    assert hooks.notebook_key(copy) == hooks.notebook_key(script)
    assert hooks.notebook_key(changed) != hooks.notebook_key(script)


CHAPTERS = sorted((REPO / "chapters").glob("[0-9][0-9]_*.md"))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_exercises_are_solved_in_its_notebook(chapter: Path) -> None:
    """Two to four exercises end each chapter; its notebook solves them, in order."""
    text = chapter.read_text(encoding="utf-8")
    exercises = re.findall(r"^\*\*Exercise (\d+)\.\*\*", text, flags=re.MULTILINE)
    assert 2 <= len(exercises) <= 4, f"{chapter.name}: {len(exercises)} exercises"
    assert text.rindex("\n## ") == text.find("\n## Exercises"), "exercises must come last"
    [notebook] = NOTEBOOK_DIR.glob(f"{chapter.name[:2]}_*.py")
    script = notebook.read_text(encoding="utf-8")
    solved = re.findall(r"^# ### Exercise (\d+)\b", script, flags=re.MULTILINE)
    assert solved == exercises, f"{notebook.name} solves {solved}, {chapter.name} asks {exercises}"
