r"""Training configurations: typed, printable, overridable from the command line.

A configuration is a :class:`TrainConfig` dataclass holding everything a run depends on; it is
printed at the start of training and saved as ``config.json`` beside every checkpoint (and
inside it). Three are named:

* ``hourglass104_coco``: the paper's (§4.1): Hourglass-104 with two stacks, input 511 x 511,
  output 128 x 128, Adam with learning rate $2.5 \times 10^{-4}$, batch 49, 500k iterations,
  learning rate $\times 0.1$ at 450k, Gaussian radius overlap 0.3, loss weights 0.1, 0.1, 1
  (``loss``).
* ``hourglass52_coco``: the same with one stack, Hourglass-52, for smaller GPUs (the paper
  reports 37.8 AP for it on COCO).
* ``small_shapes``: a small single-stack hourglass on the synthetic shapes data, trained on a
  CPU in minutes.

On the command line every field is an option of ``cornernet-ref train``, ``--field value``
(``--model.nstack 1``, ``--augment.flip false``, ``--targets.gaussian-iou 0.5``,
``--lr-decay-iters 100,200``, ``--test.scales 0.5,1``, ``--test.decode.K 50``; see
:mod:`cornernet_ref.cli.options`); :func:`apply_overrides` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from cornernet_ref.data.augment import AugmentConfig
from cornernet_ref.hourglass import stem_output_size
from cornernet_ref.inference import TestConfig
from cornernet_ref.losses import LossConfig
from cornernet_ref.model import ModelConfig
from cornernet_ref.printable import PrintableConfig, config_from_dict
from cornernet_ref.targets import TargetConfig

Config = TypeVar("Config")  # a configuration dataclass, possibly nested


@dataclass(frozen=True)
class TrainConfig(PrintableConfig):
    r"""Everything a training run depends on.

    Attributes:
        name: the configuration's name.
        model: the network. Its ``num_classes`` is set by the training data when the run
            starts (the number of its categories); the value given here is replaced, and
            the configuration saved with the checkpoints holds the data's.
        augment: the training augmentation; ``augment.input_size`` is the input side.
        output_size: side of the output maps, the input side after the stem
            (:func:`~cornernet_ref.hourglass.stem_output_size`: 511 -> 128); checked.
        targets: how the ground-truth maps are drawn (radius overlap, radius formula,
            penalty reduction, capacity; :class:`~cornernet_ref.targets.TargetConfig`).
        loss: the weights of the loss terms and the single-object push rule
            (:class:`~cornernet_ref.losses.LossConfig`).
        dataset: ``"shapes"`` (generated under ``<out>/data``) or ``"coco"`` (the paths below).
        train_images, train_annotations: COCO-format training data.
        val_images, val_annotations: COCO-format validation data (optional for ``coco``).
        shapes_train, shapes_val, shapes_size, shapes_seed: size and seed of the shapes splits.
        skip_unreadable: skip unreadable training images with a warning instead of stopping.
        batch_size: the global batch (all processes, all accumulation steps).
        accumulation: micro-batches per process per iteration (gradient accumulation).
        max_iters: number of optimiser steps.
        lr: Adam learning rate.
        lr_decay_iters: iterations at which the learning rate is multiplied by ``lr_decay``.
        lr_decay: the decay factor.
        precision: ``auto`` (bf16 where supported on CUDA, else fp16 with a grad scaler; fp32
            on CPU), ``fp32``, ``bf16`` or ``fp16``.
        channels_last: NHWC memory layout for the convolutions.
        compile: wrap the model in ``torch.compile``.
        workers: DataLoader worker processes per training process.
        pin_memory: page-locked host memory for faster copies to the GPU.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        seed: seed of the initial weights and of the sample stream.
        log_every: iterations between logged scalars.
        checkpoint_every: iterations between checkpoints (one is always written at the end).
        val_every: iterations between validations (0: only at the end).
        val_limit: validate on at most this many images (0: all).
        test: how validation images are tested (flip, scales, soft-NMS, decoding).
        out: output folder (checkpoints, config, metrics, logs).
    """

    name: str = "small_shapes"
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    output_size: int = 128
    targets: TargetConfig = TargetConfig()
    loss: LossConfig = LossConfig()
    dataset: str = "shapes"
    train_images: str = ""
    train_annotations: str = ""
    val_images: str = ""
    val_annotations: str = ""
    shapes_train: int = 2000
    shapes_val: int = 100
    shapes_size: int = 120
    shapes_seed: int = 0
    skip_unreadable: bool = False
    batch_size: int = 49
    accumulation: int = 1
    max_iters: int = 500_000
    lr: float = 2.5e-4
    lr_decay_iters: tuple[int, ...] = (450_000,)
    lr_decay: float = 0.1
    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False
    workers: int = 2
    pin_memory: bool = False
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 1000
    val_every: int = 0
    val_limit: int = 0
    test: TestConfig = TestConfig()
    out: str = "runs/train"

    def __post_init__(self) -> None:
        choices = {
            "dataset": ("shapes", "coco"),
            "precision": ("auto", "fp32", "bf16", "fp16"),
            "device": ("auto", "cpu", "cuda"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("batch_size", "accumulation", "max_iters", "output_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dataset == "coco" and not (self.train_images and self.train_annotations):
            raise ValueError("dataset 'coco' needs train_images and train_annotations")
        side = self.augment.input_size
        if self.output_size != stem_output_size(side):
            raise ValueError(
                f"output_size {self.output_size} does not match augment.input_size {side}: "
                f"the network's maps of a {side}-pixel input have {stem_output_size(side)} "
                "cells a side"
            )
        try:
            self.model.check_input_size(side, side)
        except ValueError as error:
            raise ValueError(f"augment.input_size: {error}") from None


# The paper's configuration; the others are named below it.
HOURGLASS104_COCO = TrainConfig(
    name="hourglass104_coco",
    dataset="coco",
    train_images="data/coco/train2017",
    train_annotations="data/coco/annotations/instances_train2017.json",
    val_images="data/coco/val2017",
    val_annotations="data/coco/annotations/instances_val2017.json",
    workers=4,
    pin_memory=True,
    channels_last=True,
    checkpoint_every=5000,
    val_every=50_000,
    val_limit=500,
    out="runs/hourglass104_coco",
)

# The named configurations.
CONFIGS: dict[str, TrainConfig] = {
    "hourglass104_coco": HOURGLASS104_COCO,
    "hourglass52_coco": replace(  # one stack: Hourglass-52
        HOURGLASS104_COCO,
        name="hourglass52_coco",
        model=ModelConfig(nstack=1),
        out="runs/hourglass52_coco",
    ),
    "small_shapes": TrainConfig(
        name="small_shapes",
        model=ModelConfig(
            n=3,
            nstack=1,
            dims=(32, 48, 64, 64),
            modules=(1, 1, 1, 1),
            cnv_dim=32,
            pre_dim=32,
            pool_dim=32,
        ),  # fmt: skip
        augment=AugmentConfig(input_size=127, border=32),
        output_size=32,
        targets=TargetConfig(max_objects=16),
        batch_size=16,
        max_iters=1000,  # the whole command in under 5 minutes on 2 CPU cores
        lr=2.5e-3,
        lr_decay_iters=(850,),
        channels_last=True,  # faster convolutions on a CPU (oneDNN works in NHWC)
        workers=1,
        checkpoint_every=250,
        out="runs/small_shapes",
    ),
}


# Peak GPU memory of one Hourglass-104 training step at 511 x 511 (bfloat16 autocast,
# channels_last, eager), measured on one H200 by benchmarks/gpu_check.py on 2026-12-04:
# 10.9 GiB at batch 8, 19.1 at 16, 127.6 at 122. The least-squares line through the three,
# 2.72 GiB + 1.024 GiB per image, is within 0.003 GiB of each.
STEP_MEMORY_GIB = 2.72
STEP_MEMORY_PER_IMAGE_GIB = 1.024


def accumulation_for_memory(
    memory_bytes: int, batch_size: int = 49, *, headroom: float = 0.9, max_steps: int = 64
) -> int:
    r"""The fewest micro-batches per iteration whose largest fits in ``memory_bytes``.

    A micro-batch of $b$ images takes $M(b) = 2.72 + 1.024\,b$ GiB at its peak
    (Hourglass-104 at 511, the measured line above); the rule keeps it within ``headroom``
    of the memory $M_{\text{GPU}}$. With $k$ micro-batches the largest has $\lceil B / k
    \rceil$ images, so

    $$ k = \min \{ k \ge 1 : M(\lceil B / k \rceil) \le h \, M_{\text{GPU}} \} $$

    Batch 49 takes 52.9 GiB: one step on an 80 GB GPU, 2 micro-batches on 40 GB, 3 on 24 GB.

    Raises:
        ValueError: not even one image fits (or it would take more than ``max_steps``).
    """
    budget_gib = headroom * memory_bytes / 2**30
    for steps in range(1, min(batch_size, max_steps) + 1):
        largest = -(-batch_size // steps)  # ceil(B / k)
        if STEP_MEMORY_GIB + STEP_MEMORY_PER_IMAGE_GIB * largest <= budget_gib:
            return steps
    raise ValueError(
        f"{memory_bytes / 2**30:.1f} GiB is too little for batch {batch_size} of "
        f"Hourglass-104 at 511 in {min(batch_size, max_steps)} micro-batches or fewer"
    )


def get_config(name: str) -> TrainConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    return CONFIGS[name]


def short_coco_run(
    images: str | Path, annotations: str | Path, iterations: int, **changes: Any
) -> TrainConfig:
    r"""``hourglass104_coco`` on one COCO-format set, trained and validated on, for a short
    run: ``iterations`` iterations with the 10x decay at 90 % of them (the paper's 450k of
    500k), no validation until the end; ``changes`` are further fields.
    """
    return replace(
        get_config("hourglass104_coco"),
        train_images=str(images),
        train_annotations=str(annotations),
        val_images=str(images),
        val_annotations=str(annotations),
        max_iters=iterations,
        lr_decay_iters=(int(iterations * 0.9),),
        val_every=0,
        **changes,
    )


def apply_overrides(config: Config, overrides: dict[str, Any], prefix: str = "") -> Config:
    r"""``config`` with ``{"lr": 1e-3, "model.nstack": 1, "test.decode.K": 50, ...}`` replaced."""
    nested: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in config.__dataclass_fields__:
            raise ValueError(f"unknown config field {prefix + key!r}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[key] = value
    for head, values in nested.items():
        top[head] = apply_overrides(getattr(config, head), values, f"{prefix}{head}.")
    return replace(config, **top)


__all__ = [
    "CONFIGS",
    "TrainConfig",
    "accumulation_for_memory",
    "apply_overrides",
    "config_from_dict",
    "get_config",
    "short_coco_run",
]
