"""How conservative the official radius is: official / exact radius over box sizes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from cornernet_ref.targets import gaussian_radius

SIDES = np.arange(1, 129)  # box sides in cells on the 128 x 128 output grid


def ratio(height: float, width: float, t: float) -> float:
    return gaussian_radius(height, width, t) / gaussian_radius(height, width, t, variant="exact")


def main(out: Path) -> None:
    fig, (grid_ax, aspect_ax) = plt.subplots(1, 2, figsize=(11, 4.4))
    grid = np.array([[ratio(h, w, 0.3) for w in SIDES] for h in SIDES])
    image = grid_ax.imshow(
        grid,
        origin="lower",
        extent=(SIDES[0], SIDES[-1], SIDES[0], SIDES[-1]),
        cmap="viridis",
        vmin=1 / np.sqrt(2),
        vmax=1,
    )
    lines = grid_ax.contour(SIDES, SIDES, grid, levels=[0.75, 0.8, 0.9, 0.95], colors="white",
                            linewidths=0.8)  # fmt: skip
    grid_ax.clabel(lines, fontsize=8)
    fig.colorbar(image, ax=grid_ax, label="official / exact")
    grid_ax.set_xlabel("box width (cells)")
    grid_ax.set_ylabel("box height (cells)")
    grid_ax.set_title("t = 0.3, over box sizes")

    aspects = np.geomspace(1, 100, 60)
    for t in (0.1, 0.3, 0.5, 0.7):
        aspect_ax.plot(aspects, [ratio(10, 10 * a, t) for a in aspects], label=f"t = {t}")
    aspect_ax.axhline(1 / np.sqrt(2), color="grey", ls="--", lw=1)
    aspect_ax.text(
        30, 1 / np.sqrt(2) + 0.005, r"$1/\sqrt{2}$ (square boxes, $t \geq 1/4$)", color="grey"
    )
    aspect_ax.axhline(1, color="grey", ls=":", lw=1)
    aspect_ax.set_xscale("log")
    aspect_ax.set_xlabel("aspect ratio (long side / short side)")
    aspect_ax.set_ylabel("official / exact")
    aspect_ax.set_title("Against the aspect ratio")
    aspect_ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(Path("targets_radius_ratio.png"))
