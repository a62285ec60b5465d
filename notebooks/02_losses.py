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
# # The losses, step by step
#
# Companion to chapter 2. We build the targets of two small images, then feed the loss
# predictions that go from random to perfect, and watch each term fall: the focal loss of
# the heatmaps, the smooth L1 of the offsets, and the pull and push of the embeddings.
# Everything runs on a 32 x 32 grid in a second.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from cornernet_ref.losses import CornerNetLoss, ae_loss, focal_loss
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.targets import TargetConfig, build_targets, collate_targets

torch.manual_seed(0)
SIZE, CLASSES = 32, 2
images = [  # boxes (x1, y1, x2, y2) on a 128 x 128 input, labels
    (np.array([[10.0, 12.0, 60.0, 90.0], [70.0, 20.0, 120.0, 60.0]]), np.array([0, 1])),
    (np.array([[5.0, 50.0, 100.0, 120.0], [30.0, 8.0, 50.0, 40.0], [80.0, 70.0, 126.0, 100.0]]),
     np.array([1, 1, 0])),
]  # fmt: skip
targets = collate_targets(
    [
        build_targets(boxes, labels, num_classes=CLASSES, input_size=128, output_size=SIZE,
                      config=TargetConfig(max_objects=8))
        for boxes, labels in images
    ]
)  # fmt: skip
print({key: tuple(value.shape) for key, value in targets.items()})
print("objects per image:", targets["mask"].sum(1).tolist())

# %% [markdown]
# ## 1. A perfect prediction
# The maps a perfect network would output: heatmap logits high at the corners and low
# elsewhere, each object's two corners tagged with one value (objects 2 apart), and the
# target offsets at the corners' cells.


# %%
def perfect_maps(targets, logit=8.0):
    batch = targets["mask"].shape[0]
    heat = {c: torch.where(targets[f"{c}_heat"] == 1, logit, -logit) for c in ("tl", "br")}
    tag = {c: torch.zeros(batch, 1, SIZE, SIZE) for c in ("tl", "br")}
    off = {c: torch.zeros(batch, 2, SIZE, SIZE) for c in ("tl", "br")}
    for b in range(batch):
        for k in torch.nonzero(targets["mask"][b]).flatten().tolist():
            for c in ("tl", "br"):
                y, x = divmod(int(targets[f"{c}_ind"][b, k]), SIZE)
                tag[c][b, 0, y, x] = 2.0 * k
                off[c][b, :, y, x] = targets[f"{c}_off"][b, k]
    return CornerNetOutput(heat["tl"], heat["br"], tag["tl"], tag["br"], off["tl"], off["br"])


perfect = perfect_maps(targets)
criterion = CornerNetLoss()
{name: round(value.item(), 6) for name, value in criterion(perfect, targets).items()}

# %% [markdown]
# Everything is (nearly) zero. The focal loss is not exactly 0: the probabilities are
# clamped to $[10^{-4}, 1 - 10^{-4}]$ and a logit of 8 is not quite certain. The push term
# keeps a tiny constant, about $10^{-4} / (N(N-1))$ per image, left by the official
# normalisation (chapter 2).

# %% [markdown]
# ## 2. From random to perfect
# Blend random maps into the perfect ones, $m(\lambda) = (1 - \lambda)\, m_{random} +
# \lambda\, m_{perfect}$, and follow each term.

# %%
scales = (2.0, 2.0, 0.3, 0.3, 0.5, 0.5)  # heatmaps, tags, offsets
noise = CornerNetOutput(*[torch.randn_like(m) * s for m, s in zip(perfect, scales, strict=True)])
blend = np.linspace(0, 1, 21)
history = {name: [] for name in ("focal", "pull", "push", "offset")}
for lam in blend:
    maps = CornerNetOutput(*[(1 - lam) * n + lam * p for n, p in zip(noise, perfect, strict=True)])
    terms = criterion(maps, targets)
    for name in history:
        history[name].append(terms[name].item())

fig, ax = plt.subplots(figsize=(7, 4))
for name, values in history.items():
    ax.plot(blend, values, "o-", ms=3, label=name)
ax.set_yscale("symlog", linthresh=1e-3)
ax.set_xlabel(r"$\lambda$ (0 = random maps, 1 = perfect maps)")
ax.set_ylabel("weighted loss term")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. The focal loss of one heatmap
# Sharper perfect predictions push the focal loss towards 0, until the clamp at $10^{-4}$
# stops it.

# %%
for logit in (1, 2, 4, 8, 16, 50):
    value = focal_loss(perfect_maps(targets, logit).tl_heat, targets["tl_heat"]).item()
    print(f"logit +-{logit:>2}: focal loss {value:.3e}")

