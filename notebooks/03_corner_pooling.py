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
# # Corner pooling, step by step
#
# Companion to chapter 3. We pool a small map by hand and with the code, follow the gradient
# when maxima tie (the official rule against `torch.cummax`), look at NaN, and, on a machine
# with a GPU, check the fused CUDA kernel against the reference bit for bit.

# %%
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from cornernet_ref.corner_pool import CornerPool, corner_pool, pool
from cornernet_ref.data.examples import example_image

torch.set_printoptions(precision=3, sci_mode=False)

# %% [markdown]
# ## 1. Four directions, two corners
#
# `top` is the maximum of everything below a cell (itself included): a scan from the bottom
# row up. `left` is the maximum of everything to the right: a scan from the rightmost column.
# The top-left corner pool adds the two, each from its own map.

# %%
f_t = torch.tensor(
    [[0, 2, 0, 1, 0], [1, 0, 3, 0, 0], [0, 0, 1, 2, 0], [2, 1, 0, 0, 1], [0, 3, 0, 1, 0.0]]
)[None, None]
f_l = torch.tensor(
    [[0, 1, 0, 2, 0], [3, 0, 1, 0, 0], [0, 2, 0, 0, 1], [1, 0, 0, 3, 0], [0, 0, 2, 0, 1.0]]
)[None, None]
print("top(f_t):\n", pool(f_t, "top")[0, 0])
print("left(f_l):\n", pool(f_l, "left")[0, 0])
print("top-left corner pool:\n", corner_pool(f_t, f_l, "tl")[0, 0])

# %% [markdown]
# The same numbers by brute force, one slice at a time: `top` at row $i$ is the maximum
# of rows $i, \dots, H-1$.

# %%
height = f_t.shape[2]
by_slices = torch.stack([f_t[:, :, i:, :].amax(2) for i in range(height)], dim=2)
print("equal:", torch.equal(by_slices, pool(f_t, "top")))

# %% [markdown]
# ### On a real image
#
# Two edge maps of an image stand in for the two learned branches: $f_t$, the vertical
# edges (where a left boundary can be), and $f_l$, the horizontal edges (top boundaries),
# one value per $8 \times 8$-pixel cell. `top` carries each column's strongest vertical edge
# up to every cell above it, `left` each row's strongest horizontal edge to every cell on
# its left; the top-left pool, their sum, is high where a cell has a left boundary below it
# and a top boundary to its right: above and left of objects.

# %%
image, _, _ = example_image()
gray = torch.from_numpy(image).float().mean(-1)[None, None] / 255
across = F.pad((gray[..., :, 1:] - gray[..., :, :-1]).abs(), (0, 1))  # changes along x
down = F.pad((gray[..., 1:, :] - gray[..., :-1, :]).abs(), (0, 0, 0, 1))  # changes along y
edges_t, edges_l = F.max_pool2d(across, 8), F.max_pool2d(down, 8)
panels = [
    ("image", image),
    ("$f_t$: vertical edges", edges_t[0, 0]),
    ("top($f_t$)", pool(edges_t, "top")[0, 0]),
    ("left($f_l$)", pool(edges_l, "left")[0, 0]),
    ("top-left pool", corner_pool(edges_t, edges_l, "tl")[0, 0]),
]
fig, axes = plt.subplots(1, len(panels), figsize=(17, 3.4))
for ax, (title, picture) in zip(axes, panels, strict=True):
    ax.imshow(picture, cmap=None if picture.ndim == 3 else "magma")
    ax.set_title(title)
    ax.axis("off")
plt.show()

# %% [markdown]
# In the model, the pool is a module without parameters that takes the two branch outputs:

# %%
module = CornerPool("br")
print(module, "parameters:", sum(p.numel() for p in module.parameters()))
print(module(f_t, f_l)[0, 0])

# %% [markdown]
# ## 2. The gradient when maxima tie
#
# A column `1, 3, 3, 2, 3` pooled `bottom` (scan from the top row). Every output from row
# 1 on is 3. Which 3 receives their gradient? The official extension keeps the first maximum
# met (its argmax moves only on a strictly greater value); `torch.cummax` moves to every
# equal value, so the last one met, the nearest, receives it.

