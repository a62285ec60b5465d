"""The checkpoint format: round trip, atomic writes, and a clear error for every damaged file."""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import signal
import subprocess
import sys
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cornernet_ref.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    OutputError,
    atomic_path,
    interrupt_deferred,
    load_checkpoint,
    save_checkpoint,
    write_atomically,
)
from cornernet_ref.config import TrainConfig, config_from_dict
from cornernet_ref.losses import LossConfig
from cornernet_ref.model import CornerNet, ModelConfig

TINY_CONFIG = {
    "num_classes": 2, "n": 1, "nstack": 1, "dims": [4, 4], "modules": [1, 1],
    "cnv_dim": 4, "pre_dim": 4, "pool_dim": 4,
}  # fmt: skip


def model_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = CornerNet(ModelConfig.from_dict(TINY_CONFIG))
    return {"model": model.state_dict(), "model_config": TINY_CONFIG, "class_names": ["a", "b"]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[bytes, dict]:
    """The bytes of a saved checkpoint and the state saved."""
    path = tmp_path_factory.mktemp("saved") / "last.pt"
    state = model_state() | {"iteration": 7, "optimizer": {"lr": 1.0}}
    save_checkpoint(path, state)
    return path.read_bytes(), state


def assert_same_state(loaded: dict, state: dict) -> None:
    assert loaded.keys() >= state.keys()
    for key, value in state.items():
        if key == "model":
            assert loaded[key].keys() == value.keys()
            assert all(torch.equal(loaded[key][name], value[name]) for name in value)
        else:
            assert loaded[key] == value


def test_round_trip_marks_format_and_version(tmp_path, saved):
    data, state = saved
    path = tmp_path / "x.pt"
    path.write_bytes(data)
    loaded = load_checkpoint(path)
    assert (loaded["format"], loaded["version"]) == (FORMAT, VERSION)
    assert_same_state(loaded, state)
    model = CornerNet.from_checkpoint(path)
    assert model.class_names == ["a", "b"]


@given(cut=st.floats(0, 1, exclude_max=True))
def test_a_truncated_file_gets_an_error_naming_it(tmp_path_factory, saved, cut):
    data, _ = saved
    path = tmp_path_factory.mktemp("cut") / "truncated.pt"
    path.write_bytes(data[: int(cut * len(data))])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(path)


@given(position=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255))
def test_a_corrupt_byte_is_refused_or_harmless(tmp_path_factory, saved, position, byte):
    """Damage anywhere either gets a clear error or (in padding and such) changes nothing."""
    data, state = saved
    index = int(position * len(data))
    path = tmp_path_factory.mktemp("byte") / "corrupt.pt"
    path.write_bytes(data[:index] + bytes([byte]) + data[index + 1 :])
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as error:
        assert "corrupt.pt" in str(error)
    else:
        assert_same_state(loaded, state)


def test_damaged_tensor_bytes_fail_the_crc(tmp_path, saved):
    data, state = saved
    tensor = state["model"]["stem.conv7x7.conv.weight"]
    raw = tensor.numpy().tobytes()
    index = data.index(raw)  # stored uncompressed
    damaged = bytearray(data)
    damaged[index] ^= 0x40
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="flipped.pt is corrupt: record .* is damaged"):
        load_checkpoint(path)


