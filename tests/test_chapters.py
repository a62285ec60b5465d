r"""The code and the equations the chapters quote are those of the package.

Chapters show the lines that compute each equation as ``python`` code blocks, each under
a ``<!-- code: module.function -->`` marker naming the function (or class, or method) it
quotes. The block must be a contiguous run of that object's source, as written (the
indentation relative to the run's first line included): when the code changes, the quote
fails here instead of drifting, and a line from elsewhere in the package does not pass. A
line starting with ``...`` marks an elision: the runs on either side of it must each be
contiguous, in the order of the source.

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
import textwrap
from pathlib import Path

import pytest

from cornernet_ref.corner_pool import fused

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "chapters").glob("*.md"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
CODE_MARK = re.compile(r"<!-- code: ([\w.]+) -->\s*\Z")


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


def quoted_blocks(text: str) -> list[tuple[int, str | None, str]]:
    """``(line number, marked name or None, code)`` of every python block of a chapter."""
    return [
        (
            text.count("\n", 0, block.start()) + 1,
            mark.group(1) if (mark := CODE_MARK.search(text, 0, block.start())) else None,
            block.group(1),
        )
        for block in PYTHON_BLOCK.finditer(text)
    ]


def runs_between_elisions(code: str) -> list[list[str]]:
    """The runs of lines of a quoted block, split at the ``...`` lines, without the blank
    lines at either end of a run."""
    runs: list[list[str]] = [[]]
    for line in code.splitlines():
        if line.strip().startswith("..."):
            runs.append([])
        else:
            runs[-1].append(line.rstrip())
    trimmed = [textwrap.dedent("\n".join(run).strip("\n")).splitlines() for run in runs]
    return [run for run in trimmed if run]


def find_run(run: list[str], source: list[str], start: int) -> int:
    """Where ``run`` stands in ``source[start:]`` as a contiguous block (compared after
    removing the indentation common to each); -1 if nowhere."""
    for at in range(start, len(source) - len(run) + 1):
        window = textwrap.dedent("\n".join(source[at : at + len(run)])).splitlines()
        if [line.rstrip() for line in window] == run:
            return at
    return -1


def package_files_with(line: str) -> list[str]:
    """The package files that contain ``line`` (stripped), to say where a stray quote is."""
    return [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "cornernet_ref").rglob("*.py"))
        if line.strip() in {text.strip() for text in path.read_text(encoding="utf-8").splitlines()}
    ]


def quote_problem(name: str, code: str) -> str | None:
    """Why ``code`` is not a quote of ``name`` (contiguous runs, in order), or None."""
    try:
        source = inspect.getsource(resolve(name)).splitlines()
    except (ImportError, AttributeError, TypeError):
        return "the marker names no function, class or method of the package"
    stripped = [line.strip() for line in source]
    start = 0
    for run in runs_between_elisions(code):
        at = find_run(run, source, start)
        if at < 0:
            return run_problem(name, [line.strip() for line in run], stripped[start:], stripped)
        start = at + len(run)
    return None


def run_problem(name: str, run: list[str], after: list[str], whole: list[str]) -> str:
    """Why the stripped ``run`` is not a contiguous block of ``after`` (the stripped source
    of ``name`` after the previous run; ``whole`` is all of it): the first line that breaks
    the longest head that does stand there."""

    def stands(head: list[str]) -> bool:
        return any(after[i : i + len(head)] == head for i in range(len(after)))

    matched = max((k for k in range(1, len(run) + 1) if stands(run[:k])), default=0)
    if matched == len(run):
        return f"the run starting {run[0]!r} differs in its indentation"
    line = run[matched]
    if line not in whole:
        where = ", ".join(package_files_with(line)) or "no file of the package"
        return f"{line!r} is not a line of {name} (it stands in: {where})"
    if matched:
        shown = repr(line) if line else "a blank line"
        return f"{shown} does not follow {run[matched - 1]!r}"
    return f"{line!r} stands in {name} before the previous quoted run"


CUDA_BLOCK = re.compile(r"^```cuda\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
KERNEL_SOURCE = fused.SOURCE_DIR / "corner_pool.cu"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_quoted_kernel_code_is_a_run_of_the_kernel(chapter: Path) -> None:
    """A ``cuda`` block quotes ``corner_pool.cu``: contiguous runs (``...`` between them) in
    the order of the file."""
    text = chapter.read_text(encoding="utf-8")
    source = KERNEL_SOURCE.read_text(encoding="utf-8").splitlines()
    for block in CUDA_BLOCK.finditer(text):
        line, start = text.count("\n", 0, block.start()) + 1, 0
        for run in runs_between_elisions(block.group(1)):
            at = find_run(run, source, start)
            assert at >= 0, f"{chapter.name} line {line}: {run[0]!r}... is not in the kernel"
            start = at + len(run)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_quoted_code_is_a_run_of_the_named_function(chapter: Path) -> None:
    text = chapter.read_text(encoding="utf-8")
    blocks = quoted_blocks(text)
    problems = []
    if text.count("<!-- code: ") != sum(name is not None for _, name, _ in blocks):
        problems.append("a <!-- code: module.function --> marker not right before a block")
    for line, name, code in blocks:
        if name is None:
            problems.append(f"line {line}: no <!-- code: module.function --> before the block")
        elif (problem := quote_problem(name, code)) is not None:
            problems.append(f"line {line}, quoting {name}: {problem}")
    assert not problems, f"{chapter.name}:\n" + "\n".join(problems)


def function_body(name: str) -> list[str]:
    """The code lines of a function's body, dedented: material for quotes, good and bad."""
    source = textwrap.dedent(inspect.getsource(resolve(name)))
    node = ast.parse(source).body[0]
    lines = source.splitlines()
    return [textwrap.dedent(lines[stmt.lineno - 1]) for stmt in node.body[1:]]  # no docstring


