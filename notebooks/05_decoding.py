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
import math

import matplotlib.pyplot as plt
import torch

from cornernet_ref.analysis import oracle_source
from cornernet_ref.data.examples import class_names, example_image
from cornernet_ref.decode import decode, local_maxima, soft_nms, top_corners
from cornernet_ref.evaluate import evaluate
from cornernet_ref.inference import TestConfig, canvas_geometry, detect_image
from cornernet_ref.output import gather_at

image, coco, record = example_image()  # coco128 image 136, or a drawn stand-in
names = class_names(coco)
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
# $e^{-\mathrm{IoU}^2/0.5} = e^{-2}$ rather than deleting it. `TestConfig` holds the test
# options (flip, scales, soft-NMS, decoding), the official ones by default.

# %%
print(TestConfig())
for flip in (False, True):
    final = detect_image(source, record, TestConfig(flip=flip))
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
metrics = evaluate(source, coco, image_ids=image_ids, config=TestConfig(flip=False))
{k: round(v, 4) for k, v in metrics.items()}


# %% [markdown]
# ## Solutions to the exercises of chapter 5
#
# ### Exercise 1
# An exact duplicate has IoU 1 with the kept box: its score is multiplied by
# $e^{-1^2 / 0.5} = e^{-2} \approx 0.135$.

# %%
twins = torch.tensor([[0.0, 0, 9, 9], [0, 0, 9, 9]])
keep, new = soft_nms(twins, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long))
print("kept", keep.tolist(), "scores", new.tolist())
assert math.isclose(new[1].item(), 0.8 * math.exp(-2), rel_tol=1e-6)

# %% [markdown]
# ### Exercise 2
# $480 \,|\, 127 = 511$ and $640 \,|\, 127 = 767$: a $511 \times 767$ canvas, a grid of
# $(511 + 1) / 4 = 128$ by $(767 + 1) / 4 = 192$ cells, and borders
# $\lfloor 31 / 2 \rfloor = 15$ and $\lfloor 127 / 2 \rfloor = 63$.

# %%
geometry = canvas_geometry(480, 640)
print(geometry)
assert geometry.input_size == (511, 767) and geometry.output_size == (128, 192)
assert geometry.border == (15, 63)

# %% [markdown]
# ### Exercise 3
# Equal neighbours are both the maximum of their windows: both survive. Raised a little, the
# higher one is the only maximum of the other's window, which is then zeroed.

# %%
heat = torch.zeros(1, 1, 5, 5)
heat[0, 0, 2, 1] = heat[0, 0, 2, 2] = 0.8
print("equal peaks kept:", int((local_maxima(heat) > 0).sum()))
assert int((local_maxima(heat) > 0).sum()) == 2
heat[0, 0, 2, 2] = 0.81
assert int((local_maxima(heat) > 0).sum()) == 1
print("one raised: 1 kept")