def test_files_that_are_not_checkpoints(tmp_path):
    cases = {
        "missing.pt": None,
        "tensor.pt": torch.zeros(2),
        "other.pt": {"weights": {}},
        "official.pt": {"kps.0.up1.0.conv1.weight": torch.zeros(1)},
        "newer.pt": {"format": FORMAT, "version": VERSION + 1, **model_state()},
    }
    messages = {
        "missing.pt": "checkpoint not found: .*missing.pt",
        "tensor.pt": "tensor.pt is not a cornernet-ref checkpoint: it holds a Tensor",
        "other.pt": "other.pt is not a cornernet-ref checkpoint: expected a dict with 'model'",
        "official.pt": "official.pt holds an official CornerNet state dict; convert it first",
        "newer.pt": f"newer.pt has checkpoint format version {VERSION + 1}",
    }
    for name, content in cases.items():
        if content is not None:
            torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=messages[name]):
            load_checkpoint(tmp_path / name)
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError, match="folder.pt is a folder"):
        load_checkpoint(tmp_path / "folder.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="text.pt is truncated or corrupt"):
        load_checkpoint(tmp_path / "text.pt")


def test_resume_needs_the_training_state(tmp_path):
    save_checkpoint(tmp_path / "model.pt", model_state())
    with pytest.raises(CheckpointError, match="model.pt holds a model without its training"):
        load_checkpoint(tmp_path / "model.pt", resume=True)


def old_layout(state: dict) -> dict:
    """``state`` as versions 0 and 1 stored it: the model configuration as 'model_kwargs'."""
    old = dict(state)
    old["model_kwargs"] = old.pop("model_config")
    return old


def test_unversioned_files_still_load(tmp_path):
    """A dict with 'model' and 'model_kwargs' (the layout before the version) is version 0."""
    state = model_state(seed=1)
    torch.save(old_layout(state), tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert_same_state(loaded, state)
    assert "model_kwargs" not in loaded


def test_version_1_files_load_their_model_kwargs_as_the_model_config(tmp_path):
    state = model_state(seed=2)
    torch.save(old_layout(state) | {"format": FORMAT, "version": 1}, tmp_path / "v1.pt")
    assert_same_state(load_checkpoint(tmp_path / "v1.pt"), state)
    model = CornerNet.from_checkpoint(tmp_path / "v1.pt")
    assert model.config == ModelConfig.from_dict(TINY_CONFIG)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state["model"].items())


def test_a_version_2_file_needs_the_model_config(tmp_path):
    """Only versions 0 and 1 are read with the old key: in a version 2 file it is no model."""
    torch.save(old_layout(model_state()) | {"format": FORMAT, "version": 2}, tmp_path / "v2.pt")
    with pytest.raises(CheckpointError, match="v2.pt is not a cornernet-ref checkpoint"):
        load_checkpoint(tmp_path / "v2.pt")


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    first = model_state(seed=1)
    save_checkpoint(path, first)
    unpicklable = model_state(seed=2) | {"config": lambda: None}
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(path, unpicklable)
    assert_same_state(load_checkpoint(path), first)


def test_weights_that_do_not_fit_their_arguments(tmp_path):
    state = model_state() | {"model_config": TINY_CONFIG | {"num_classes": 3}}
    save_checkpoint(tmp_path / "mismatch.pt", state)
    with pytest.raises(CheckpointError, match="mismatch.pt does not build a model"):
        CornerNet.from_checkpoint(tmp_path / "mismatch.pt")


def test_a_model_config_with_an_unknown_field_builds_no_model(tmp_path):
    state = model_state() | {"model_config": TINY_CONFIG | {"depth": 2}}
    save_checkpoint(tmp_path / "unknown.pt", state)
    message = r"unknown.pt does not build a model: unknown .*'depth'"
    with pytest.raises(CheckpointError, match=message):
        CornerNet.from_checkpoint(tmp_path / "unknown.pt")


def test_version_2_training_configurations_load_with_their_loss_weights(tmp_path):
    """Up to version 2 the loss weights sat at the top of the training configuration; they
    load into ``config["loss"]``, so the run resumes with the weights it was trained with."""
    trained = TrainConfig(loss=LossConfig(pull_weight=0.2, push_weight=0.3, offset_weight=4.0))
    v2_config = {k: v for k, v in trained.to_dict().items() if k != "loss"}
    v2_config |= {"pull_weight": 0.2, "push_weight": 0.3, "offset_weight": 4.0}
    training = {"iteration": 1, "optimizer": {}, "scaler": {}, "rng": {}, "config": v2_config}
    v2 = model_state() | training | {"format": FORMAT, "version": 2}
    torch.save(v2, tmp_path / "v2.pt")
    loaded = load_checkpoint(tmp_path / "v2.pt", resume=True)
    assert config_from_dict(loaded["config"], TrainConfig) == trained
    # The same layout under the current version is refused by name, not guessed at.
    save_checkpoint(tmp_path / "v3.pt", model_state() | training)
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['offset_weight'"):
        config_from_dict(load_checkpoint(tmp_path / "v3.pt")["config"], TrainConfig)


@pytest.mark.parametrize("class_names", [["a", "b"], None])
def test_a_model_writes_the_half_of_a_checkpoint_it_reads_back(tmp_path, class_names):
    torch.manual_seed(3)
    model = CornerNet(ModelConfig.from_dict(TINY_CONFIG))
    model.class_names = class_names
    state = model.checkpoint_state()
    assert state["model_config"] == ModelConfig.from_dict(TINY_CONFIG).to_dict()
    save_checkpoint(tmp_path / "model.pt", state)
    loaded = CornerNet.from_checkpoint(tmp_path / "model.pt")
    assert loaded.config == model.config and loaded.class_names == class_names
    assert_same_state(loaded.checkpoint_state(), state)


class _FillsUp(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, file: io.BufferedWriter, room: int) -> None:
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)


def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(tmp_path):
    """torch.save hides the disk's error inside its own (``unexpected pos``): it is found."""
    path = tmp_path / "last.pt"
    first = model_state(seed=1)
    save_checkpoint(path, first)
    message = rf"^cannot write {re.escape(str(path))}: No space left on device; the previous"
    with pytest.raises(OutputError, match=message):
        write_atomically(path, lambda file: torch.save(model_state(seed=2), _FillsUp(file, 600)))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
    assert_same_state(load_checkpoint(path), first)


def test_an_unwritable_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "last.pt"  # its folder is a file
    message = rf"^cannot write {re.escape(str(path))}: .*file is not a folder$"
    with pytest.raises(OutputError, match=message):
        save_checkpoint(path, model_state())


def test_temporary_names_are_unique_and_beside_the_target(tmp_path):
    path = tmp_path / "last.pt"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert path.read_bytes() == b"1"  # the outer write is the last renamed
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    left = tmp_path / f".last.pt.{int(dead.stdout)}.0badf00d.tmp"  # its process has ended
    running = tmp_path / f".last.pt.{os.getpid()}.0badf00d.tmp"  # a write still going on
    other = tmp_path / f".best.pt.{int(dead.stdout)}.0badf00d.tmp"  # another file's
    for path in (left, running, other):
        path.write_bytes(b"partial")
    save_checkpoint(tmp_path / "last.pt", model_state())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.pt", running.name, other.name]
    )


