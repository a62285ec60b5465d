"""Hourglass-104 and its prediction module, drawn from the module tree of the model.

Every box is a module of :class:`cornernet_ref.model.CornerNet` (built on the meta device);
its label (blocks, widths, stride, parameters) is read from the module, not typed in.
Top: one hourglass as a U, resolution falling to the right then rising. Bottom: the
top-left prediction module.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

from cornernet_ref.corner_pool import CORNERS
from cornernet_ref.heads import PredictionModule
from cornernet_ref.hourglass import Hourglass
from cornernet_ref.model import CornerNet

INPUT = 511


def params(module: nn.Module) -> str:
    total = sum(p.numel() for p in module.parameters())
    return f"{total / 1e6:.1f}M" if total >= 1e5 else f"{total / 1e3:.0f}k"


def chain_label(name: str, chain: nn.Sequential) -> str:
    """``down: 2 x R 256->384 /2`` from a chain of residual blocks."""
    first, last = chain[0].first.conv, chain[-1].second.conv
    stride = " /2" if first.stride[0] == 2 else ""
    return (
        f"{name}: {len(chain)} x R{stride}\n{first.in_channels}->{last.out_channels}"
        f"  ({params(chain)})"
    )


def conv_label(name: str, conv: nn.Conv2d, suffix: str) -> str:
    k = conv.kernel_size[0]
    return f"{name}\n{k}x{k} {suffix} {conv.in_channels}->{conv.out_channels}"


Node = tuple[float, float, float]  # centre x, centre y, width (0 for a point)


def box(ax, x: float, y: float, text: str, color: str, width: float = 2.0) -> Node:
    ax.add_patch(
        plt.Rectangle(
            (x - width / 2, y - 0.3), width, 0.6, facecolor=color, edgecolor="black", lw=0.8
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=7)
    return x, y, width


def plus(ax, x: float, y: float, text: str = "+") -> Node:
    ax.text(x, y, text, ha="center", va="center", fontsize=9, fontweight="bold")
    return x, y, 0.16 * len(text) + 0.1


def arrow(ax, start: Node, end: Node, text: str = "", down_first: bool = False) -> None:
    """From the right edge of ``start`` to the left edge of ``end`` (or first straight down
    out of ``start``'s bottom, then across)."""
    tail = (start[0] + start[2] / 2, start[1])
    head = (end[0] - end[2] / 2, end[1])
    if down_first:
        tail = (start[0], end[1])
        ax.plot([start[0], start[0]], [start[1] - 0.3, end[1]], color="black", lw=0.8)
    ax.annotate("", head, tail, arrowprops=dict(arrowstyle="->", lw=0.8, shrinkA=0, shrinkB=0))
    if text:
        ax.text((tail[0] + head[0]) / 2 + 0.1, (tail[1] + head[1]) / 2, text, fontsize=7)


def draw_hourglass(ax, hourglass: Hourglass, side: int) -> None:
    """Level k's maps at height -k: down chains on the left, up chains on the right."""
    levels = [hourglass]
    while isinstance(levels[-1].inner, Hourglass):
        levels.append(levels[-1].inner)
    n = len(levels)

    def column(position: float) -> float:  # x of the boxes, 2.6 apart
        return 1.5 + 2.6 * position

    source = plus(ax, 0, 0, "x")  # the hourglass input
    ups: list[Node] = []
    width = hourglass.skip_branch[0].first.conv.in_channels
    for k, level in enumerate(levels):
        ax.text(-0.8, -k, f"{side >> k}x{side >> k}\n{width} ch", ha="right", va="center",
                fontsize=7)  # fmt: skip
        width = level.down[-1].second.conv.out_channels
        down = box(ax, column(k), -(k + 1), chain_label("down", level.down), "#cfe3f7")
        skip = box(ax, column(n), -k, chain_label("skip", level.skip_branch), "#e8e8e8")
        up = box(ax, column(2 * n - k), -(k + 1), chain_label("up", level.up), "#f7dccf")
        merge = plus(ax, column(2 * n - k + 0.5), -k)
        arrow(ax, source, down)
        arrow(ax, source, skip)
        arrow(ax, skip, merge)
        arrow(ax, up, merge, "x2")
        if ups:  # level k's output feeds the up chain of level k - 1
            arrow(ax, merge, ups[-1])
        source = down
        ups.append(up)
    ax.text(-0.8, -n, f"{side >> n}x{side >> n}\n{width} ch", ha="right", va="center",
            fontsize=7)  # fmt: skip
    bottom = box(ax, column(n), -n, chain_label("bottom", levels[-1].inner), "#d9f0d3")
    arrow(ax, source, bottom)
    arrow(ax, bottom, ups[-1])
    ax.set_xlim(-2.2, column(2 * n + 0.5) + 0.5)
    ax.set_ylim(-n - 0.5, 0.5)
    ax.set_title(
        f"One hourglass ({params(hourglass)} parameters); R = residual block, /2 = stride 2, "
        "x2 = nearest upsampling",
        fontsize=9,
    )


LOOKS = {"top": "max below", "bottom": "max above", "left": "max to the right",
         "right": "max to the left"}  # fmt: skip


def draw_prediction(ax, module: PredictionModule) -> None:
    pooling = module.pooling
    vertical, horizontal = CORNERS[pooling.pool.corner]
    features = box(ax, 0, 0, f"features\n{pooling.shortcut.conv.in_channels} ch", "#e8e8e8", 1.2)
    branch_v = box(ax, 2, 1, conv_label("vertical", pooling.vertical.conv, "CBR"), "#cfe3f7")
    branch_h = box(ax, 2, -1, conv_label("horizontal", pooling.horizontal.conv, "CBR"), "#cfe3f7")
    pool_v = box(ax, 4.2, 1, f"{vertical} pool\n{LOOKS[vertical]}", "#fff2b3", 1.6)
    pool_h = box(ax, 4.2, -1, f"{horizontal} pool\n{LOOKS[horizontal]}", "#fff2b3", 1.6)
    pooled = plus(ax, 5.5, 0)
    fuse = box(ax, 6.8, 0, conv_label("fuse", pooling.fuse.conv, "CB"), "#f7dccf")
    shortcut = box(ax, 6.8, -2, conv_label("shortcut", pooling.shortcut.conv, "CB"), "#e8e8e8")
    merged = plus(ax, 8.6, 0, "+ReLU")
    out = box(ax, 10.2, 0, conv_label("out", pooling.out.conv, "CBR"), "#f7dccf")
    edges = [(features, branch_v), (features, branch_h), (branch_v, pool_v), (branch_h, pool_h),
             (pool_v, pooled), (pool_h, pooled), (pooled, fuse), (fuse, merged),
             (shortcut, merged), (merged, out)]  # fmt: skip
    for start, end in edges:
        arrow(ax, start, end)
    arrow(ax, features, shortcut, down_first=True)
    for y, name in ((1.2, "heatmap"), (0, "embedding"), (-1.2, "offset")):
        hidden, last = getattr(module, name).hidden, getattr(module, name).out
        text = (
            f"{name}: 3x3 conv-ReLU {hidden.in_channels}->{hidden.out_channels},"
            f"\n1x1 conv ->{last.out_channels}"
        )
        arrow(ax, out, box(ax, 13.0, y, text, "#d9f0d3", 2.4))
    ax.set_xlim(-0.8, 14.4)
    ax.set_ylim(-2.5, 1.7)
    ax.set_title(
        f"Top-left prediction module ({params(module)} parameters, corner pooling module "
        f"{params(pooling)}); CBR = conv-BN-ReLU, CB = conv-BN",
        fontsize=9,
    )


def main(out: Path) -> None:
    with torch.device("meta"):
        model = CornerNet()
    side = (INPUT + 1) // 4
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(17, 10), gridspec_kw={"height_ratios": [6.4, 4.4]}
    )
    draw_hourglass(top, model.hourglasses[0], side)
    draw_prediction(bottom, model.top_left[0])
    for ax in (top, bottom):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(Path("model_architecture.png"))
