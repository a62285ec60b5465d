"""mkdocs hooks: figures drawn from code, navigation in paper order, the claims page.

* **Figures.** Each ``docs/figures/<name>.py`` defines ``main(out: pathlib.Path) -> None``
  that saves one PNG. Before the build the hook runs them all into ``docs/img/<name>.png``
  (not committed), so a figure in a chapter is always what the current code draws.
  Chapters show one with ``![alt text](../img/<name>.png)``. ``python docs/hooks.py``
  draws them without building the site.
* **Notebooks, executed.** Each jupytext script ``notebooks/NN_*.py`` is executed top to
  bottom (in its small CPU mode) into ``.cache/executed/notebooks/NN_*.ipynb``, and its
  page shows that executed notebook: printed values and figures. An executed notebook is
  reused while its key (the script, the package's source files, the Python and torch
  versions, ``CORNERNET_SHARED``) is unchanged, so the build and ``tests/test_notebooks.py``
  execute each notebook once between them. A notebook that raises fails the build.
* **Navigation.** Built from the files present, in paper order: the overview, the chapters
  ``chapters/NN_*.md`` by their number, the notebooks ``notebooks/NN_*.py``, "Run it
  yourself", the claims page and the API reference. A page the order does not know goes
  at the end rather than being left out.
* **Overview.** ``<!-- chapters -->`` in ``index.md`` becomes the list of chapters.
* **Equations.** Under each equation a chapter quotes with ``<!-- equation: name -->``
  (``tests/test_chapters.py`` checks it against the docstring of ``name``), a link to that
  docstring in the API reference.
* **Chapter and notebook, one click apart.** A chapter ``NN_*.md`` gets a link to each
  notebook ``NN_*.py`` of the same number under its title, and the notebook a link back.
* **Claims.** ``claims.md`` ("Paper claims and where they are tested") is generated from
  the registry ``docs/claims.yml``, the ``@pytest.mark.claim("<id>")`` markers found by
  parsing ``tests/*.py`` (nothing is executed) and the benchmark results
  ``benchmarks/results/*.json`` whose top-level ``"claims"`` list names the claims they
  measure. Per claim it shows the test node ids, the result files (device, date, and the
  figure scripts of ``docs/figures`` that read them), and marks a claim whose only checks
  are GPU tests as not yet measured. ``tests/test_claims.py`` checks the same data.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import yaml
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
NUMBERED = re.compile(r"^(\d\d)_")


# --- Figures ---------------------------------------------------------------------------


def draw_figures(out_dir: Path) -> list[Path]:
    """Run every figure script; return the PNGs written."""
    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for script in sorted((DOCS / "figures").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"figure_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        out = out_dir / f"{script.stem}.png"
        try:
            spec.loader.exec_module(module)
            module.main(out)
        except Exception as error:
            raise RuntimeError(
                f"figure script {script.relative_to(REPO)} failed: {error}"
            ) from error
        written.append(out)
    return written


# --- Notebooks -------------------------------------------------------------------------

EXECUTED = REPO / ".cache" / "executed" / "notebooks"
# The kernel draws figures into the notebook, whatever MPLBACKEND the build runs under.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def notebook_key(script: Path) -> str:
    """What an executed notebook depends on: its script, the package, the versions, the data."""
    digest = hashlib.sha256()
    package = sorted(
        path
        for path in (REPO / "cornernet_ref").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )
    digest.update(script.name.encode() + script.read_bytes())
    for path in package:
        digest.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    versions = [sys.version, importlib.metadata.version("torch")]
    digest.update(repr([*versions, os.environ.get("CORNERNET_SHARED")]).encode())
    return digest.hexdigest()


def executed_notebook(script: Path, out_dir: Path = EXECUTED, timeout: int = 900) -> Path:
    """The jupytext ``script`` as a notebook executed top to bottom; returns its path.

    The notebook runs in ``notebooks/`` (so that relative paths work as for a reader) with
    the inline matplotlib backend, and is written atomically with its key in the metadata;
    a notebook already there with the same key is returned as it is.

    Raises:
        RuntimeError: naming the notebook, when a cell raises.
    """
    import jupytext
    import nbclient
    import nbformat

    script = script.resolve()
    out = out_dir / f"{script.stem}.ipynb"
    key = notebook_key(script)
    if out.exists():
        metadata = json.loads(out.read_text(encoding="utf-8")).get("metadata", {})
        if metadata.get("cornernet_ref", {}).get("key") == key:
            return out
    notebook = jupytext.read(script)
    backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE_BACKEND  # inherited by the kernel
    try:
        client = nbclient.NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            # The kernel's startup notices are no warnings of the build; cell errors still
            # come back as outputs and raise.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
            resources={"metadata": {"path": str(script.parent)}},
        )
        client.execute()
    except nbclient.exceptions.CellExecutionError as error:
        raise RuntimeError(f"notebook {script.relative_to(REPO)} failed:\n{error}") from error
    finally:
        if backend is None:
            os.environ.pop("MPLBACKEND")
        else:
            os.environ["MPLBACKEND"] = backend
    notebook.metadata["cornernet_ref"] = {"key": key}
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    nbformat.write(notebook, partial)
    partial.replace(out)
    return out


def _is_notebook_page(file: File) -> bool:
    return file.src_uri.startswith("notebooks/") and file.src_uri.endswith(".py")


# --- Claims ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A test or benchmark that checks a claim.

    Attributes:
        name: pytest node id (``tests/test_x.py::test_y``) or benchmark result path.
        gpu_only: True when it runs only on a CUDA GPU (marked ``cuda`` or skipped
            without CUDA); benchmark results count as measured, not GPU-only.
        kind: ``"test"`` or ``"benchmark"``.
    """

    name: str
    gpu_only: bool = False
    kind: str = "test"


