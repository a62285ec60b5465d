"""Cost of the network: parameters, forward FLOPs, latency and memory.

* **FLOPs** of one forward pass of Hourglass-104 (80 classes) at 511 x 511, counted by
  ``torch.utils.flop_counter`` (a multiply-add counts 2) on the meta device, per part, in
  the test path (last stack's prediction modules only) and the training path (both stacks).
  Only convolutions carry FLOPs there; batch norm, ReLU, the sums and corner pooling
  (comparisons) are not counted. Corner pooling reads values, which meta tensors lack, so
  the count is taken with the plain sum in its place: no convolution changes.
* **CPU latency** in eval mode, batch 1, with the threads torch uses here: the small
  configuration (``small_shapes``) at its training size 127 x 127 and at 511 x 511, and
  Hourglass-104 at 127 x 127.
* **GPU** (when CUDA is available): forward latency and peak memory of Hourglass-104 at
  511 x 511, eval mode, batch 1 and 2 (a flip-tested image), fp32 and bf16 autocast, with
  and without channels_last; and a training-mode forward + backward at batch 4.

    python benchmarks/model_flops.py            # CPU part -> results/model_flops_cpu.json
    python benchmarks/model_flops.py --gpu      # GPU part -> results/model_flops_gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from report import header, write_result
from torch.utils.flop_counter import FlopCounterMode

from cornernet_ref.config import get_config
from cornernet_ref.model import CornerNet, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("stem", "hourglasses", "features", "top_left", "bottom_right", "transitions")


def forward_flops(training: bool, size: int = 511, config: ModelConfig = ModelConfig()) -> dict:
    """FLOPs of one image through Hourglass-104 (or the CornerNet of ``config``), in total and
    per top-level part."""
    with torch.device("meta"):
        model = CornerNet(replace(config, corner_pooling=False)).train(training)
        images = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    per_module = counter.get_flop_counts()

    def part_flops(part: str) -> int:  # the part itself, or the stacks of a list
        stacks = range(model.config.nstack)
        names = [f"CornerNet.{part}"] + [f"CornerNet.{part}.{i}" for i in stacks]
        return sum(sum(per_module.get(name, {}).values()) for name in names)

    return {
        "total": counter.get_total_flops(),
        "per_part": {part: part_flops(part) for part in PARTS},
    }


def median_ms(run: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    for _ in range(3):  # warm-up
        run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_latency(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    small = CornerNet(replace(get_config("small_shapes").model, num_classes=80)).eval()
    full = CornerNet().eval()
    rows = []
    for name, model, size in (("small_shapes", small, 127), ("small_shapes", small, 511),
                              ("hourglass104", full, 127)):  # fmt: skip
        images = torch.randn(1, 3, size, size)
        with torch.no_grad():
            ms = median_ms(lambda m=model, x=images: m(x), repeats, lambda: None)
        rows.append({"config": name, "input": size, "batch": 1, "forward_ms": ms})
    return rows


def gpu_rows(repeats: int) -> list[dict]:
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = CornerNet().to(device).eval()
    rows = []
    for batch in (1, 2):
        for dtype in (None, torch.bfloat16):
            for channels_last in (False, True):
                layout = torch.channels_last if channels_last else torch.contiguous_format
                model.to(memory_format=layout)  # in place
                images = torch.randn(batch, 3, 511, 511, device=device)
                images = images.contiguous(memory_format=layout)

                def run(images=images, dtype=dtype):
                    with (
                        torch.no_grad(),
                        torch.autocast(
                            "cuda", dtype=dtype or torch.float32, enabled=dtype is not None
                        ),
                    ):
                        return model(images)

                torch.cuda.reset_peak_memory_stats()
                ms = median_ms(run, repeats, torch.cuda.synchronize)
                rows.append(
                    {
                        "mode": "eval forward",
                        "batch": batch,
                        "precision": "bf16 autocast" if dtype else "fp32",
                        "channels_last": channels_last,
                        "forward_ms": ms,
                        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
                    }
                )
    model = model.to(memory_format=torch.contiguous_format).train()
    images = torch.randn(4, 3, 511, 511, device=device)
    for dtype in (None, torch.bfloat16):

        def step(dtype=dtype):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                outputs = model(images)
            sum(t.float().mean() for maps in outputs for t in maps).backward()

        torch.cuda.reset_peak_memory_stats()
        ms = median_ms(step, repeats, torch.cuda.synchronize)
        rows.append(
            {
                "mode": "train forward+backward",
                "batch": 4,
                "precision": "bf16 autocast" if dtype else "fp32",
                "channels_last": False,
                "step_ms": ms,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="measure the GPU part")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, help="result file (default: results/model_flops_*)")
    args = parser.parse_args()
    with torch.device("meta"):
        parameters = sum(p.numel() for p in CornerNet().parameters())
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA GPU")
        result = header("model_flops", "cuda", claims=("param-count",))
        result.update(parameters=parameters, rows=gpu_rows(args.repeats))
        out = args.out or ROOT / "benchmarks/results/model_flops_gpu.json"
    else:
        result = header("model_flops", claims=("param-count",))
        result.update(
            threads=torch.get_num_threads(),
            parameters=parameters,
            input=511,
            flops_test_path=forward_flops(training=False),
            flops_training_path=forward_flops(training=True),
            cpu_latency=cpu_latency(args.repeats),
        )
        out = args.out or ROOT / "benchmarks/results/model_flops_cpu.json"
    write_result(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
