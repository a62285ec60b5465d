"""What the oracle loses: two corners in one cell of the 4x smaller output grid.

Draws coco128 objects that the ground-truth oracle misses (without flip) when ``../shared``
is present, otherwise one drawn pair of boxes whose top-left corners share a cell.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from pycocotools.coco import COCO

from cornernet_ref.analysis import image_boxes, oracle_source
from cornernet_ref.data.coco import category_ids
from cornernet_ref.data.examples import coco128, load_coco_quietly
from cornernet_ref.data.image import read_image
from cornernet_ref.inference import TestConfig, canvas_geometry, detect_image

EXAMPLES = (540, 389, 164)  # coco128 images with a missed object (see chapter 7)


def load_examples() -> tuple[COCO, list[tuple[dict, np.ndarray]]]:
    images, annotations = coco128()
    if annotations.is_file():
        coco = load_coco_quietly(annotations)
        records = coco.loadImgs(list(EXAMPLES))
        return coco, [(r, read_image(images / r["file_name"])) for r in records]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "file_name": "drawn.png", "height": 120, "width": 160}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [41.5, 30.2, 60, 50],
             "area": 3000, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [43.0, 31.0, 20, 70],
             "area": 1400, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }  # fmt: skip
    coco.createIndex()
    return coco, [(coco.loadImgs(1)[0], np.full((120, 160, 3), 180, dtype=np.uint8))]


def main(out: Path) -> None:
    coco, examples = load_examples()
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    labels_to_ids = category_ids(coco)
    source = oracle_source(coco, num_classes=len(labels_to_ids))
    fig, axes = plt.subplots(1, len(examples), figsize=(5 * len(examples), 5), squeeze=False)
    for ax, (record, image) in zip(axes[0], examples, strict=True):
        geometry = canvas_geometry(record["height"], record["width"])
        dets = detect_image(source, record, TestConfig(flip=False))
        boxes, labels = image_boxes(coco, record["id"])
        found = [
            bool((((dets.boxes - box).abs().amax(1) < 0.05) & (dets.labels == label)).any())
            for box, label in zip(boxes, labels, strict=True)
        ]
        lost = found.index(False)
        # The object(s) sharing a corner cell with the lost one.
        ratio_y, ratio_x = geometry.ratio
        top, left = geometry.border
        cells = (boxes + torch.tensor([left, top] * 2)) * torch.tensor([ratio_x, ratio_y] * 2)
        corner_cells = [(tuple(c[:2]), tuple(c[2:])) for c in cells.floor().long().tolist()]
        shared = [
            (i, k)
            for i in range(len(boxes))
            for k in range(2)
            if i != lost and corner_cells[i][k] == corner_cells[lost][k]
        ]
        partner, which = shared[0]
        x1, y1, x2, y2 = (
            np.concatenate((boxes[lost].numpy(), boxes[partner].numpy())).reshape(2, 4).T
        )
        margin = 12
        window = (
            max(0, x1.min() - margin),
            min(record["width"], x2.max() + margin),
            max(0, y1.min() - margin),
            min(record["height"], y2.max() + margin),
        )
        ax.imshow(image)
        cx, cy = corner_cells[lost][which]
        # Cell (cx, cy) covers canvas pixels [cx / r, (cx + 1) / r): back to image pixels.
        ax.add_patch(
            plt.Rectangle(
                (cx / ratio_x - left, cy / ratio_y - top),
                1 / ratio_x,
                1 / ratio_y,
                color="orange",
                alpha=0.6,
            )
        )
        for gx in np.arange(-left, record["width"], 1 / ratio_x):
            ax.axvline(gx, color="white", lw=0.3, alpha=0.6)
        for gy in np.arange(-top, record["height"], 1 / ratio_y):
            ax.axhline(gy, color="white", lw=0.3, alpha=0.6)
        for index, colour, style in ((partner, "lime", "-"), (lost, "red", "--")):
            bx1, by1, bx2, by2 = boxes[index].tolist()
            ax.add_patch(
                plt.Rectangle(
                    (bx1, by1), bx2 - bx1, by2 - by1, fill=False, color=colour, ls=style, lw=2
                )
            )
        lost_name = names[labels_to_ids[labels[lost]]]
        kept_name = names[labels_to_ids[labels[partner]]]
        corner = ("top-left", "bottom-right")[which]
        ax.set_xlim(window[0], window[1])
        ax.set_ylim(window[3], window[2])
        ax.set_title(
            f"image {record['id']}: {corner} corners share a cell\n"
            f"kept {kept_name} (green), lost {lost_name} "
            f"{boxes[lost][2] - boxes[lost][0]:.0f}x{boxes[lost][3] - boxes[lost][1]:.0f} (red)",
            fontsize=10,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
