"""The built site, as a reader's browser shows it: math typeset, figures loaded, offline.

The site is built with ``mkdocs build --strict``, served on 127.0.0.1 and opened in headless
Chromium (Debian package ``chromium``) with no network access beyond that server. A
harness page, written into the built site by the test, loads a page of the site in a frame
and records what the reader would see: formulas typeset by KaTeX or left raw, figures
loaded or broken. Chromium dumps the harness's DOM with the results; every page of the
site is inspected this way.

Without Chromium the browser checks skip, except under CI, where they fail: CI installs it.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import pytest
from helpers import docs_hooks, load_script
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]


site_tools = load_script("screenshot_site", REPO / "scripts" / "screenshot_site.py")
hooks = docs_hooks()

# Loads each page in a frame, waits for its scripts, and writes what it found as JSON into
# <pre id="results">. Chapters and API pages hold math as .arithmatex elements; notebook
# pages as $...$ in markdown cells, which must all have become KaTeX.
# One page per Chromium run: with several frames in turn, headless Chromium's virtual clock
# can stall and the run never ends; a page alone takes a second or two.
PAGES_PER_RUN = 1
HARNESS = """<!doctype html>
<html><head><link rel="icon" href="data:,"></head><body><pre id="results"></pre><script>
const PAGES = %s;
const pause = (ms) => new Promise((done) => setTimeout(done, ms));

function rawDollarMath(doc) {
  for (const cell of doc.querySelectorAll(".jp-RenderedMarkdown")) {
    const text = cell.cloneNode(true);
    text.querySelectorAll("code, pre, .katex").forEach((node) => node.remove());
    if (/\\$[^$\\s][^$]*\\$/.test(text.textContent)) return true;
  }
  return false;
}

async function inspect(page) {
  const frame = document.createElement("iframe");
  frame.style.width = "1200px";
  frame.style.height = "900px";
  const loaded = new Promise((done) => (frame.onload = done));
  frame.src = page;
  document.body.appendChild(frame);
  await loaded;
  const doc = frame.contentDocument;
  const formulas = [...doc.querySelectorAll(".arithmatex")];
  const typeset = () => formulas.every((f) => f.querySelector(".katex")) && !rawDollarMath(doc);
  // Material's scripts start the typesetting; give them up to 3 s.
  for (let waited = 0; waited < 3000 && !typeset(); waited += 50) await pause(50);
  const images = [...doc.querySelectorAll("article img")];
  const result = {
    formulas: formulas.length,
    raw: formulas.filter((f) => !f.querySelector(".katex")).map((f) => f.textContent).slice(0, 3),
    katex: doc.querySelectorAll(".katex").length,
    errors: [...doc.querySelectorAll(".katex-error")].map((e) => e.textContent).slice(0, 3),
    rawDollarMath: rawDollarMath(doc),
    images: images.length,
    broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.src),
    scheme: doc.body.getAttribute("data-md-color-scheme"),
  };
  frame.remove();
  return result;
}

(async () => {
  const results = {};
  for (const page of PAGES) results[page] = await inspect(page);
  document.getElementById("results").textContent = JSON.stringify(results);
})();
</script></body></html>
"""


def site_pages(site: Path) -> list[str]:
    """Every page of the built site as a path relative to its root (``chapters/01_x/``)."""
    pages = []
    for index in sorted(site.rglob("index.html")):
        relative = index.parent.relative_to(site).as_posix()
        pages.append("" if relative == "." else f"{relative}/")
    return pages


def inspect_pages(site: Path, pages: list[str], dark: bool = False) -> tuple[dict, list[str]]:
    """What Chromium shows on each page, and the requests the site could not answer.

    Each page gets a Chromium run of its own (``PAGES_PER_RUN``).
    """
    results, failures = {}, []
    for start in range(0, len(pages), PAGES_PER_RUN):
        chunk = pages[start : start + PAGES_PER_RUN]
        (site / "__harness__.html").write_text(HARNESS % json.dumps(["/" + p for p in chunk]))
        with site_tools.serve(site) as (base, failed):
            budget = 4000 + 1500 * len(chunk)  # virtual time: skipped over while idle
            dom = site_tools.dump_dom(
                base + "__harness__.html", dark=dark, budget_ms=budget, timeout=60
            )
        found = re.search(r'<pre id="results">(.*?)</pre>', dom, flags=re.DOTALL).group(1)
        assert found, f"the harness did not finish inspecting {chunk}"
        results |= {
            page.lstrip("/"): seen for page, seen in json.loads(html.unescape(found)).items()
        }
        failures += failed
    return results, failures


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    site_tools.build_site(site_dir)
    return site_dir


@pytest.fixture(scope="module")
def browser() -> None:
    if site_tools.find_chromium() is None:
        message = "needs headless Chromium (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI installs it, so its absence is an error there")
        pytest.skip(message)


def test_navigation_follows_the_numbers_and_keeps_every_page():
    names = [
        "api/targets.md",
        "chapters/02_losses.md",
        "run.md",
        "index.md",
        "chapters/10_extra.md",
        "chapters/01_targets.md",
        "notes.md",
        "claims.md",
    ]
    files = Files([File(name, "/docs", "/site", use_directory_urls=True) for name in names])
    assert hooks.build_nav(files) == [
        {"Overview": "index.md"},
        {
            "The paper, section by section": [
                "chapters/01_targets.md",
                "chapters/02_losses.md",
                "chapters/10_extra.md",
            ]
        },
        {"Run it yourself": "run.md"},
        {"Paper claims": "claims.md"},
        {"API reference": ["api/targets.md"]},
        "notes.md",
    ]


def test_quoted_equations_link_to_their_docstrings():
    markdown = (
        "Text.\n\n<!-- equation: cornernet_ref.corner_pool.reference.scan_max -->\n\n$$ y $$\n"
    )
    pages = {
        "cornernet_ref.corner_pool": "api/pool.md",
        "cornernet_ref.corner_pool.reference": "api/pool.md",
    }
    linked = hooks.link_quoted_equations(markdown, pages)
    assert linked.startswith(markdown.rstrip("\n"))
    assert linked.endswith(
        "$$ y $$\n\n<small>Stated in the code: [`scan_max`]"
        "(../api/pool.md#cornernet_ref.corner_pool.reference.scan_max).</small>\n\n"
    )
    assert hooks.api_pages()["cornernet_ref.losses"] == "api/losses.md"


def test_table_of_contents_shows_heading_math_as_text():
    """Chapter 1's "the division by $2a$" is listed as "... by 2a", not "... by \\(2a\\)"."""
    import markdown
    from mkdocs.structure.toc import get_toc

    md = markdown.Markdown(
        extensions=["toc", "pymdownx.arithmatex"],
        extension_configs={"pymdownx.arithmatex": {"generic": True}},
    )
    md.convert("## Radius\n\n### 3.5 The division by $2a$, not $a$\n")
    toc = get_toc(md.toc_tokens)
    assert toc.items[0].children[0].title == "3.5 The division by \\(2a\\), not \\(a\\)"
    hooks.plain_toc_titles(toc)
    assert toc.items[0].title == "Radius"
    assert toc.items[0].children[0].title == "3.5 The division by 2a, not a"


