"""One command for a GPU: build, test, benchmark and train CornerNet in under 9 minutes.

    python benchmarks/gpu_check.py                  # -> benchmarks/results/gpu_check_<gpu>.json
    python benchmarks/gpu_check.py --wheels .whl    # first install carried wheels (pycocotools)
    python benchmarks/gpu_check.py --dry-run        # every step at toy size on the CPU
    python benchmarks/gpu_check.py --only inference --checkpoint official.pt   # some steps

The steps, in this order, each in its own process with its own time budget (seconds on one
H100 or H200; the whole run stops at ``--time-limit``, 530 s by default):

* ``environment``: versions, the GPU, and the two ceilings measured on the spot: the copy
  bandwidth (a large device-to-device copy, read + write) and the bf16 matrix rate
  (8192 x 8192 x 8192 products on random data).
* ``build_and_cuda_tests``: builds the corner pooling extension and runs the tests marked
  ``cuda`` (in the files that import without the dev extras).
* ``kernel_benchmark``: fused kernel vs reference vs ``cummax``, forward and
  forward + backward, float32 and bfloat16 (``benchmarks/corner_pool.py``), as a fraction
  of the copy bandwidth timed the same way; fails when the kernel misses its targets.
* ``compute_sanitizer``: the corner pooling CUDA tests under each tool of
  ``compute-sanitizer`` (memcheck, racecheck, synccheck, initcheck; the four at once),
  three examples per hypothesis test (``few_examples.py``), errors counted per tool;
  the tests of ``torch.compile``, of the operator's registration and of the tallest
  column are left out.
* ``train_throughput``: Hourglass-104 at 511, bf16, channels_last, the paper's batch of 49
  in the fewest micro-batches the memory allows (one on an 80+ GB GPU), eager and with
  ``torch.compile(fullgraph=True)``: images/s (goal 150 compiled), peak memory beside the
  predicted one, MFU (``benchmarks/train_throughput.py``).
* ``coco128_training``: a short Hourglass-104 training on the COCO sample with the
  configuration of the training notebook (eager), for the iterations its budget allows:
  loss curve, steady images/s and AP (on the first 32 training images, which double as
  validation).
* ``inference``: the paper's test (official padding, flip, decoding, soft-NMS) in fp32 and
  bf16, decoded on the CPU or the GPU: per stage (read + pad, network, decode, soft-NMS)
  and end to end through the evaluation loader
  (:func:`cornernet_ref.inference.detect_images`; goal 60 images/s), against the official
  244 ms per image (Titan X) and mmdetection's 238 ms (V100), with the weights of
  ``--checkpoint`` or else those ``coco128_training`` left; then decoding and soft-NMS on a
  fixed load, the ground truth's maps of the same images.

Every step is guarded: one that fails, or runs past its budget, is recorded as such and
the others still run. The combined JSON is rewritten after every step (and while a long
step runs), so a run killed from outside keeps what it finished. A log of every step's
output goes beside it (``<out>.log``). ``--dry-run`` runs each step at toy size on the CPU
so that every line of this script has run before a GPU minute is spent; its JSON says that
it is not a measurement, and goes to a temporary folder unless ``--out`` says otherwise.

pycocotools (needed for the COCO data and AP) is absent on some GPU machines with no
package index; ``--wheels DIR`` installs the wheels of DIR with ``pip --no-index`` into a
private folder first (``docs/run.md`` says how to download them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.util import find_spec
from pathlib import Path
from typing import IO

import torch
from report import RESULTS, header

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIME_LIMIT_S = 530  # the whole check, on one H100 or H200
STEP_MARGIN_S = 5  # a step aims to end this long before it is killed, to write its result
DRY_RUN_NOTE = (
    "DRY RUN, not a measurement: every step ran at toy size on the CPU to check that the "
    "script runs; no figure in this file measures anything."
)
OFFICIAL_MS_PER_IMAGE = {"official (Titan X)": 244.0, "mmdetection (V100)": 238.0}
INFERENCE_GOAL_IMAGES_PER_S = 60.0  # the paper's test; 30 at the very least
PACKAGES = ("pycocotools", "triton", "ninja", "numpy", "matplotlib", "onnxruntime")  # versions
# The toy network of a dry run (two stacks, as Hourglass-104, so every path of it runs).
TOY_MODEL = {
    "n": 2,
    "nstack": 2,
    "dims": (8, 8, 8),
    "modules": (1, 1, 1),
    "cnv_dim": 8,
    "pre_dim": 8,
    "pool_dim": 8,
}
TOY_INPUT = 63
PAPER_BATCH = 49
TRAINING_GOAL_IMAGES_PER_S = 150.0  # 500k x 49 images in under 2 days on one GPU
# AP on this many training images (the notebook takes all 128): an under-trained model
# sends up to 2000 candidate boxes per image to soft-NMS, on the CPU, which takes time.
VAL_IMAGES = 32


class Skipped(Exception):
    """The step cannot run here; the message says why."""


class NotAvailable(Skipped):
    """A tool the step needs is missing here (recorded as ``not available``)."""


class StepFailed(Exception):
    """The step ran and found a failure; ``result`` holds what it measured."""

    def __init__(self, result: dict, message: str) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Context:
    """What a step knows: toy sizes or not, where to work, what earlier steps found."""

    dry_run: bool
    work: Path  # scratch folder shared by the steps (checkpoint, junit files)
    results: dict  # the combined JSON so far (earlier steps' results)
    deadline: float  # time.time() by which the step must have finished
    partial: Callable[[dict], None]  # records a partial result (kept if the step is killed)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.dry_run else "cuda")

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def earlier(self, step: str) -> dict:
        return self.results.get("steps", {}).get(step, {}).get("result") or {}


def require_gpu(context: Context) -> None:
    if not context.dry_run and not torch.cuda.is_available():
        raise Skipped("no CUDA GPU visible (torch.cuda.is_available() is False); try --dry-run")


def require_pycocotools() -> None:
    """The COCO data and the AP go through pycocotools (and so does ``cornernet_ref.data``)."""
    if find_spec("pycocotools") is None:
        raise Skipped(
            "pycocotools is missing: pass --wheels DIR holding its wheel for this Python "
            f"({platform.python_version()}; docs/run.md says how to download it)"
        )


# --- Steps ------------------------------------------------------------------------------


def step_environment(context: Context) -> dict:
    """Versions, tools, the GPU, and the copy bandwidth and bf16 matrix rate measured here."""
    from corner_pool import copy_bandwidth, time_once

    require_gpu(context)
    device = context.device
    info = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": {name: package_version(name) for name in PACKAGES},
        "nvcc": command_line_output(["nvcc", "--version"], last_line=True),
        "compute_sanitizer": shutil.which("compute-sanitizer") or sanitizer_path(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": properties.name,
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "multiprocessors": properties.multi_processor_count,
            "capability": f"{properties.major}.{properties.minor}",
        }
        info["driver"] = command_line_output(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        )
    info["copy_gb_per_s"] = round(copy_bandwidth(device, 10) / 1e9, 1)
    size = 256 if context.dry_run else 8192
    dtype = torch.float32 if context.dry_run else torch.bfloat16
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):  # warm-up
        a @ b
    seconds = statistics.median(time_once(lambda: a @ b, device)[0] for _ in range(10))
    info[f"matmul_{'fp32' if context.dry_run else 'bf16'}_tflops"] = round(
        2 * size**3 / seconds / 1e12, 1
    )
    return info


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None if it is missing."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def command_line_output(command: list[str], last_line: bool = False) -> str | None:
    """The stripped output of a short command, or None where it does not run."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return text.splitlines()[-1] if last_line and text else text or None


