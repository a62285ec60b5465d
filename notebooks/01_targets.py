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
# # Ground-truth targets, step by step
#
# Companion to chapter 1. We take a COCO image, write its boxes as CornerNet targets
# (heatmaps with Gaussian bumps, indices, offsets), look at them, and then check the
# radius of the bumps: the official one and the exact one.
#
# The COCO sample lives in `../../shared/data/coco128` (or `$CORNERNET_SHARED`); without it
# the notebook uses a drawn image with three boxes.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from cornernet_ref.analysis import image_boxes
from cornernet_ref.data import examples
from cornernet_ref.targets import TargetConfig, build_targets, gaussian_radius

image, coco, record = examples.example_image()  # coco128 image 136, or a drawn stand-in
boxes, labels = (t.numpy() for t in image_boxes(coco, record["id"]))  # xyxy, 0-based labels
class_names = examples.class_names(coco)
print(image.shape, len(boxes), "objects:", [class_names[k] for k in labels])

# %% [markdown]
# ## 1. The image at the training size
# Training crops and scales images to 511 x 511 (chapter 6). Here we simply scale the
# longer side to 511 and pad, so the boxes scale by the same factor.

# %%
INPUT, OUTPUT = 511, 128
scale = INPUT / max(image.shape[:2])
resized = np.asarray(
    Image.fromarray(image).resize((round(image.shape[1] * scale), round(image.shape[0] * scale)))
)
canvas = np.zeros((INPUT, INPUT, 3), np.uint8)
canvas[: resized.shape[0], : resized.shape[1]] = resized
input_boxes = boxes * scale

fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(canvas)
for x1, y1, x2, y2 in input_boxes:
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime"))
plt.show()

# %% [markdown]
# ## 2. The targets
# One call writes every box: heatmaps `(C, 128, 128)` per corner type, and per object slot
# the index $yW + x$ of each corner's cell, its offset, and the mask.

# %%
targets = build_targets(
    input_boxes, labels, num_classes=len(class_names), input_size=INPUT, output_size=OUTPUT
)
{key: (tuple(value.shape), str(value.dtype)) for key, value in targets.items()}

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, corner in zip(axes, ("tl", "br"), strict=True):
    ax.imshow(np.asarray(Image.fromarray(canvas).resize((OUTPUT, OUTPUT))), alpha=0.5)
    ax.imshow(targets[f"{corner}_heat"].amax(0), cmap="magma", alpha=0.6)
    ax.set_title(f"{corner} heatmap (max over classes) on the 128 x 128 grid")
plt.show()

# %% [markdown]
# ## 3. One object, by hand
# The corner's cell is the floor of its coordinate times 128/511; the offset is what the
# floor drops (Eq. 2); the index is $yW + x$ and reads back the cell.

# %%
k = 0
x1, y1 = input_boxes[k, :2] * OUTPUT / INPUT
cell = (math.floor(x1), math.floor(y1))
index = int(targets["tl_ind"][k])
print("top-left corner on the grid:", (round(float(x1), 3), round(float(y1), 3)), "cell", cell)
print("index", index, "= y * 128 + x ->", divmod(index, OUTPUT)[::-1])
print("offset", targets["tl_off"][k].tolist())
print("fraction dropped:", (float(x1 - cell[0]), float(y1 - cell[1])))
print("heatmap at the cell:", float(targets["tl_heat"][labels[k], cell[1], cell[0]]))

# %% [markdown]
# ## 4. The radius of the bumps
# Each bump's radius comes from the box size on the grid (rounded up) and $t = 0.3$, by
# either of the two formulas of chapter 1, sections 3.2 and 3.3:

# %%
for (bx1, by1, bx2, by2), label in zip(input_boxes * OUTPUT / INPUT, labels, strict=True):
    h, w = math.ceil(by2 - by1), math.ceil(bx2 - bx1)
    official = gaussian_radius(h, w, 0.3)
    exact = gaussian_radius(h, w, 0.3, variant="exact")
    print(f"{class_names[label]:>10} {w:3d} x {h:3d} cells: official {official:5.2f}, "
          f"exact {exact:5.2f}, ratio {official / exact:.3f}")  # fmt: skip

# %% [markdown]
# Check the exact guarantee on the first box: put both corners anywhere on their circles
# and measure the IoU. The smallest IoU found is $t$, reached when both corners move
# inwards.


# %%
def iou_of_moved(w, h, dx1, dy1, dx2, dy2):
    x1, y1, x2, y2 = dx1, dy1, w + dx2, h + dy2
    inter = np.clip(np.minimum(x2, w) - np.maximum(x1, 0), 0, None) * np.clip(
        np.minimum(y2, h) - np.maximum(y1, 0), 0, None
    )
    return inter / (w * h + (x2 - x1) * (y2 - y1) - inter)


