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
# # Hourglass-104, step by step
#
# Companion to chapter 4. We build the full network (201 million parameters, about 800 MB in
# float32), count its parameters part by part, run it on a small image in both modes, look at
# the input sizes it accepts, its receptive field, corner pooling on and off, and the
# renaming that loads the official weights. Everything runs on a CPU in seconds.

# %%
from dataclasses import replace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from cornernet_ref.convert import (
    convert_official_state_dict,
    infer_model_config,
    official_to_ours,
    ours_to_official,
    to_official_state_dict,
)
from cornernet_ref.data.examples import example_image
from cornernet_ref.heads import CornerPoolingModule
from cornernet_ref.hourglass import receptive_field, receptive_field_bound, stem_output_size
from cornernet_ref.model import CornerNet, ModelConfig

torch.manual_seed(0)
model = CornerNet(ModelConfig(num_classes=80))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


print(f"{count(model):,} parameters")
for name, part in model.named_children():
    print(f"  {name:13s} {count(part):>12,}")

# %% [markdown]
# One hourglass, level by level: each level holds its skip branch, its down and up chains,
# and the next level (or, at the bottom, four blocks of 512 channels).

# %%
level, depth = model.hourglasses[0], 0
while hasattr(level, "skip_branch"):
    own = count(level) - count(level.inner)
    print(f"level {depth}: {own:>11,} own, {count(level):>11,} with the levels below")
    level, depth = level.inner, depth + 1
print(f"bottom : {count(level):>11,}")

# %% [markdown]
# ## A forward pass
#
# A $127 \times 127$ image (the smallest side the five halvings accept) gives
# $32 \times 32$ maps. In eval mode only the last stack's maps come back; in training mode
# both stacks'.

# %%
images = torch.randn(2, 3, 127, 127)
model.eval()
with torch.no_grad():
    outputs = model(images)
print("eval:", len(outputs), "set of maps")
for name, value in outputs[0]._asdict().items():
    print(f"  {name:8s} {tuple(value.shape)}")

model.train()
with torch.no_grad():  # no gradients needed to look at the shapes
    outputs = model(images)
print("train:", len(outputs), "sets of maps, one per stack")

# %% [markdown]
# ### The features of each stack
#
# A real image, $255 \times 255$, through the (untrained) network: the mean over channels of
# the features $f_s$ that each stack hands to its prediction modules, on the $64 \times 64$
# grid. Untrained, the hourglasses already mix the image at every scale; training makes the
# second stack refine the first (chapter 6).

# %%
image, _, _ = example_image()
picture = torch.from_numpy(image).float().permute(2, 0, 1)[None] / 255
picture = F.interpolate(picture, size=(255, 255), mode="bilinear", align_corners=False)
picture = (picture - picture.mean((2, 3), keepdim=True)) / picture.std((2, 3), keepdim=True)
features = {}
hooks = [
    stack.register_forward_hook(lambda m, i, o, s=s: features.__setitem__(s, o))
    for s, stack in enumerate(model.features)
]
with torch.no_grad():
    model.eval()(picture)  # both stacks compute their features; only the last one predicts
for hook in hooks:
    hook.remove()
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
axes[0].imshow(picture[0].permute(1, 2, 0).clamp(-2, 2) / 4 + 0.5)
axes[0].set_title("input, 255 x 255")
for s in range(2):
    axes[s + 1].imshow(features[s][0].mean(0), cmap="viridis")
    axes[s + 1].set_title(f"stack {s + 1}: mean of {features[s].shape[1]} channels")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# The heatmap prior of chapter 4, section 5, measured: before any training, the mean
# probability of a corner over all cells.

# %%
print(f"mean initial heatmap probability: {torch.sigmoid(outputs[-1].tl_heat).mean():.3f}")

# %% [markdown]
# ## Which input sizes work
#
# The stem divides the side by 4 (rounding up), and the hourglass must then halve it five
# times. Sides of the form $128k - 1$ always work; the official test pads every image to
# such a canvas.

# %%
for side in (127, 255, 500, 511, 767, 1023):
    out = stem_output_size(side)
    print(f"side {side:4d} -> {out:3d} cells  {'ok' if out % 32 == 0 else 'refused'}")

try:
    model.eval()(torch.zeros(1, 3, 500, 511))
except ValueError as error:
    print("\n", error)

# %% [markdown]
# ## Receptive field
#
# The textbook rule (longest path) against the exact fields, measured on a one-channel copy
# of the stem and one hourglass. For a small hourglass they agree; for Hourglass-104 the
# chapter quotes the measured range, 5,723 to 5,851 pixels (about 6 s to measure, so only
# the rule is computed here).

# %%
small = (1, 1, 1)
print("small hourglass: rule", receptive_field_bound(small), " measured", receptive_field(small))
print("Hourglass-104:   rule", receptive_field_bound((2, 2, 2, 2, 2, 4)), "pixels")

# %% [markdown]
# What a cell can see is not what it looks at. The gradient of one top-left heatmap cell of
# a small random network with respect to the input image (log scale) shows where the cell
# actually depends on the image: a blob around the cell through the convolutions, and,
# with corner pooling, a cross reaching down its column and right along its row.

