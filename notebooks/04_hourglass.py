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
import torch

from cornernet_ref.convert import (
    convert_official_state_dict,
    infer_model_kwargs,
    official_to_ours,
    ours_to_official,
    to_official_state_dict,
)
from cornernet_ref.heads import CornerPoolingModule
from cornernet_ref.hourglass import receptive_field, receptive_field_bound, stem_output_size
from cornernet_ref.model import CornerNet

torch.manual_seed(0)
model = CornerNet(num_classes=80)


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
# The heatmap bias starts at $-2.19$: before any training every cell says "corner" with
# probability about 0.1.

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
print(infer_model_kwargs(official_state))
back = convert_official_state_dict(official_state)
print(all(torch.equal(back[k], state[k]) for k in state), f"{len(back)} tensors")
