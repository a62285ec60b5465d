r"""The code and the equations the chapters quote are those of the package.

Chapters show the lines that compute each equation as ``python`` code blocks. Every such
line must stand, as written, in the package source: when the code changes, the quote in the
chapter fails here instead of drifting. A line starting with ``...`` marks an elision.

Each equation of the paper is stated once in the package, in the docstring of the function
that computes it. A chapter that shows it puts ``<!-- equation: module.function -->`` before
the ``$$ ... $$`` block, and the block must be one of that docstring's display equations
(whitespace aside). Display equations without the marker are the chapter's own
derivations.
"""

from __future__ import annotations

import ast
import importlib
import inspect
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


# --- Equations -------------------------------------------------------------------------

EQUATION_MARK = re.compile(r"<!-- equation: ([\w.]+) -->")
QUOTED_EQUATION = re.compile(r"<!-- equation: ([\w.]+) -->\s*\$\$(.*?)\$\$", flags=re.DOTALL)
DISPLAY_MATH = re.compile(r"\$\$(.*?)\$\$", flags=re.DOTALL)

# The equations of the paper and of the official rules, and where the package states them.
MAIN_EQUATIONS = [
    "cornernet_ref.targets.build_targets",  # the cell and the offset (Eq. 2)
    "cornernet_ref.targets.gaussian_bump",  # the Gaussian
    "cornernet_ref.targets.gaussian_radius",  # its radius, official
    "cornernet_ref.targets.exact_radius",  # and exact
    "cornernet_ref.losses.focal_loss",  # Eq. 1
    "cornernet_ref.losses.offset_loss",  # Eq. 3
    "cornernet_ref.losses.ae_loss",  # Eq. 4, 5
    "cornernet_ref.losses.CornerNetLoss.forward",  # the total
    "cornernet_ref.corner_pool.corner_pool",  # Eq. 6
    "cornernet_ref.corner_pool.reference.scan_max",  # the tie rule
    "cornernet_ref.corner_pool.reference.scan_max_backward",  # the gradient
    "cornernet_ref.hourglass.Hourglass",
    "cornernet_ref.hourglass.Residual",
    "cornernet_ref.heads.CornerPoolingModule",
    "cornernet_ref.model.StackTransition",
    "cornernet_ref.decode.local_maxima",  # decoding: peaks
    "cornernet_ref.decode.top_corners",  # offsets added back
    "cornernet_ref.decode.decode",  # pairs
    "cornernet_ref.decode.soft_nms",
    "cornernet_ref.inference.canvas_geometry",  # the test canvas and its output grid
    "cornernet_ref.inference.boxes_to_image",  # boxes back to the image
    "cornernet_ref.inference.mirror_boxes",  # flip testing
    "cornernet_ref.train.train_step",  # gradient accumulation
]


def normalised(math: str) -> str:
    return " ".join(math.split())


def resolve(dotted: str) -> object:
    """The object named ``package.module.Class.method``: the longest importable prefix,
    then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def docstring_equations(dotted: str) -> list[str]:
    """The display equations of an object's own docstring, whitespace normalised."""
    return [normalised(m) for m in DISPLAY_MATH.findall(resolve(dotted).__doc__ or "")]


def quoted_equations(text: str) -> list[tuple[str, str]]:
    """``(dotted name, normalised equation)`` of every marked block of a chapter."""
    found = [(name, normalised(math)) for name, math in QUOTED_EQUATION.findall(text)]
    assert len(found) == len(EQUATION_MARK.findall(text)), "a marker not followed by $$...$$"
    return found


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_quoted_equations_stand_in_the_docstrings(chapter: Path) -> None:
    for name, equation in quoted_equations(chapter.read_text(encoding="utf-8")):
        assert equation in docstring_equations(name), (
            f"{chapter.name}: the equation quoted from {name} differs from its docstring's:"
            f"\n{equation}"
        )


def test_the_equation_check_finds_a_changed_equation() -> None:
    text = (REPO / "chapters" / "02_losses.md").read_text(encoding="utf-8")
    [(name, equation)] = [q for q in quoted_equations(text) if q[0].endswith("focal_loss")]
    assert equation in docstring_equations(name)
    assert equation.replace(r"\alpha = 2", r"\alpha = 3") not in docstring_equations(name)


@pytest.mark.parametrize("name", MAIN_EQUATIONS)
def test_each_main_equation_is_stated_in_its_code_and_quoted_by_a_chapter(name: str) -> None:
    assert docstring_equations(name), f"{name}: no $$...$$ equation in its docstring"
    quoted = {
        quoted_name
        for chapter in CHAPTERS
        for quoted_name, _ in quoted_equations(chapter.read_text(encoding="utf-8"))
    }
    assert name in quoted, f"no chapter quotes the equation of {name}"


def package_docstrings() -> dict[str, str]:
    """Every docstring of the package: modules, classes, functions and methods."""
    found = {}
    for path in sorted((REPO / "cornernet_ref").rglob("*.py")):
        module_name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        module_name = module_name.removesuffix(".__init__")
        if module_name.endswith("__main__"):
            continue
        module = importlib.import_module(module_name)
        found[module_name] = module.__doc__ or ""
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module_name:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found[f"{module_name}.{name}"] = obj.__doc__ or ""
            if inspect.isclass(obj):
                for attribute, member in vars(obj).items():
                    if inspect.isfunction(member):
                        found[f"{module_name}.{name}.{attribute}"] = member.__doc__ or ""
    return found


def test_each_equation_is_stated_once_in_the_package() -> None:
    where: dict[str, list[str]] = {}
    for name, doc in package_docstrings().items():
        for equation in DISPLAY_MATH.findall(doc):
            where.setdefault(normalised(equation), []).append(name)
    repeated = {equation: names for equation, names in where.items() if len(names) > 1}
    assert not repeated, f"equations stated in more than one docstring: {repeated}"


PACKAGE_MODULES = sorted(
    str(path.relative_to(REPO / "cornernet_ref")) for path in (REPO / "cornernet_ref").rglob("*.py")
)


@pytest.mark.parametrize("module", PACKAGE_MODULES)
def test_docstrings_are_raw_strings(module: str) -> None:
    """Raw strings everywhere, so that ``\\frac`` in a formula stays a backslash and ``f``
    (not a form feed) and a docstring reads in the source as it renders."""
    source = (REPO / "cornernet_ref" / module).read_text(encoding="utf-8")
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, documented) and ast.get_docstring(node, clean=False) is not None:
            literal = ast.get_source_segment(source, node.body[0].value)
            assert literal.startswith('r"""'), f"{module}:{node.body[0].lineno}: not raw"


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