def test_the_quote_check_accepts_a_run_and_rejects_others() -> None:
    name, other = "cornernet_ref.targets.gaussian_bump", "cornernet_ref.targets.draw_gaussian"
    body = function_body(name)
    assert quote_problem(name, "\n".join(body[:2])) is None  # a contiguous run
    assert quote_problem(name, f"{body[0]}\n...\n{body[2]}") is None  # with an elision
    skipped = quote_problem(name, f"{body[0]}\n{body[2]}")  # a line left out, unmarked
    assert skipped == f"{body[2]!r} does not follow {body[0]!r}"
    swapped = quote_problem(name, f"{body[2]}\n...\n{body[0]}")  # runs out of order
    assert swapped == f"{body[0]!r} stands in {name} before the previous quoted run"
    stray = function_body(other)[-1]  # a line of the package, but of another function
    assert f"{stray!r} is not a line of {name}" in quote_problem(name, stray)
    assert "cornernet_ref/targets.py" in quote_problem(name, f"{body[0]}\n{stray}")
    assert "indentation" in quote_problem(name, f"{body[0]}\n    {body[1]}")
    assert "names no function" in quote_problem(f"{name}_", body[0])  # a misspelt marker
    assert quote_problem(name, f"{body[0]}\n{body[1]}  # changed") is not None


def test_a_block_without_its_marker_is_reported() -> None:
    text = "Some text.\n\n```python\nx = 1\n```\n\n<!-- code: a.b -->\n```python\ny\n```\n"
    assert [(line, name) for line, name, _ in quoted_blocks(text)] == [(3, None), (8, "a.b")]


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


# --- Measured figures -------------------------------------------------------------------

# A figure a chapter takes from a benchmark's result carries the key it comes from, in a
# comment right after it (and its unit): ``0.835<!-- radius_ratio.json: results/a/b -->``
# reads ``benchmarks/results/radius_ratio.json`` at ``["results"]["a"]["b"]`` (a number
# indexes a list). ``<!-- results ab: radius_ratio.json results/a -->`` names a part of a
# file once, and ``0.835<!-- ab: b -->`` then reads the same value. The figure must be the
# value rounded to the decimals written, after an optional `` * factor`` or `` / factor``
# at the end of the comment (for a percentage or a unit): ``61%<!-- ab: share * 100 -->``,
# ``686.3 G<!-- model_flops_cpu.json: flops / 1e9 -->``.
RESULTS = REPO / "benchmarks" / "results"
RESULTS_NAME = re.compile(r"<!-- results (\w+): ([\w.]+\.json)(?: (\S+))? -->")
FIGURE_MARK = re.compile(r"<!-- (?!equation:|code:|results )[\w.]+: ")
MEASURED = re.compile(
    r"(?P<figure>\d[\d,]*(?:\.\d+)?)[ ]?(?:%|[A-Za-z]+)?"
    r"<!-- (?P<source>[\w.]+): (?P<key>\S+)(?: (?P<op>[*/]) (?P<factor>[\d.e]+))? -->"
)


