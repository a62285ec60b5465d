"""Times of top-left corner pooling, from the committed benchmark results.

One panel per result file ``benchmarks/results/corner_pool_*.json`` (written by
``benchmarks/corner_pool.py``; one per device): median milliseconds of the forward pass and
of forward + backward, per implementation and input shape, on a log scale. On a GPU the
fused kernel's bar is labelled with its share of the device's copy bandwidth.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
MODES = {"forward": "forward", "forward_backward": "forward + backward"}
COLORS = {
    "row_loop": "tab:gray",
    "log_doubling": "tab:brown",
    "cummax": "tab:orange",
    "reference": "tab:blue",
    "cuda": "tab:green",
}


def by_shape(report: dict) -> dict:
    """``{"shape" or "shape dtype": {implementation: {mode: figures}}}``: the results nested
    by dtype (``{dtype: {shape: ...}}``), or the first files' float32 results by shape."""
    results = report["results"]
    if not any(key in results for key in ("float32", "bfloat16")):
        return results
    return {
        f"{shape} {dtype}" if len(results) > 1 else shape: entries
        for dtype, shapes in results.items()
        for shape, entries in shapes.items()
        if "error" not in entries
    }


def draw(ax: plt.Axes, report: dict) -> None:
    results = by_shape(report)
    groups = [(shape, mode) for shape in results for mode in MODES]
    names = [name for name in COLORS if any(name in entries for entries in results.values())]
    width = 0.8 / len(names)
    for n, name in enumerate(names):
        # The reference and the loops are timed at the main shapes only, the backward not on
        # tall and wide maps: no bar there.
        times = [
            results[shape].get(name, {}).get(mode, {}).get("median_ms", np.nan)
            for shape, mode in groups
        ]
        positions = np.arange(len(groups)) + (n - (len(names) - 1) / 2) * width
        ax.bar(positions, times, width, label=name, color=COLORS[name])
        for position, (shape, mode) in zip(positions, groups, strict=True):
            figures = results[shape].get(name, {}).get(mode, {})
            fraction = figures.get("fraction_of_copy_bandwidth")
            if name == "cuda" and fraction is not None:
                label = f"{fraction:.0%}"
                ax.text(position, figures["median_ms"] * 1.1, label, ha="center", va="bottom",
                        fontsize=8)  # fmt: skip
    ax.set_xticks(np.arange(len(groups)))
    many = len(groups) > 8  # a GPU file: every shape in two dtypes, labels turned upright
    ax.set_xticklabels(
        [f"{shape}\n{MODES[mode]}" for shape, mode in groups],
        fontsize=7 if many else 8,
        rotation=90 if many else 0,
    )
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms)")
    title = f"{report['device']}\ntorch {report['torch']}, {report['date'][:10]}"
    if "load_average_1min_start_end" in report:  # other processes share a CPU machine
        start, end = report["load_average_1min_start_end"]
        title += f", load average {start:.1f} -> {end:.1f}"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)


def main(out: Path) -> None:
    reports = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("corner_pool_*.json"))]
    reports = [report for report in reports if report["benchmark"] == "corner_pool"]  # timings
    if not reports:
        raise FileNotFoundError(
            f"no corner_pool_*.json in {RESULTS}: run benchmarks/corner_pool.py"
        )
    widths = [max(7, 0.6 * len(MODES) * len(by_shape(report))) for report in reports]
    fig, axes = plt.subplots(1, len(reports), figsize=(sum(widths), 4.5), squeeze=False)
    for ax, report in zip(axes[0], reports, strict=True):
        draw(ax, report)
    fig.tight_layout()
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(Path("pool_benchmark.png"))
