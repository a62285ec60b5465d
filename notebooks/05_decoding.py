# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # From heatmaps to boxes, step by step
#
# Companion to chapter 5. We decode the *oracle* maps of a COCO image (maps built from its
# annotations, as a perfect network would output them), so no trained network is needed:
# peaks, top-K corners, pairs, flip testing, soft-NMS, and finally COCO AP.
#
# The COCO sample lives in `../../shared/data/coco128` (or `$CORNERNET_SHARED`); without it
# the notebook uses a drawn image with three boxes.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from pycocotools.coco import COCO

from cornernet_ref.analysis import oracle_source
from cornernet_ref.data.image import read_image
from cornernet_ref.decode import decode, local_maxima, soft_nms, top_corners
from cornernet_ref.evaluate import canvas_geometry, evaluate, postprocess
from cornernet_ref.output import gather_at

SHARED = Path(os.environ.get("CORNERNET_SHARED", "../../shared"))
COCO128 = SHARED / "data" / "coco128"
HAVE_COCO = (COCO128 / "annotations" / "instances_train2017.json").is_file()

if HAVE_COCO:
    coco = COCO(str(COCO128 / "annotations" / "instances_train2017.json"))
    record = coco.loadImgs(136)[0]  # two people and two giraffes
    image = read_image(COCO128 / "train2017" / record["file_name"])
else:
    print(f"No COCO sample at {COCO128}: using a drawn image instead.")
    boxes = [(1, 20, 60, 90, 230), (1, 100, 40, 60, 160), (2, 200, 120, 170, 140)]
    image = np.full((300, 420, 3), 200, dtype=np.uint8)
    for i, (_, x, y, w, h) in enumerate(boxes):
        image[y : y + h, x : x + w] = (60 + 60 * i, 120, 220 - 60 * i)
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "file_name": "drawn.png", "height": 300, "width": 420}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": c, "bbox": [x, y, w, h],
             "area": w * h, "iscrowd": 0}
            for i, (c, x, y, w, h) in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "tall"}, {"id": 2, "name": "wide"}],
    }  # fmt: skip
    coco.createIndex()
    record = coco.loadImgs(1)[0]
names = [c["name"] for c in sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])]
print(record["file_name"], image.shape)

# %% [markdown]
# ## 1. The test canvas
# The image is padded to `size | 127` and the network's maps are 4x smaller.

# %%
geometry = canvas_geometry(record["height"], record["width"])
geometry, geometry.ratio

# %% [markdown]
# ## 2. The oracle's maps and their peaks
# Heatmap logits, one channel per class; after the sigmoid only 3x3 maxima survive.

# %%
source = oracle_source(coco, num_classes=len(names))
maps = source(record, geometry, False)  # flip=False: a batch of one
tl_peaks = local_maxima(maps.tl_heat.sigmoid())
br_peaks = local_maxima(maps.br_heat.sigmoid())
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, peaks, title in ((axes[0], tl_peaks, "top-left"), (axes[1], br_peaks, "bottom-right")):
    ax.imshow(peaks[0].amax(0), cmap="magma")
    ax.set_title(f"{title} peaks, max over classes")
plt.show()

# %% [markdown]
# ## 3. The top-K corners, with offsets and embeddings
# Real corners score 1; the flat background is a "peak" everywhere but scores about 0.

# %%
for kind, peaks, off, tag in (("tl", tl_peaks, maps.tl_off, maps.tl_tag),
                              ("br", br_peaks, maps.br_off, maps.br_tag)):  # fmt: skip
    corners = top_corners(peaks, off, 100)
    real = corners.scores[0] > 0.5
    tags = gather_at(tag, corners.cells)[0, :, 0]
    for x, y, c, e in zip(corners.xs[0][real], corners.ys[0][real], corners.labels[0][real],
                          tags[real], strict=True):  # fmt: skip
        print(f"{kind}: x={x:7.2f} y={y:7.2f} class={names[c]:<10} embedding={e:.0f}")

# %% [markdown]
# ## 4. Pairs
# `decode` pairs all 100 x 100 corners; pairs of different classes, distant embeddings or
# inverted boxes get score -1. Only the true pairs score above 0.5.

# %%
dets = decode(maps)
good = dets.scores[0] > 0.5
print("valid pairs:", int((dets.scores[0] > -1).sum()), " of which real:", int(good.sum()))
print(dets.boxes[0][good], dets.labels[0][good])

# %% [markdown]
# ## 5. Flip testing and soft-NMS
# With flip, each object is found twice; soft-NMS decays the second copy by
# $e^{-\mathrm{IoU}^2/0.5} = e^{-2}$ rather than deleting it.

# %%
for flip in (False, True):
    final = postprocess(source(record, geometry, flip), geometry, flip=flip)
    print(f"flip={flip}: {len(final.scores)} boxes, scores {final.scores.numpy().round(3)}")

# %% [markdown]
# Soft-NMS on its own: two identical boxes and a half-overlapping one, Gaussian vs linear.

# %%
boxes = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 4]])
scores = torch.tensor([0.9, 0.8, 0.7])
labels = torch.zeros(3, dtype=torch.long)
for method in ("gaussian", "linear"):
    keep, new = soft_nms(boxes, scores, labels, method=method)
    print(method, keep.tolist(), new.numpy().round(3))

# %% [markdown]
# ## 6. COCO AP of the oracle
# The ground truth through the whole pipeline, on the first 16 images (all 128 take a
# few tens of seconds; chapter 7 has the full figure).

# %%
image_ids = sorted(coco.getImgIds())[:16]
metrics = evaluate(source, coco, flip=False, image_ids=image_ids)
{k: round(v, 4) for k, v in metrics.items()}
