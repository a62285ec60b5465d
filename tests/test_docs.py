"""The built site, as a reader's browser shows it: math typeset, figures loaded, offline.

The site is built with ``mkdocs build --strict``, served on 127.0.0.1 and opened in headless
Chromium (Debian package ``chromium``) without network access to anything else. A script
injected into each served page records, once the page has loaded, which images failed;
the DOM Chromium dumps then shows whether KaTeX replaced every formula.

Without Chromium the browser checks skip, except under CI, where they fail: CI installs it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_site_tools():
    path = REPO / "scripts" / "screenshot_site.py"
    spec = importlib.util.spec_from_file_location("screenshot_site", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


site_tools = _load_site_tools()

# Records, once everything has loaded, how many images the article has and which failed.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.querySelectorAll("article img")];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0));
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesBroken = broken.map((i) => i.getAttribute("src")).join(" ");
});
</script>"""


def with_image_probe(html: str) -> str:
    return html.replace("</body>", IMAGE_PROBE + "</body>")


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


def pages_with(site: Path, folder: str, pattern: str) -> list[str]:
    """Site paths (``chapters/01_x/``) of the pages under ``folder`` whose HTML matches."""
    return [
        f"{page.parent.relative_to(site).as_posix()}/"
        for page in sorted((site / folder).glob("*/index.html"))
        if re.search(pattern, page.read_text(encoding="utf-8"))
    ]


# Math in a notebook's markdown cell: text between dollars, in the rendered-markdown block.
NOTEBOOK_MATH = r"jp-RenderedMarkdown[^>]*>(?:(?!jp-CodeCell)[\s\S])*?\$[^$<\n]+\$"


def page_to_check(site: Path) -> str:
    """A chapter with math and a figure if there is one, else one with math, else the overview."""
    with_math = pages_with(site, "chapters", 'class="arithmatex"')
    with_images = set(pages_with(site, "chapters", "<img "))
    both = [page for page in with_math if page in with_images]
    return (both or with_math or [""])[0]


def assert_math_typeset(dom: str) -> None:
    formulas = len(re.findall(r'class="arithmatex"', dom))
    typeset = len(re.findall(r'class="arithmatex"[^>]*>\s*<span class="katex', dom))
    assert typeset == formulas, f"{formulas - typeset} of {formulas} formulas not typeset"
    assert "katex-error" not in dom, "KaTeX could not parse a formula"


def assert_images_loaded(dom: str) -> int:
    body = re.search(r"<body[^>]*>", dom).group(0)
    total = re.search(r'data-images-total="(\d+)"', body)
    assert total, "the page never finished loading"
    broken = re.search(r'data-images-broken="([^"]*)"', body).group(1)
    assert not broken, f"images that did not load: {broken}"
    return int(total.group(1))


def _load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_navigation_follows_the_numbers_and_keeps_every_page():
    from mkdocs.structure.files import File, Files

    hooks = _load_hooks()
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


def test_site_builds_with_pages_in_paper_order(site):
    nav = (site / "index.html").read_text(encoding="utf-8")
    chapters = sorted(p.name for p in (REPO / "chapters").glob("[0-9][0-9]_*.md"))
    hrefs = [re.search(rf'href="[^"]*{Path(c).stem}/"', nav) for c in chapters]
    assert all(hrefs), f"chapters missing from the navigation: {chapters}"
    positions = [h.start() for h in hrefs]
    assert positions == sorted(positions), "chapters out of paper order in the navigation"
    for page in ["run/index.html", "claims/index.html"]:
        assert (site / page).is_file(), page


@pytest.mark.slow
def test_chapter_renders_math_and_figures_offline(site, browser):
    page = page_to_check(site)
    with site_tools.serve(site, rewrite_html=with_image_probe) as (base, failures):
        dom = site_tools.dump_dom(base + page)
    assert 'class="katex' in dom, f"no typeset math on /{page}"
    assert_math_typeset(dom)
    images = assert_images_loaded(dom)
    if list((REPO / "docs" / "figures").glob("*.py")) and page:
        assert images > 0, f"/{page} shows no figure although figure scripts exist"
    assert not failures, f"assets the page asked for but the site lacks: {failures}"


@pytest.mark.slow
def test_notebook_page_typesets_math_in_the_dark_theme(site, browser):
    notebooks = pages_with(site, "notebooks", NOTEBOOK_MATH)
    if not notebooks:
        pytest.skip("no notebook page with math in the site")
    with site_tools.serve(site, rewrite_html=with_image_probe) as (base, failures):
        dom = site_tools.dump_dom(base + notebooks[0], dark=True)
    assert 'data-md-color-scheme="slate"' in dom, "the dark theme was not chosen"
    assert 'class="katex' in dom, f"no typeset math on /{notebooks[0]}"
    assert "katex-error" not in dom
    assert_images_loaded(dom)
    assert not failures, f"assets the page asked for but the site lacks: {failures}"
