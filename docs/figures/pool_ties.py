"""Where the gradient of each output goes when maxima tie: official rule versus ``cummax``.

A row of six values pooled ``right`` (scan from the left border). Each arrow goes from an
output to the input that receives its gradient, found by a backward pass with a one-hot
output gradient: with ``cornernet_ref.corner_pool`` (the official rule, the first maximum
met) and with ``torch.cummax`` (the last maximum met). The numbers under the inputs are the
gradient of the sum of the outputs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from cornernet_ref.corner_pool import pool

ROW = [1.0, 3.0, 0.0, 3.0, 2.0, 3.0]


def official(x: torch.Tensor) -> torch.Tensor:
    return pool(x, "right")


def with_cummax(x: torch.Tensor) -> torch.Tensor:
    return x.cummax(3).values


def receivers(pool_fn) -> tuple[list[int], list[float]]:
    """For each output, the input its gradient goes to; and the gradient of the sum."""
    x = torch.tensor(ROW)[None, None, None]
    targets = []
    for k in range(len(ROW)):
        leaf = x.clone().requires_grad_()
        one_hot = torch.zeros_like(x)
        one_hot[..., k] = 1
        pool_fn(leaf).backward(one_hot)
        targets.append(int(leaf.grad.flatten().argmax()))
    leaf = x.clone().requires_grad_()
    pool_fn(leaf).sum().backward()
    return targets, leaf.grad.flatten().tolist()


def draw(ax: plt.Axes, pool_fn, title: str) -> None:
    outputs = pool_fn(torch.tensor(ROW)[None, None, None]).flatten().tolist()
    targets, grad = receivers(pool_fn)
    for j, (value, out, g) in enumerate(zip(ROW, outputs, grad, strict=True)):
        ax.add_patch(plt.Rectangle((j - 0.4, 1.6), 0.8, 0.8, fc="#fde0c5", ec="gray"))
        ax.text(j, 2.0, f"{value:g}", ha="center", va="center", fontsize=14)
        ax.add_patch(plt.Rectangle((j - 0.4, -0.4), 0.8, 0.8, fc="#c6dbef", ec="gray"))
        ax.text(j, 0.0, f"{out:g}", ha="center", va="center", fontsize=14)
        ax.text(j, 2.75, f"grad {g:g}", ha="center", va="center", fontsize=11, color="tab:red")
    for k, p in enumerate(targets):
        ax.annotate(
            "",
            xy=(p, 1.6),
            xytext=(k, 0.4),
            arrowprops={
                "arrowstyle": "->",
                "color": "tab:red",
                "lw": 1.5,
                "connectionstyle": f"arc3,rad={0.25 if p != k else 0}",
            },
        )
    ax.text(-0.9, 2.0, "input", ha="right", va="center")
    ax.text(-0.9, 0.0, "output", ha="right", va="center")
    ax.set_xlim(-2.2, len(ROW) - 0.4)
    ax.set_ylim(-0.6, 3.1)
    ax.set_title(title)
    ax.axis("off")


def main(out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
    draw(axes[0], official, "official rule (this project): the first maximum met")
    draw(axes[1], with_cummax, "torch.cummax: the last maximum met")
    fig.suptitle("right pool, scanning → from the left border", y=1.02)
    fig.tight_layout()
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main(Path("pool_ties.png"))