def test_claims_page_marks_gpu_claims_not_yet_measured_until_a_gpu_result(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    claims = [{"id": "kernel", "claim": "The kernel is exact.", "section": "§3.4"}]
    gpu_test = hooks.Check("tests/test_x.py::test_kernel", gpu_only=True)
    page = hooks.claims_page(claims, {"kernel": [gpu_test]}, root=tmp_path)
    [row] = [line for line in page.splitlines() if 'id="kernel"' in line]
    assert "**not yet measured**" in row and "`tests/test_x.py::test_kernel` (GPU only)" in row

    cpu_result = {"device": "CPU: 2 cores", "date": "2026-01-02", "claims": ["kernel"]}
    (results / "kernel_cpu.json").write_text(json.dumps(cpu_result))
    gpu_result = {"device": "NVIDIA H100", "cuda": "12.8", "date": "2026-01-03"}
    for gpu, name in ((False, "kernel_cpu.json"), (True, "kernel_gpu.json")):
        if gpu:
            (results / name).write_text(json.dumps(gpu_result | {"claims": ["kernel"]}))
        checks = {"kernel": [gpu_test, *hooks.benchmark_claims(results, root=tmp_path)["kernel"]]}
        page = hooks.claims_page(claims, checks, root=tmp_path)
        [row] = [line for line in page.splitlines() if 'id="kernel"' in line]
        assert ("not yet measured" in row) == (not gpu), row
        assert "`benchmarks/results/kernel_cpu.json` (CPU: 2 cores, 2026-01-02)" in row


def test_claims_page_names_the_figure_drawn_from_a_result():
    assert hooks.figures_reading("ablations_shapes.json") == ["ablations_shapes"]
    assert hooks.figures_reading("corner_pool_h100.json") == ["pool_benchmark"]
    assert hooks.figures_reading("nothing_reads_this.json") == []


def test_site_builds_with_pages_in_paper_order(site):
    nav = (site / "index.html").read_text(encoding="utf-8")
    chapters = sorted(p.stem for p in (REPO / "chapters").glob("[0-9][0-9]_*.md"))
    hrefs = [re.search(rf'href="[^"]*{chapter}/"', nav) for chapter in chapters]
    assert all(hrefs), f"chapters missing from the navigation: {chapters}"
    positions = [h.start() for h in hrefs]
    assert positions == sorted(positions), "chapters out of paper order in the navigation"
    for page in ["run/index.html", "claims/index.html", "api/index.html"]:
        assert (site / page).is_file(), page


@pytest.mark.slow
def test_every_page_shows_its_math_and_figures_offline(site, browser):
    pages = site_pages(site)
    results, failures = inspect_pages(site, pages)
    assert sorted(results) == sorted(pages), "the harness skipped pages"
    for page, seen in results.items():
        assert not seen["raw"], f"/{page}: formulas left untypeset, e.g. {seen['raw']}"
        assert not seen["errors"], f"/{page}: KaTeX could not parse {seen['errors']}"
        assert not seen["rawDollarMath"], f"/{page}: $...$ left untypeset in a notebook cell"
        assert not seen["broken"], f"/{page}: images that did not load: {seen['broken']}"
        assert seen["scheme"] == "default", f"/{page}: light theme expected, got {seen['scheme']}"
    assert not failures, f"assets pages asked for but the site lacks: {failures}"
    # The checks above must have had something to check.
    assert results[""]["katex"] > 0, "the overview's math was not typeset"
    if list((REPO / "docs" / "figures").glob("*.py")):
        assert any(seen["images"] for seen in results.values()), "no page shows a figure"


@pytest.mark.slow
def test_dark_theme_typesets_math(site, browser):
    results, failures = inspect_pages(site, [""], dark=True)
    assert results[""]["scheme"] == "slate", "the dark theme was not chosen"
    assert results[""]["katex"] > 0 and not results[""]["raw"]
    assert not failures, f"assets pages asked for but the site lacks: {failures}"