def load_claims(path: Path = DOCS / "claims.yml") -> list[dict]:
    """The claim registry: a list of ``{id, claim, section}``; ids must be unique."""
    claims = yaml.safe_load(path.read_text())
    ids = [entry["id"] for entry in claims]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate claim ids {duplicates}")
    return claims


def _is_mark(node: ast.AST, name: str) -> bool:
    """True for ``pytest.mark.<name>`` / ``mark.<name>``."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr == name
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "mark"
    )


def _claim_ids(marks: list[ast.expr]) -> list[str]:
    """Claim ids in marker expressions, nested ones (``pytest.param(marks=...)``) included."""
    ids = []
    for mark in marks:
        for node in ast.walk(mark):
            if isinstance(node, ast.Call) and _is_mark(node.func, "claim") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    ids.append(arg.value)
    return ids


def _needs_gpu(marks: list[ast.expr]) -> bool:
    """True when the marks make the test GPU-only: ``cuda``, or a skipif on CUDA."""
    for mark in marks:
        for node in ast.walk(mark):
            if _is_mark(node, "cuda"):
                return True
            if isinstance(node, ast.Call) and _is_mark(node.func, "skipif"):
                if "cuda" in ast.unparse(node).lower():
                    return True
    return False


def _module_marks(tree: ast.Module) -> list[ast.expr]:
    """The expression assigned to ``pytestmark`` at module level, if any."""
    return [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
    ]


def claim_markers(test_file: Path, root: Path = REPO) -> dict[str, list[Check]]:
    """Map claim id -> tests marked with it in one test file, found by parsing (no import)."""
    tree = ast.parse(test_file.read_text(), filename=str(test_file))
    prefix = test_file.relative_to(root).as_posix()
    found: dict[str, list[Check]] = {}

    def visit(body: list[ast.stmt], node_prefix: str, inherited: list[ast.expr]) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                class_marks = inherited + node.decorator_list + _module_marks(node)
                visit(node.body, f"{node_prefix}::{node.name}", class_marks)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if not node.name.startswith("test"):
                    continue
                marks = inherited + node.decorator_list
                check = Check(f"{node_prefix}::{node.name}", gpu_only=_needs_gpu(marks))
                for claim_id in dict.fromkeys(_claim_ids(marks)):
                    found.setdefault(claim_id, []).append(check)

    visit(tree.body, prefix, _module_marks(tree))
    return found


def benchmark_claims(results_dir: Path, root: Path = REPO) -> dict[str, list[Check]]:
    """Map claim id -> benchmark results naming it in their top-level ``"claims"`` list."""
    found: dict[str, list[Check]] = {}
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        claims = result.get("claims", []) if isinstance(result, dict) else []
        if isinstance(claims, str) or not isinstance(claims, list):
            raise ValueError(f"{path}: 'claims' must be a list of claim ids, got {claims!r}")
        name = path.relative_to(root).as_posix()
        for claim_id in claims:
            found.setdefault(claim_id, []).append(Check(name, kind="benchmark"))
    return found


def collect_checks(root: Path = REPO) -> dict[str, list[Check]]:
    """Claim id -> every test and benchmark result that names it."""
    checks: dict[str, list[Check]] = {}
    sources = [claim_markers(f, root) for f in sorted((root / "tests").glob("test_*.py"))]
    sources.append(benchmark_claims(root / "benchmarks" / "results", root))
    for source in sources:
        for claim_id, found in source.items():
            checks.setdefault(claim_id, []).extend(found)
    return checks


def measured_on_gpu(result: dict) -> bool:
    """Whether a benchmark result was measured on a GPU (its ``cuda`` or ``device`` says so)."""
    device = str(result.get("device", ""))
    return bool(result.get("cuda")) or any(word in device for word in ("GPU", "NVIDIA", "CUDA"))


def figures_reading(result_name: str, figures_dir: Path = DOCS / "figures") -> list[str]:
    """The figure scripts that read a benchmark result (they name it, or a glob matching it)."""
    names = []
    for script in sorted(figures_dir.glob("*.py")):
        patterns = re.findall(r"[\w*]+\.json", script.read_text(encoding="utf-8"))
        if any(fnmatch.fnmatch(result_name, pattern) for pattern in patterns):
            names.append(script.stem)
    return names


def _check_cell(check: Check, root: Path) -> str:
    """One check: the test's node id, or the result file with its device, date and figures."""
    if check.kind != "benchmark":
        return f"`{check.name}`" + (" (GPU only)" if check.gpu_only else "")
    result = json.loads((root / check.name).read_text())
    measured = ", ".join(str(result[key]) for key in ("device", "date") if result.get(key))
    figures = ", ".join(
        f"[{name}](img/{name}.png)" for name in figures_reading(Path(check.name).name)
    )
    return f"`{check.name}` ({measured})" + (f", figure {figures}" if figures else "")


