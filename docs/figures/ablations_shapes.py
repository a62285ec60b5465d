"""The paper's ablations rerun at a small scale: COCO AP on the shapes validation split.

Reads ``benchmarks/results/ablations_shapes.json``, written by
``python benchmarks/train_shapes.py --ablations``: the main command's configuration, and the
same schedule with one change at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "ablations_shapes.json"
LABELS = {
    "baseline": "small_shapes\n(as the paper)",
    "no_corner_pooling": "without\ncorner pooling",
    "no_penalty_reduction": "without penalty\nreduction",
    "exact_radius": "exact radius\n(chapter 1)",
    "seed_1": "no change,\nseed 1",
    "seed_2": "no change,\nseed 2",
}
METRICS = ("AP", "AP50", "AP75")


def main(out: Path) -> None:
    runs = json.loads(RESULTS.read_text())["runs"]
    names = [name for name in LABELS if name in runs]
    figure, axis = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(METRICS)
    for k, metric in enumerate(METRICS):
        values = [runs[name]["metrics"][metric] for name in names]
        positions = [i + (k - (len(METRICS) - 1) / 2) * width for i in range(len(names))]
        bars = axis.bar(positions, values, width, label=metric)
        axis.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axis.set_xticks(range(len(names)), [LABELS[name] for name in names], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("COCO metric on shapes val")
    axis.set_title("Ablations at a small scale (synthetic shapes, CPU, one run each)", fontsize=10)
    axis.legend(ncol=3, fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
