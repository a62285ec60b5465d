"""The paper's Fig. 5 redrawn from the code: corner circles, alternative boxes, heatmap bumps."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from cornernet_ref.targets import TargetConfig, build_targets, gaussian_radius

T = 0.3  # gaussian_iou of the paper's configuration
GRID = (34, 46)  # output grid (height, width); input = output here, one pixel per cell
BOX = (8.5, 7.5, 35.5, 25.5)  # corners at cell centres, so the bumps sit on them


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def moved(box: tuple[float, ...], radius: float, tl_angle: float, br_angle: float):
    x1, y1, x2, y2 = box
    return (
        x1 + radius * math.cos(tl_angle),
        y1 + radius * math.sin(tl_angle),
        x2 + radius * math.cos(br_angle),
        y2 + radius * math.sin(br_angle),
    )


def worst_pair(box: tuple[float, ...], radius: float) -> tuple[float, float]:
    """The pair of angles on the circles with the lowest IoU (searched on a fine grid)."""
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    scores = [(iou(box, moved(box, radius, a, b)), a, b) for a in angles[::2] for b in angles[::2]]
    _, a, b = min(scores)
    fine = np.radians(np.linspace(-2, 2, 41))
    _, a, b = min((iou(box, moved(box, radius, a + da, b + db)), a + da, b + db)
                  for da in fine for db in fine)  # fmt: skip
    return a, b


def main(out: Path) -> None:
    height, width = BOX[3] - BOX[1], BOX[2] - BOX[0]
    radius = gaussian_radius(height, width, T, variant="exact")
    official = gaussian_radius(height, width, T)
    targets = build_targets(
        np.array([BOX]),
        np.array([0]),
        num_classes=1,
        input_size=GRID,
        output_size=GRID,
        config=TargetConfig(gaussian_iou=T, radius_variant="exact"),
    )
    heat = np.maximum(targets["tl_heat"][0].numpy(), targets["br_heat"][0].numpy())

    fig, ax = plt.subplots(figsize=(7.5, 5.6))
    ax.imshow(heat, cmap="magma", extent=(0, GRID[1], GRID[0], 0), vmin=0, vmax=1)
    ax.add_patch(plt.Rectangle(BOX[:2], width, height, fill=False, color="#4cd964", lw=2.5))
    ax.text(BOX[0] + 0.4, BOX[3] - 0.4, "ground truth", color="#4cd964", fontsize=9,
            va="bottom")  # fmt: skip
    for x, y in (BOX[:2], BOX[2:]):
        ax.add_patch(plt.Circle((x, y), radius, fill=False, color="white", lw=1.2, ls="--"))
        ax.add_patch(
            plt.Rectangle((x - official, y - official), 2 * official, 2 * official,
                          fill=False, color="#9ecbff", lw=1, ls=":")
        )  # fmt: skip
        ax.plot([x], [y], "o", color="white", ms=4)
    a, b = worst_pair(BOX, radius)
    others = [
        (moved(BOX, radius, a, b), "#ff9f0a", "worst pair"),
        (moved(BOX, radius, math.radians(200), math.radians(330)), "#5ac8fa", "another pair"),
    ]
    for box, colour, name in others:
        ax.add_patch(
            plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, color=colour,
                          lw=2)
        )  # fmt: skip
        ax.plot([box[0], box[2]], [box[1], box[3]], "o", color=colour, ms=5)
        ax.text((box[0] + box[2]) / 2, box[1] + 0.4, f"{name}: IoU = {iou(BOX, box):.3f}",
                color=colour, fontsize=9, ha="center", va="top",
                bbox={"facecolor": "black", "alpha": 0.6, "lw": 0})  # fmt: skip
    ax.set_title(
        f"Ground truth {width:g} x {height:g} cells, t = {T}: exact radius {radius:.2f} "
        f"(circles),\nofficial radius {official:.2f} along each axis (dotted squares); "
        f"bumps of radius {int(radius)}",
        fontsize=10,
    )
    ax.set_xlim(0, GRID[1])
    ax.set_ylim(GRID[0], 0)
    ax.set_xlabel("x (cells)")
    ax.set_ylabel("y (cells)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(Path("targets_fig5.png"))