def claim_status(checks: list[Check], root: Path = REPO) -> str:
    """Measured where, or not yet: a claim checked only on a GPU waits for a GPU result."""
    if not checks:
        return "*not checked yet*"
    cpu_tests = [c for c in checks if c.kind == "test" and not c.gpu_only]
    benchmarks = [json.loads((root / c.name).read_text()) for c in checks if c.kind == "benchmark"]
    gpu_results = [result for result in benchmarks if measured_on_gpu(result)]
    if not cpu_tests and not benchmarks:
        return "**not yet measured**: its tests need a CUDA GPU"
    parts = []
    if cpu_tests:
        parts.append(f"tests, on every `pytest` run ({len(cpu_tests)})")
    if benchmarks:
        parts.append(f"benchmark ({len(gpu_results)} of {len(benchmarks)} on a GPU)")
    gpu_tests = [c for c in checks if c.kind == "test" and c.gpu_only]
    if gpu_tests and not gpu_results:
        parts.append(f"its {len(gpu_tests)} GPU-only tests: **not yet measured**")
    return "; ".join(parts)


def claims_page(claims: list[dict], checks: dict[str, list[Check]], root: Path = REPO) -> str:
    """Markdown of the page "Paper claims and where they are tested"."""
    lines = [
        "# Paper claims and where they are tested",
        "",
        "Each concrete claim of the paper (and of the official implementation this project",
        "reproduces), what checks it and where: the test functions (pytest node ids) and the",
        "benchmark results (`benchmarks/results/*.json`, with the device and date of the",
        "measurement and the figure drawn from them). The page is generated at build time",
        'from the registry `docs/claims.yml`, the `@pytest.mark.claim("<id>")` markers in',
        "`tests/` and the benchmark results, so it cannot drift from the code;",
        "`tests/test_claims.py` fails when a marker names no claim or a claim has no check.",
        "",
        "`pytest -m claim` runs every test that checks a claim. A test marked *GPU only* runs",
        "only on a CUDA machine (see [Run it yourself](run.md)); a claim checked by such tests",
        "alone is **not yet measured** until a GPU run records a result. A benchmark names the",
        'claims it measures in its result file, as a top-level list: `"claims": ["<id>", ...]`.',
        "",
        "| Claim | Paper | Measured | Checked by |",
        "| --- | --- | --- | --- |",
    ]
    for entry in claims:
        found = checks.get(entry["id"], [])
        cells = [_check_cell(c, root) for c in found]
        checked_by = "<br>".join(cells) if cells else "*not checked yet*"
        claim = f'<a id="{entry["id"]}"></a>**{entry["id"]}**: {entry["claim"]}'
        status = claim_status(found, root)
        lines.append(f"| {claim} | {entry.get('section', '')} | {status} | {checked_by} |")
    unknown = sorted(set(checks) - {entry["id"] for entry in claims})
    if unknown:
        lines += ["", "Markers naming no registered claim: " + ", ".join(f"`{u}`" for u in unknown)]
    return "\n".join(lines) + "\n"