def measured_value(file: str, key: str, op: str | None, factor: str | None) -> float:
    """The value at ``key`` (``a/b/0/c``) of a result file, scaled as the marker says."""
    value = json.loads((RESULTS / file).read_text(encoding="utf-8"))
    for part in key.split("/"):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError):
            raise AssertionError(f"{file} has no {key!r}: no {part!r} there") from None
    if op is None:
        return value
    return value * float(factor) if op == "*" else value / float(factor)


def as_written(value: float, figure: str) -> str:
    """``value`` rounded to the decimals of ``figure``, thousands separated as there."""
    decimals = len(figure.partition(".")[2])
    return f"{value:,.{decimals}f}" if "," in figure else f"{value:.{decimals}f}"


def measured_figures(text: str) -> list[tuple[int, str, str]]:
    """``(line, figure as written, value as it should be written)`` of each marked figure."""
    names = {name: (file, prefix) for name, file, prefix in RESULTS_NAME.findall(text)}
    found = []
    for mark in MEASURED.finditer(text):
        file, key = mark["source"], mark["key"]
        if not file.endswith(".json"):
            assert file in names, f"no <!-- results {file}: FILE.json KEY --> names {file!r}"
            file, prefix = names[file]
            key = f"{prefix}/{key}" if prefix else key
        value = measured_value(file, key, mark["op"], mark["factor"])
        line = text.count("\n", 0, mark.start()) + 1
        found.append((line, mark["figure"], as_written(value, mark["figure"])))
    return found


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_measured_figures_are_those_of_the_results(chapter: Path) -> None:
    text = chapter.read_text(encoding="utf-8")
    marks = len(FIGURE_MARK.findall(text))
    assert len(measured_figures(text)) == marks, "a figure's marker not right after a number"
    wrong = [
        f"line {line}: {figure}, measured {value}"
        for line, figure, value in measured_figures(text)
        if figure != value
    ]
    assert not wrong, f"{chapter.name} disagrees with benchmarks/results/: {wrong}"


def test_the_figure_check_reads_keys_scales_and_rounds() -> None:
    runs = json.loads((RESULTS / "radius_ratio.json").read_text())["results"]
    share = runs["coco128_longer_side_511"]["t=0.3"]["share_int_radius_larger_exact"]
    key = "radius_ratio.json: results/coco128_longer_side_511/t=0.3/share_int_radius_larger_exact"
    percent = f"{share * 100:.0f}"
    [(line, figure, value)] = measured_figures(f"text\nabout {percent}%<!-- {key} * 100 -->")
    assert (line, figure, value) == (2, percent, percent)
    [(_, _, value)] = measured_figures(f"{share:.4f}<!-- {key} -->")
    assert value == f"{share:.4f}"
    parameters = json.loads((RESULTS / "model_flops_cpu.json").read_text())["parameters"]
    [(_, _, value)] = measured_figures("1,000 k<!-- model_flops_cpu.json: parameters / 1e3 -->")
    assert value == f"{parameters / 1000:,.0f}"  # the thousands separator follows the figure
    [(_, figure, value)] = measured_figures(f"{share + 0.01:.2f}<!-- {key} -->")
    assert figure != value  # a figure off in its last decimal is caught
    with pytest.raises(AssertionError, match="radius_ratio.json has no .* no 'ratio_mx' there"):
        measured_figures(f"0.998<!-- {key.rpartition('/')[0]}/ratio_mx -->")
    named = "<!-- results coco: radius_ratio.json results/coco128_longer_side_511/t=0.3 -->"
    text = f"{named}\n{share:.3f}<!-- coco: share_int_radius_larger_exact -->"
    [(line, _, value)] = measured_figures(text)
    assert (line, value) == (2, f"{share:.3f}")
