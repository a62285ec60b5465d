"""Top-left corner pooling with numbers, in the style of the paper's Fig. 6.

Two 5 x 5 maps; the top pool scans each column of $f_t$ from the bottom up keeping the
running maximum, the left pool each row of $f_l$ from right to left, and the two pooled maps
are added. Every number is computed by ``cornernet_ref.corner_pool``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from cornernet_ref.corner_pool import corner_pool, pool

F_T = [[0, 2, 0, 1, 0], [1, 0, 3, 0, 0], [0, 0, 1, 2, 0], [2, 1, 0, 0, 1], [0, 3, 0, 1, 0]]
F_L = [[0, 1, 0, 2, 0], [3, 0, 1, 0, 0], [0, 2, 0, 0, 1], [1, 0, 0, 3, 0], [0, 0, 2, 0, 1]]


def draw_grid(ax: plt.Axes, values: torch.Tensor, title: str, color: str) -> None:
    ax.imshow(values.numpy(), cmap="Blues" if color == "blue" else "Oranges", vmin=-1, vmax=7)
    for (i, j), value in zip(
        torch.cartesian_prod(*map(torch.arange, values.shape)).tolist(),
        values.flatten().tolist(),
        strict=True,
    ):
        ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=13)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def main(out: Path) -> None:
    f_t = torch.tensor(F_T, dtype=torch.float32)[None, None]
    f_l = torch.tensor(F_L, dtype=torch.float32)[None, None]
    panels = [
        (f_t, "$f_t$", "orange"),
        (pool(f_t, "top"), "top pool, scanning ↑\n(max of the cells below)", "orange"),
        (f_l, "$f_l$", "blue"),
        (pool(f_l, "left"), "left pool, scanning ←\n(max of the cells to the right)", "blue"),
        (corner_pool(f_t, f_l, "tl"), "top-left corner pool\n(sum of the two)", "blue"),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.8))
    for ax, (values, title, color) in zip(axes, panels, strict=True):
        draw_grid(ax, values[0, 0], title, color)
    fig.tight_layout()
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(Path("pool_numbers.png"))
