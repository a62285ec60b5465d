"""The package's modules import each other without cycles, only the command line reads
arguments, and inference needs no pycocotools.

The graph is read from the source (every ``import`` and ``from ... import``, those inside
functions and under ``TYPE_CHECKING`` included): a cycle hidden in a function body is still
a cycle for a reader, and the first call that takes it may fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "cornernet_ref"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that the module ``name`` imports anywhere in ``source``."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 more
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # ``from a import b`` imports the module a.b when there is one, else a's name b.
            targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` runs a, a.b and a.b.c: the longest known prefix is the edge.
            parts = target.split(".")
            for end in range(len(parts), 0, -1):
                if ".".join(parts[:end]) in known:
                    found.add(".".join(parts[:end]))
                    break
    found.discard(name)
    return found


def imports_of(source: str) -> set[str]:
    """Every module name an ``import`` or ``from ... import`` of ``source`` names (absolute)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def modules_importing(root: Path, package: str, target: str) -> list[str]:
    """The modules under root/package that import ``target`` (or one of its submodules)."""
    return sorted(
        module_name(path, root)
        for path in (root / package).rglob("*.py")
        if any(
            name == target or name.startswith(target + ".")
            for name in imports_of(path.read_text(encoding="utf-8"))
        )
    )


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every module under root/package."""
    paths = sorted((root / package).rglob("*.py"))
    names = {path: module_name(path, root) for path in paths}
    known = set(names.values())
    return {
        names[path]: imported_modules(
            path.read_text(encoding="utf-8"), names[path], path.name == "__init__.py", known
        )
        for path in paths
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" on the current path, "done" when fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return [*path[path.index(successor) :], successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(REPO, PACKAGE)
    assert "cornernet_ref.inference" in graph["cornernet_ref.analysis"]  # the graph is read
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def write_package(root: Path, modules: dict[str, str]) -> Path:
    for relative, source in modules.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


@pytest.mark.parametrize(
    ("modules", "cycle"),
    [
        # A lazy import inside a function closes the cycle, as evaluate -> analysis did.
        (
            {"p/__init__.py": "", "p/a.py": "import p.b\n",
             "p/b.py": "def f():\n    from p import a\n"},
            ["p.a", "p.b", "p.a"],
        ),
        # Relative imports, and one through a subpackage's module.
        (
            {"p/__init__.py": "", "p/a.py": "from .sub.c import x\n", "p/sub/__init__.py": "",
             "p/sub/c.py": "from ..a import y\n"},
            ["p.a", "p.sub.c", "p.a"],
        ),
        # Under TYPE_CHECKING.
        (
            {"p/__init__.py": "", "p/a.py": "from p.b import x\n",
             "p/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.a\n"},
            ["p.a", "p.b", "p.a"],
        ),
    ],
)  # fmt: skip
def test_the_check_finds_a_cycle(tmp_path: Path, modules: dict, cycle: list) -> None:
    graph = import_graph(write_package(tmp_path, modules), "p")
    assert find_cycle(graph) == cycle


def test_the_check_accepts_a_chain(tmp_path: Path) -> None:
    modules = {"p/__init__.py": "from p.a import x\n", "p/a.py": "import p.b\n", "p/b.py": ""}
    graph = import_graph(write_package(tmp_path, modules), "p")
    assert graph == {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": set()}
    assert find_cycle(graph) is None


def test_only_the_command_line_imports_argparse() -> None:
    """The paper and procedure modules take configurations and paths; the options, their
    parsing and their help live in ``cornernet_ref.cli``."""
    readers = modules_importing(REPO, PACKAGE, "argparse")
    assert "cornernet_ref.cli.options" in readers  # the check sees the imports
    outside = [name for name in readers if not name.startswith(f"{PACKAGE}.cli")]
    assert not outside, f"argparse imported outside cornernet_ref.cli: {outside}"


def test_the_argparse_check_finds_every_form_of_import(tmp_path: Path) -> None:
    modules = {
        "p/__init__.py": "",
        "p/a.py": "import argparse\n",
        "p/b.py": "def f():\n    from argparse import Namespace\n",
        "p/c.py": "import argparse_extra\nfrom .argparse import x\n",  # other modules
    }
    assert modules_importing(write_package(tmp_path, modules), "p", "argparse") == ["p.a", "p.b"]


def test_inference_and_scoring_import_without_pycocotools() -> None:
    """pycocotools is needed to read annotations and to score, not to detect."""
    modules = ("inference", "evaluate", "analysis", "predict", "export", "data.coco")
    code = (
        "import sys; sys.modules['pycocotools'] = None\n"  # any import of it now fails
        + "".join(f"import cornernet_ref.{name}\n" for name in modules)
        + "assert not any(name.startswith('pycocotools') and sys.modules[name] is not None"
        " for name in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
