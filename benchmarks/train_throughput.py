"""Training throughput of Hourglass-104 CornerNet at 511 x 511 on one GPU.

For each batch size and each variant (fp32 / bf16 autocast, with and without channels_last
and ``torch.compile``) it times full training steps (forward, the CornerNet loss on
synthetic targets, backward, Adam) and reports images/s, peak memory and model FLOPs
utilisation:

$$ \\text{MFU} = \\frac{3 \\times \\text{training forward FLOPs per image} \\times \\text{images/s}}
{\\text{peak dense bf16 FLOP/s of the GPU}} $$

(backward ~ 2x forward). Forward FLOPs are those of the training path (both stacks' heads),
counted by ``torch.utils.flop_counter`` (:func:`model_flops.forward_flops`). At the
paper's schedule (500k iterations x 49 images) the report gives the days one GPU would need.

    python benchmarks/train_throughput.py [--batch-sizes 16,49] [--steps 10] [--no-compile]
        [--fullgraph]

Batch 49, the paper's, takes 52.9 GiB in one step (bf16, channels_last): it fits an 80 GB
GPU (``cornernet_ref.config.accumulation_for_memory`` says how many micro-batches others need).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from model_flops import forward_flops  # benchmarks/model_flops.py, beside this script
from report import header, write_result

from cornernet_ref.data.loader import collate
from cornernet_ref.losses import CornerNetLoss
from cornernet_ref.model import CornerNet, ModelConfig
from cornernet_ref.targets import build_targets

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets.
PEAK_BF16 = {"H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.0e12, "H200": 989.4e12, "A100": 312e12}


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def synthetic_batch(
    batch: int, device: torch.device, input_size: int = 511, num_classes: int = 80
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random images and targets of 8 random boxes each (511 -> 128 by default)."""
    generator = torch.Generator().manual_seed(0)
    unit = input_size / 511  # the boxes' sizes below are those of a 511 x 511 input
    samples = []
    for _ in range(batch):
        corners = torch.rand(8, 2, generator=generator) * 400 * unit
        sizes = (20 + torch.rand(8, 2, generator=generator) * 90) * unit
        boxes = torch.cat((corners, corners + sizes), 1)
        labels = torch.randint(0, num_classes, (8,), generator=generator)
        targets = build_targets(
            boxes.numpy(),
            labels.numpy(),
            num_classes=num_classes,
            input_size=input_size,
            output_size=(input_size + 1) // 4,
        )
        samples.append((torch.randn(3, input_size, input_size, generator=generator), targets))
    images, targets = collate(samples)
    return images.to(device), {k: v.to(device) for k, v in targets.items()}


def time_variant(
    batch: int,
    dtype: torch.dtype | None,
    channels_last: bool,
    compile_: bool,
    steps: int,
    device: torch.device | str = "cuda",
    model_config: ModelConfig = ModelConfig(),
    input_size: int = 511,
    compile_backend: str = "inductor",
    fullgraph: bool = False,
) -> dict:
    """Images/s, step time and (on a GPU) peak memory of ``steps`` timed training steps.

    ``model_config`` (default: Hourglass-104, 80 classes, as in the paper) and
    ``input_size`` allow a small model on the CPU; ``compile_backend`` and ``fullgraph``
    are those of ``torch.compile`` (``fullgraph``: one graph or an error, no silent breaks).
    """
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    torch.manual_seed(0)
    model = CornerNet(model_config).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    network = (
        torch.compile(model, backend=compile_backend, fullgraph=fullgraph) if compile_ else model
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    criterion = CornerNetLoss()
    images, targets = synthetic_batch(batch, device, input_size, model_config.num_classes)
    images = images.contiguous(memory_format=memory_format)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = criterion(network(images), targets)["total"]
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)

    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(3):  # warm-up (and compilation)
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    return {
        "images_per_s": batch / seconds,
        "step_ms": seconds * 1e3,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None,
    }


def utilisation(images_per_s: float, flops: float, peak: float | None) -> dict:
    """MFU against ``peak`` FLOP/s (3 x forward FLOPs per image) and the days the paper's
    schedule would take at this speed."""
    achieved = 3 * flops * images_per_s
    return {
        "mfu_vs_bf16_peak": achieved / peak if peak else None,
        "days_for_500k_x_49": 500_000 * 49 / images_per_s / 86400,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="16,49")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    parser.add_argument("--fullgraph", action="store_true", help="torch.compile(fullgraph=True)")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s, if not known")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/train_throughput.json"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    name = torch.cuda.get_device_name()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    flops = forward_flops(training=True)["total"]
    peak = peak_flops(name, args.peak_tflops)
    variants = [("fp32", None, False, False), ("bf16", torch.bfloat16, False, False)]
    variants += [("bf16+channels_last", torch.bfloat16, True, False)]
    if not args.no_compile:
        variants += [("bf16+channels_last+compile", torch.bfloat16, True, True)]
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for label, dtype, channels_last, compile_ in variants:
            try:
                row = time_variant(
                    batch, dtype, channels_last, compile_, args.steps, fullgraph=args.fullgraph
                )
            except torch.OutOfMemoryError:
                row = {"error": "out of memory"}
            torch.cuda.empty_cache()
            row = {"batch": batch, "variant": label, **row}
            if "images_per_s" in row:
                row |= utilisation(row["images_per_s"], flops, peak)
            print(json.dumps(row))
            rows.append(row)
    report = header("train_throughput", "cuda") | {
        "forward_gflops_per_image": flops / 1e9,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "results": rows,
    }
    write_result(args.out, report)


if __name__ == "__main__":
    main()
