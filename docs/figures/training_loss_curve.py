"""Loss terms of the small shapes run recorded in benchmarks/results/train_small_shapes.json."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "train_small_shapes.json"


def main(out: Path) -> None:
    run = json.loads(RESULTS.read_text())
    history = run["history"]
    figure, axis = plt.subplots(figsize=(7, 3.6))
    steps = [record["iteration"] for record in history]
    for term in ("total", "focal", "pull", "push", "offset"):
        axis.plot(steps, [record[term] for record in history], label=term)
    axis.set_yscale("symlog", linthresh=0.01)
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss (symlog scale)")
    axis.set_title(
        f"small_shapes on CPU: AP {run['metrics']['AP']:.3f} after {steps[-1]} iterations"
    )
    axis.legend(ncol=5, fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
