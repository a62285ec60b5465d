"""What several test files share: the repository's scripts loaded as modules, the tiny
training configuration that runs a few iterations in seconds on a CPU, a "model" that
finds white rectangles, and the corner-pool operators over the CUDA kernel built for the
CPU."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import kernel_emulation
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cornernet_ref.config import TrainConfig
from cornernet_ref.corner_pool.op import CornerPoolOps
from cornernet_ref.data.augment import AugmentConfig
from cornernet_ref.model import ModelConfig
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.targets import TargetConfig

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, path: Path) -> ModuleType:
    """Import the file ``path`` (a script outside the package) as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def docs_hooks() -> ModuleType:
    """The site's build hook, ``docs/hooks.py``."""
    return load_script("docs_hooks", REPO / "docs" / "hooks.py")


# Two stacks of a 2-level hourglass 8 channels wide on 63-pixel shapes: every part of the
# training path, at a few iterations per second.
TINY_TRAINING = TrainConfig(
    name="tiny",
    model=ModelConfig(
        n=2, nstack=2, dims=(8, 8, 8), modules=(1, 1, 1), cnv_dim=8, pre_dim=8, pool_dim=8
    ),
    augment=AugmentConfig(input_size=63, border=16),
    output_size=16,
    targets=TargetConfig(max_objects=8),
    shapes_train=12,
    shapes_val=0,
    shapes_size=56,
    batch_size=4,
    max_iters=3,
    lr=1e-3,
    workers=0,
    precision="fp32",
    device="cpu",
    log_every=1,
    checkpoint_every=1000,
)


def tiny_arguments(out: Path) -> list[str]:
    """Command-line overrides turning small_shapes into (nearly) the tiny configuration."""
    model = TINY_TRAINING.model
    return [
        "--model.n", str(model.n), "--model.nstack", str(model.nstack),
        "--model.dims", ",".join(map(str, model.dims)),
        "--model.modules", ",".join(map(str, model.modules)),
        "--model.cnv-dim", "8", "--model.pre-dim", "8", "--model.pool-dim", "8",
        "--augment.input-size", "63", "--augment.border", "16", "--output-size", "16",
        "--shapes-train", "8", "--shapes-val", "2", "--shapes-size", "56",
        "--batch-size", "2", "--workers", "0", "--out", str(out),
    ]  # fmt: skip


class RectangleFinder(nn.Module):
    """Detects the white rectangle in each half (left / right) of the canvas, class 0.

    It is mirror-equivariant, as a well-trained network should be: the mirrored canvas
    gives the mirrored boxes (the halves swap).
    """

    def forward(self, images: torch.Tensor) -> list[CornerNetOutput]:
        batch, _, in_h, in_w = images.shape
        out_h, out_w = (in_h + 1) // 4, (in_w + 1) // 4
        heat = torch.full((batch, 2, out_h, out_w), -10.0)
        maps = CornerNetOutput(
            heat,
            heat.clone(),
            torch.full((batch, 1, out_h, out_w), 100.0),  # background corners never pair
            torch.full((batch, 1, out_h, out_w), -100.0),
            torch.zeros(batch, 2, out_h, out_w),
            torch.zeros(batch, 2, out_h, out_w),
        )
        for b in range(batch):
            for half, columns in enumerate((range(0, in_w // 2), range(in_w // 2, in_w))):
                ys, xs = torch.nonzero(images[b, 0, :, columns] > 0, as_tuple=True)
                if len(xs) == 0:
                    continue
                xs = xs + columns[0]
                box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # pixel edges
                for corner, (x, y) in (("tl", box[:2]), ("br", box[2:])):
                    fx, fy = float(x) * out_w / in_w, float(y) * out_h / in_h
                    cx, cy = min(int(fx), out_w - 1), min(int(fy), out_h - 1)
                    getattr(maps, f"{corner}_heat")[b, 0, cy, cx] = 10.0
                    getattr(maps, f"{corner}_tag")[b, 0, cy, cx] = 5.0 * half
                    getattr(maps, f"{corner}_off")[b, :, cy, cx] = torch.tensor([fx - cx, fy - cy])
        return [maps]


def draw_rectangles(folder: Path, images: Sequence[dict], boxes: Sequence[tuple]) -> None:
    """Black images of the COCO ``images`` records with white ``boxes``, as
    ``(image_id, category_id, x, y, w, h, iscrowd)`` (crowd regions left black)."""
    for record in images:
        pixels = np.zeros((record["height"], record["width"], 3), dtype=np.uint8)
        for image_id, _, x, y, w, h, crowd in boxes:
            if image_id == record["id"] and not crowd:
                pixels[int(y) : int(y + h), int(x) : int(x + w)] = 255
        Image.fromarray(pixels).save(folder / record["file_name"])


def emulated_kernels() -> kernel_emulation.EmulatedKernels:
    """The CUDA kernel built for the CPU; without a C++ compiler the test skips (fails under
    CI)."""
    try:
        return kernel_emulation.emulated_kernels()
    except kernel_emulation.BuildError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot build the kernel for the CPU: {error}")


@functools.cache
def emulated_ops() -> CornerPoolOps:
    """The package's corner-pool operators (fake implementations, autograd formula) with the
    kernel built for the CPU as their CPU implementation, in a namespace of the tests:
    ``torch.ops.cornernet_ref_emulated``."""
    emulated_kernels()  # built now, or the test skips
    return CornerPoolOps("cornernet_ref_emulated", {"cpu": kernel_emulation.emulated_kernels})
