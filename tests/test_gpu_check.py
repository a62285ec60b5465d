"""``benchmarks/gpu_check.py``: every step guarded, results kept, the dry run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402 (benchmarks/ is not a package)

STATUSES = {"ok", "failed", "skipped", "timeout", "not available"}


def run_child_step(monkeypatch, tmp_path, function, dry_run: bool = False) -> dict:
    """Run ``function`` as the step ``environment`` through the child's entry point."""
    monkeypatch.setitem(gpu_check.STEPS, "environment", (function, 10))
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"steps": {}}))
    out = tmp_path / "step.json"
    arguments = ["--step", "environment", "--step-out", str(out), "--results", str(results)]
    arguments += ["--work", str(tmp_path), "--deadline", str(time.time() + 60)]
    threads = gpu_check.torch.get_num_threads()  # a dry run sets one thread
    try:
        assert gpu_check.main(arguments + ["--dry-run"] * dry_run) == 0
    finally:
        gpu_check.torch.set_num_threads(threads)
    return json.loads(out.read_text())


def test_a_failing_step_is_recorded_with_its_partial_result(monkeypatch, tmp_path):
    def step(context):
        context.partial({"rows": [1]})
        raise ZeroDivisionError("planted")

    record = run_child_step(monkeypatch, tmp_path, step)
    assert record["status"] == "failed"
    assert record["error"] == "ZeroDivisionError: planted"
    assert record["result"] == {"rows": [1]}
    assert any("ZeroDivisionError" in line for line in record["traceback"])


@pytest.mark.parametrize(
    ("exception", "status"),
    [(gpu_check.Skipped, "skipped"), (gpu_check.NotAvailable, "not available")],
)
def test_a_step_that_cannot_run_says_why(monkeypatch, tmp_path, exception, status):
    def step(context):
        raise exception("no such tool here")

    assert run_child_step(monkeypatch, tmp_path, step) == {
        "status": status,
        "reason": "no such tool here",
    }


def test_a_step_may_set_its_own_status(monkeypatch, tmp_path):
    def step(context):
        return {"status": "skipped", "reason": "kernel not built", "pytest": {"tests": 3}}

    assert run_child_step(monkeypatch, tmp_path, step) == {
        "status": "skipped",
        "reason": "kernel not built",
        "result": {"pytest": {"tests": 3}},
    }


def test_a_step_past_its_budget_is_killed_and_recorded(tmp_path):
    """The child process (which takes seconds just to import torch) is killed at 1 s."""
    log = tmp_path / "log"
    results = {"steps": {}}
    with log.open("w") as log_file:
        start = time.time()
        record = gpu_check.run_step(
            "environment", 1.0, True, tmp_path, results, {"PATH": ""}, log_file
        )
    assert record["status"] == "timeout"
    assert record["result"] is None
    assert time.time() - start < 15