# %%
column = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]).view(1, 1, 5, 1)

official = column.clone().requires_grad_()
pool(official, "bottom").sum().backward()
nearest = column.clone().requires_grad_()
nearest.cummax(2).values.sum().backward()

print("values equal:        ", torch.equal(pool(column, "bottom"), column.cummax(2).values))
print("cummax indices:      ", column.cummax(2).indices.flatten().tolist())
print("official gradient:   ", official.grad.flatten().tolist())
print("cummax gradient:     ", nearest.grad.flatten().tolist())

fig, ax = plt.subplots(figsize=(6.5, 2.8))
positions = torch.arange(5.0)
ax.bar(positions - 0.2, official.grad.flatten(), width=0.4, label="official: first met")
ax.bar(positions + 0.2, nearest.grad.flatten(), width=0.4, label="cummax: last met")
ax.set_xticks(positions.tolist(), [f"row {i}\nx = {v:g}" for i, v in enumerate(column.flatten())])
ax.set_ylabel("gradient received")
ax.set_title("pool 'bottom' of 1, 3, 3, 2, 3: who receives the gradient of the ties")
ax.legend()
plt.show()

# %% [markdown]
# How often does this change training? Ties between float32 activations are rare; with
# fewer significant bits they are not. On a random post-ReLU map, count the positive inputs
# whose gradient differs between the two rules (zeros tie too, but the ReLU passes them no
# gradient either way).

# %%
generator = torch.Generator().manual_seed(0)
activations = torch.relu(torch.randn(4, 32, 64, 64, generator=generator))
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    x = activations.to(dtype)
    by_rule = x.clone().requires_grad_()
    pool(by_rule, "top").sum().backward()
    by_cummax = x.clone().requires_grad_()
    by_cummax.flip(2).cummax(2).values.flip(2).sum().backward()
    positive = x > 0
    changed = ((by_rule.grad != by_cummax.grad) & positive).sum() / positive.sum()
    print(f"{str(dtype):15s} positive inputs with another gradient: {float(changed):.3%}")

# %% [markdown]
# ## 3. NaN
#
# A NaN counts as larger than every number, and the first NaN met stays the maximum: it
# propagates to every later output of the scan, and receives their gradient.

# %%
with_nan = torch.tensor([1.0, float("nan"), 5.0, float("nan"), 7.0]).view(1, 1, 5, 1)
leaf = with_nan.clone().requires_grad_()
out = pool(leaf, "bottom")
out.sum().backward()
print("output:  ", out.flatten().tolist())
print("gradient:", leaf.grad.flatten().tolist())

# %% [markdown]
# ## 4. The reference against `cummax` on the CPU
#
# The reference scans with a Python loop over rows, each step a few operations on a whole
# row of every image and channel. On a small map the fixed cost of each step dominates and
# `cummax`, one call in C++, is faster; at the model's size the two are on par (the
# benchmark in `benchmarks/` measures those shapes).

# %%
a, b, grad = torch.randn(3, 1, 64, 64, 64, generator=generator)


def cummax_top_left(a, b):
    return a.flip(2).cummax(2).values.flip(2) + b.flip(3).cummax(3).values.flip(3)


for name, function in [
    ("reference", lambda a, b: corner_pool(a, b, "tl", backend="reference")),
    ("cummax", cummax_top_left),
]:
    a_leaf, b_leaf = a.clone().requires_grad_(), b.clone().requires_grad_()
    function(a_leaf, b_leaf).backward(grad)  # warm-up
    times = []
    for _ in range(5):
        start = time.perf_counter()
        function(a_leaf, b_leaf).backward(grad)
        times.append(time.perf_counter() - start)
    print(f"{name:10s} forward + backward at (1, 64, 64, 64): {min(times) * 1e3:.1f} ms, best of 5")

