"""The focal loss of one cell against its prediction, and the forgiveness near a corner."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from cornernet_ref.losses import focal_loss
from cornernet_ref.targets import gaussian_bump

RADIUS = 6


def cell_loss(p: np.ndarray, y: float) -> np.ndarray:
    """focal_loss of single-cell maps predicting ``p`` where the target is ``y``."""
    logits = torch.logit(torch.as_tensor(p, dtype=torch.float64)).float()
    return np.array([focal_loss(z.view(1, 1, 1, 1), torch.full((1, 1, 1, 1), y)).item()
                     for z in logits])  # fmt: skip


def main(out: Path) -> None:
    fig, (loss_ax, weight_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    p = np.linspace(0.002, 0.998, 300)
    loss_ax.plot(p, cell_loss(p, 1.0), color="black", lw=2, label="positive (y = 1)")
    loss_ax.plot(p, -np.log(p), color="black", lw=1, ls=":", label="cross-entropy, y = 1")
    for y, colour in ((0.0, "#d62728"), (0.5, "#ff7f0e"), (0.9, "#2ca02c")):
        loss_ax.plot(p, cell_loss(p, y), color=colour, lw=2, label=f"negative, y = {y}")
    loss_ax.plot(p, -np.log(1 - p), color="#d62728", lw=1, ls=":", label="cross-entropy, y = 0")
    loss_ax.set_yscale("log")
    loss_ax.set_ylim(1e-6, 10)
    loss_ax.set_xlabel("predicted probability p")
    loss_ax.set_ylabel("loss of the cell")
    loss_ax.set_title(
        r"$-(1-p)^2\log p$ at a corner, $-(1-y)^4 p^2 \log(1-p)$ elsewhere", fontsize=10
    )
    loss_ax.legend(fontsize=8, loc="lower left")

    row = gaussian_bump(RADIUS)[RADIUS]  # the bump through its centre
    distance = np.arange(-RADIUS, RADIUS + 1)
    weight_ax.bar(distance, row, color="#ff7f0e", alpha=0.6, label="target y (Gaussian bump)")
    weight_ax.plot(distance, (1 - row) ** 4, "o-", color="#1f77b4",
                   label=r"weight of a negative, $(1 - y)^4$")  # fmt: skip
    weight_ax.set_xlabel("cells from the ground-truth corner (radius 6)")
    weight_ax.set_title("Near-miss cells are forgiven")
    weight_ax.set_ylim(0, 1.3)
    weight_ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(Path("losses_focal.png"))
