"""The trainer's GPU options, run on the CPU: bf16 autocast, fp16 with the gradient scaler
(a step skipped on an infinite gradient included), channels_last and ``torch.compile``.

Each runs a few iterations of :func:`cornernet_ref.train.train` itself on a tiny two-stack
model, so that a GPU run is never the first time one of these code paths executes.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAINING

from cornernet_ref.checkpoint import load_checkpoint
from cornernet_ref.config import TrainConfig
from cornernet_ref.model import CornerNet
from cornernet_ref.train import LOSS_TERMS, autocast_dtype, train

TINY = replace(TINY_TRAINING, shapes_train=8, batch_size=2, max_iters=2)
DEFAULT_SCALE = 2.0**16  # torch.amp.GradScaler's initial scale
LOW_SCALE = 2.0**8  # one under which the tiny model's gradients do not overflow by themselves
BACKOFF = 0.5  # the factor applied to the scale when a step is skipped


@pytest.fixture
def low_initial_scale(monkeypatch):
    """The trainer's gradient scaler starts at ``LOW_SCALE``."""
    monkeypatch.setattr(
        torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=LOW_SCALE)
    )


def initial_parameters(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The parameters ``train`` starts from (it seeds, then builds the model)."""
    torch.manual_seed(config.seed)
    model = CornerNet(replace(config.model, num_classes=3))  # the shapes data has 3 classes
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [
        name for name, value in model.named_parameters() if not torch.equal(value, before[name])
    ]


def finite_losses(summary: dict) -> bool:
    return all(math.isfinite(value) for value in summary["loss"].values())


@pytest.mark.parametrize(("option", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_trains_on_the_cpu(tmp_path, option, dtype, monkeypatch, low_initial_scale):
    """bf16 or fp16 autocast: the forward really runs in that dtype, the step is applied."""
    import cornernet_ref.train as train_module

    seen = []
    real_model = train_module.CornerNet

    class RecordingModel(real_model):  # records the dtype of the head's output maps
        def forward(self, images):
            outputs = super().forward(images)
            seen.append(outputs[-1].tl_heat.dtype)
            return outputs

    monkeypatch.setattr(train_module, "CornerNet", RecordingModel)
    config = replace(TINY, precision=option, out=str(tmp_path))
    assert autocast_dtype(config, torch.device("cpu")) == dtype
    before = initial_parameters(config)
    model, summary = train(config)
    assert seen == [dtype] * config.max_iters
    assert finite_losses(summary)
    assert changed(model, before)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    if option == "fp16":  # two good steps: the scaler kept its scale (it grows after 2000)
        assert state["scaler"]["scale"] == LOW_SCALE
    else:  # no scaler in bf16
        assert state["scaler"] == {}


def inf_on_first_backward(monkeypatch) -> list[int]:
    """Make the first backward pass leave an infinite gradient on one parameter."""
    import cornernet_ref.train as train_module

    backwards = []
    real_model = train_module.CornerNet

    class PoisonedModel(real_model):
        def __init__(self, config):
            super().__init__(config)
            first = next(self.parameters())

            def poison(grad: torch.Tensor) -> torch.Tensor:
                backwards.append(1)
                return torch.full_like(grad, math.inf) if len(backwards) == 1 else grad

            first.register_hook(poison)

    monkeypatch.setattr(train_module, "CornerNet", PoisonedModel)
    return backwards


def test_fp16_scaler_skips_the_step_of_an_infinite_gradient(
    tmp_path, monkeypatch, low_initial_scale
):
    """One iteration whose gradient is infinite: Adam does not step, the parameters stay
    as they were, and the scaler halves its scale."""
    backwards = inf_on_first_backward(monkeypatch)
    config = replace(TINY, precision="fp16", max_iters=1, out=str(tmp_path))
    before = initial_parameters(config)
    model, summary = train(config)
    assert backwards == [1]
    assert finite_losses(summary)  # the loss was fine; only the gradient overflowed
    assert changed(model, before) == []
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["scaler"]["scale"] == LOW_SCALE * BACKOFF
    assert state["optimizer"]["state"] == {}  # Adam never stepped


def test_fp16_scaler_steps_again_after_a_skipped_step(tmp_path, monkeypatch, low_initial_scale):
    """The first iteration is skipped, the second applied at the lowered scale."""
    backwards = inf_on_first_backward(monkeypatch)
    config = replace(TINY, precision="fp16", max_iters=2, out=str(tmp_path))
    before = initial_parameters(config)
    model, _ = train(config)
    assert len(backwards) == 2
    assert changed(model, before)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["scaler"]["scale"] == LOW_SCALE * BACKOFF
    assert {entry["step"].item() for entry in state["optimizer"]["state"].values()} == {1.0}


def test_fp16_default_scale_skips_overflowing_steps_until_it_fits(tmp_path):
    """With the default initial scale the scaled gradients of the first iterations overflow
    float16 by themselves: those steps are skipped, halving the scale each time, until one
    fits and Adam steps."""
    config = replace(TINY, precision="fp16", max_iters=5, out=str(tmp_path))
    before = initial_parameters(config)
    model, _ = train(config)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    adam_steps = {entry["step"].item() for entry in state["optimizer"]["state"].values()}
    assert len(adam_steps) == 1
    skipped = config.max_iters - int(adam_steps.pop())
    assert 1 <= skipped < config.max_iters
    assert state["scaler"]["scale"] == DEFAULT_SCALE * BACKOFF**skipped
    assert changed(model, before)


def test_channels_last_trains_as_the_default_layout(tmp_path, monkeypatch):
    """channels_last: the network sees NHWC inputs and weights, and its losses are those of
    the default layout (up to float rounding)."""
    import cornernet_ref.train as train_module

    layouts = []
    real_model = train_module.CornerNet

    class RecordingModel(real_model):
        def forward(self, images):
            layouts.append(images.is_contiguous(memory_format=torch.channels_last))
            return super().forward(images)

    monkeypatch.setattr(train_module, "CornerNet", RecordingModel)
    nhwc, _ = train(replace(TINY, channels_last=True, out=str(tmp_path / "nhwc")))
    convolution = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
    assert layouts == [True, True]
    train(replace(TINY, out=str(tmp_path / "nchw")))
    assert layouts == [True, True, False, False]
    assert_same_losses(tmp_path / "nhwc", tmp_path / "nchw")


def assert_same_losses(run: Path, other: Path) -> None:
    """The loss terms of two runs from the same start: equal up to float rounding at the
    first iteration (same weights, same batch); the total within 2% afterwards (Adam's first
    steps move each weight by about the learning rate whatever the size of its gradient,
    so rounding that flips the sign of a tiny gradient moves the weights apart)."""
    history, other_history = (
        [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
        for folder in (run, other)
    )
    assert [h["iteration"] for h in history] == [h["iteration"] for h in other_history]
    first, other_first = history[0], other_history[0]
    for term in LOSS_TERMS:
        assert first[term] == pytest.approx(other_first[term], rel=1e-4, abs=1e-6), term
    for record, other_record in zip(history, other_history, strict=True):
        assert record["total"] == pytest.approx(other_record["total"], rel=2e-2)


def compiler_missing() -> str | None:
    """Why inductor cannot compile here (it builds C++ for the CPU), or None."""
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        return "torch.compile (inductor) needs a C++ compiler on the CPU; none is on the PATH"
    return None


@pytest.mark.slow
# Warnings raised inside torch's own compiler, not by this project's code (they only show
# under -W error): inductor still calls torch.jit.script_method; dynamo instantiates the
# autograd Function it traces (the corner pool calls ``RowPool.apply`` on the class) and
# reads ``.grad`` of the non-leaf tensors it inspects.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compile_trains_as_eager(tmp_path):
    """``compile=True``: the inductor-compiled network trains with the losses of eager."""
    reason = compiler_missing()
    if reason:  # say why rather than pass silently
        pytest.fail(reason)
    train(replace(TINY, compile=True, out=str(tmp_path / "compiled")))
    train(replace(TINY, out=str(tmp_path / "eager")))
    assert_same_losses(tmp_path / "compiled", tmp_path / "eager")
