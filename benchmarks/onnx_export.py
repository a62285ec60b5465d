"""ONNX export: time to export, onnxruntime latency against PyTorch, agreement of the maps.

The network (random weights, seed 0, eval mode) is exported with ``export_onnx`` (default
bound: inputs up to 4096 pixels, 10 doubling steps per pool) and run by onnxruntime's CPU
provider on random normalised images of several sizes, batch 1. Agreement per map is
``max |onnx - torch| / max |torch|``. Latency: median of the repeats after one warm-up, both
runtimes with their default threads. The load average of the machine is recorded with
the result: on a shared machine the times are those of a loaded one.

    python benchmarks/onnx_export.py                 # -> results/onnx_export_cpu.json
    python benchmarks/onnx_export.py --hourglass104  # also Hourglass-104 (slow)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnxruntime
import torch
from report import RESULTS, header, write_result

from cornernet_ref.config import get_config
from cornernet_ref.export import OUTPUT_NAMES, OnnxModel, export_onnx
from cornernet_ref.model import CornerNet


def median_s(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, model: CornerNet, sizes: list[int], repeats: int) -> dict:
    model.eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        start = time.perf_counter()
        export_onnx(model, path)
        export_s = time.perf_counter() - start
        file_mb = path.stat().st_size / 2**20
        exported = OnnxModel(path)
        runs = []
        for size in sizes:
            images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
            with torch.no_grad():
                expected = model(images)[-1]
                torch_s = median_s(lambda images=images: model(images), repeats)
            maps = exported(images)
            onnx_s = median_s(lambda images=images: exported(images), repeats)
            difference = {
                field: ((found - wanted).abs().max() / wanted.abs().max()).item()
                for field, found, wanted in zip(OUTPUT_NAMES, maps, expected, strict=True)
            }
            runs.append(
                {
                    "input": size,
                    "max_relative_difference": difference,
                    "torch_s": torch_s,
                    "onnxruntime_s": onnx_s,
                }
            )
            print(name, size, f"torch {torch_s:.3f} s, onnxruntime {onnx_s:.3f} s", difference)
    return {"export_s": export_s, "file_mb": file_mb, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hourglass104", action="store_true", help="also Hourglass-104")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    torch.manual_seed(0)
    small = CornerNet(replace(get_config("small_shapes").model, num_classes=3))
    networks = {"small_shapes": measure("small_shapes", small, [127, 255, 511], args.repeats)}
    if args.hourglass104:
        torch.manual_seed(0)
        networks["hourglass104"] = measure("hourglass104", CornerNet(), [511], 1)
    result = header("onnx_export") | {
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "networks": networks,
    }
    write_result(RESULTS / "onnx_export_cpu.json", result)


if __name__ == "__main__":
    main()
