"""The claims registry and the tests that check it stay in step.

``docs/claims.yml`` lists the paper's concrete claims; tests name the claim they check with
``@pytest.mark.claim("<id>")`` and benchmark results with a top-level ``"claims"`` list.
The docs hook (``docs/hooks.py``) finds them by parsing, without running anything, and
builds the page "Paper claims and where they are tested" from them; these tests check the
same data, so the page cannot promise a check that does not exist.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import docs_hooks

REPO = Path(__file__).resolve().parents[1]


hooks = docs_hooks()


@pytest.fixture(scope="module")
def registry() -> list[dict]:
    return hooks.load_claims()


@pytest.fixture(scope="module")
def checks() -> dict:
    return hooks.collect_checks(REPO)


def test_registry_entries_are_complete(registry):
    for entry in registry:
        assert set(entry) == {"id", "claim", "section"}, entry
        assert entry["id"] == entry["id"].strip().lower() and " " not in entry["id"], entry
        assert entry["claim"].strip() and entry["section"].strip(), entry


def test_every_marker_names_a_registered_claim(registry, checks):
    known = {entry["id"] for entry in registry}
    unknown = {claim: [c.name for c in found] for claim, found in checks.items()}
    unknown = {claim: names for claim, names in unknown.items() if claim not in known}
    assert not unknown, f"claim markers or benchmark results naming no claim: {unknown}"


def test_every_claim_has_a_test_or_benchmark(registry, checks):
    unchecked = [entry["id"] for entry in registry if not checks.get(entry["id"])]
    assert not unchecked, f"claims with no test marked @pytest.mark.claim(id): {unchecked}"


def test_markers_are_found_by_parsing(tmp_path):
    """Decorated functions, methods, module and class marks, nested pytest.param marks."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_sample.py").write_text(
        textwrap.dedent(
            """
            import pytest, torch

            pytestmark = pytest.mark.claim("module-wide")

            @pytest.mark.claim("a")
            def test_one(): ...

            def helper_not_a_test(): ...

            @pytest.mark.cuda
            class TestGpu:
                @pytest.mark.claim("b")
                def test_two(self): ...

            @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
            @pytest.mark.parametrize("x", [pytest.param(1, marks=pytest.mark.claim("c"))])
            def test_three(x): ...
            """
        )
    )
    found = hooks.claim_markers(tests / "test_sample.py", root=tmp_path)
    as_names = {claim: [(c.name, c.gpu_only) for c in checks] for claim, checks in found.items()}
    module = "tests/test_sample.py"
    assert as_names == {
        "module-wide": [
            (f"{module}::test_one", False),
            (f"{module}::TestGpu::test_two", True),
            (f"{module}::test_three", True),
        ],
        "a": [(f"{module}::test_one", False)],
        "b": [(f"{module}::TestGpu::test_two", True)],
        "c": [(f"{module}::test_three", True)],
    }


def test_benchmark_results_name_their_claims(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "pool_speed.json").write_text(json.dumps({"device": "x", "claims": ["speed"]}))
    (results / "other.json").write_text(json.dumps({"device": "x"}))
    found = hooks.benchmark_claims(results, root=tmp_path)
    assert found == {"speed": [hooks.Check("benchmarks/results/pool_speed.json", kind="benchmark")]}

    (results / "bad.json").write_text(json.dumps({"claims": "speed"}))
    with pytest.raises(ValueError, match="bad.json"):
        hooks.benchmark_claims(results, root=tmp_path)


def test_claims_page_lists_every_claim_with_its_checks(registry, checks):
    page = hooks.claims_page(registry, checks)
    for entry in registry:
        row = next(line for line in page.splitlines() if f'id="{entry["id"]}"' in line)
        for check in checks.get(entry["id"], []):
            assert f"`{check.name}`" in row
