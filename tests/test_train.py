"""The trainer: 2 DDP processes equal one process, kill + resume equals no kill, NaN stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from cornernet_ref.config import ModelConfig, TrainConfig
from cornernet_ref.data.augment import AugmentConfig
from cornernet_ref.train import (
    NonFiniteLossError,
    learning_rate,
    load_checkpoint,
    train,
)

TINY = TrainConfig(
    name="tiny",
    model=ModelConfig(
        n=2, nstack=2, dims=(8, 8, 8), modules=(1, 1, 1), cnv_dim=8, pre_dim=8, pool_dim=8
    ),
    augment=AugmentConfig(input_size=63, border=16),
    output_size=16,
    max_objects=8,
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


def _ddp_worker(rank: int, config: TrainConfig, port: int, result_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    model, _ = train(config)
    torch.save(parameters(model), Path(result_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tmp_path):
    """Same global batch: 2 ranks x 1 micro-batch == 1 rank x 2 accumulated micro-batches."""
    ddp_config = replace(TINY, out=str(tmp_path / "ddp"))
    mp.spawn(_ddp_worker, args=(ddp_config, _free_port(), str(tmp_path)), nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert_same_parameters(rank0, rank1)  # DDP keeps the replicas identical
    single, _ = train(replace(TINY, accumulation=2, out=str(tmp_path / "single")))
    assert_same_parameters(parameters(single), rank0, atol=1e-5)
    initial = parameters(
        type(single)(**load_checkpoint(tmp_path / "single/checkpoints/last.pt")["model_kwargs"])
    )
    assert any(not torch.equal(initial[n], rank0[n]) for n in initial)  # training moved them


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    config = replace(TINY, max_iters=6, checkpoint_every=2, out=str(tmp_path / "killed"))
    checkpoint = tmp_path / "killed" / "checkpoints" / "last.pt"
    script = (
        "import json, sys; from cornernet_ref.config import config_from_dict; "
        "from cornernet_ref.train import train; train(config_from_dict(json.loads(sys.argv[1])))"
    )
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(config.to_dict())])
    try:
        while not checkpoint.exists() and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    stopped_at = load_checkpoint(checkpoint)["iteration"]
    assert stopped_at in (2, 4, 6)
    resumed, _ = train(config, resume=checkpoint)
    uninterrupted, _ = train(replace(config, out=str(tmp_path / "whole")))
    assert_same_parameters(parameters(resumed), parameters(uninterrupted))
    assert load_checkpoint(checkpoint)["iteration"] == 6


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import cornernet_ref.train as train_module

    calls = {"n": 0}
    real_loss = train_module.CornerNetLoss

    class PoisonedLoss(real_loss):
        def forward(self, outputs, targets):
            losses = super().forward(outputs, targets)
            calls["n"] += 1
            if calls["n"] > 2:  # the third iteration's loss becomes NaN
                losses = dict(losses, total=losses["total"] * float("nan"))
            return losses

    monkeypatch.setattr(train_module, "CornerNetLoss", PoisonedLoss)
    config = replace(TINY, max_iters=5, checkpoint_every=1, out=str(tmp_path))
    with pytest.raises(NonFiniteLossError, match="iteration 2"):
        train(config)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(value).all() for value in state["model"].values())
    assert json.loads((tmp_path / "checkpoints" / "config.json").read_text())["name"] == "tiny"
    assert not (tmp_path / "checkpoints" / "last.pt.tmp").exists()


def _tiny_arguments(out: Path) -> list[str]:
    """Command-line overrides turning small_shapes into the tiny configuration."""
    model = TINY.model
    return [
        "--model.n", str(model.n), "--model.nstack", str(model.nstack),
        "--model.dims", ",".join(map(str, model.dims)),
        "--model.modules", ",".join(map(str, model.modules)),
        "--model.cnv-dim", "8", "--model.pre-dim", "8", "--model.pool-dim", "8",
        "--augment.input-size", "63", "--augment.border", "16", "--output-size", "16",
        "--shapes-train", "8", "--shapes-val", "2", "--shapes-size", "56",
        "--batch-size", "2", "--workers", "0", "--out", str(out),
    ]  # fmt: skip


@pytest.mark.slow
def test_train_command_end_to_end(tmp_path):
    """``cornernet-ref train`` trains, evaluates and writes metrics; ``predict`` draws boxes."""
    from cornernet_ref.cli import main

    out = tmp_path / "run"
    assert main(["train", "--max-iters", "2", *_tiny_arguments(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AR100"}
    # COCO writes -1 for a metric when nothing was evaluated.
    assert all(0 <= metrics[name] <= 1 for name in ("AP", "AP50", "AR100")), metrics
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and state["model_kwargs"]["num_classes"] == 3
    assert list((out / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard scalars"
    image = sorted((out / "data" / "val" / "images").iterdir())[0]
    drawing = tmp_path / "boxes.png"
    checkpoint = str(out / "checkpoints" / "last.pt")
    assert main(["predict", "--checkpoint", checkpoint, str(image), "--out", str(drawing)]) == 0
    with Image.open(drawing) as drawn, Image.open(image) as original:
        assert drawn.format == "PNG" and drawn.size == original.size
    # Resuming with a longer schedule continues from iteration 2.
    assert main(["train", "--resume", checkpoint, "--max-iters", "3"]) == 0
    assert load_checkpoint(checkpoint)["iteration"] == 3
