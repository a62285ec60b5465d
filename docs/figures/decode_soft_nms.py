"""Soft-NMS on a cluster of duplicate boxes around two overlapping objects of one class."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from cornernet_ref.decode import soft_nms

OBJECTS = torch.tensor([[20.0, 30.0, 120.0, 150.0], [90.0, 50.0, 200.0, 160.0]])


def noisy_duplicates(count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Each object plus ``count - 1`` jittered copies with lower scores, as a detector gives."""
    g = torch.Generator().manual_seed(3)
    boxes, scores = [], []
    for obj, best in zip(OBJECTS, (0.9, 0.8), strict=True):
        jitter = torch.randn(count, 4, generator=g) * 10
        jitter[0] = 0
        boxes.append(obj + jitter)
        scores.append(best * torch.linspace(1, 0.55, count))
    return torch.cat(boxes), torch.cat(scores)


def draw(ax, boxes: torch.Tensor, scores: torch.Tensor, title: str) -> None:
    cmap = plt.get_cmap("viridis")
    for box, score in sorted(zip(boxes.tolist(), scores.tolist(), strict=True), key=lambda t: t[1]):
        x1, y1, x2, y2 = box
        ax.add_patch(
            plt.Rectangle(
                (x1, y1), x2 - x1, y2 - y1, fill=False, color=cmap(score), lw=1 + 2 * score
            )
        )
        ax.text(x2 - 2, y1 + 1, f"{score:.2f}", color=cmap(score), fontsize=7, ha="right", va="top")
    ax.set_xlim(0, 230)
    ax.set_ylim(180, 0)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def main(out: Path) -> None:
    boxes, scores = noisy_duplicates()
    labels = torch.zeros(len(boxes), dtype=torch.long)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    draw(axes[0], boxes, scores, f"decoded: {len(boxes)} boxes")
    for ax, method, rule in (
        (axes[1], "gaussian", r"Gaussian: $s \cdot e^{-IoU^2/0.5}$ (official)"),
        (axes[2], "linear", r"linear: $s \cdot (1 - IoU)$ if IoU > 0.5"),
    ):
        keep, new = soft_nms(boxes, scores, labels, method=method)
        draw(ax, boxes[keep], new, rule)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
