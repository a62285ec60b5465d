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
# # Training CornerNet
#
# Companion to chapter 6. On a GPU this notebook trains the full Hourglass-104 with the
# paper's configuration on the data it is pointed at (`COCO_IMAGES` / `COCO_ANNOTATIONS`,
# by default the 128-image COCO sample in `../../shared/data/coco128`, where the training
# images double as the validation set, so the AP shows whether the model can fit). Without
# a GPU it runs the very same cells on the small configuration and the synthetic shapes for
# a few iterations, which is what the tests execute.
#
# Everything is written to a temporary folder.

# %%
import json
import math
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from cornernet_ref.config import accumulation_for_memory, get_config, short_coco_run
from cornernet_ref.data.examples import coco128
from cornernet_ref.predict import detect, draw_detections
from cornernet_ref.train import learning_rate, train

sample_images, sample_annotations = coco128()  # the COCO sample, the default data
images = Path(os.environ.get("COCO_IMAGES", sample_images))
annotations = Path(os.environ.get("COCO_ANNOTATIONS", sample_annotations))
out = Path(tempfile.mkdtemp(prefix="cornernet_training_"))
ON_GPU = torch.cuda.is_available() and annotations.is_file()

# %% [markdown]
# ## The configuration
#
# The paper's: Adam, learning rate 2.5e-4, batch 49, 500k iterations with a 10x decay at
# 450k, 511 x 511 inputs and 128 x 128 outputs. On one GPU we shorten the schedule to what a
# session allows (`ITERATIONS`), use bf16 autocast and channels_last, and split batch 49
# into as few micro-batches as the GPU's memory allows (`accumulation_for_memory`, from
# the peak memory measured on one H200: one step on an 80 GB GPU, two on 40 GB);
# `ACCUMULATION` overrides it. The network is compiled (`torch.compile`); `COMPILE=0`
# trains it eagerly.
#
# The default of 1,200 iterations is 58,800 images: 10.4 minutes at 94 images/s, the speed
# measured on one H200 in 4 micro-batches of 12 without compiling (one step of 49 and
# compiling only make it faster), which leaves the start, the compilation and the
# validation on the 128 images within 15 minutes.

# %%
if ON_GPU:
    iterations = int(os.environ.get("ITERATIONS", "1200"))
    memory = torch.cuda.get_device_properties(0).total_memory
    config = short_coco_run(
        images,
        annotations,
        iterations,
        accumulation=int(os.environ.get("ACCUMULATION", accumulation_for_memory(memory))),
        compile=os.environ.get("COMPILE", "1") == "1",
        checkpoint_every=500,
        val_limit=0,  # AP on all 128 images
        out=str(out),
    )
else:
    print("No GPU (or no COCO data): the same cells on the small config, a few iterations.")
    config = replace(
        get_config("small_shapes"),
        max_iters=4,
        batch_size=4,
        shapes_train=16,
        shapes_val=4,
        workers=0,
        log_every=1,
        out=str(out),
    )
print(config)

# %% [markdown]
# ## Training
#
# `train` runs the loop: augmented batches, mixed-precision forward and loss, backward,
# Adam step; it logs the loss terms to `history.jsonl`, writes checkpoints atomically and
# validates with COCO AP at the end.

# %%
model, summary = train(config)
print(json.dumps(summary["metrics"], indent=2))

# %% [markdown]
# ## Loss curves

# %%
history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
figure, axis = plt.subplots(figsize=(7, 4))
for term in ("total", "focal", "pull", "push", "offset"):
    axis.plot([h["iteration"] for h in history], [h[term] for h in history], label=term)
axis.set_xlabel("iteration")
axis.set_ylabel("loss")
axis.set_yscale("log")  # the first losses are hundreds of times the later ones
axis.legend()
figure.savefig(out / "loss_curve.png")
plt.show()
print(f"loss {history[0]['total']:.4g} -> {history[-1]['total']:.4g} in {len(history)} lines")
print(f"AP on the validation images: {summary['metrics'].get('AP')}")

# %% [markdown]
# ## Detections of the trained model
#
# The first validation image through the test pipeline (padding, flip testing, decoding,
# soft-NMS), boxes scoring at least 0.3 drawn with their class names.

# %%
checkpoint = out / "checkpoints" / "last.pt"
if ON_GPU:
    image_path = images / sorted(p.name for p in images.iterdir())[0]
else:
    image_path = sorted((out / "data" / "val" / "images").iterdir())[0]
detections, names = detect(checkpoint, image_path, device="cuda" if ON_GPU else "cpu")
drawn = draw_detections(image_path, detections, names, out / "detections.png", threshold=0.3)
plt.imshow(plt.imread(out / "detections.png"))
plt.title(f"{drawn} detections with score >= 0.3")
plt.axis("off")
plt.show()


# %% [markdown]
# ## Solutions to the exercises of chapter 6
#
# ### Exercise 1
# The step schedule multiplies $2.5 \times 10^{-4}$ by 0.1 from iteration 450,000 on.

# %%
paper = get_config("hourglass104_coco")
rates = [learning_rate(paper, i) for i in (0, 449_999, 450_000)]
print(rates)
assert rates[0] == rates[1] == 2.5e-4 and math.isclose(rates[2], 2.5e-5)

# %% [markdown]
# ### Exercise 2
# Each term of `CornerNetLoss` is averaged over the stacks like the total, so they add up
# to it in every micro-batch; the logged values are averages over micro-batches and
# iterations, which preserve sums (up to float rounding).

# %%
for record in history:
    parts = sum(record[name] for name in ("focal", "pull", "push", "offset"))
    assert math.isclose(record["total"], parts, rel_tol=1e-5, abs_tol=1e-6), record
print(f"total = focal + pull + push + offset on all {len(history)} logged lines")
