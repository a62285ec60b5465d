"""Build the site, serve it locally and look at a page in headless Chromium.

Usage::

    python scripts/screenshot_site.py chapters/01_targets/ --out page.png
    python scripts/screenshot_site.py chapters/01_targets/ --dark --out page-dark.png
    python scripts/screenshot_site.py --site-dir /tmp/site chapters/02_losses/ --dump-dom

Needs Debian's ``chromium`` package (``apt-get install chromium``) or a ``chromium`` /
``google-chrome`` on the PATH. The browser is started without network services, so the page
must bring everything it needs (math renders with the KaTeX copy in ``docs/javascripts``).
``tests/test_docs.py`` uses the same helpers to check that math renders and images load.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium-like browser on the PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def build_site(site_dir: Path) -> None:
    """``mkdocs build --strict`` into ``site_dir``; raise with mkdocs' output on failure."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site_dir)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mkdocs build failed:\n{result.stdout}{result.stderr}")


@contextlib.contextmanager
def serve(site_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve ``site_dir`` on 127.0.0.1 in a thread.

    Yields the base URL and a list that collects the requests answered with an error (an
    asset a page asks for but the site lacks shows up there).
    """
    failures: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def send_error(self, code, message=None, explain=None):
            failures.append(f"{code} {self.path}")
            super().send_error(code, message, explain)

        def log_message(self, format, *args):
            pass

    handler = functools.partial(Handler, directory=str(site_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", failures
    finally:
        server.shutdown()
        server.server_close()


def chromium_command(browser: str, profile_dir: Path, dark: bool = False) -> list[str]:
    """Headless Chromium with no GPU, sandbox, network services or first-run UI."""
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile_dir}",
    ]
    # Material picks its palette from prefers-color-scheme on a first visit: 0 dark, 1 light.
    command.append(f"--blink-settings=preferredColorScheme={0 if dark else 1}")
    return command


def run_chromium(args: list[str], dark: bool = False, timeout: float = 60) -> str:
    """Run headless Chromium with a fresh profile; return its stdout."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("no chromium on the PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = chromium_command(browser, Path(profile), dark) + args
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.stdout


def dump_dom(url: str, dark: bool = False, budget_ms: int = 5000, timeout: float = 60) -> str:
    """The page's DOM after its scripts ran for ``budget_ms`` of virtual time."""
    args = [f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    return run_chromium(args, dark=dark, timeout=timeout)


def screenshot(url: str, out: Path, dark: bool = False, size: str = "1280,1600") -> None:
    """Save a PNG of the page as a reader sees it."""
    run_chromium(
        ["--virtual-time-budget=5000", f"--window-size={size}", f"--screenshot={out}", url],
        dark=dark,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", nargs="?", default="", help="page path, e.g. chapters/01_targets/")
    parser.add_argument("--out", type=Path, default=Path("screenshot.png"))
    parser.add_argument("--dark", action="store_true", help="the dark (slate) theme")
    parser.add_argument("--size", default="1280,1600", help="window size WIDTH,HEIGHT")
    parser.add_argument("--site-dir", type=Path, help="an already built site (default: build)")
    parser.add_argument("--dump-dom", action="store_true", help="print the rendered DOM")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="site-") as tmp:
        site_dir = args.site_dir
        if site_dir is None:
            site_dir = Path(tmp)
            build_site(site_dir)
        with serve(site_dir) as (base, failures):
            url = base + args.page
            if args.dump_dom:
                print(dump_dom(url, dark=args.dark))
            else:
                screenshot(url, args.out.resolve(), dark=args.dark, size=args.size)
                print(f"wrote {args.out}")
        for failure in failures:
            print(f"not served: {failure}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
