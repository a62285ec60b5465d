r"""Training configurations: typed, printable, overridable from the command line.

A configuration is a :class:`TrainConfig` dataclass holding everything a run depends on; a
run prints its summary (:meth:`TrainConfig.summary`) and writes it whole to ``config.json``
in its folder when it starts (and inside every checkpoint). Three are named:

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

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from cornernet_ref.data.augment import AugmentConfig
from cornernet_ref.hourglass import stem_output_size
from cornernet_ref.inference import TestConfig
from cornernet_ref.losses import LossConfig
from cornernet_ref.model import ModelConfig
from cornernet_ref.printable import FieldError, PrintableConfig, config_from_dict
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
        dataset: ``"shapes"`` (generated under ``<out>/data``) or ``"coco"`` (the paths below);
            the paths are refused with ``"shapes"``, which would not read them.
        train_images, train_annotations: COCO-format training data (``coco`` only).
        val_images, val_annotations: COCO-format validation data (``coco`` only; both or
            neither).
        shapes_train, shapes_val, shapes_size, shapes_seed: size and seed of the shapes splits
            (``shapes_val`` 0: no validation split).
        skip_unreadable: skip unreadable training images with a warning instead of stopping.
        batch_size: the global batch (all processes, all accumulation steps).
        accumulation: micro-batches per process per iteration (gradient accumulation), at
            most ``batch_size``: each micro-batch needs an image.
        max_iters: number of optimiser steps.
        lr: Adam learning rate, finite and > 0.
        lr_decay_iters: iterations at which the learning rate is multiplied by ``lr_decay``.
        lr_decay: the decay factor, in (0, 1]: 1 keeps the rate, and a factor above 1 (or
            of 0 or less) would raise it (or stop or reverse the descent).
        precision: ``auto`` (bf16 where supported on CUDA, else fp16 with a grad scaler; fp32
            on CPU), ``fp32``, ``bf16`` or ``fp16``.
        channels_last: NHWC memory layout for the convolutions.
        compile: wrap the model in ``torch.compile``.
        workers: DataLoader worker processes per training process (0: the main process).
        pin_memory: page-locked host memory for faster copies to the GPU.
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
        seed: seed of the initial weights and of the sample stream.
        log_every: iterations between logged scalars (at least 1).
        checkpoint_every: iterations between checkpoints (at least 1; one is always written
            at the end).
        val_every: iterations between validations (0: only at the end).
        val_limit: validate on the first this many images (0: all of them).
        test: how validation images are tested (flip, scales, soft-NMS, decoding).
        out: output folder (checkpoints, config, metrics, logs).

    Raises:
        FieldError: a field out of its range, or two that disagree (named, with the value).
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
                raise FieldError(name, getattr(self, name), f"must be one of {allowed}")
        for name in POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise FieldError(name, getattr(self, name), "must be positive")
        for name in ("shapes_val", "shapes_seed", "seed", "workers", "val_every", "val_limit"):
            if getattr(self, name) < 0:
                raise FieldError(name, getattr(self, name), "must be 0 or more")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise FieldError("lr", self.lr, "must be a finite number > 0")
        if not 0 < self.lr_decay <= 1:  # above 1 the rate would grow at each decay point
            raise FieldError("lr_decay", self.lr_decay, "must lie in (0, 1]")
        if any(point < 1 for point in self.lr_decay_iters):
            raise FieldError("lr_decay_iters", self.lr_decay_iters, "must be positive iterations")
        if self.accumulation > self.batch_size:  # every micro-batch needs an image
            raise FieldError(
                "accumulation", self.accumulation, f"must be at most batch_size {self.batch_size}"
            )
        if not self.out:
            raise FieldError("out", self.out, "must name a folder")
        self._check_data()
        side = self.augment.input_size
        if self.output_size != stem_output_size(side):
            raise FieldError(
                "output_size",
                self.output_size,
                f"must be {stem_output_size(side)} for augment.input_size {side} (the "
                f"network's maps of a {side}-pixel input have that many cells a side)",
            )
        try:
            self.model.check_input_size(side, side)
        except ValueError as error:
            raise FieldError(
                "augment.input_size", side, f"does not fit the model: {error}"
            ) from None

    def _check_data(self) -> None:
        r"""The paths of COCO data are given with ``dataset`` ``"coco"`` only, the training
        pair both, the validation pair both or neither."""
        coco_paths = ("train_images", "train_annotations", "val_images", "val_annotations")
        if self.dataset == "shapes":
            for name in coco_paths:
                if getattr(self, name):
                    raise FieldError(
                        name,
                        getattr(self, name),
                        "is COCO data, which dataset 'shapes' (generated images) would "
                        "ignore: set dataset 'coco' (--dataset coco) to train on it",
                    )
            return
        for first, second in (coco_paths[:2], coco_paths[2:]):
            needed = first.startswith("train")
            if (needed or getattr(self, first)) and not getattr(self, second):
                raise FieldError(second, getattr(self, second), f"must be given with {first}")
            if (needed or getattr(self, second)) and not getattr(self, first):
                raise FieldError(first, getattr(self, first), f"must be given with {second}")

    def summary(self, device: str, parameters: int) -> str:
        r"""A few lines on what the run does, printed when it starts; the full configuration
        is written to ``<out>/config.json`` (:attr:`~cornernet_ref.run.RunFolder.config`).

        Args:
            device: the device it runs on (``"cpu"``, ``"cuda:0"``).
            parameters: the network's number of parameters.
        """
        model = self.model
        if self.dataset == "shapes":
            val = f"{self.shapes_val} validation" if self.shapes_val else "no validation"
            data = (
                f"synthetic shapes: {self.shapes_train} training and {val} images of "
                f"{self.shapes_size} px, generated under {Path(self.out) / 'data'}"
            )
        else:
            val = f"validation {self.val_images}" if self.val_images else "no validation"
            data = f"COCO {self.train_images} ({self.train_annotations}); {val}"
        decay = ", ".join(map(str, self.lr_decay_iters)) or "never"
        return "\n".join(
            (
                f"config {self.name}: {model.nstack}-stack hourglass of depth {model.n}, "
                f"{parameters / 1e6:.2f} M parameters, {model.num_classes} classes",
                f"data: {data}",
                f"training: {self.max_iters} iterations of batch {self.batch_size} "
                f"({self.accumulation} micro-batch{'es' if self.accumulation > 1 else ''}) "
                f"at {self.augment.input_size} px, lr "
                f"{self.lr:g} (x {self.lr_decay:g} at {decay}), on {device}",
                f"out: {self.out} (full configuration: {Path(self.out) / 'config.json'})",
            )
        )

    @property
    def has_validation(self) -> bool:
        r"""Whether the run validates: a shapes validation split, or COCO validation data."""
        if self.dataset == "shapes":
            return self.shapes_val > 0
        return bool(self.val_images)


POSITIVE_FIELDS = (
    "batch_size",
    "accumulation",
    "max_iters",
    "output_size",
    "shapes_train",
    "shapes_size",
    "log_every",
    "checkpoint_every",
)  # counts of things and periods of iterations (a period 0 would divide by zero)


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
    r"""``config`` with ``{"lr": 1e-3, "model.nstack": 1, "test.decode.K": 50, ...}`` replaced.

    Raises:
        FieldError: a value out of range, its field named by its path from ``config``.
        ValueError: a field that ``config`` does not have.
    """
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
        try:
            top[head] = apply_overrides(getattr(config, head), values, f"{prefix}{head}.")
        except FieldError as error:  # named from this configuration: "decode.K"
            raise error.within(f"{head}.") from None
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
