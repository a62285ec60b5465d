"""The trainer: 2 DDP processes equal one process, kill + resume equals no kill, NaN stops."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import TINY_TRAINING as TINY
from helpers import tiny_arguments
from PIL import Image

from cornernet_ref.checkpoint import CheckpointError, load_checkpoint
from cornernet_ref.config import TrainConfig
from cornernet_ref.losses import CornerNetLoss
from cornernet_ref.model import CornerNet
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.train import NonFiniteLossError, learning_rate, train
from cornernet_ref.visualize import upscale_factor

TINY_MODEL = replace(TINY.model, num_classes=3)  # the shapes data has 3 classes


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def assert_same_parameters(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def test_learning_rate_steps():
    config = replace(TINY, lr=1.0, lr_decay_iters=(10, 20), lr_decay=0.5)
    assert [learning_rate(config, i) for i in (0, 9, 10, 19, 20, 99)] == [
        1.0, 1.0, 0.5, 0.5, 0.25, 0.25,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(worker, *args, nprocs: int = 2, timeout: float = 300.0) -> None:
    """Run ``worker(rank, *args)`` on ``nprocs`` processes; fail if one outlives ``timeout``."""
    context = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"a rank was still running after {timeout:.0f} s: it hangs")


def _join_gloo(rank: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)


def _ddp_worker(rank: int, config: TrainConfig, port: int, result_dir: str) -> None:
    _join_gloo(rank, port)
    model, _ = train(config)
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    torch.save(state, Path(result_dir) / f"rank{rank}.pt")


class FirstShareStatistics(CornerNet):
    """One process under the rule of the rank-0 statistics, for ``world_size`` ranks.

    Of every ``world_size`` training forward passes (an iteration's micro-batches, one per
    rank's share), only the first, rank 0's share, updates the batch-norm buffers: the
    others run with momentum 0 (the running statistics stay as they are) and do not count.
    """

    world_size = 2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.training_passes = 0

    def forward(self, images):
        first_share = not self.training or self.training_passes % self.world_size == 0
        self.training_passes += self.training
        if first_share:
            return super().forward(images)
        norms = [m for m in self.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.momentum = 0.0
        outputs = super().forward(images)
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked -= 1
        return outputs


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path, monkeypatch, one_thread):
    """Same global batch: 2 ranks x 1 micro-batch == 1 rank x 2 accumulated micro-batches.

    Parameters equal; the batch-norm buffers equal those of the documented rule (only rank
    0's share updates them), and the checkpoint holds exactly rank 0's model. Both sides run
    one torch thread: the sums of a convolution's gradient are split by thread, and Adam's
    first steps turn their last-bit differences into visible ones.
    """
    import cornernet_ref.train as train_module

    ddp_config = replace(TINY, out=str(tmp_path / "ddp"))
    _spawn(_ddp_worker, ddp_config, _free_port(), str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    names = {name for name, _ in CornerNet(TINY_MODEL).named_parameters()}
    buffers = rank0.keys() - names
    assert buffers and all("running" in n or "num_batches_tracked" in n for n in buffers)
    assert_same_parameters({n: rank0[n] for n in names}, {n: rank1[n] for n in names})
    monkeypatch.setattr(train_module, "CornerNet", FirstShareStatistics)
    single, _ = train(replace(TINY, accumulation=2, out=str(tmp_path / "single")))
    assert_same_parameters(single.state_dict(), rank0, atol=1e-5)
    for name in buffers:
        if name.endswith("num_batches_tracked"):  # one update per iteration, as in one rank
            assert rank0[name].item() == TINY.max_iters, name
    saved = load_checkpoint(tmp_path / "ddp/checkpoints/last.pt")["model"]
    assert saved.keys() == rank0.keys()
    assert all(torch.equal(saved[name], rank0[name]) for name in saved)
    torch.manual_seed(TINY.seed)  # the initial weights of both runs
    initial = parameters(CornerNet(TINY_MODEL))
    assert any(not torch.equal(initial[n], rank0[n]) for n in initial)  # training moved them
    assert any(not torch.equal(rank0[n], rank1[n]) for n in buffers)  # rank 1's are not kept


class PoisonedLoss(CornerNetLoss):
    """The loss, NaN from the ``poisoned_from``-th call on (counting from 0)."""

    poisoned_from = 1

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def forward(self, outputs, targets):
        losses = super().forward(outputs, targets)
        self.calls += 1
        if self.calls > self.poisoned_from:
            losses = dict(losses, total=losses["total"] * float("nan"))
        return losses


def _nan_worker(rank: int, config: TrainConfig, port: int, result_dir: str) -> None:
    """Rank 1 alone computes a NaN loss at its second iteration; each rank writes its error."""
    import cornernet_ref.train as train_module

    _join_gloo(rank, port)
    if rank == 1:
        train_module.CornerNetLoss = PoisonedLoss
    try:
        train(config)
    except NonFiniteLossError as error:
        (Path(result_dir) / f"rank{rank}.txt").write_text(str(error))


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank(tmp_path):
    config = replace(TINY, max_iters=4, checkpoint_every=1, out=str(tmp_path / "run"))
    _spawn(_nan_worker, config, _free_port(), str(tmp_path), timeout=150)
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert messages[0] == messages[1]
    assert "non-finite at iteration 1 " in messages[0]
    state = load_checkpoint(tmp_path / "run/checkpoints/last.pt", resume=True)
    assert state["iteration"] == 1


# The child of the fault-injection test: trains, and can stop itself inside a checkpoint
# write (half of the temporary file written, or all of it but not yet renamed) and wait
# there to be killed. argv: config JSON, checkpoint to resume ("" for none), where to
# stop ("half-written", "before-rename" or "none") and at which iteration's checkpoint,
# the file that tells the test the child has stopped.
FAULT_CHILD = """
import io, json, os, sys, time
from pathlib import Path
import torch
from cornernet_ref.config import TrainConfig, config_from_dict
from cornernet_ref.train import train

config = config_from_dict(json.loads(sys.argv[1]), TrainConfig)
resume, stop, stop_at, stopped = sys.argv[2] or None, sys.argv[3], int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(1)
real_save, real_replace, saving = torch.save, os.replace, {}


def wait_to_be_killed():
    Path(stopped).write_text("stopped")
    time.sleep(600)


def save(obj, file, *args, **kwargs):
    saving["iteration"] = obj.get("iteration") if isinstance(obj, dict) else None
    if stop == "half-written" and saving["iteration"] == stop_at:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        file.flush()
        wait_to_be_killed()
    real_save(obj, file, *args, **kwargs)


def replace(source, target):
    if stop == "before-rename" and Path(target).name == "last.pt":
        if saving["iteration"] == stop_at:
            wait_to_be_killed()
    real_replace(source, target)


torch.save, os.replace = save, replace
train(config, resume=resume)
"""


def _history(path: Path, start: int = 0) -> list[int]:
    """Iterations after ``start`` recorded in ``history.jsonl``, in the file's order."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # not the last: it may be being written
    iterations = [json.loads(line)["iteration"] for line in lines]
    return [iteration for iteration in iterations if iteration > start]


@pytest.mark.slow
def test_runs_killed_at_random_moments_resume_to_the_same_parameters(tmp_path, one_thread):
    """SIGKILL inside checkpoint writes and at random moments; resume after each kill.

    After every kill the last checkpoint loads; every resumed run trains (its history
    continues from its checkpoint); the end equals an uninterrupted run exactly.
    """
    config = replace(TINY, max_iters=8, checkpoint_every=1, out=str(tmp_path / "killed"))
    checkpoints = tmp_path / "killed" / "checkpoints"
    last = checkpoints / "last.pt"

    def temporaries() -> list[Path]:  # named .last.pt.<pid>.<random>.tmp
        return sorted(checkpoints.glob(".last.pt.*.tmp"))

    history = tmp_path / "killed" / "history.jsonl"
    (tmp_path / "child.py").write_text(FAULT_CHILD)
    rng = random.Random(0)
    stages = ["half-written", "random", "before-rename", "none"]
    for index, stage in enumerate(stages):
        start = load_checkpoint(last, resume=True)["iteration"] if last.exists() else 0
        # Pauses fall inside this run's own work, at least one checkpoint past its start;
        # a random kill lands between its first iteration and its final checkpoint.
        stop, stop_at = stage, min(start + rng.randint(2, 3), config.max_iters)
        if stage == "random":
            stop, stop_at = "before-rename", config.max_iters
        stopped = tmp_path / f"stopped-{index}"
        resume = str(last) if last.exists() else ""
        child = subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "child.py"),
                json.dumps(config.to_dict()),
                resume,
                stop,
                str(stop_at),
                str(stopped),
            ]  # fmt: skip
        )
        try:
            deadline = time.monotonic() + 240
            while child.poll() is None and time.monotonic() < deadline:
                if stage == "random" and _history(history, start):
                    time.sleep(rng.uniform(0.0, 0.3))
                    break
                if stopped.exists():
                    break
                time.sleep(0.02)
            status = child.poll()
        finally:
            child.kill()
            child.wait()
        ran = _history(history, start)
        if stage == "none":
            assert status == 0
            assert ran == list(range(start + 1, config.max_iters + 1))
            break
        assert status is None, f"the {stage} run ended (status {status}) before being killed"
        assert ran and ran[0] == start + 1, f"resumed at {start}, history continues {ran}"
        state = load_checkpoint(last, resume=True)  # a loadable last checkpoint, always
        assert state["iteration"] >= start
        if stage == "half-written":
            assert state["iteration"] == stop_at - 1
            [temporary] = temporaries()  # an earlier kill's was removed by a later write
            with pytest.raises(CheckpointError, match=r"\.tmp is truncated"):
                load_checkpoint(temporary)  # the kill did land inside the write
        elif stage == "before-rename":
            assert state["iteration"] == stop_at - 1
            [temporary] = temporaries()
            assert load_checkpoint(temporary)["iteration"] == stop_at
    assert load_checkpoint(last)["iteration"] == config.max_iters
    assert not temporaries()
    assert _history(history) == list(range(1, config.max_iters + 1))  # each iteration once
    train(replace(config, out=str(tmp_path / "whole")))
    resumed = load_checkpoint(last)["model"]
    uninterrupted = load_checkpoint(tmp_path / "whole/checkpoints/last.pt")["model"]
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import cornernet_ref.train as train_module

    monkeypatch.setattr(PoisonedLoss, "poisoned_from", 2)  # the third iteration's loss
    monkeypatch.setattr(train_module, "CornerNetLoss", PoisonedLoss)
    config = replace(TINY, max_iters=5, checkpoint_every=1, out=str(tmp_path))
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        train(config)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(value).all() for value in state["model"].values())
    assert json.loads((tmp_path / "config.json").read_text())["name"] == "tiny"
    assert not (tmp_path / "checkpoints" / "last.pt.tmp").exists()