# %% [markdown]
# ## 5. The CUDA kernel against the reference
#
# On a machine with a GPU, the fused kernel (built on first use, under a minute) must equal
# the reference bit for bit: forward and both gradients, ties included, in float32 and in
# float16 (where the reference runs in float16 too). Without a GPU the cell says so and
# skips.

# %%
if not torch.cuda.is_available():
    print("No CUDA GPU here: the kernel check is skipped (run this notebook on a GPU machine).")
else:
    for dtype in (torch.float32, torch.float16):
        maps = (torch.randn(2, 2, 16, 70, 90, generator=generator) * 3).round().clamp(min=0)
        a, b = maps.to(dtype)
        grad = torch.randn(a.shape, generator=generator).to(dtype)
        results = {}
        for backend, device in (("reference", "cpu"), ("cuda", "cuda")):
            a_in, b_in = (t.to(device).requires_grad_() for t in (a, b))
            out = corner_pool(a_in, b_in, "tl", backend=backend)
            out.backward(grad.to(device))
            results[backend] = [t.detach().cpu() for t in (out, a_in.grad, b_in.grad)]
        same = all(
            torch.equal(k, r) for k, r in zip(results["cuda"], results["reference"], strict=True)
        )
        print(f"{dtype}: kernel equals the reference (output, grad a, grad b): {same}")


# %% [markdown]
# ## Solutions to the exercises of chapter 3
#
# ### Exercise 1
# Scanning up from the bottom row: row 3 (value 1) is the first maximum; row 2 (5) is a new
# maximum; row 1 (5) ties, so the argmax stays at row 2; row 0 (2) is smaller. Row 3 gets
# its own output's gradient (1) and row 2 those of rows 2, 1 and 0 (3). `cummax` moves on
# the tie: row 1 takes the gradients of rows 1 and 0.

# %%
column = torch.tensor([2.0, 5.0, 5.0, 1.0]).view(1, 1, 4, 1)
by_rule = column.clone().requires_grad_()
pool(by_rule, "top").sum().backward()
by_cummax = column.clone().requires_grad_()
by_cummax.flip(2).cummax(2).values.flip(2).sum().backward()
print("official:", by_rule.grad.flatten().tolist(), " cummax:", by_cummax.grad.flatten().tolist())
assert by_rule.grad.flatten().tolist() == [0.0, 0.0, 3.0, 1.0]
assert by_cummax.grad.flatten().tolist() == [0.0, 2.0, 1.0, 1.0]

# %% [markdown]
# ### Exercise 2
# Unrolling $t_{ij} = \max(f_{t,ij}, t_{(i+1)j})$ down to the last row gives
# $t_{0j} = \max_k f_{t,kj}$, the whole column $j$; likewise $l_{i0} = \max_k f_{l,ik}$, the
# whole row $i$. At $(0, 0)$: the first column of $f_t$ plus the first row of $f_l$.

# %%
f_t, f_l = torch.randn(2, 3, 4, 9, 11, generator=generator)
pooled = corner_pool(f_t, f_l, "tl")
expected = f_t[:, :, :, 0].amax(-1) + f_l[:, :, 0, :].amax(-1)
assert torch.equal(pooled[:, :, 0, 0], expected)
print("tl pool at (0, 0) = max of column 0 of f_t + max of row 0 of f_l: True")

# %% [markdown]
# ### Exercise 3
# Fewer significant bits make more values equal, and every tie of a maximum is a place where
# the two rules route the gradient differently; bfloat16 keeps 8 bits against float32's 24.

# %%
shares = {}
for dtype in (torch.float32, torch.bfloat16):
    x = activations.to(dtype)
    rule, near = x.clone().requires_grad_(), x.clone().requires_grad_()
    pool(rule, "top").sum().backward()
    near.flip(2).cummax(2).values.flip(2).sum().backward()
    positive = x > 0
    shares[dtype] = float(((rule.grad != near.grad) & positive).sum() / positive.sum())
    print(f"{str(dtype):15s} {shares[dtype]:.3%}")
assert shares[torch.bfloat16] > 10 * max(shares[torch.float32], 1e-6)