def sanitizer_path() -> str | None:
    """compute-sanitizer beside nvcc when it is not on the PATH."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidate = Path(CUDA_HOME or "/usr/local/cuda") / "bin" / "compute-sanitizer"
    return str(candidate) if candidate.is_file() else None


def cuda_test_files() -> list[str]:
    """The test files holding tests marked ``cuda`` that import without the dev extras:
    not those loading the docs' build hook (``docs/hooks.py`` imports mkdocs), which GPU
    machines rarely have."""
    return [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        if "mark.cuda" in path.read_text() and "docs_hooks(" not in path.read_text()
    ]


def run_pytest(arguments: list[str], junit: Path, timeout: float, prefix: tuple = ()) -> dict:
    """Run pytest (under ``prefix``, e.g. compute-sanitizer); counts from its junit report.
    This folder is on its path, for the plugin ``few_examples``."""
    command = [*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs"]
    command += ["--durations", "8"]  # the log names the slowest tests
    command += ["--junitxml", str(junit), *arguments]
    path = os.pathsep.join(filter(None, (str(HERE), os.environ.get("PYTHONPATH"))))
    print("$", " ".join(command), flush=True)
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=path),
            capture_output=True,
            text=True,
            timeout=max(timeout, 1),
        )
    except subprocess.TimeoutExpired as expired:
        output = (
            (expired.stdout or b"").decode(errors="replace")
            if isinstance(expired.stdout, bytes)
            else (expired.stdout or "")
        )
        print(output, flush=True)
        return {"returncode": None, "timed_out_after_s": round(timeout), "tail": tail(output)}
    print(done.stdout + done.stderr, flush=True)
    result = {"returncode": done.returncode, "tail": tail(done.stdout + done.stderr)}
    if junit.is_file():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result |= {
            key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")
        }
    return result


def tail(text: str, lines: int = 15) -> list[str]:
    return [line for line in text.strip().splitlines()[-lines:] if line.strip()]


def step_build_and_cuda_tests(context: Context) -> dict:
    """Build the corner pooling extension (timed), then ``pytest -m cuda``."""
    from cornernet_ref.corner_pool import fused

    require_gpu(context)
    missing = fused.missing_requirement()
    if missing:
        build = {"status": "skipped", "reason": missing}
    else:
        start = time.perf_counter()
        try:
            fused.load_extension()
            build = {"status": "ok"}
        except RuntimeError as error:  # the tests still run: they say what fails
            build = {"status": "failed", "error": describe(error)}
        build["seconds"] = round(time.perf_counter() - start, 1)
    context.partial({"build": build})
    try:
        require_pycocotools()  # tests/conftest.py imports it
    except Skipped as reason:
        return {"build": build, "status": "skipped", "reason": f"the tests: {reason}"}
    files = cuda_test_files()
    tests = run_pytest(
        ["-m", "cuda", *files], context.work / "junit_cuda.xml", context.seconds_left() - 5
    )
    result = {"build": build, "test_files": files, "pytest": tests}
    if build["status"] == "failed":
        raise StepFailed(result, f"the extension did not build: {build['error']}")
    if tests["returncode"] not in (0, 5):  # 5: no test collected
        raise StepFailed(result, f"pytest -m cuda: return code {tests['returncode']}")
    if missing:
        result |= {"status": "skipped", "reason": f"{missing}; the CUDA tests skipped"}
    return result


def step_kernel_benchmark(context: Context) -> dict:
    """The fused kernel, the reference and cummax: forward and forward + backward, float32
    and bfloat16, as a fraction of the copy bandwidth measured the same way
    (``benchmarks/corner_pool.py``: CUDA events around each call after an L2 flush, median
    of 20), at the main shapes and at thin, one-row, one-column, tall and wide maps; the
    result also goes to ``benchmarks/results/corner_pool_cuda.json``, with the checks of
    the targets (80% of copy at the main shapes, half of that elsewhere)."""
    import corner_pool as benchmark

    from cornernet_ref.corner_pool import fused

    require_gpu(context)
    device = context.device
    names = ["reference", "cummax"]
    result: dict = {}
    if device.type == "cuda":
        try:
            fused.load_extension()  # built by the step before: loaded from the cache
            names.insert(0, "cuda")
        except RuntimeError as error:
            result["cuda_left_out"] = describe(error)
    shapes = benchmark.DRY_RUN_SHAPES if context.dry_run else benchmark.GPU_SHAPES
    repeats = 2 if context.dry_run else 20
    dtypes = [torch.float32, torch.bfloat16]
    result |= benchmark.run_all(
        device, shapes, dtypes, repeats, names, lambda partial: context.partial(result | partial)
    )
    if not context.dry_run:
        benchmark.write_result(
            RESULTS / "corner_pool_cuda.json", header("corner_pool", device) | result
        )
    missed = [check for check in result.get("targets", []) if not check["met"]]
    if missed:
        raise StepFailed(result, f"{len(missed)} kernel figures below target: {missed[:3]}")
    return result


def step_train_throughput(context: Context) -> dict:
    """Hourglass-104 training steps at 511, bf16, channels_last, at the paper's batch of 49
    in as few micro-batches as the GPU's memory allows (one on an 80+ GB GPU;
    ``config.accumulation_for_memory``): eager, then ``torch.compile(fullgraph=True)``.
    Images/s, peak memory beside the rule's prediction, MFU."""
    require_gpu(context)
    require_pycocotools()

    import train_throughput as benchmark
    from model_flops import forward_flops

    from cornernet_ref.config import (
        STEP_MEMORY_GIB,
        STEP_MEMORY_PER_IMAGE_GIB,
        accumulation_for_memory,
    )
    from cornernet_ref.model import ModelConfig

    device = context.device
    torch.backends.cudnn.benchmark = True
    if context.dry_run:  # aot_eager: dynamo and autograd tracing, without the slow codegen
        model_config, size, steps, backend = ModelConfig(**TOY_MODEL), TOY_INPUT, 1, "aot_eager"
        accumulation, micro_batch = 1, 2
    else:
        model_config, size, steps, backend = ModelConfig(), 511, 6, "inductor"
        memory = torch.cuda.get_device_properties(device).total_memory
        accumulation = accumulation_for_memory(memory, PAPER_BATCH)
        micro_batch = -(-PAPER_BATCH // accumulation)
    flops = forward_flops(training=True, size=size, config=model_config)["total"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = benchmark.peak_flops(name, None)
    measured_tflops = context.earlier("environment").get("matmul_bf16_tflops")
    result = {
        "input": size,
        "batch": PAPER_BATCH,
        "accumulation": accumulation,
        "micro_batch": micro_batch,
        "predicted_peak_memory_gib": round(
            STEP_MEMORY_GIB + STEP_MEMORY_PER_IMAGE_GIB * micro_batch, 1
        ),
        "forward_gflops_per_image": flops / 1e9,
        "peak_bf16_tflops_datasheet": peak / 1e12 if peak else None,
        "matmul_bf16_tflops_measured": measured_tflops,
        "goal_images_per_s_compiled": TRAINING_GOAL_IMAGES_PER_S,
        "rows": [],
    }
    for compile_ in (False, True):
        variant = "bf16+channels_last" + ("+compile(fullgraph)" if compile_ else "")
        row: dict = {"batch": micro_batch, "variant": variant}
        try:
            row |= benchmark.time_variant(
                micro_batch,
                torch.bfloat16,
                True,
                compile_,
                steps,
                device,
                model_config,
                size,
                backend,
                fullgraph=True,
            )
        except torch.OutOfMemoryError:
            row["error"] = "out of memory"
        except Exception as error:  # the compiled row failing keeps the eager one
            traceback.print_exc()  # to the log; the JSON keeps the first line
            row["error"] = describe(error).splitlines()[0]
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if "images_per_s" in row:
            row |= benchmark.utilisation(row["images_per_s"], flops, peak)
            if measured_tflops:
                row["mfu_vs_measured_matmul"] = (
                    3 * flops * row["images_per_s"] / (measured_tflops * 1e12)
                )
            if compile_:
                row["meets_goal"] = row["images_per_s"] >= TRAINING_GOAL_IMAGES_PER_S
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        context.partial(result)
    return result


def coco128_config(context: Context, iterations: int, accumulation: int):
    """The configuration of the training notebook (``notebooks/06_training.py``) on the COCO
    sample, for ``iterations`` iterations of ``accumulation`` micro-batches, eager;
    toy-sized for a dry run."""
    from cornernet_ref.config import short_coco_run
    from cornernet_ref.data.augment import AugmentConfig
    from cornernet_ref.data.examples import coco128
    from cornernet_ref.model import ModelConfig

    images, annotations = coco128()
    if not annotations.is_file():
        raise Skipped(
            f"the COCO sample is not at {annotations.parent.parent} (set CORNERNET_SHARED; "
            "docs/run.md says how to carry it)"
        )
    config = short_coco_run(
        images,
        annotations,
        iterations,
        accumulation=accumulation,
        checkpoint_every=iterations,  # one checkpoint, at the end
        val_limit=VAL_IMAGES,
        log_every=max(1, iterations // 50),
        workers=max(1, min(8, (os.cpu_count() or 2) - 2)),
        out=str(context.work / "coco128_training"),
    )
    if context.dry_run:
        config = replace(
            config,
            model=ModelConfig(**TOY_MODEL),
            augment=AugmentConfig(input_size=TOY_INPUT, border=16),
            output_size=(TOY_INPUT + 1) // 4,
            batch_size=2,
            accumulation=1,
            workers=0,
            val_limit=2,
            device="cpu",
            precision="fp32",
        )
    return config


def step_coco128_training(context: Context) -> dict:
    """A short Hourglass-104 training on coco128 (the notebook's configuration): loss curve,
    images/s and AP on the training images."""
    require_gpu(context)
    require_pycocotools()

    from cornernet_ref.train import train

    # Iterations from the eager speed measured at the same micro-batch: half the budget
    # training, the rest for the data loader's start, cuDNN's autotuning and the validation.
    throughput = context.earlier("train_throughput")
    eager = next(iter(throughput.get("rows", [])), {})
    accumulation = throughput.get("accumulation", 1)
    if context.dry_run:
        iterations = 2
    elif "images_per_s" in eager:
        iterations = int(0.5 * context.seconds_left() * eager["images_per_s"] / PAPER_BATCH)
        iterations = max(10, min(iterations, 2000))
    else:
        iterations = 30
    config = coco128_config(context, iterations, accumulation)
    start = time.perf_counter()
    _, summary = train(config)
    history_path = Path(config.out) / "history.jsonl"
    history = [json.loads(line) for line in history_path.read_text().splitlines()]
    return {
        "config": {
            key: config.to_dict()[key]
            for key in (
                "max_iters",
                "batch_size",
                "accumulation",
                "precision",
                "channels_last",
                "workers",
                "lr",
                "test",
                "val_limit",
            )
        },
        "model": f"toy {TOY_MODEL} (dry run)" if context.dry_run else "Hourglass-104",
        "seconds": round(time.perf_counter() - start, 1),
        "steady_images_per_s": statistics.median(
            line["images_per_s"] for line in history[len(history) // 2 :]
        ),
        "loss_curve": history,
        "final_loss": summary["loss"],
        "metrics_on_training_images": summary.get("metrics"),
        "checkpoint": str(Path(config.out) / "checkpoints" / "last.pt"),
    }


def step_inference(context: Context) -> dict:
    """The paper's test (one scale, flip, Gaussian soft-NMS, top 100) on coco128 with the
    weights of ``--checkpoint``, else those ``coco128_training`` left, for each row of
    ``INFERENCE_ROWS`` (the network's precision; where its maps are decoded):

    * per stage, one image at a time, the device synchronised between stages: read + pad,
      network, decode (``scale_detections``), soft-NMS (``merge_detections``), with the
      number of candidate boxes soft-NMS received;
    * end to end: images/s through ``detect_images``, the evaluation loader's workers
      reading ahead of the network. cuDNN tunes its algorithms once per canvas shape (12
      shapes among the first 100 images); the per-stage pass, first, meets most of them.

    Then decoding and soft-NMS alone on a fixed load: the ground truth's maps
    (``analysis.oracle_source``) of the same images, the candidates of a model that has
    learnt, on the CPU and on the GPU. Weights trained for a minute send soft-NMS far more
    candidates than a trained model does, so the rows above are its worst case."""
    require_gpu(context)
    require_pycocotools()

    from cornernet_ref.analysis import oracle_source
    from cornernet_ref.data.coco import category_ids, load_coco
    from cornernet_ref.data.examples import coco128
    from cornernet_ref.inference import TestConfig, detect_images, model_source
    from cornernet_ref.model import CornerNet, ModelConfig

    device = context.device
    torch.backends.cudnn.benchmark = True
    images, annotations = coco128()
    if not annotations.is_file():
        raise Skipped(f"the COCO sample is not at {annotations.parent.parent}")
    given = context.results.get("options", {}).get("checkpoint")
    trained = Path(context.earlier("coco128_training").get("checkpoint", "/nonexistent"))
    if given:
        model, weights = CornerNet.from_checkpoint(given), f"--checkpoint {given}"
    elif trained.is_file():
        model, weights = CornerNet.from_checkpoint(trained), f"coco128_training ({trained})"
    elif context.dry_run:
        model, weights = CornerNet(ModelConfig(**TOY_MODEL)), "random"
    else:
        model, weights = CornerNet(), "random (no coco128_training checkpoint)"
    coco = load_coco(annotations)
    records = coco.loadImgs(sorted(coco.getImgIds()))[: 3 if context.dry_run else 100]
    warm_up = 1 if context.dry_run else 3
    rows = [row for row in INFERENCE_ROWS if device.type == "cuda" or row[1] == "cpu"]
    test = TestConfig(workers=1 if context.dry_run else TestConfig.workers)
    result = {
        "weights": weights,
        "flip": test.flip,
        "scales": list(test.scales),
        "nms": f"{test.nms_method} soft-NMS",
        "workers": test.workers,
        "goal_images_per_s": INFERENCE_GOAL_IMAGES_PER_S,
        "rows": [],
    }
    reserve = 10.0  # seconds kept for the fixed load
    for index, (precision, decode_on) in enumerate(rows):
        config = replace(test, precision=precision)
        maps_device = "cpu" if decode_on == "cpu" else None
        source = model_source(model, images, device, maps_device)
        share = (context.seconds_left() - reserve) / (2 * (len(rows) - index))
        row = {"precision": precision, "decode_on": decode_on}
        row |= stage_times(source, records, config, warm_up, time.time() + share)
        start, timed = None, 0
        stop = time.time() + share
        for _ in detect_images(source, records, config):
            if start is None:  # from the first image on: the workers have started
                start = time.perf_counter()
                continue
            timed += 1
            if time.time() > stop:
                break
        images_per_s = timed / (time.perf_counter() - start) if timed else None
        row["end_to_end"] = {
            "images_timed": timed,
            "images_per_s": round(images_per_s, 2) if images_per_s else None,
            "speedup_vs": {
                name: round(images_per_s * reference / 1e3, 2)
                for name, reference in OFFICIAL_MS_PER_IMAGE.items()
            }
            if images_per_s
            else None,
            "meets_goal": bool(images_per_s and images_per_s >= INFERENCE_GOAL_IMAGES_PER_S),
        }
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        context.partial(result)
    oracle = oracle_source(coco, num_classes=len(category_ids(coco)))
    result["fixed_load"] = {"maps": "ground truth (analysis.oracle_source)", "rows": []}
    placements = ["cpu"] + ["cuda"] * (device.type == "cuda")
    for index, decode_on in enumerate(placements):
        stop = time.time() + (context.seconds_left() - 1) / (len(placements) - index)
        row = {"decode_on": decode_on}
        row |= decode_times(oracle, records, test, torch.device(decode_on), stop)
        print(json.dumps({"fixed_load": row}), flush=True)
        result["fixed_load"]["rows"].append(row)
        context.partial(result)
    return result


# (network precision, where its maps are decoded) timed by the inference step.
INFERENCE_ROWS = (("fp32", "cpu"), ("bf16", "cpu"), ("bf16", "cuda"))


class StageClock:
    """Seconds per named stage, the device synchronised at each lap."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, list[float]] = {}
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds.setdefault(stage, []).append(now - self.last)
        self.last = now

    def medians_ms(self, skip: int) -> dict[str, float]:
        return {
            stage: round(statistics.median(times[skip:]) * 1e3, 2)
            for stage, times in self.seconds.items()
            if len(times) > skip
        }


def stage_times(source, records: list[dict], config, warm_up: int, stop: float) -> dict:
    """Median ms per image of each stage of ``detect_image`` at the first scale, one image
    at a time: read + pad, network, decode, soft-NMS; and the candidates soft-NMS got."""
    from cornernet_ref.inference import (
        canvas_batch,
        canvas_geometry,
        merge_detections,
        network_precision,
        scale_detections,
    )
    from cornernet_ref.output import CornerNetOutput

    clock, candidates = StageClock(source.device), []
    for count, record in enumerate(records):
        geometry = canvas_geometry(record["height"], record["width"], config.scales[0])
        clock.last = time.perf_counter()
        batch = canvas_batch(source.images_dir, record, geometry, config.flip)
        clock.lap("read_pad")
        with network_precision(config.precision):
            out = source.maps(batch)
        out = CornerNetOutput(*(t.float() for t in out))
        clock.lap("network")
        part = scale_detections(out, geometry, config)
        clock.lap("decode")
        merge_detections([part], config)
        clock.lap("soft_nms")
        candidates.append(len(part.scores))
        if count >= warm_up and time.time() > stop:
            break
    timed = len(candidates) - warm_up
    return {
        "per_stage": {
            "images_timed": timed,
            "median_ms": clock.medians_ms(warm_up),
            "median_candidates_to_soft_nms": statistics.median(candidates[warm_up:])
            if timed > 0
            else None,
        }
    }


def decode_times(source, records: list[dict], config, device: torch.device, stop: float) -> dict:
    """Median ms per image of decoding and of soft-NMS on ``device``, on the maps of
    ``source`` (made before the clock starts)."""
    from cornernet_ref.inference import canvas_geometry, merge_detections, scale_detections
    from cornernet_ref.output import CornerNetOutput

    clock, candidates = StageClock(device), []
    for count, record in enumerate(records):
        geometry = canvas_geometry(record["height"], record["width"], config.scales[0])
        out = CornerNetOutput(*(t.to(device) for t in source(record, geometry, config.flip)))
        clock.lap("maps")  # not reported: making the maps is no part of the test
        part = scale_detections(out, geometry, config)
        clock.lap("decode")
        merge_detections([part], config)
        clock.lap("soft_nms")
        candidates.append(len(part.scores))
        if count >= 1 and time.time() > stop:
            break
    medians = clock.medians_ms(1)
    medians.pop("maps", None)
    return {
        "images_timed": len(candidates) - 1,
        "median_ms": medians,
        "median_candidates_to_soft_nms": statistics.median(candidates[1:]),
    }


SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
SANITIZED_TESTS = ("test_corner_pool", "test_corner_pool_kernel")


def step_compute_sanitizer(context: Context) -> dict:
    """Every corner pooling CUDA test under each tool of compute-sanitizer (memcheck,
    racecheck, synccheck, initcheck), three examples per hypothesis test
    (``few_examples.py``), but those of ``torch.compile`` and of the operator's
    registration (they check the compiler's graph and the operator's checks, run the same
    kernels many times over, and take minutes under the tools) and the tallest column's
    (3 x 2^31 accesses, each instrumented). The four run at once, one
    process each (every launch runs instrumented, many times slower, and the machine has
    cores to spare); each tool's errors are reported on their own."""
    from concurrent.futures import ThreadPoolExecutor

    require_gpu(context)
    require_pycocotools()  # tests/conftest.py imports it
    executable = shutil.which("compute-sanitizer") or sanitizer_path()
    if context.device.type != "cuda":
        raise NotAvailable("compute-sanitizer needs a CUDA GPU (dry run on the CPU)")
    if executable is None:
        raise NotAvailable("compute-sanitizer is not on the PATH nor beside nvcc")
    # The kernels' tests; those of the operator's registration (test_corner_pool_op.py)
    # run the same kernels through opcheck, many times over, too slowly under the tools.
    files = [f for f in cuda_test_files() if Path(f).stem in SANITIZED_TESTS]
    result: dict = {"executable": executable, "test_files": files, "hypothesis_examples": 3}

    def sanitize(tool: str) -> dict:
        prefix = (executable, "--tool", tool, "--error-exitcode", "86")
        arguments = ["-p", "few_examples", "-m", "cuda", "-k", "not compile and not tallest"]
        arguments += files
        junit = context.work / f"junit_{tool}.xml"
        run = run_pytest(arguments, junit, context.seconds_left() - 3, prefix)
        output = "\n".join(run.pop("tail"))
        run["summary"] = [line for line in output.splitlines() if line.startswith("=========")]
        found = re.search(r"ERROR SUMMARY: (\d+) error", output)
        run["errors"] = int(found.group(1)) if found else None
        run["tail"] = tail(output, 8)
        return run

    with ThreadPoolExecutor(len(SANITIZER_TOOLS)) as pool:
        for tool, run in zip(SANITIZER_TOOLS, pool.map(sanitize, SANITIZER_TOOLS), strict=True):
            result[tool] = run
    context.partial(result)
    output = " ".join(" ".join(result[tool]["summary"]) for tool in SANITIZER_TOOLS)
    if "device not supported" in output.lower():  # seen on gVisor machines
        reason = "compute-sanitizer does not support this device (its output: "
        return result | {"status": "not available", "reason": f"{reason}{output[-300:]})"}
    failed = [tool for tool in SANITIZER_TOOLS if result[tool]["returncode"] not in (0, 5)]
    if failed:
        raise StepFailed(result, f"compute-sanitizer found problems or failed: {failed}")
    return result


STEPS: dict[str, tuple[Callable[[Context], dict], int]] = {  # name -> (function, budget s)
    # Budgets from four runs on one H200 (2026-12-04): environment 4.6 s (15 for a dry run
    # on a busy CPU); the extension built in 16 to 30 s and its CUDA tests ran in about
    # 70 s (36 s of it the tallest column); the kernel benchmark, with the baselines at the
    # main shapes only, 26 to 29 s; the four sanitizers, at once, over the kernels' test
    # files, 75 to 100% through in 89 s, no error reported. The three eager
    # training rows took 110 s (one compiled row at batch 49 now, cold); coco128 50 s for
    # 33 iterations; inference 26 s for 2 rows (3 rows and the fixed load now). The
    # corner-pooling steps come first.
    "environment": (step_environment, 15),
    "build_and_cuda_tests": (step_build_and_cuda_tests, 110),
    # The extension is built by the step before (28 s in the second run, whose CUDA tests
    # then ran out of time at 97%); run alone, the step builds it first and needs about 30 s
    # more (--time-limit).
    "kernel_benchmark": (step_kernel_benchmark, 45),
    "compute_sanitizer": (step_compute_sanitizer, 100),
    "train_throughput": (step_train_throughput, 140),  # a cold torch.compile takes minutes
    "coco128_training": (step_coco128_training, 60),
    "inference": (step_inference, 60),
}


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# --- The orchestration ------------------------------------------------------------------


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a run killed while writing keeps the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def run_child(args: argparse.Namespace) -> int:
    """Run one step in this process; its result (or error) goes to ``--step-out``."""
    function, _ = STEPS[args.step]
    out = Path(args.step_out)
    results = json.loads(Path(args.results).read_text())
    context = Context(
        dry_run=args.dry_run,
        work=Path(args.work),
        results=results,
        deadline=args.deadline,
        partial=lambda result: write_json(out, {"status": "running", "result": result}),
    )
    if args.dry_run:
        torch.set_num_threads(1)  # toy sizes: one thread is faster on a busy machine
    try:
        result = function(context)
        status = result.pop("status", "ok")
        record = {"status": status, "result": result}
        if "reason" in result:
            record["reason"] = result.pop("reason")
    except NotAvailable as reason:
        record = {"status": "not available", "reason": str(reason)}
    except Skipped as reason:
        record = {"status": "skipped", "reason": str(reason)}
    except StepFailed as failure:
        record = {"status": "failed", "error": str(failure), "result": failure.result}
    except Exception as error:
        traceback.print_exc()
        previous = json.loads(out.read_text()).get("result") if out.is_file() else None
        record = {
            "status": "failed",
            "error": describe(error),
            "traceback": tail(traceback.format_exc(), 12),
            "result": previous,
        }
    write_json(out, record)
    return 0


def install_wheels(wheels: Path, target: Path) -> dict:
    """``pip install --no-index --no-deps`` every wheel of ``wheels`` into ``target``."""
    files = sorted(str(path) for path in wheels.glob("*.whl"))
    if not files:
        return {"folder": str(wheels), "installed": False, "error": "no .whl file there"}
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(target),
        *files,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    record = {
        "folder": str(wheels),
        "wheels": [Path(f).name for f in files],
        "installed": done.returncode == 0,
    }
    if done.returncode:
        record["error"] = tail(done.stdout + done.stderr, 6)
    return record


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def summary_lines(results: dict) -> list[str]:
    """The short printed summary: one line per step, its main figures."""
    lines = []
    for name, step in results["steps"].items():
        result = step.get("result") or {}
        figures = ""
        if name == "environment" and result:
            figures = (
                f"copy {result.get('copy_gb_per_s')} GB/s, matmul "
                f"{result.get('matmul_bf16_tflops', result.get('matmul_fp32_tflops'))} "
                f"TFLOP/s, pycocotools {result.get('packages', {}).get('pycocotools')}"
            )
        elif name == "build_and_cuda_tests" and "pytest" in result:
            counts = result["pytest"]
            figures = " ".join(f"{k} {counts.get(k)}" for k in ("tests", "failures", "skipped"))
        elif name == "kernel_benchmark" and "results" in result:
            figures = kernel_figures(result["results"])
        elif name == "train_throughput":
            figures = "; ".join(
                f"{row['variant']} batch {row['batch']}: "
                + (f"{row['images_per_s']:.4g} img/s" if "images_per_s" in row else row["error"])
                for row in result.get("rows", [])
            )
        elif name == "inference":
            figures = "; ".join(
                f"{row['precision']} decoded on {row['decode_on']}: "
                f"{row['end_to_end']['images_per_s']} img/s, stages (ms) "
                f"{row['per_stage']['median_ms']}"
                for row in result.get("rows", [])
                if "end_to_end" in row
            )
            for row in result.get("fixed_load", {}).get("rows", []):
                figures += f"; fixed load on {row['decode_on']} (ms): {row['median_ms']}"
        elif name == "coco128_training" and result.get("loss_curve"):
            curve = result["loss_curve"]
            metrics = result.get("metrics_on_training_images") or {}
            figures = (
                f"{result['config']['max_iters']} iterations, loss "
                f"{curve[0]['total']:.3g} -> {curve[-1]['total']:.3g}, AP {metrics.get('AP')}"
            )
        elif name == "compute_sanitizer" and result:
            figures = "; ".join(
                f"{tool}: {(result[tool].get('summary') or ['?'])[-1]}"
                for tool in SANITIZER_TOOLS
                if tool in result
            )
        detail = step.get("reason") or step.get("error") or figures
        lines.append(f"{name:22} {step['status']:13} {step.get('seconds', '')!s:>6}s  {detail}")
    return lines


def kernel_figures(results: dict) -> str:
    parts = []
    for dtype, shapes in results.items():
        for shape, entries in shapes.items():
            for implementation in ("cuda", "reference"):
                entry = entries.get(implementation, {}).get("forward_backward", {})
                if "fraction_of_copy_bandwidth" in entry:
                    fraction = entry["fraction_of_copy_bandwidth"]
                    parts.append(f"{implementation} {dtype} {shape} fwd+bwd {fraction:.2f} of copy")
                elif "median_ms" in entry:
                    parts.append(
                        f"{implementation} {dtype} {shape} fwd+bwd {entry['median_ms']} ms"
                    )
    return "; ".join(parts[:4])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--out", type=Path, help="the JSON (default: see the module docstring)")
    parser.add_argument("--wheels", type=Path, help="install these wheels first (pip --no-index)")
    parser.add_argument("--only", nargs="+", choices=list(STEPS), help="run these steps only")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds, all")
    parser.add_argument(
        "--checkpoint", type=Path, help="weights timed by the inference step (e.g. the official)"
    )
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # child process
    for hidden in ("--step-out", "--results", "--work"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return run_child(args)

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); "
            "--dry-run runs every step at toy size on the CPU"
        )
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # removed at the end
    device = "cpu" if args.dry_run else "cuda"
    if args.out is None:
        args.out = (
            Path(tempfile.gettempdir()) / "gpu_check_dry_run.json"
            if args.dry_run
            else RESULTS / f"gpu_check_{device_slug(torch.cuda.get_device_name())}.json"
        )
    log = args.out.with_suffix(".log")
    results = header("gpu_check", device) | {
        "dry_run": args.dry_run,
        "note": DRY_RUN_NOTE if args.dry_run else "measured on the device named above",
        "time_limit_s": args.time_limit,
        "options": {"checkpoint": str(args.checkpoint) if args.checkpoint else None},
        "steps": {
            name: {"status": "pending", "budget_s": STEPS[name][1]} for name in (args.only or STEPS)
        },
    }
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    python_path = [str(ROOT)]
    if args.wheels:
        site = work / "site"
        results["wheels"] = install_wheels(args.wheels, site)
        python_path.insert(0, str(site))
    environment["PYTHONPATH"] = os.pathsep.join(
        python_path + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    write_json(args.out, results)
    print(f"gpu_check: {results['device']}; writing {args.out} (log {log})", flush=True)
    with log.open("w") as log_file:
        for name in results["steps"]:
            budget = STEPS[name][1]
            left = args.time_limit - (time.time() - started)
            if left < 5:
                results["steps"][name] = {
                    "status": "skipped",
                    "budget_s": budget,
                    "reason": "the time limit was reached",
                }
                write_json(args.out, results)
                continue
            allowed = min(budget, left)
            results["steps"][name] = run_step(
                name, allowed, args.dry_run, work, results, environment, log_file
            ) | {"budget_s": budget}
            write_json(args.out, results)
            print(summary_lines({"steps": {name: results["steps"][name]}})[0], flush=True)
    results["seconds"] = round(time.time() - started, 1)
    write_json(args.out, results)
    shutil.rmtree(work, ignore_errors=True)
    print(
        "\n".join(
            ["", f"gpu_check summary ({results['device']}, {results['seconds']} s):"]
            + summary_lines(results)
            + [f"wrote {args.out}"]
        )
    )
    if args.dry_run:
        print(DRY_RUN_NOTE)
    return 0


def run_step(
    name: str,
    allowed: float,
    dry_run: bool,
    work: Path,
    results: dict,
    environment: dict,
    log_file: IO[str],
) -> dict:
    """Run one step in a child process, killed after ``allowed`` seconds."""
    step_out = work / f"step_{name}.json"
    results_in = work / "results_so_far.json"
    write_json(results_in, results)
    start = time.time()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--step",
        name,
        "--step-out",
        str(step_out),
        "--results",
        str(results_in),
        "--work",
        str(work),
        "--deadline",
        str(start + allowed - STEP_MARGIN_S),
    ]
    if dry_run:
        command.append("--dry-run")
    log_file.write(f"\n===== {name} (budget {allowed:.0f} s) =====\n")
    log_file.flush()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        process.wait(timeout=allowed)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)  # the step and the processes it started (data loaders)
        process.wait()
        timed_out = True
    seconds = round(time.time() - start, 1)
    record = json.loads(step_out.read_text()) if step_out.is_file() else {}
    if timed_out:
        record = {
            "status": "timeout",
            "reason": f"killed after {seconds} s",
            "result": record.get("result"),
        }
    elif not record or record.get("status") == "running":
        record = {
            "status": "failed",
            "error": f"the step's process ended with code "
            f"{process.returncode} before writing its result",
            "result": record.get("result"),
        }
    return record | {"seconds": seconds}


if __name__ == "__main__":
    sys.exit(main())