def make_wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel holding the module ``name`` with ``VALUE = 42``."""
    dist_info = f"{name}-0.1.dist-info"
    path = folder / f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", "VALUE = 42\n")
        wheel.writestr(
            f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n"
        )
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{dist_info}/RECORD", "")
    return path


@pytest.mark.slow
def test_carried_wheels_are_installed_without_an_index(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "carried_module")
    record = gpu_check.install_wheels(wheels, tmp_path / "site")
    assert record["installed"], record
    assert record["wheels"] == ["carried_module-0.1-py3-none-any.whl"]
    value = subprocess.run(
        [sys.executable, "-c", "import carried_module; print(carried_module.VALUE)"],
        env={"PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert value.strip() == "42"


def test_an_empty_wheel_folder_is_reported(tmp_path):
    record = gpu_check.install_wheels(tmp_path, tmp_path / "site")
    assert record == {"folder": str(tmp_path), "installed": False, "error": "no .whl file there"}


def test_no_gpu_and_no_dry_run_stops_with_a_message(monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--dry-run"):
        gpu_check.main([])


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path, shared_dir):
    """Every step at toy size on the CPU: each has a status, none failed, the JSON names the
    device, versions and date, says it is no measurement, and nothing went to results/."""
    before = sorted((ROOT / "benchmarks" / "results").iterdir())
    out = tmp_path / "dry.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted((ROOT / "benchmarks" / "results").iterdir()) == before
    result = json.loads(out.read_text())
    for field in ("benchmark", "device", "torch", "python", "date"):
        assert result[field], field
    assert result["dry_run"] is True and "not a measurement" in result["note"]
    assert "not a measurement" in done.stdout
    steps = result["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    for name, step in steps.items():
        assert step["status"] in STATUSES, (name, step)
        assert step["status"] not in ("failed", "timeout"), (name, step)
        assert step["seconds"] <= step["budget_s"] + 1, name
    assert steps["compute_sanitizer"]["status"] == "not available"
    assert steps["build_and_cuda_tests"]["status"] == "skipped"  # no CUDA: tests skipped
    assert steps["build_and_cuda_tests"]["result"]["pytest"]["failures"] == 0
    assert "tests/test_claims.py" not in steps["build_and_cuda_tests"]["result"]["test_files"]
    kernel = steps["kernel_benchmark"]["result"]["results"]
    assert set(kernel) == {"float32", "bfloat16"}
    for shapes in kernel.values():
        for shape, entries in shapes.items():
            main = shape in ("training", "large")  # the baselines are timed there only
            assert set(entries) == ({"reference", "cummax"} if main else set())
            for modes in entries.values():  # the backward is not timed on tall maps
                expected = {"forward"} if shape == "tall" else {"forward", "forward_backward"}
                assert set(modes) == expected
    throughput = steps["train_throughput"]["result"]
    eager, compiled = throughput["rows"]
    assert "compile" not in eager["variant"] and "images_per_s" in eager
    # Compiled in one graph or its error recorded: the corner pooling must trace.
    assert "compile(fullgraph)" in compiled["variant"] and ("images_per_s" in compiled) != (
        "error" in compiled
    )
    training = steps["coco128_training"]["result"]
    assert len(training["loss_curve"]) == training["config"]["max_iters"]
    assert set(training["metrics_on_training_images"]) >= {"AP", "AP50"}
    inference = steps["inference"]["result"]
    rows = inference["rows"]
    assert [(row["precision"], row["decode_on"]) for row in rows] == [
        ("fp32", "cpu"),
        ("bf16", "cpu"),
    ]  # decoding on the GPU needs one
    for row in rows:
        assert set(row["per_stage"]["median_ms"]) == {"read_pad", "network", "decode", "soft_nms"}
        assert row["end_to_end"]["images_timed"] >= 1
    (fixed,) = inference["fixed_load"]["rows"]
    assert set(fixed["median_ms"]) == {"decode", "soft_nms"}
    assert fixed["median_candidates_to_soft_nms"] > 0  # the ground truth's boxes
    assert inference["weights"].startswith("coco128_training")  # the step before's checkpoint
    assert out.with_suffix(".log").is_file()


@pytest.mark.slow
def test_the_few_examples_plugin_caps_hypothesis(tmp_path):
    """``pytest -p few_examples`` (used under compute-sanitizer) runs 3 examples per test,
    although tests/conftest.py loads a profile of 60 in CI."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_count.py").write_text(
        "from hypothesis import given, strategies\n"
        "seen = []\n"
        "@given(strategies.integers())\n"
        "def test_integers(x):\n"
        "    seen.append(x)\n"
        "def test_seen():\n"
        "    assert len(seen) == 3, len(seen)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "few_examples", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**os.environ, "CI": "true", "PYTHONPATH": f"{ROOT / 'benchmarks'}:{ROOT}"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_cuda_tests_import_without_the_dev_extras():
    """Files needing the docs build (mkdocs, a dev extra) are left out; the kernel's and the
    inference precision's CUDA tests are in."""
    files = gpu_check.cuda_test_files()
    assert "tests/test_claims.py" not in files
    assert {"tests/test_corner_pool.py", "tests/test_precision_inference.py"} <= set(files)


def test_steps_fit_the_time_limit():
    assert sum(budget for _, budget in gpu_check.STEPS.values()) <= gpu_check.TIME_LIMIT_S


def test_steps_needing_pycocotools_say_how_to_carry_it(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "find_spec", lambda name: None)
    record = run_child_step(monkeypatch, tmp_path, gpu_check.step_coco128_training, True)
    assert record["status"] == "skipped"
    assert "pycocotools is missing: pass --wheels" in record["reason"]