bx1, by1, bx2, by2 = input_boxes[0] * OUTPUT / INPUT
w, h = bx2 - bx1, by2 - by1
r = gaussian_radius(h, w, 0.3, variant="exact")
angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
a, b = angles[:, None], angles[None, :]
ious = iou_of_moved(w, h, r * np.cos(a), r * np.sin(a), r * np.cos(b), r * np.sin(b))
i, j = np.unravel_index(ious.argmin(), ious.shape)
print(f"smallest IoU on the circles: {ious.min():.4f} (t = 0.3)")
print(f"worst moves: top-left at {np.degrees(angles[i]):.1f} deg, bottom-right at "
      f"{np.degrees(angles[j]):.1f} deg")  # fmt: skip
bigger = 1.05 * r
moves = bigger * np.cos(a), bigger * np.sin(a), bigger * np.cos(b), bigger * np.sin(b)
print(f"with 5% larger circles: {iou_of_moved(w, h, *moves).min():.4f}")

# %% [markdown]
# ## 5. The formula of the first release
# Chapter 1, section 3.5, tells how the first released code lost the division by $2a$
# (official issue 37). The radii of that 10 x 10 box at $t = 0.7$, and the IoU
# left when both corners move inwards by each, along both axes or diagonally:

# %%
t, side = 0.7, 10.0
a3, b3, c3 = 4 * t, -2 * t * (2 * side), (t - 1) * side * side
first_release = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
for name, radius in (("first release", first_release),
                     ("official", gaussian_radius(side, side, t)),
                     ("exact", gaussian_radius(side, side, t, variant="exact"))):  # fmt: skip
    square = (side - 2 * radius) ** 2 / side**2  # both corners in by (r, r)
    circle = (side - math.sqrt(2) * radius) ** 2 / side**2  # in by (r, r) / sqrt(2)
    print(f"{name:>14}: r = {radius:.3f}, IoU after moves of (r, r): {square:.3f}, "
          f"of length r: {circle:.3f}")  # fmt: skip

# %% [markdown]
# ## 6. Official and exact bumps side by side

# %%
exact_targets = build_targets(
    input_boxes,
    labels,
    num_classes=len(class_names),
    input_size=INPUT,
    output_size=OUTPUT,
    config=TargetConfig(radius_variant="exact"),
)
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, tg, title in ((axes[0], targets, "official radius"), (axes[1], exact_targets, "exact")):
    ax.imshow(tg["tl_heat"].amax(0), cmap="magma")
    ax.set_title(f"top-left bumps, {title}")
plt.show()


# %% [markdown]
# ## Solutions to the exercises of chapter 1
#
# ### Exercise 1
# Both corners move inwards by $r$ along both axes: $(w - 2r)(h - 2r) = t\,wh$. For
# $w = h = 10$ and $t = 0.7$, $(10 - 2r)^2 = 70$, so $10 - 2r = \sqrt{70}$ (the root with
# $r < 5$) and $r = (10 - \sqrt{70}) / 2 \approx 0.817$.

# %%
radius = gaussian_radius(10, 10, 0.7)
by_hand = (10 - math.sqrt(70)) / 2
print(f"gaussian_radius: {radius:.6f}, by hand: {by_hand:.6f}")
assert math.isclose(radius, by_hand, rel_tol=1e-12)

# %% [markdown]
# ### Exercise 2
# For a square of side $w$ and $t \ge 1/4$: $r_{official} = \tfrac12 (1 - \sqrt t)\,w$ (the
# "both in" root) and $r^\ast = \tfrac{\sqrt 2}{2}(1 - \sqrt t)\,w$. The ratio is
# $1/\sqrt 2 \approx 0.707$, whatever the side and $t$.

# %%
ratio = gaussian_radius(40, 40, 0.3) / gaussian_radius(40, 40, 0.3, variant="exact")
print(f"official / exact for 40 x 40 at t = 0.3: {ratio:.6f}")
assert math.isclose(ratio, 1 / math.sqrt(2), rel_tol=1e-9)

# %% [markdown]
# ### Exercise 3
# Without penalty reduction the radius is 0: the bump is the corner's cell alone, value 1.
# So the nonzero cells are exactly the distinct corner cells (two corners of one class in
# one cell count once), all equal to 1.

# %%
plain = build_targets(
    input_boxes,
    labels,
    num_classes=len(class_names),
    input_size=INPUT,
    output_size=OUTPUT,
    config=TargetConfig(penalty_reduction=False),
)
for corner in ("tl", "br"):
    heat = plain[f"{corner}_heat"]
    ind = plain[f"{corner}_ind"][plain["mask"]]
    cells = {(int(c), int(i)) for c, i in zip(torch.as_tensor(labels), ind, strict=True)}
    values = heat[heat != 0].unique().tolist()
    print(
        f"{corner}: {int((heat != 0).sum())} nonzero cells with values {values}, "
        f"{len(cells)} distinct corner cells"
    )
    assert int((heat != 0).sum()) == len(cells) and values == [1.0]