def _save_pressing_ctrl_c(path, state, after_bytes: int) -> None:
    """save_checkpoint, with a SIGINT to this process once ``after_bytes`` are written."""

    class CtrlC(io.RawIOBase):
        def __init__(self, file):
            self.file, self.written = file, 0

        def writable(self):
            return True

        def write(self, data):
            if self.written < after_bytes <= self.written + len(data):
                os.kill(os.getpid(), signal.SIGINT)  # handled at the next Python line
            self.written += len(data)
            return self.file.write(data)

    write_atomically(path, lambda file: torch.save({**state, "format": FORMAT}, CtrlC(file)))


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.99])
def test_ctrl_c_during_a_save_finishes_the_file_then_interrupts(tmp_path, share):
    """Interrupted mid-write, torch.save turns the KeyboardInterrupt into a RuntimeError
    about the file position; held until the file is in place, it stays a Ctrl-C."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, model_state(seed=1))
    state = {**model_state(seed=2), "version": VERSION}
    size = len(path.read_bytes())  # the same tensors' sizes: about the size of the new file
    with pytest.raises(KeyboardInterrupt):
        _save_pressing_ctrl_c(path, state, after_bytes=max(1, int(share * size)))
    assert_same_state(load_checkpoint(path), state)  # the new file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_error_in_the_held_block_is_raised_and_the_handler_restored():
    with pytest.raises(ZeroDivisionError), interrupt_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        1 / 0  # noqa: B018
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_nothing_is_held():
    """Signals reach the main thread only: another thread's block runs as it is."""
    handlers = []

    def run():
        with interrupt_deferred():
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert handlers == [signal.default_int_handler]
