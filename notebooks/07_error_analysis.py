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
# # Error analysis: the oracle, step by step
#
# Companion to chapter 7. The oracle turns training targets into the maps a perfect network
# would output; decoding them shows what the representation itself can and cannot express.
# Two boxes on a $128 \times 128$ input, a $32 \times 32$ grid, one class: everything runs in
# a second.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from cornernet_ref.analysis import oracle_outputs
from cornernet_ref.decode import DecodeConfig, decode
from cornernet_ref.targets import TargetConfig, build_targets, collate_targets


def oracle_boxes(boxes, tag_spacing=1.0):
    """The boxes (input pixels) and scores the decoder finds in the oracle maps of ``boxes``."""
    targets = collate_targets(
        [
            build_targets(np.array(boxes, dtype=float), np.zeros(len(boxes), dtype=int),
                          num_classes=1, input_size=128, output_size=32,
                          config=TargetConfig(max_objects=4))
        ]
    )  # fmt: skip
    detections = decode(
        oracle_outputs(targets, tag_spacing=tag_spacing), DecodeConfig(K=10, num_dets=20)
    )
    kept = detections.scores[0] > 0  # rejected pairs carry the score -1
    return (detections.boxes[0][kept] * 4).tolist(), targets


def draw(ax, truth, found, title):
    for x1, y1, x2, y2 in truth:
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=4, ec="0.7"))
    for x1, y1, x2, y2 in found:
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec="C3"))
    ax.set_xlim(0, 128)
    ax.set_ylim(128, 0)
    ax.set_aspect("equal")
    ax.set_title(title)


# %% [markdown]
# ## The oracle's maps
#
# Two objects of one class. The oracle's top-left heatmap has the targets' bumps (as logits),
# its embeddings tag the two objects 1 apart, its offsets are the true fractions of Eq. 2.

# %%
two_objects = [[10, 10, 50, 50], [60, 60, 120, 120]]
found, targets = oracle_boxes(two_objects)
maps = oracle_outputs(targets)
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
axes[0].imshow(torch.sigmoid(maps.tl_heat[0, 0]), cmap="magma")
axes[0].set_title("top-left heatmap (probability)")
tags = maps.tl_tag[0, 0].clone()
tags[tags.abs() > 100] = float("nan")  # the background tags, far from any object's
axes[1].imshow(tags, cmap="viridis")
axes[1].set_title("top-left tags at the corners")
draw(axes[2], two_objects, found, "ground truth (grey), decoded (red)")
plt.show()
print("decoded:", found)

# %% [markdown]
# ## Solutions to the exercises of chapter 7
#
# ### Exercise 1
# A heatmap cell holds one corner: two top-left corners of one class in one cell become a
# single peak, with one tag and one offset (those of the object written last). Only one of
# the two objects can come back.

# %%
same_cell = [[10, 10, 60, 60], [11, 11, 100, 90]]  # both top-left corners in cell (2, 2)
found, targets = oracle_boxes(same_cell)
print("top-left cells:", targets["tl_ind"][0, :2].tolist(), " decoded:", found)
assert targets["tl_ind"][0, 0] == targets["tl_ind"][0, 1]
assert found == [[11.0, 11.0, 100.0, 90.0]]

# %% [markdown]
# ### Exercise 2
# The decoder rejects a pair whose tags differ by more than 0.5. Tagged 0.3 apart, the
# top-left corner of the first object and the bottom-right corner of the second pass that
# test, and their box is not inverted: a third, wrong box appears (the other cross pair is
# inverted and still rejected).

# %%
apart, close = oracle_boxes(two_objects), oracle_boxes(two_objects, tag_spacing=0.3)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
draw(axes[0], two_objects, apart[0], "tags 1 apart")
draw(axes[1], two_objects, close[0], "tags 0.3 apart")
plt.show()
print("1 apart:", apart[0], "\n0.3 apart:", close[0])
assert sorted(apart[0]) == sorted(map(lambda b: [float(v) for v in b], two_objects))
assert len(close[0]) == 3 and [10.0, 10.0, 120.0, 120.0] in close[0]