@pytest.mark.slow
def test_train_command_end_to_end(tmp_path):
    """``cornernet-ref train`` trains, evaluates and writes metrics; ``predict`` draws boxes."""
    from cornernet_ref.cli import main

    out = tmp_path / "run"
    assert main(["train", "--max-iters", "2", *tiny_arguments(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AR100"}
    # COCO writes -1 for a metric when nothing was evaluated.
    assert all(0 <= metrics[name] <= 1 for name in ("AP", "AP50", "AR100")), metrics
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and state["model_config"]["num_classes"] == 3
    assert list((out / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard scalars"
    pictures = {path.name for path in (out / "pictures").iterdir()}
    assert pictures == {"detections.png", "loss.png", "heatmaps.png"}
    image = sorted((out / "data" / "val" / "images").iterdir())[0]
    drawing = tmp_path / "boxes.png"
    checkpoint = str(out / "checkpoints" / "last.pt")
    predict = ["predict", "--checkpoint", checkpoint, str(image), "--out", str(drawing)]
    assert main([*predict, "--heatmaps"]) == 0
    with Image.open(drawing) as drawn, Image.open(image) as original:
        factor = upscale_factor(original.height, original.width)
        assert drawn.format == "PNG"
        assert drawn.width == original.width * factor  # and a caption under the image
        assert drawn.height > original.height * factor
    with Image.open(tmp_path / "boxes_heatmaps.png") as panel:
        assert panel.format == "PNG"
    # Resuming with a longer schedule continues from iteration 2.
    assert main(["train", "--resume", checkpoint, "--max-iters", "3"]) == 0
    assert load_checkpoint(checkpoint)["iteration"] == 3


def test_single_object_push_is_set_from_the_command_line(tmp_path, monkeypatch):
    """``--loss.single-object-push true`` reaches the loss the run trains with, and there it
    gives images of one object the official push term (0 without it, Eq. 5 as written)."""
    import cornernet_ref.train as train_module
    from cornernet_ref.cli import main

    built = []

    class RecordedLoss(CornerNetLoss):
        def __init__(self, config):
            super().__init__(config)
            built.append(self)

    monkeypatch.setattr(train_module, "CornerNetLoss", RecordedLoss)
    for flag in ("false", "true"):
        options = ["--loss.single-object-push", flag, "--max-iters", "1", "--shapes-val", "0"]
        assert main(["train", *tiny_arguments(tmp_path / flag), *options]) == 0
    assert [criterion.single_object_push for criterion in built] == [False, True]
    # Two images of one object each: no pair to push apart.
    heat = torch.zeros(2, 1, 4, 4)
    maps = CornerNetOutput(heat, heat, torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4),
                           torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4))  # fmt: skip
    index, offsets = torch.tensor([[5, 0], [9, 0]]), torch.zeros(2, 2, 2)
    mask = torch.tensor([[1, 0], [1, 0]])
    targets = {"tl_heat": heat, "br_heat": heat, "tl_ind": index, "br_ind": index + 1,
               "mask": mask, "tl_off": offsets, "br_off": offsets}  # fmt: skip
    push = [criterion(maps, targets)["push"].item() for criterion in built]
    assert push[0] == 0 and push[1] > 0
