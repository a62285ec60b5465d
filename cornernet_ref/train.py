r"""Training CornerNet (paper §4.1), from a CPU demo to many GPUs.

One iteration is one Adam step on a global batch of $B$ images (49 in the paper): each of
the $R$ processes holds $B / R$ of them, split into accumulation micro-batches, and
[train_step][cornernet_ref.train.train_step] accumulates the gradient of the total loss of
§3.5 (:class:`cornernet_ref.losses.CornerNetLoss`) weighted by micro-batch size;
DistributedDataParallel averages the gradients over processes. A single process with $R$
times the accumulation steps computes the same update, which the tests check.

The learning rate is $2.5 \times 10^{-4}$, multiplied by 0.1 at iteration 450k of 500k.

Scale-out uses PyTorch's own machinery: launched by ``torchrun``, each process reads
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``, joins a process group (NCCL on GPUs, gloo on
CPU) and trains its share of every batch; rank 0 alone logs, validates and writes
checkpoints. The batch order is a pure function of the iteration
(:mod:`cornernet_ref.data.loader`), so ``--resume`` continues exactly where a run stopped.

**What $R$ processes equal.** The parameters equal those of one process accumulating the
same $R$ shares as micro-batches. The batch-norm running statistics follow the official
``DataParallel`` training, where each GPU normalises its own share and the first replica's
statistics are kept: each iteration's first forward pass starts from rank 0's buffers (DDP
broadcasts them), so the statistics that rank 0 validates with and checkpoints are those
one process obtains when only rank 0's share of every iteration (the first $1/R$ of its
micro-batches) updates them. A NaN or infinite loss on any rank reaches every rank through
the averaged loss terms, so all stop at the same iteration with the same
:class:`NonFiniteLossError`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cornernet_ref import finetune
from cornernet_ref.checkpoint import load_checkpoint, save_checkpoint, write_atomically
from cornernet_ref.config import (
    CONFIGS,
    ShowConfigDefaults,
    TrainConfig,
    add_config_arguments,
    apply_overrides,
    config_from_dict,
    get_config,
    overrides_from_args,
    show_defaults,
)
from cornernet_ref.data.coco import CocoDetection, load_coco
from cornernet_ref.data.loader import StreamBatchSampler, TrainingSet, make_loader
from cornernet_ref.data.shapes import write_shapes
from cornernet_ref.errors import InputError, print_error
from cornernet_ref.evaluate import evaluate
from cornernet_ref.inference import model_source
from cornernet_ref.losses import CornerNetLoss
from cornernet_ref.model import CornerNet
from cornernet_ref.runlock import run_lock
from cornernet_ref.visualize import write_pictures

LOSS_TERMS = ("total", "focal", "pull", "push", "offset")


class NonFiniteLossError(RuntimeError):
    r"""The loss became NaN or infinite; the last checkpoint was left as it was."""


class Distributed:
    r"""This process's place in the job: ``rank`` of ``world_size``, and its device."""

    def __init__(self, device_name: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
        self.device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        self.enabled = self.world_size > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(values)
            values /= self.world_size
        return values

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def learning_rate(config: TrainConfig, iteration: int) -> float:
    r"""Step schedule: ``lr * lr_decay ** (number of decay points passed)``."""
    passed = sum(iteration >= point for point in config.lr_decay_iters)
    return config.lr * config.lr_decay**passed


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    r"""The autocast dtype of ``config.precision`` on ``device`` (None: full precision)."""
    if config.precision == "fp32" or (config.precision == "auto" and device.type == "cpu"):
        return None
    if config.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if config.precision == "bf16" else torch.float16


def prepare_data(config: TrainConfig) -> tuple[CocoDetection, tuple[Path, Path] | None]:
    r"""The training set and the (images, annotations) of the validation split, if any.

    The shapes splits are written under ``<out>/data`` (reused when already there);
    ``shapes_val = 0`` means no validation split.
    """
    if config.dataset == "shapes":
        root = Path(config.out) / "data"
        size, seed = config.shapes_size, config.shapes_seed
        train = write_shapes(root / "train", config.shapes_train, seed=seed, size=size)
        if not config.shapes_val:
            return CocoDetection(train[1], train[0]), None
        val = write_shapes(root / "val", config.shapes_val, seed=seed + 1, size=size)
        return CocoDetection(train[1], train[0]), val
    if not Path(config.train_images).is_dir():
        raise InputError(f"training image folder not found: {config.train_images}")
    source = CocoDetection(
        config.train_annotations, config.train_images, skip_unreadable=config.skip_unreadable
    )
    if config.val_images and config.val_annotations:
        if Path(config.val_annotations).is_file():
            CocoDetection(config.val_annotations, config.val_images)  # checked now, not at the end
            return source, (Path(config.val_images), Path(config.val_annotations))
        print(f"no validation: {config.val_annotations} not found", file=sys.stderr)
    return source, None


def validate(
    model: nn.Module, config: TrainConfig, val: tuple[Path, Path], device: torch.device
) -> dict[str, float]:
    r"""COCO metrics of ``model`` on the validation split (test pipeline of §4.1)."""
    images, annotations = val
    coco = load_coco(annotations)
    image_ids = sorted(coco.getImgIds())
    if config.val_limit:
        image_ids = image_ids[: config.val_limit]
    with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints its table
        metrics = evaluate(
            model_source(model, images, device), coco, image_ids=image_ids, config=config.test
        )
    model.train()
    return metrics


def rng_states() -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global state, if a user seeds it)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def micro_batches(
    dataset: TrainingSet, config: TrainConfig, job: Distributed, start: int
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    sampler = StreamBatchSampler(
        len(dataset),
        config.batch_size,
        start_iteration=start,
        stop_iteration=config.max_iters,
        rank=job.rank,
        world_size=job.world_size,
        accumulation=config.accumulation,
        seed=config.seed,
    )
    pin = config.pin_memory and job.device.type == "cuda"
    return iter(make_loader(dataset, sampler, workers=config.workers, pin_memory=pin))


def train(
    config: TrainConfig,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
) -> tuple[nn.Module, dict]:
    r"""Train with ``config`` (continuing the checkpoint ``resume``, if given).

    ``init_from`` starts a new run from the weights of a file instead (an official ``.pkl``
    or a checkpoint; the tensors of matching name and shape, see
    :mod:`cornernet_ref.finetune`).

    Returns:
        The trained model (unwrapped, on its device) and a summary: final iteration, last
        loss terms, what ``init_from`` loaded and, when a validation split exists, its COCO
        metrics (rank 0).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (before that step was applied).
    """
    if resume is not None and init_from is not None:
        raise ValueError("give resume (continue a run) or init_from (start one), not both")
    job = Distributed(config.device)
    try:
        return _train(config, job, resume, init_from)
    finally:
        job.close()


def _train(
    config: TrainConfig,
    job: Distributed,
    resume: str | Path | None,
    init_from: str | Path | None,
) -> tuple[nn.Module, dict]:
    # Setup: data, model, optimiser, resumed state.
    source, val = shared_data(config, job)
    config = replace(config, model=replace(config.model, num_classes=source.num_classes))
    if job.is_main:
        print(f"config {config.name}:\n{config}", file=sys.stderr)
    torch.manual_seed(config.seed)
    model = CornerNet(config.model).to(job.device)
    initialised = finetune.init_from(model, init_from) if init_from is not None else None
    if initialised is not None and job.is_main:
        print(initialised.summary(), file=sys.stderr)
    model = model.to(memory_format=memory_format(config))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    dtype = autocast_dtype(config, job.device)
    scaler = torch.amp.GradScaler(job.device.type, enabled=dtype == torch.float16)
    start = restore(resume, model, optimizer, scaler) if resume is not None else 0
    network = parallel(model, config, job)
    criterion = CornerNetLoss(config.pull_weight, config.push_weight, config.offset_weight)
    dataset = TrainingSet(
        source,
        config.augment,
        output_size=config.output_size,
        target_config=config.targets,
        seed=config.seed,
    )
    batches = micro_batches(dataset, config, job, start)
    log = RunLog(Path(config.out), enabled=job.is_main)

    # The loop: one step, then logging, checkpointing and validation when they are due.
    model.train()
    progress = tqdm(
        total=config.max_iters,
        initial=start,
        disable=not job.is_main,
        desc="train",
        file=sys.stderr,
    )
    terms = dict.fromkeys(LOSS_TERMS, 0.0)
    tick = time.perf_counter()
    with progress:
        for iteration in range(start, config.max_iters):
            terms = train_step(
                network, criterion, optimizer, scaler, batches, config, job, iteration
            )
            done = iteration + 1
            progress.update(1)
            if done % config.log_every == 0 or done == config.max_iters:
                seconds, tick = time.perf_counter() - tick, time.perf_counter()
                images_per_s = config.log_every * config.batch_size / max(seconds, 1e-9)
                progress.set_postfix(
                    {name: f"{value:.3f}" for name, value in terms.items()}
                    | {"img/s": f"{images_per_s:.1f}"}
                )
                lr = learning_rate(config, iteration)
                log.scalars("train", done, {"lr": lr, "images_per_s": images_per_s, **terms})
            if job.is_main and (done % config.checkpoint_every == 0 or done == config.max_iters):
                save_training_state(config, done, model, optimizer, scaler, source.class_names)
            validation_due = val is not None and config.val_every and done % config.val_every == 0
            if validation_due and done < config.max_iters:  # the last one comes below
                if job.is_main:
                    metrics = validate(model, config, val, job.device)
                    progress.write(f"iteration {done}: AP {metrics['AP']:.3f}")
                    log.scalars("val", done, metrics)
                job.barrier()

    # The end: the last validation and the pictures (rank 0).
    summary: dict[str, Any] = {"iteration": config.max_iters, "loss": terms}
    if initialised is not None:
        summary["init_from"] = initialised.to_dict()
    if job.is_main:
        if val is not None:
            summary["metrics"] = validate(model, config, val, job.device)
            log.scalars("val", config.max_iters, summary["metrics"])
        summary["pictures"] = str(
            write_pictures(model, Path(config.out), val, source.class_names, test=config.test)
        )
        print(f"pictures written to {summary['pictures']}", file=sys.stderr)
    log.close()
    return model, summary


def shared_data(
    config: TrainConfig, job: Distributed
) -> tuple[CocoDetection, tuple[Path, Path] | None]:
    r""":func:`prepare_data` on every rank, rank 0 first where it writes the shapes data.

    COCO data is read by every rank before any waits, so a bad path stops all of them rather
    than leaving some waiting.
    """
    if job.is_main or config.dataset == "coco":
        data = prepare_data(config)
    job.barrier()
    if not job.is_main and config.dataset == "shapes":
        data = prepare_data(config)
    return data


def restore(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> int:
    r"""Load the training state of the checkpoint ``path``; returns its iteration."""
    state = load_checkpoint(path, resume=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    restore_rng_states(state["rng"])
    return state["iteration"]


def memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def parallel(model: nn.Module, config: TrainConfig, job: Distributed) -> nn.Module:
    r"""``model`` as the loop calls it: in DistributedDataParallel over ranks, compiled."""
    network = model
    if job.enabled:
        device_ids = [job.device.index] if job.device.type == "cuda" else None
        network = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=True)
    return torch.compile(network) if config.compile else network


def train_step(
    network: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    config: TrainConfig,
    job: Distributed,
    iteration: int,
) -> dict[str, float]:
    r"""One optimiser step: iteration ``iteration`` on this rank's share of the global batch.

    The rank's $B / R$ images come as ``config.accumulation`` micro-batches $b_m$ from
    ``batches``; forward and loss run under autocast and the weighted losses accumulate
    their gradients:

    $$ g = \nabla_\theta \sum_m \frac{|b_m|}{B / R} \, L(b_m) $$

    DistributedDataParallel averages $g$ over the $R$ ranks, synchronising only after the
    last micro-batch; then Adam steps at the learning rate of :func:`learning_rate`.

    Returns:
        The loss terms :data:`LOSS_TERMS`, weighted as $g$ and averaged over the ranks.

    Raises:
        NonFiniteLossError: a term is NaN or infinite on some rank (every rank raises it);
            the step is not applied.
    """
    lr = learning_rate(config, iteration)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    dtype = autocast_dtype(config, job.device)
    rank_batch = config.batch_size // job.world_size  # B / R
    sums = torch.zeros(len(LOSS_TERMS), device=job.device)
    for step in range(config.accumulation):
        images, targets = next(batches)
        images = images.to(job.device, non_blocking=True, memory_format=memory_format(config))
        targets = {k: v.to(job.device, non_blocking=True) for k, v in targets.items()}
        weight = len(images) / rank_batch  # |b_m| / (B / R)
        last_step = step == config.accumulation - 1
        sync = contextlib.nullcontext() if last_step or not job.enabled else network.no_sync()
        with sync:
            with torch.autocast(job.device.type, dtype=dtype, enabled=dtype is not None):
                losses = criterion(network(images), targets)
            scaler.scale(losses["total"] * weight).backward()
        sums += torch.stack([losses[name].detach().float() for name in LOSS_TERMS]) * weight
    terms = dict(zip(LOSS_TERMS, job.all_mean(sums).tolist(), strict=True))
    if not all(math.isfinite(value) for value in terms.values()):
        raise NonFiniteLossError(
            f"loss became non-finite at iteration {iteration} ({terms}); the step was not "
            f"applied and the last good checkpoint ({checkpoint_path(config)}) is unchanged. "
            "Try a lower learning rate or --precision fp32."
        )
    scaler.step(optimizer)
    scaler.update()
    return terms


class RunLog:
    r"""The record of the scalars: ``<out>/history.jsonl`` and TensorBoard (rank 0 only)."""

    def __init__(self, out: Path, *, enabled: bool) -> None:
        self.history = out / "history.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # here: it is slow to import

            self.writer = SummaryWriter(str(out / "tensorboard"))

    def scalars(self, split: str, iteration: int, values: dict[str, float]) -> None:
        r"""Each value as the TensorBoard scalar ``split/name``; ``"train"`` values also as
        the line ``{"iteration": ..., **values}`` of ``history.jsonl``."""
        if self.writer is None:
            return
        if split == "train":
            with self.history.open("a") as file:
                file.write(json.dumps({"iteration": iteration, **values}) + "\n")
        for name, value in values.items():
            self.writer.add_scalar(f"{split}/{name}", value, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def checkpoint_path(config: TrainConfig) -> Path:
    return Path(config.out) / "checkpoints" / "last.pt"


def save_training_state(
    config: TrainConfig,
    iteration: int,
    model: CornerNet,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    class_names: list[str],
) -> None:
    r"""The checkpoint ``<out>/checkpoints/last.pt`` and ``config.json`` beside it, atomically."""
    state = {
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "class_names": class_names,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": iteration,
        "rng": rng_states(),
        "config": config.to_dict(),
    }
    path = checkpoint_path(config)
    save_checkpoint(path, state)
    config_text = (json.dumps(state["config"], indent=2) + "\n").encode()
    write_atomically(path.with_name("config.json"), lambda file: file.write(config_text))


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    r"""``cornernet-ref train``: with no arguments, the small config on shapes on the CPU."""
    parser = subparsers.add_parser(
        "train",
        help="train CornerNet (no arguments: a small model on synthetic shapes, CPU, minutes)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--config",
        default="small_shapes",
        choices=sorted(CONFIGS),
        action=ShowConfigDefaults,
        help="named configuration (before --help: the defaults shown are its values)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", type=Path, help="checkpoint to continue from")
    start.add_argument(
        "--init-from",
        type=Path,
        help="start a new run from these weights (official .pkl or checkpoint): tensors of "
        "matching name and shape load, the others start fresh",
    )
    parser.add_argument(
        "--images",
        dest="config__train_images",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="training images (COCO format)",
    )
    parser.add_argument(
        "--annotations",
        dest="config__train_annotations",
        default=argparse.SUPPRESS,
        metavar="JSON",
        help="training annotation JSON",
    )
    add_config_arguments(parser)
    show_defaults(parser, get_config(parser.get_default("config")))
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        saved = load_checkpoint(args.resume, resume=True)["config"]
        try:
            config = config_from_dict(saved, TrainConfig)
        except ValueError as error:  # written by a version with other fields
            raise InputError(f"{args.resume}: its training configuration: {error}") from error
    else:
        config = get_config(args.config)
    try:
        config = apply_overrides(config, overrides_from_args(args))
    except ValueError as error:  # a field out of range, or a combination the config rejects
        raise InputError(f"configuration: {error}") from error
    main = int(os.environ.get("RANK", "0")) == 0
    with run_lock(config.out) if main else contextlib.nullcontext():  # one run per folder
        try:
            _, summary = train(config, resume=args.resume, init_from=args.init_from)
        except NonFiniteLossError as error:
            print_error(str(error))
            return 1
        if main:
            print(json.dumps(summary, indent=2))
            if "metrics" in summary:
                path = Path(config.out) / "metrics.json"
                path.write_text(json.dumps(summary["metrics"], indent=2) + "\n")
                print(f"metrics written to {path}", file=sys.stderr)
    return 0
