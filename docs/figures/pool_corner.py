"""Corner pooling on a real image, in the style of the paper's Fig. 3.

Two edge maps of a coco128 image stand in for the two branches of the corner pooling module:
$f_t$, the strength of vertical edges (where a left boundary can be), and $f_l$, that of
horizontal edges (top boundaries), on a grid of 16 x 16-pixel cells. At the cell of the
person's top-left corner, the top pool takes the maximum of $f_t$ down the column and the
left pool the maximum of $f_l$ along the row to the right (red lines, red dots); the
top-left pool adds them (blue dot). The red dots are where the code sends the gradient of
the blue cell: they come from a backward pass, not from a separate search. Without
``../shared``, a drawn image stands in.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from cornernet_ref.corner_pool import corner_pool, pool
from cornernet_ref.data.examples import coco128
from cornernet_ref.data.image import read_image

IMAGE = coco128()[0] / "000000000036.jpg"
PERSON_BOX = (168, 163, 311, 465)  # its COCO annotation: x, y, width, height
CELL = 16  # pixels per cell of the feature maps


def load_example() -> tuple[np.ndarray, tuple[int, int, int, int], str]:
    """(RGB image, box, source): coco128 image 36 with its person, or a drawn stand-in."""
    if IMAGE.is_file():
        return read_image(IMAGE), PERSON_BOX, "coco128 image 36"
    image = np.full((480, 400, 3), 150, dtype=np.uint8)
    image[:160] = (120, 170, 230)  # sky
    image[120:440, 150:240] = (200, 60, 60)  # body
    image[80:130, 170:220] = (230, 190, 160)  # head
    return image, (150, 80, 90, 360), "a drawn image"


def edge_maps(image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertical edges, horizontal edges) as (1, 1, H / CELL, W / CELL) maps in [0, 1]."""
    gray = torch.from_numpy(image.astype(np.float32)).mean(-1)[None, None] / 255
    across = (gray[..., :, 1:] - gray[..., :, :-1]).abs()  # changes along x: vertical edges
    down = (gray[..., 1:, :] - gray[..., :-1, :]).abs()  # changes along y: horizontal edges
    vertical = F.max_pool2d(F.pad(across, (0, 1)), CELL)
    horizontal = F.max_pool2d(F.pad(down, (0, 0, 0, 1)), CELL)
    return vertical / vertical.max(), horizontal / horizontal.max()


def argmax_cell(x: torch.Tensor, direction: str, cell: tuple[int, int]) -> tuple[int, int]:
    """Where the pool sends the gradient of output ``cell``: its maximum, by the tie rule."""
    leaf = x.clone().requires_grad_()
    one_hot = torch.zeros_like(x)
    one_hot[0, 0, cell[0], cell[1]] = 1
    pool(leaf, direction).backward(one_hot)
    row, col = np.unravel_index(int(leaf.grad.flatten().argmax()), x.shape[2:])
    return int(row), int(col)


def main(out: Path) -> None:
    image, (x, y, w, h), source = load_example()
    f_t, f_l = edge_maps(image)
    corner = (y // CELL, x // CELL)
    pooled = corner_pool(f_t, f_l, "tl")
    below = argmax_cell(f_t, "top", corner)
    right = argmax_cell(f_l, "left", corner)
    rows, cols = f_t.shape[2:]

    fig, axes = plt.subplots(1, 4, figsize=(15, 5.2))
    axes[0].imshow(image)
    axes[0].add_patch(plt.Rectangle((x, y), w, h, fill=False, color="yellow", lw=2))
    axes[0].plot(x, y, "o", color="tab:blue", ms=10, mec="white")
    axes[0].set_title(f"{source}: the top-left corner\nlies outside the person")
    panels = [
        (axes[1], f_t[0, 0], "$f_t$: vertical edges\nmax down the column (top pool)"),
        (axes[2], f_l[0, 0], "$f_l$: horizontal edges\nmax along the row (left pool)"),
        (axes[3], pooled[0, 0], "top-left corner pool\n$t_{ij} + l_{ij}$"),
    ]
    for ax, values, title in panels:
        ax.imshow(values.numpy(), cmap="magma", extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
        ax.set_title(title)
    axes[1].plot([corner[1], corner[1]], [corner[0], rows - 0.5], color="red", lw=2)
    axes[1].plot(below[1], below[0], "o", color="red", ms=9, mec="white")
    axes[2].plot([corner[1], cols - 0.5], [corner[0], corner[0]], color="red", lw=2)
    axes[2].plot(right[1], right[0], "o", color="red", ms=9, mec="white")
    t_value = float(f_t[0, 0, below[0], below[1]])
    l_value = float(f_l[0, 0, right[0], right[1]])
    axes[3].plot(corner[1], corner[0], "o", color="tab:blue", ms=10, mec="white")
    total = float(pooled[0, 0, corner[0], corner[1]])
    axes[3].set_xlabel(f"blue: {t_value:.2f} + {l_value:.2f} = {total:.2f}")
    for ax in axes[1:3]:
        ax.plot(corner[1], corner[0], "s", mfc="none", mec="tab:blue", ms=9, mew=2)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(Path("pool_corner.png"))
