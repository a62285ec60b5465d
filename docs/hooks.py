"""mkdocs hook: draw every figure of the course from code before the site is built.

Each ``docs/figures/<name>.py`` defines ``main(out: pathlib.Path) -> None`` that saves one
PNG. The hook runs them all into ``docs/img/<name>.png`` (not committed), so a figure in a
chapter is always what the current code draws. Chapters link to ``../img/<name>.png``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib

DOCS = Path(__file__).resolve().parent


def draw_figures(out_dir: Path) -> list[Path]:
    """Run every figure script; return the PNGs written."""
    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for script in sorted((DOCS / "figures").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"figure_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = out_dir / f"{script.stem}.png"
        module.main(out)
        written.append(out)
    return written


def on_pre_build(config, **kwargs) -> None:
    draw_figures(DOCS / "img")
