"""Throughput of the training data pipeline: samples per second per CPU core.

One sample = read the image, the official augmentation (crop, resize, flip, colour, lighting),
normalisation and ``build_targets``. Measured in one process with one torch thread (so the
figure is per core), on the coco128 images at 511 x 511 when ``../shared`` is there and on
the synthetic shapes at the small configuration's 127 x 127 always; then through a DataLoader
with ``--workers`` processes.

    python benchmarks/data_pipeline.py [--samples 200] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from report import header, write_result

from cornernet_ref.config import get_config
from cornernet_ref.data.coco import CocoDetection
from cornernet_ref.data.examples import coco128
from cornernet_ref.data.loader import StreamBatchSampler, TrainingSet, make_loader
from cornernet_ref.data.shapes import shapes_detection

ROOT = Path(__file__).resolve().parents[1]


def samples_per_second(dataset: TrainingSet, samples: int) -> float:
    dataset[(0, 0)]  # warm up
    start = time.perf_counter()
    for position in range(samples):
        dataset[(position % len(dataset), position)]
    return samples / (time.perf_counter() - start)


def loader_samples_per_second(dataset: TrainingSet, samples: int, workers: int) -> float:
    batch = 8
    sampler = StreamBatchSampler(
        len(dataset), batch, start_iteration=0, stop_iteration=samples // batch
    )
    start = time.perf_counter()
    for _ in make_loader(dataset, sampler, workers=workers, pin_memory=False):
        pass
    return (samples // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/data_pipeline.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    small = get_config("small_shapes")
    shapes = TrainingSet(
        shapes_detection(100, seed=0, size=small.shapes_size),
        small.augment,
        output_size=small.output_size,
        target_config=small.targets,
    )
    results["shapes_127"] = {
        "samples_per_s_per_core": samples_per_second(shapes, args.samples),
        f"loader_samples_per_s_{args.workers}_workers": loader_samples_per_second(
            shapes, args.samples, args.workers
        ),
    }
    coco_images, coco_annotations = coco128()
    if coco_annotations.is_file():
        paper = get_config("hourglass104_coco")
        coco = TrainingSet(
            CocoDetection(coco_annotations, coco_images),
            paper.augment,
            output_size=paper.output_size,
            target_config=paper.targets,
        )
        results["coco128_511"] = {
            "samples_per_s_per_core": samples_per_second(coco, args.samples),
            f"loader_samples_per_s_{args.workers}_workers": loader_samples_per_second(
                coco, args.samples, args.workers
            ),
        }
    report = header("data_pipeline") | {
        "samples": args.samples,
        "results": results,
        "note": "per core: one process, one torch thread; loader: worker processes in parallel",
    }
    write_result(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
