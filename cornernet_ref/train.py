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
The run's folder, processes, random state, log and checkpoints are :mod:`cornernet_ref.run`;
this module is the procedure, read from the top: :func:`train`, then the helpers in the
order it calls them.

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

import contextlib
import math
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cornernet_ref import finetune
from cornernet_ref.config import TrainConfig
from cornernet_ref.data.coco import CocoDetection, load_coco
from cornernet_ref.data.loader import StreamBatchSampler, TrainingSet, make_loader
from cornernet_ref.data.prepare import shared_data
from cornernet_ref.evaluate import evaluate
from cornernet_ref.inference import model_source
from cornernet_ref.losses import CornerNetLoss
from cornernet_ref.model import CornerNet
from cornernet_ref.run import (
    Distributed,
    RunFolder,
    RunLog,
    announce,
    check_resumable,
    check_resumed_classes,
    load_training_state,
    save_training_state,
)
from cornernet_ref.visualize import write_pictures

LOSS_TERMS = ("total", "focal", "pull", "push", "offset")


class NonFiniteLossError(RuntimeError):
    r"""The loss became NaN or infinite; the last checkpoint was left as it was."""


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
    # Setup: data, model, optimiser, loss, resumed state, the stream of micro-batches.
    # The files given are read and checked before any data is read or written.
    resumed = check_resumable(resume, config) if resume is not None else None
    weights = finetune.read_weights(init_from) if init_from is not None else None
    source, val = shared_data(config, job)
    config = replace(config, model=replace(config.model, num_classes=source.num_classes))
    if resumed is not None:
        check_resumed_classes(resume, resumed, source.class_names)
    run = RunFolder(Path(config.out))
    model, initialised = build_model(config, job, source.class_names, init_from, weights)
    if job.is_main:
        announce(run, config, model, job.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    fp16 = autocast_dtype(config, job.device) == torch.float16
    scaler = torch.amp.GradScaler(job.device.type, enabled=fp16)  # fp16 needs loss scaling
    start = load_training_state(resumed, model, optimizer, scaler) if resumed is not None else 0
    network = parallel(model, config, job)
    criterion = CornerNetLoss(config.loss)
    batches = micro_batches(source, config, job, start)
    saved = start if resume is not None else None  # the iteration of the last checkpoint
    with RunLog(run, config, start, enabled=job.is_main) as log:
        # The loop: one optimiser step per iteration, from the resumed one to max_iters.
        model.train()
        terms = dict.fromkeys(LOSS_TERMS, 0.0)
        for iteration in range(start, config.max_iters):
            # theta <- Adam(theta, g) with g = grad sum_m |b_m| / (B / R) L(b_m) over the batch.
            try:
                terms = train_step(
                    network, criterion, optimizer, scaler, batches, config, job, iteration
                )
            except NonFiniteLossError as error:
                raise non_finite_stop(error, run, saved) from None
            done = iteration + 1
            # The record: the loss terms and the learning rate, every log_every iterations.
            log.step(done, terms, learning_rate(config, iteration))
            # The checkpoint: every checkpoint_every iterations and at the end (rank 0 writes).
            if done % config.checkpoint_every == 0 or done == config.max_iters:
                if job.is_main:
                    save_training_state(run, config, done, model, optimizer, scaler)
                saved = done
            # Validation every val_every iterations (the last one comes after the loop); the
            # other ranks wait for rank 0's.
            validation_due = val is not None and config.val_every and done % config.val_every == 0
            if validation_due and done < config.max_iters:
                if job.is_main:
                    log.validation(done, validate(model, config, val, job.device))
                job.barrier()

        # The end: the last validation and the pictures (rank 0).
        summary: dict[str, Any] = {"iteration": config.max_iters, "loss": terms}
        if initialised is not None:
            summary["init_from"] = initialised.to_dict()
        if job.is_main:
            summary |= finish(model, config, val, run, log, source.class_names, job.device)
    return model, summary


def build_model(
    config: TrainConfig,
    job: Distributed,
    class_names: list[str],
    init_from: str | Path | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> tuple[CornerNet, finetune.InitReport | None]:
    r"""The network on this rank's device, its initial weights drawn from ``config.seed``
    (the same on every rank) or loaded from ``weights``, read from the file ``init_from``
    (:func:`~cornernet_ref.finetune.read_weights`); and what they loaded."""
    torch.manual_seed(config.seed)
    model = CornerNet(config.model).to(job.device)
    model.class_names = list(class_names)
    initialised = None
    if weights is not None:
        initialised = finetune.load_matching(model, weights, str(init_from))
    if initialised is not None and job.is_main:
        print(initialised.summary(), file=sys.stderr)
    return model.to(memory_format=memory_format(config)), initialised


def memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    r"""The autocast dtype of ``config.precision`` on ``device`` (None: full precision)."""
    if config.precision == "fp32" or (config.precision == "auto" and device.type == "cpu"):
        return None
    if config.precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if config.precision == "bf16" else torch.float16


def parallel(model: nn.Module, config: TrainConfig, job: Distributed) -> nn.Module:
    r"""``model`` as the loop calls it: in DistributedDataParallel over ranks, compiled."""
    network = model
    if job.enabled:
        device_ids = [job.device.index] if job.device.type == "cuda" else None
        network = DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=True)
    return torch.compile(network) if config.compile else network


def micro_batches(
    source: CocoDetection, config: TrainConfig, job: Distributed, start: int
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    r"""This rank's micro-batches of augmented images and their targets, from iteration
    ``start`` on: ``config.accumulation`` per iteration, in the order of
    :class:`~cornernet_ref.data.loader.StreamBatchSampler`."""
    dataset = TrainingSet(
        source,
        config.augment,
        output_size=config.output_size,
        target_config=config.targets,
        seed=config.seed,
    )
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
    optimizer.zero_grad(set_to_none=True)  # g starts at 0
    dtype = autocast_dtype(config, job.device)
    rank_batch = config.batch_size // job.world_size  # B / R
    sums = torch.zeros(len(LOSS_TERMS), device=job.device)
    for step in range(config.accumulation):
        images, targets = next(batches)  # the micro-batch b_m
        images = images.to(job.device, non_blocking=True, memory_format=memory_format(config))
        targets = {k: v.to(job.device, non_blocking=True) for k, v in targets.items()}
        weight = len(images) / rank_batch  # |b_m| / (B / R)
        # DDP averages g over the R ranks once, after the last micro-batch.
        last_step = step == config.accumulation - 1
        sync = contextlib.nullcontext() if last_step or not job.enabled else network.no_sync()
        with sync:
            with torch.autocast(job.device.type, dtype=dtype, enabled=dtype is not None):
                losses = criterion(network(images), targets)  # L(b_m) and its terms
            scaler.scale(losses["total"] * weight).backward()  # g += grad of the weighted L(b_m)
        sums += torch.stack([losses[name].detach().float() for name in LOSS_TERMS]) * weight
    terms = dict(zip(LOSS_TERMS, job.all_mean(sums).tolist(), strict=True))  # mean over ranks
    if not all(math.isfinite(value) for value in terms.values()):
        raise NonFiniteLossError(
            f"loss became non-finite at iteration {iteration} ({terms}); the step was not applied"
        )
    scaler.step(optimizer)  # theta <- Adam(theta, g) at rate lr (skipped if fp16 overflowed)
    scaler.update()
    return terms


def learning_rate(config: TrainConfig, iteration: int) -> float:
    r"""Step schedule: ``lr * lr_decay ** (number of decay points passed)``."""
    passed = sum(iteration >= point for point in config.lr_decay_iters)
    return config.lr * config.lr_decay**passed


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


def non_finite_stop(
    error: NonFiniteLossError, run: RunFolder, saved: int | None
) -> NonFiniteLossError:
    r"""``error`` with what is on disk: the last checkpoint's iteration, or none yet."""
    kept = (
        f"the last good checkpoint ({run.checkpoint}, iteration {saved}) is unchanged"
        if saved is not None
        else "no checkpoint was written yet"
    )
    return NonFiniteLossError(f"{error}; {kept}. Try a lower learning rate or --precision fp32.")


def finish(
    model: CornerNet,
    config: TrainConfig,
    val: tuple[Path, Path] | None,
    run: RunFolder,
    log: RunLog,
    class_names: list[str],
    device: torch.device,
) -> dict[str, Any]:
    r"""Rank 0's end of a run: the last validation (``metrics``) and the pictures."""
    summary: dict[str, Any] = {}
    if val is not None:
        summary["metrics"] = validate(model, config, val, device)
        log.validation(config.max_iters, summary["metrics"])
    pictures = write_pictures(model, run.root, val, class_names, test=config.test)
    print(f"pictures written to {pictures}", file=sys.stderr)
    return summary | {"pictures": str(pictures)}
