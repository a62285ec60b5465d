"""One image from heatmaps to boxes: the oracle's maps of a COCO image, decoded step by step.

Uses coco128 image 136 when ``../shared`` is present, otherwise a drawn stand-in.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from cornernet_ref.analysis import oracle_source
from cornernet_ref.data.examples import class_names, example_image
from cornernet_ref.decode import local_maxima, top_corners
from cornernet_ref.inference import TestConfig, canvas_geometry, detect_image
from cornernet_ref.output import gather_at


def main(out: Path) -> None:
    image, coco, record = example_image()
    names = class_names(coco)
    geometry = canvas_geometry(record["height"], record["width"])
    source = oracle_source(coco, num_classes=len(names))
    maps = source(record, geometry, False)
    (top, left), (in_h, in_w) = geometry.border, geometry.input_size
    canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
    extent = (0, in_w, in_h, 0)  # the output grid spans the whole canvas
    scale_x, scale_y = 1 / geometry.ratio[1], 1 / geometry.ratio[0]

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.6))
    ax = axes[0, 0]
    ax.imshow(canvas)
    for a in coco.loadAnns(coco.getAnnIds(imgIds=record["id"])):
        x, y, w, h = a["bbox"]
        ax.add_patch(plt.Rectangle((x + left, y + top), w, h, fill=False, color="lime", lw=1.5))
    ax.set_title(f"1. test canvas {in_w}x{in_h} (image {record['width']}x{record['height']})")

    for ax, name, heat in (
        (axes[0, 1], "top-left", maps.tl_heat),
        (axes[0, 2], "bottom-right", maps.br_heat),
    ):
        ax.imshow(canvas, alpha=0.35)
        shown = heat[0].sigmoid().amax(0).numpy()
        ax.imshow(shown, extent=extent, cmap="magma", alpha=0.75, vmin=0, vmax=1)
        ax.set_title(f"2. {name} heatmap, max over classes ({shown.shape[1]}x{shown.shape[0]})")

    corners = {}
    ax = axes[1, 0]
    ax.imshow(canvas, alpha=0.5)
    for kind, heat, off, tag, marker, color in (
        ("tl", maps.tl_heat, maps.tl_off, maps.tl_tag, "v", "red"),
        ("br", maps.br_heat, maps.br_off, maps.br_tag, "^", "cyan"),
    ):
        found = top_corners(local_maxima(heat.sigmoid()), off, 100)
        real = found.scores[0] > 0.5
        tags = gather_at(tag, found.cells)[0, :, 0][real]
        xs, ys = found.xs[0][real] * scale_x, found.ys[0][real] * scale_y
        corners[kind] = (xs, ys, found.labels[0][real], tags)
        ax.scatter(xs, ys, marker=marker, s=80, c=color, edgecolors="black", label=kind)
        for x, y, t in zip(xs.tolist(), ys.tolist(), tags.tolist(), strict=True):
            ax.annotate(
                f"e={t:.0f}",
                (x, y),
                color=color,
                fontsize=9,
                xytext=(4, 4),
                textcoords="offset points",
            )
    ax.legend(loc="lower right")
    ax.set_title("3. 3x3 peaks, top-K corners (+ offsets), embeddings e")

    ax = axes[1, 1]
    tl_x, tl_y, tl_c, tl_e = corners["tl"]
    br_x, br_y, br_c, br_e = corners["br"]
    reason = torch.zeros(len(tl_x), len(br_x), dtype=torch.long)  # 0: kept
    reason[(br_x[None] < tl_x[:, None]) | (br_y[None] < tl_y[:, None])] = 3
    reason[(tl_e[:, None] - br_e[None]).abs() > 0.5] = 2
    reason[tl_c[:, None] != br_c[None]] = 1
    colours = ["#2ca02c", "#d62728", "#ff7f0e", "#7f7f7f"]
    ax.imshow(reason.numpy(), cmap=ListedColormap(colours), vmin=0, vmax=3)
    labels = ["kept", "classes differ", "embeddings > 0.5", "inverted box"]
    for i in range(len(tl_x)):
        for j in range(len(br_x)):
            ax.text(
                j,
                i,
                labels[int(reason[i, j])].split()[0],
                ha="center",
                va="center",
                fontsize=8,
                color="white",
            )
    ax.set_xticks(
        range(len(br_x)),
        [f"{names[c]}\ne={e:.0f}" for c, e in zip(br_c.tolist(), br_e.tolist(), strict=True)],
        fontsize=7,
    )
    ax.set_yticks(
        range(len(tl_x)),
        [f"{names[c]} e={e:.0f}" for c, e in zip(tl_c.tolist(), tl_e.tolist(), strict=True)],
        fontsize=7,
    )
    ax.set_xlabel("bottom-right corner j")
    ax.set_ylabel("top-left corner i")
    ax.set_title("4. every pair (i, j): kept or why rejected")

    ax = axes[1, 2]
    ax.imshow(image)
    dets = detect_image(source, record, TestConfig(flip=True))
    for box, score, label in zip(
        dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True
    ):
        x1, y1, x2, y2 = box
        ax.add_patch(
            plt.Rectangle(
                (x1, y1),
                x2 - x1,
                y2 - y1,
                fill=False,
                color="yellow",
                lw=2 if score > 0.5 else 1,
                ls="-" if score > 0.5 else "--",
            )
        )
        if score > 0.5:
            ax.text(
                x1 + 2,
                y1 + 12,
                f"{names[label]} {score:.2f}",
                color="black",
                fontsize=8,
                bbox={"facecolor": "yellow", "pad": 1},
            )
    ax.set_title(f"5. flip test + soft-NMS: {len(dets.scores)} boxes (dashed: decayed copies)")
    for ax in (*axes[0], axes[1, 0], axes[1, 2]):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