# %%
torch.manual_seed(0)
tiny = ModelConfig(num_classes=1, n=3, nstack=1, dims=(16, 16, 24, 32), modules=(1, 1, 1, 2),
                   cnv_dim=16, pre_dim=16, pool_dim=8)  # fmt: skip
fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
for ax, pooling in zip(axes, (True, False), strict=True):
    torch.manual_seed(0)
    network = CornerNet(replace(tiny, corner_pooling=pooling)).eval()
    pixels = torch.randn(1, 3, 255, 255, requires_grad=True)
    [maps] = network(pixels)
    maps.tl_heat[0, 0, 24, 24].backward()
    sensitivity = pixels.grad[0].abs().sum(0)
    floor = float(sensitivity.max().log10()) - 6  # six decades below the strongest pixel
    ax.imshow((sensitivity + 1e-12).log10(), cmap="magma", vmin=floor)
    ax.plot(24 * 4 + 2, 24 * 4 + 2, "c+", ms=14)
    ax.set_title(f"corner pooling {'on' if pooling else 'off'}: log10 |d cell / d pixel|")
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Corner pooling on and off
#
# A top-left prediction module looks down its column and right along its row. We change the
# features far below one cell and far above it, and see whether the cell notices, with the
# pool and with the plain sum that replaces it in the ablation.

# %%
pooled = CornerPoolingModule("tl", channels=16, pool_channels=8).eval()
plain = CornerPoolingModule("tl", channels=16, pool_channels=8, corner_pooling=False).eval()
plain.load_state_dict(pooled.state_dict())
features = torch.randn(1, 16, 32, 32)
for where, row in (("far below", 28), ("far above", 2)):
    changed = features.clone()
    changed[0, :, row, 16] += 50
    with torch.no_grad():
        for name, module in (("pool", pooled), ("sum", plain)):
            delta = (module(changed) - module(features))[0, :, 16, 16].abs().max()
            print(f"{where:9s}, {name}: cell (16, 16) changes by {delta:.3f}")

# %% [markdown]
# ## The official names
#
# The official checkpoint calls the same tensors differently. The converter renames them
# with a small table of fragments, in both directions.

# %%
for key in list(model.state_dict())[:3] + [
    "hourglasses.1.inner.down.0.shortcut.conv.weight",
    "top_left.0.pooling.vertical.conv.weight",
    "transitions.0.from_features.bn.running_var",
]:
    official = ours_to_official(key)
    assert official_to_ours(official) == key
    print(f"{key:52s} <- {official}")

# %% [markdown]
# A full round trip: this model's state dict under official names (with the `module.`
# prefix the official training code saves, and the first convolution's input channels in
# the official BGR order), converted back strictly.

# %%
state = model.state_dict()
official_state = to_official_state_dict(state)
print(infer_model_config(official_state))
back = convert_official_state_dict(official_state)
print(all(torch.equal(back[k], state[k]) for k in state), f"{len(back)} tensors")


# %% [markdown]
# ## Solutions to the exercises of chapter 4
#
# ### Exercise 1
# The stem gives $\lceil s / 4 \rceil$: $767 \to 192$ and $1023 \to 256$, both multiples of
# 32, so the maps are $192 \times 256$. $700 \to 175$ is not a multiple of 32: refused.

# %%
assert (stem_output_size(767), stem_output_size(1023)) == (192, 256)
small_model = CornerNet(ModelConfig(num_classes=2, n=1, nstack=1, dims=(8, 8), modules=(1, 1),
                                    cnv_dim=8, pre_dim=8, pool_dim=8)).eval()  # fmt: skip
with torch.no_grad():
    [maps] = small_model(torch.zeros(1, 3, 767, 1023))
print("767 x 1023 ->", tuple(maps.tl_heat.shape[-2:]))
assert tuple(maps.tl_heat.shape[-2:]) == (192, 256)
try:
    model.check_input_size(700, 700)
    raise AssertionError("700 x 700 was accepted")
except ValueError as error:
    print(error)

# %% [markdown]
# ### Exercise 2
# The stem: the $7 \times 7$ stride-2 convolution gives 7 with cells 2 pixels apart; its
# residual block with stride 2 adds $2 \cdot 2 + 2 \cdot 2 \cdot 2 = 12$ (19), cells now 4
# apart. The hourglass' *down* block (stride 2) adds $2 \cdot 4 + 2 \cdot 2 \cdot 4 = 24$
# (43), cells 8 apart; the bottom block adds $4 \cdot 8 = 32$ (75); the *up* block another
# 32 (107), and upsampling adds nothing.

# %%
print("receptive_field_bound((1, 1)) =", receptive_field_bound((1, 1)))
assert receptive_field_bound((1, 1)) == 7 + 12 + 24 + 32 + 32

# %% [markdown]
# ### Exercise 3
# The ablation replaces the pool, which has no parameters, by a sum, which has none either:
# the counts are equal.

# %%
config = ModelConfig(num_classes=2, n=2, nstack=2, dims=(8, 8, 16), modules=(1, 1, 1), cnv_dim=8,
                     pre_dim=8, pool_dim=8)  # fmt: skip
with_pool, without = CornerNet(config), CornerNet(replace(config, corner_pooling=False))
print(f"{count(with_pool):,} parameters with the pool, {count(without):,} without")
assert count(with_pool) == count(without)