# %% [markdown]
# Negatives inside a bump are forgiven: the same wrong prediction ($p = 0.5$) costs
# $(1 - y)^4$ as much where the target is $y$.

# %%
half = torch.zeros(1, 1, 1, 1)  # logit 0: p = 0.5
far = focal_loss(half, torch.zeros(1, 1, 1, 1)).item()
for y in (0.0, 0.5, 0.9):
    value = focal_loss(half, torch.full((1, 1, 1, 1), y)).item()
    print(f"y = {y}: loss {value:.6f}, {value / far:.4f} of the loss far from any corner")

# %% [markdown]
# ## 4. Pull and push between two objects
# Two objects whose corners agree (no pull). The push term falls linearly as their means
# move apart, and stops at $\Delta = 1$; beyond, only the tiny constant is left.

# %%
mask = torch.ones(1, 2, dtype=torch.bool)
distances = np.linspace(0, 1.5, 31)
push = [ae_loss(torch.tensor([[0.0, d]]), torch.tensor([[0.0, d]]), mask)[1].item()
        for d in distances]  # fmt: skip
plt.figure(figsize=(5, 3))
plt.plot(distances, push)
plt.xlabel("distance between the two means")
plt.ylabel("push")
plt.show()

# %% [markdown]
# ## 5. One object: the official constant
# With a single object, Eq. 5 has no pair. The official code still returns
# $1 / (1 + 10^{-4}) \approx 0.9999$ (a constant, no gradient); here the term is 0 unless
# the flag asks for the official number.

# %%
one = torch.tensor([[True, False]])
for flag in (False, True):
    tags = torch.tensor([[0.3, 0.0]], requires_grad=True)
    _, push = ae_loss(tags, tags.detach() + 0.2, one, single_object_push=flag)
    push.backward()
    print(f"single_object_push={flag}: push {push.item():.3f}, gradient {tags.grad.tolist()}")

# %% [markdown]
# ## 6. Two stacks
# Every term is averaged over the stacks, like the total: two copies of the same prediction
# give the same terms and the same total, and the terms always add up to the total.

# %%
one_stack = criterion([noise], targets)
two_stacks = criterion([noise, noise], targets)
for name in one_stack:
    print(f"{name:>6}: one stack {one_stack[name].item():8.4f}, two {two_stacks[name].item():8.4f}")
parts = sum(two_stacks[name] for name in ("focal", "pull", "push", "offset"))
print("total == focal + pull + push + offset:", torch.equal(parts, two_stacks["total"]))


# %% [markdown]
# ## Solutions to the exercises of chapter 2
#
# ### Exercise 1
# A negative cell pays $(1 - y)^\beta\, p^\alpha \log(1 - p)$: everything but the factor
# $(1 - y)^4$ is the same, so $y = 0.5$ pays $0.5^4 = 1/16$ of what $y = 0$ pays.

# %%
logit = torch.full((1, 1, 1, 1), 0.3)
near = focal_loss(logit, torch.full((1, 1, 1, 1), 0.5)).item()
far = focal_loss(logit, torch.zeros(1, 1, 1, 1)).item()
print(f"near / far = {near / far:.6f}")
assert abs(near / far - 1 / 16) < 1e-6

# %% [markdown]
# ### Exercise 2
# Both corners of an object share its tag, so $L_{pull} = 0$. The four ordered pairs have
# hinges $1, 1$ (the diagonal) and $1 - 0.25 = 0.75$ twice; each pair also subtracts
# $1 / (2 + 10^{-4})$:
# $L_{push} = \big(2 + 1.5 - 4 / (2 + 10^{-4})\big) / (2 + 10^{-4}) \approx 0.75$.

# %%
tags = torch.tensor([[0.0, 0.25]])
two = torch.ones(1, 2, dtype=torch.bool)
pull, push = ae_loss(tags, tags, two)
expected = (2 + 1.5 - 4 / (2 + 1e-4)) / (2 + 1e-4)
print(f"pull {pull.item():.6f}, push {push.item():.6f}, by hand {expected:.6f}")
assert pull.item() == 0 and abs(push.item() - expected) < 1e-6

# %% [markdown]
# ### Exercise 3
# Every reported term is averaged over the stacks, like the total: three identical stacks
# report the same five numbers as one (up to float rounding of the mean).

# %%
one = criterion([noise], targets)
three = criterion([noise] * 3, targets)
for name in one:
    print(f"{name:>6}: one stack {one[name].item():.6f}, three {three[name].item():.6f}")
    assert torch.allclose(one[name], three[name], rtol=1e-6)
