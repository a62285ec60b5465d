"""mkdocs hooks: figures drawn from code, navigation in paper order, the claims page.

* **Figures.** Each ``docs/figures/<name>.py`` defines ``main(out: pathlib.Path) -> None``
  that saves one PNG. Before the build the hook runs them all into ``docs/img/<name>.png``
  (not committed), so a figure in a chapter is always what the current code draws.
  Chapters show one with ``![alt text](../img/<name>.png)``. ``python docs/hooks.py``
  draws them without building the site.
* **Navigation.** Built from the files present, in paper order: the overview, the chapters
  ``chapters/NN_*.md`` by their number, the notebooks ``notebooks/NN_*.py``, "Run it
  yourself", the claims page and the API reference. A page the order does not know goes
  at the end rather than being left out.
* **Overview.** ``<!-- chapters -->`` in ``index.md`` becomes the list of chapters.
* **Chapter and notebook, one click apart.** A chapter ``NN_*.md`` gets a link to each
  notebook ``NN_*.py`` of the same number under its title, and the notebook a link back.
* **Claims.** ``claims.md`` ("Paper claims and where they are tested") is generated from
  the registry ``docs/claims.yml``, the ``@pytest.mark.claim("<id>")`` markers found by
  parsing ``tests/*.py`` (nothing is executed) and the benchmark results
  ``benchmarks/results/*.json`` whose top-level ``"claims"`` list names the claims they
  measure. ``tests/test_claims.py`` checks the same data.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
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


def _check_note(check: Check) -> str:
    if check.kind == "benchmark":
        return " (benchmark)"
    return " **GPU**" if check.gpu_only else ""


def claims_page(claims: list[dict], checks: dict[str, list[Check]]) -> str:
    """Markdown of the page "Paper claims and where they are tested"."""
    lines = [
        "# Paper claims and where they are tested",
        "",
        "Each concrete claim of the paper (and of the official implementation this project",
        "reproduces) with the tests and benchmarks that check it. The page is generated at",
        'build time from the registry `docs/claims.yml`, the `@pytest.mark.claim("<id>")`',
        "markers in `tests/` and the benchmark results in `benchmarks/results/`, so it",
        "cannot drift from the code; `tests/test_claims.py` fails when a marker names no",
        "claim or a claim has no check.",
        "",
        "`pytest -m claim` runs every test that checks a claim. Tests marked **GPU** run",
        "only on a CUDA machine (see",
        "[Run it yourself](run.md)). A benchmark names the claims it measures in its result",
        'file, as a top-level list: `"claims": ["<id>", ...]`.',
        "",
        "| Claim | Paper | Checked by |",
        "| --- | --- | --- |",
    ]
    for entry in claims:
        found = checks.get(entry["id"], [])
        cells = [f"`{c.name}`" + _check_note(c) for c in found]
        checked_by = "<br>".join(cells) if cells else "*not checked yet*"
        claim = f'<a id="{entry["id"]}"></a>**{entry["id"]}**: {entry["claim"]}'
        lines.append(f"| {claim} | {entry.get('section', '')} | {checked_by} |")
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


def on_page_markdown(markdown: str, page, config, files: Files, **kwargs) -> str:
    """Chapters: a link to their notebooks under the title. Overview: the chapter list."""
    uri = page.file.src_uri
    if uri == "index.md":
        return markdown.replace("<!-- chapters -->", chapter_list(files))
    if not (uri.startswith("chapters/") and NUMBERED.match(page.file.name)):
        return markdown
    notebooks = notebooks_of(page.file, files)
    if not notebooks:
        return markdown
    links = ", ".join(f"[`{Path(n.src_uri).name}`](../{n.src_uri})" for n in notebooks)
    note = f'\n!!! example "Notebook"\n    Step through this chapter cell by cell: {links}.\n'
    title = re.search(r"^# .*$", markdown, flags=re.MULTILINE)
    at = title.end() if title else 0
    return markdown[:at] + "\n" + note + markdown[at:]


def on_page_content(html: str, page, config, files: Files, **kwargs) -> str:
    """Put a link back to the chapter under each notebook's title."""
    uri = page.file.src_uri
    if not (uri.startswith("notebooks/") and NUMBERED.match(page.file.name)):
        return html
    number = page.file.name[:2]
    chapters = [f for f in _numbered(files, "chapters", (".md",)) if f.name.startswith(number)]
    links = ", ".join(
        f'<a href="{get_relative_url(c.url, page.url)}">{c.page.title if c.page else c.name}</a>'
        for c in chapters
    )
    source = Path(uri).name  # mkdocs-jupyter's include_source puts it beside the page
    text = f"This notebook accompanies the chapter {links}. " if chapters else ""
    back = (
        '<div class="admonition note"><p class="admonition-title">Notebook</p>'
        f'<p>{text}Download it: <a href="{source}" download><code>{source}</code></a> '
        "(a jupytext script; <code>jupytext --to ipynb</code> makes it a notebook).</p></div>"
    )
    at = html.find("</h1>")
    at = 0 if at < 0 else at + len("</h1>")
    return html[:at] + back + html[at:]


if __name__ == "__main__":  # python docs/hooks.py: draw the figures without building the site
    for path in draw_figures(DOCS / "img"):
        print(path.relative_to(REPO))