# --- Navigation ------------------------------------------------------------------------


def _numbered(files: Files, folder: str, suffixes: tuple[str, ...]) -> list[File]:
    """Documentation pages ``<folder>/NN_*`` sorted by name."""
    return sorted(
        (
            f
            for f in files.documentation_pages()
            if f.src_uri.startswith(f"{folder}/")
            and f.src_uri.count("/") == 1
            and NUMBERED.match(f.name)
            and f.src_uri.endswith(suffixes)
        ),
        key=lambda f: f.src_uri,
    )


def notebooks_of(chapter: File, files: Files) -> list[File]:
    """The notebooks sharing the chapter's number (``01_targets.md`` -> ``01_*.py``)."""
    number = NUMBERED.match(Path(chapter.src_uri).name).group(1)
    return [
        f
        for f in _numbered(files, "notebooks", (".py", ".ipynb"))
        if Path(f.src_uri).name.startswith(f"{number}_")
    ]


def build_nav(files: Files) -> list:
    """The navigation in paper order, from the pages that exist."""
    pages = {f.src_uri for f in files.documentation_pages()}
    nav: list = []
    placed: set[str] = set()

    def add(title: str | None, uris: list[str]) -> None:
        uris = [u for u in uris if u in pages and u not in placed]
        if not uris:
            return
        placed.update(uris)
        if title is None:
            nav.extend(uris)
        elif len(uris) == 1 and not uris[0].startswith(("chapters/", "notebooks/", "api/")):
            nav.append({title: uris[0]})
        else:
            nav.append({title: uris})

    add("Overview", ["index.md"])
    add(
        "The paper, section by section", [f.src_uri for f in _numbered(files, "chapters", (".md",))]
    )
    notebooks = _numbered(files, "notebooks", (".py", ".ipynb"))
    add("Notebooks", [f.src_uri for f in notebooks])
    add("Run it yourself", ["run.md"])
    add("Paper claims", ["claims.md"])
    api = sorted(u for u in pages if u.startswith("api/") and u != "api/index.md")
    add("API reference", ["api/index.md", *api])
    add(None, sorted(pages - placed))
    return nav


def api_index(files: Files) -> str:
    """Markdown of the API reference's index: one line per module page."""
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings of the package `cornernet_ref`. Each function's",
        "docstring carries the equation it implements; the chapters link here.",
        "",
    ]
    for f in sorted(files.documentation_pages(), key=lambda f: f.src_uri):
        if f.src_uri.startswith("api/") and f.src_uri != "api/index.md":
            module = Path(f.src_uri).stem
            lines.append(f"* [`cornernet_ref.{module}`]({Path(f.src_uri).name})")
    return "\n".join(lines) + "\n"


# --- Hooks -----------------------------------------------------------------------------


def on_pre_build(config, **kwargs) -> None:
    draw_figures(DOCS / "img")


def on_files(files: Files, config, **kwargs) -> Files:
    # docs/chapters and docs/notebooks link to top-level folders; in a checkout where one
    # is still empty (git keeps no empty folders) the link dangles and is no file to copy.
    for file in list(files):
        if file.abs_src_path and not Path(file.abs_src_path).exists():
            files.remove(file)
    for file in files:
        if _is_notebook_page(file):  # the page shows the executed notebook
            file.abs_src_path = str(executed_notebook(Path(file.abs_src_path)))
    if files.get_file_from_path("claims.md") is None:
        content = claims_page(load_claims(), collect_checks())
        files.append(File.generated(config, "claims.md", content=content))
    if files.get_file_from_path("api/index.md") is None:
        files.append(File.generated(config, "api/index.md", content=api_index(files)))
    config.nav = build_nav(files)
    return files


def chapter_list(files: Files) -> str:
    """Markdown list of the chapters (title from each one's ``# Title``), for the overview."""
    items = []
    for chapter in _numbered(files, "chapters", (".md",)):
        source = Path(chapter.abs_src_path).read_text(encoding="utf-8")
        title = re.search(r"^# (.+)$", source, flags=re.MULTILINE)
        name = title.group(1).strip() if title else chapter.name
        items.append(f"1. [{name}]({chapter.src_uri})")
    return "## Chapters\n\n" + "\n".join(items) + "\n" if items else ""


QUOTED_EQUATION = re.compile(r"<!-- equation: ([\w.]+) -->(\s*\$\$.*?\$\$)", flags=re.DOTALL)


