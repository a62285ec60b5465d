"""How the fused kernel walks one plane for the top-left pool.

An 80 x 112 plane (rows x columns) cut into 32 x 32 tiles, numbered in the order one thread
block visits them: ``Tile(t)`` of ``corner_pool.cu``, strips of rows from the bottom border
up and, within a strip, chunks of columns from the right border leftwards (scan
coordinates, flipped back to the plane). In the first tile, warp 0 walks up the columns and
warp 1 leftwards along the rows (arrows, a few of each drawn). The running maxima carry
over: along a row to the next chunk (in a register), up a column to the next strip (parked
in a small buffer when the plane is wider than one tile).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TILE = 32
HEIGHT, WIDTH = 80, 112


def tiles(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(first row, first column, rows, columns) of each tile in the plane, in visiting order,
    for the top-left pool: the kernel's ``Tile`` in scan coordinates, flipped back."""
    chunks = -(-width // TILE)
    strips = -(-height // TILE)
    result = []
    for t in range(strips * chunks):
        scan_row0, scan_col0 = t // chunks * TILE, t % chunks * TILE
        rows, cols = min(TILE, height - scan_row0), min(TILE, width - scan_col0)
        result.append((height - scan_row0 - rows, width - scan_col0 - cols, rows, cols))
    return result


def main(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 6))
    for t, (row0, col0, rows, cols) in enumerate(tiles(HEIGHT, WIDTH)):
        color = "#fde0c5" if t == 0 else "#eeeeee"
        ax.add_patch(plt.Rectangle((col0, row0), cols, rows, fc=color, ec="black", lw=1.5))
        ax.text(col0 + 1, row0 + 1, f"tile {t}", ha="left", va="top", fontsize=10)
    row0, col0, rows, cols = tiles(HEIGHT, WIDTH)[0]
    for c in range(col0 + 3, col0 + cols, 8):  # warp 0: one thread per column, upwards
        ax.annotate(
            "",
            xy=(c, row0 + 2),
            xytext=(c, row0 + rows - 1),
            arrowprops={"arrowstyle": "->", "color": "tab:orange", "lw": 1.5},
        )
    for r in range(row0 + 5, row0 + rows, 8):  # warp 1: one thread per row, leftwards
        ax.annotate(
            "",
            xy=(col0 + 2, r),
            xytext=(col0 + cols - 1, r),
            arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 1.5},
        )
    carry = {"arrowstyle": "->", "lw": 2.5}
    ax.annotate(
        "",
        xy=(col0 - 8, row0 + 24),
        xytext=(col0 + 1, row0 + 24),
        arrowprops={**carry, "color": "tab:blue"},
    )
    ax.text(
        col0 - 16,
        row0 + 17,
        "row maxima go on\nto the next chunk",
        ha="center",
        va="center",
        color="tab:blue",
        fontsize=9,
    )
    ax.annotate(
        "",
        xy=(col0 + 8, row0 - 8),
        xytext=(col0 + 8, row0 + 1),
        arrowprops={**carry, "color": "tab:orange"},
    )
    ax.text(
        col0 + 16,
        row0 - 16,
        "column maxima go on\nto the next strip",
        ha="center",
        va="center",
        color="tab:orange",
        fontsize=9,
    )
    ax.set_xlim(-1, WIDTH + 1)
    ax.set_ylim(HEIGHT + 1, -1)  # row 0 at the top, as in an image
    ax.set_aspect("equal")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.set_title("top-left pool: one block, one plane, tiles from the bottom-right corner")
    fig.tight_layout()
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(Path("pool_tiles.png"))
