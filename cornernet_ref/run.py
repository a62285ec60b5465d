r"""The plumbing of a training run: its folder, its processes, its random state, its record.

[train][cornernet_ref.train.train] is the procedure; this module holds what it stands on:

* [RunFolder][cornernet_ref.run.RunFolder]: the names of everything a run writes under
  ``--out``;
* [Distributed][cornernet_ref.run.Distributed]: this process's rank among the ``torchrun``
  processes, its device, and the few collective operations the loop needs;
* [RunLog][cornernet_ref.run.RunLog]: the progress bar, ``history.jsonl`` and TensorBoard;
* [save_training_state][cornernet_ref.run.save_training_state] and
  [load_training_state][cornernet_ref.run.load_training_state]: the checkpoint of a run
  (:mod:`cornernet_ref.checkpoint`), with the optimiser, the loss scaler and every random
  state, so that ``--resume`` continues exactly where a run stopped.
* [announce][cornernet_ref.run.announce]: the run's full configuration on disk and its
  summary on the terminal;
* [check_resumable][cornernet_ref.run.check_resumable] and
  [check_resumed_classes][cornernet_ref.run.check_resumed_classes]: a run is continued only
  with the model and the data it was trained with, and only if it has iterations left.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from cornernet_ref.checkpoint import load_checkpoint, save_checkpoint, write_atomically
from cornernet_ref.errors import InputError

if TYPE_CHECKING:
    from cornernet_ref.config import TrainConfig
    from cornernet_ref.model import CornerNet


@dataclass(frozen=True)
class RunFolder:
    r"""What a run writes under its folder ``root`` (the configuration's ``out``)."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        r"""The last checkpoint, rewritten atomically as the run goes."""
        return self.root / "checkpoints" / "last.pt"

    @property
    def config(self) -> Path:
        r"""The run's full configuration as JSON, written when it starts (the checkpoint
        holds it too)."""
        return self.root / "config.json"

    @property
    def history(self) -> Path:
        r"""One JSON line of loss terms per logged iteration."""
        return self.root / "history.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def pictures(self) -> Path:
        r"""The end-of-training pictures (:func:`cornernet_ref.visualize.write_pictures`)."""
        return self.root / "pictures"

    @property
    def data(self) -> Path:
        r"""The generated shapes data (``train`` and ``val`` splits)."""
        return self.root / "data"

    @property
    def metrics(self) -> Path:
        r"""The COCO metrics of the last validation."""
        return self.root / "metrics.json"


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


class RunLog:
    r"""The record of a run (rank 0 only): the progress bar, the scalars of
    ``history.jsonl`` and TensorBoard.

    Args:
        run: the run folder.
        config: its ``max_iters``, ``log_every`` and ``batch_size`` set the bar and the rate.
        start: the iteration the run starts from.
        enabled: record anything at all (rank 0).
    """

    def __init__(self, run: RunFolder, config: TrainConfig, start: int, *, enabled: bool) -> None:
        self.history = run.history
        self.max_iters, self.log_every = config.max_iters, config.log_every
        self.images_per_log = config.log_every * config.batch_size
        self.progress = tqdm(
            total=config.max_iters,
            initial=start,
            disable=not enabled,
            desc="train",
            file=sys.stderr,
        )
        self.tick = time.perf_counter()
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # here: it is slow to import

            if start:  # a resumed run: what was logged after its checkpoint is redone
                self._truncate_history(start)
            # purge_step: TensorBoard drops its own scalars from the resumed iteration on.
            self.writer = SummaryWriter(str(run.tensorboard), purge_step=start or None)

    def _truncate_history(self, start: int) -> None:
        r"""Keep the lines of ``history.jsonl`` up to iteration ``start`` (the checkpoint's):
        the run that wrote it may have gone further before it stopped."""
        if not self.history.is_file():
            return
        lines = self.history.read_text().split("\n")[:-1]  # the last, if torn by a kill, not
        kept = "".join(f"{line}\n" for line in lines if json.loads(line)["iteration"] <= start)
        write_atomically(self.history, lambda file: file.write(kept.encode()))

    def step(self, done: int, terms: dict[str, float], lr: float) -> None:
        r"""Iteration ``done`` is over: the bar moves; every ``log_every`` iterations and at
        the last, the loss terms, ``lr`` and the images per second are recorded."""
        self.progress.update(1)
        if done % self.log_every == 0 or done == self.max_iters:
            seconds, self.tick = time.perf_counter() - self.tick, time.perf_counter()
            images_per_s = self.images_per_log / max(seconds, 1e-9)
            self.progress.set_postfix(
                {name: f"{value:.3f}" for name, value in terms.items()}
                | {"img/s": f"{images_per_s:.1f}"}
            )
            self.scalars("train", done, {"lr": lr, "images_per_s": images_per_s, **terms})
        if done == self.max_iters:
            self.progress.close()

    def validation(self, iteration: int, metrics: dict[str, float]) -> None:
        r"""The COCO metrics of a validation: a line under the bar, and the scalars."""
        self.progress.write(f"iteration {iteration}: AP {metrics['AP']:.3f}", file=sys.stderr)
        self.scalars("val", iteration, metrics)

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

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Also on an error or Ctrl-C: the bar ends its line, so a message after it starts a
        # line of its own, and TensorBoard's file is flushed.
        self.progress.close()
        if self.writer is not None:
            self.writer.close()


def rng_states() -> dict[str, Any]:
    r"""Every random state a run draws from: Python's, NumPy's global one, torch's (CPU, CUDA)."""
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


def save_training_state(
    run: RunFolder,
    config: TrainConfig,
    iteration: int,
    model: CornerNet,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> None:
    r"""The checkpoint :attr:`RunFolder.checkpoint`, atomically: the model's half
    (:meth:`~cornernet_ref.model.CornerNet.checkpoint_state`) and the training state."""
    state = model.checkpoint_state() | {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "iteration": iteration,
        "rng": rng_states(),
        "config": config.to_dict(),
    }
    save_checkpoint(run.checkpoint, state)


def announce(run: RunFolder, config: TrainConfig, model: nn.Module, device: torch.device) -> None:
    r"""The start of a run's record (rank 0): its full configuration, :attr:`RunFolder.config`,
    written atomically, and its short summary on stderr."""
    text = (str(config) + "\n").encode()
    write_atomically(run.config, lambda file: file.write(text))
    parameters = sum(p.numel() for p in model.parameters())
    print(config.summary(str(device), parameters), file=sys.stderr)


def check_resumable(path: str | Path, config: TrainConfig) -> dict[str, Any]:
    r"""The checkpoint at ``path``, read for ``--resume``; refused when its run is over, or
    when ``config`` trains another model or on other data.

    The model's configuration (all but ``num_classes``, which the data sets: see
    :func:`check_resumed_classes`) and the data's fields must be the checkpoint's; the
    schedule, the optimiser's settings and the rest may change.

    Raises:
        InputError: naming ``path`` and, for a changed run, every field that differs.
    """
    state = load_checkpoint(path, resume=True)
    if state["iteration"] >= config.max_iters:
        raise InputError(
            f"{path} is at iteration {state['iteration']}, and this run ends at "
            f"{config.max_iters} (max_iters): there is nothing left to train; give a larger "
            "--max-iters to train further"
        )
    saved = {"model": state["model_config"], **state["config"]}
    requested = config.to_dict()
    fields = [f"model.{name}" for name in requested["model"] if name != "num_classes"]
    fields += ["dataset"] + list(_DATA_FIELDS[requested["dataset"]])
    differ = [
        f"{name} {_field(saved, name)!r} -> {_field(requested, name)!r}"
        for name in fields
        if _field(saved, name) != _field(requested, name)
    ]
    if differ:
        raise InputError(
            f"cannot resume {path} with another model or other data ({'; '.join(differ)}): "
            f"resume without changing them, or start a new run from its weights with "
            f"--init-from {path}"
        )
    return state


# The fields that choose the training data, by dataset: a resumed run must keep them.
_DATA_FIELDS = {
    "coco": ("train_annotations",),
    "shapes": ("shapes_train", "shapes_size", "shapes_seed"),
}


def _field(config: dict[str, Any], name: str) -> Any:
    r"""The value of the dotted field ``name`` of a configuration's dict, as JSON writes it
    (tuples become lists), or None when it has no such field."""
    for part in name.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return json.loads(json.dumps(config))


def check_resumed_classes(path: str | Path, state: dict[str, Any], class_names: list[str]) -> None:
    r"""Refuse to continue the checkpoint ``state`` on data of other classes than its own.

    Raises:
        InputError: naming ``path`` and both lists of classes.
    """
    saved = state["class_names"] or [str(i) for i in range(state["model_config"]["num_classes"])]
    if list(saved) != list(class_names):
        raise InputError(
            f"cannot resume {path} on this data: the checkpoint has {len(saved)} classes "
            f"({_some(saved)}), the data {len(class_names)} ({_some(class_names)})"
        )


def _some(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def load_training_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> int:
    r"""Load a checkpoint's training state (``load_checkpoint(path, resume=True)``, checked
    by :func:`check_resumable`) into the run; returns its iteration."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    restore_rng_states(state["rng"])
    return state["iteration"]


__all__ = [
    "Distributed",
    "RunFolder",
    "RunLog",
    "announce",
    "check_resumable",
    "check_resumed_classes",
    "load_training_state",
    "restore_rng_states",
    "rng_states",
    "save_training_state",
]