def api_pages(api_dir: Path = DOCS / "api") -> dict[str, str]:
    """Module -> the API page documenting it (``::: module`` lines of ``docs/api/*.md``)."""
    pages = {}
    for path in sorted(api_dir.glob("*.md")):
        for module in re.findall(r"^::: ([\w.]+)", path.read_text(encoding="utf-8"), re.M):
            pages[module] = f"api/{path.name}"
    return pages


def link_quoted_equations(markdown: str, pages: dict[str, str]) -> str:
    """Under each equation a chapter quotes from a docstring, a link to that docstring."""

    def source_link(match: re.Match) -> str:
        name = match.group(1)
        module = max((m for m in pages if name == m or name.startswith(m + ".")), key=len)
        short = name.removeprefix(module + ".") if name != module else name
        link = f"[`{short}`](../{pages[module]}#{name})"
        return f"{match.group(0)}\n\n<small>Stated in the code: {link}.</small>\n"

    return QUOTED_EQUATION.sub(source_link, markdown)


def on_page_markdown(markdown: str, page, config, files: Files, **kwargs) -> str:
    """Chapters: a link to their notebooks under the title and to the docstring under each
    quoted equation. Overview: the chapter list."""
    uri = page.file.src_uri
    if uri == "index.md":
        return markdown.replace("<!-- chapters -->", chapter_list(files))
    if not (uri.startswith("chapters/") and NUMBERED.match(page.file.name)):
        return markdown
    markdown = link_quoted_equations(markdown, api_pages())
    notebooks = notebooks_of(page.file, files)
    if not notebooks:
        return markdown
    links = ", ".join(f"[`{Path(n.src_uri).name}`](../{n.src_uri})" for n in notebooks)
    note = f'\n!!! example "Notebook"\n    Step through this chapter cell by cell: {links}.\n'
    title = re.search(r"^# .*$", markdown, flags=re.MULTILINE)
    at = title.end() if title else 0
    return markdown[:at] + "\n" + note + markdown[at:]


INLINE_MATH = re.compile(r"\\\((.+?)\\\)")  # \( ... \), as arithmatex leaves math in text


def plain_toc_titles(toc) -> None:
    r"""Write the math in table-of-contents entries as text: ``\(2a\)`` becomes ``2a``.

    The entries are plain text, which KaTeX does not typeset, so a heading's math would show
    its delimiters; without them a short formula reads as it should.
    """
    for link in toc:
        link.title = INLINE_MATH.sub(r"\1", link.title)
        plain_toc_titles(link.children)


def on_page_content(html: str, page, config, files: Files, **kwargs) -> str:
    """Plain-text math in the table of contents; a link back to the chapter under each
    notebook's title."""
    plain_toc_titles(page.toc)
    uri = page.file.src_uri
    if not (uri.startswith("notebooks/") and NUMBERED.match(page.file.name)):
        return html
    number = page.file.name[:2]
    chapters = [f for f in _numbered(files, "chapters", (".md",)) if f.name.startswith(number)]
    links = ", ".join(
        f'<a href="{get_relative_url(c.url, page.url)}">{c.page.title if c.page else c.name}</a>'
        for c in chapters
    )
    script = Path(uri).name  # copied beside the page by on_post_page
    executed = Path(uri).with_suffix(".ipynb").name  # by mkdocs-jupyter's include_source
    text = f"This notebook accompanies the chapter {links}. " if chapters else ""
    back = (
        '<div class="admonition note"><p class="admonition-title">Notebook</p>'
        f"<p>{text}The outputs below were computed from this code when the site was built. "
        f'Download it with its outputs, <a href="{executed}" download><code>{executed}</code></a>,'
        f' or as the jupytext script <a href="{script}" download><code>{script}</code></a>'
        " (<code>jupyter lab notebooks/</code> in a checkout opens the scripts as notebooks)."
        "</p></div>"
    )
    at = html.find("</h1>")
    at = 0 if at < 0 else at + len("</h1>")
    return html[:at] + back + html[at:]


def on_post_page(output: str, page, config, **kwargs) -> str:
    """Copy a notebook's jupytext script beside its page (the executed one is already)."""
    if _is_notebook_page(page.file):
        script = REPO / "notebooks" / Path(page.file.src_uri).name
        shutil.copyfile(script, Path(page.file.abs_dest_path).parent / script.name)
    return output


if __name__ == "__main__":  # python docs/hooks.py: draw the figures without building the site
    for path in draw_figures(DOCS / "img"):
        print(path.relative_to(REPO))
