r"""Checkpoint files: one format for training, resuming, evaluation, prediction and conversion.

A checkpoint is a ``torch.save``'d dict:

| key | holds | written by |
| --- | --- | --- |
| ``format``, ``version`` | :data:`FORMAT`, :data:`VERSION` | every checkpoint |
| ``model`` | the model's state dict | every checkpoint |
| ``model_config`` | the model's configuration, as ``ModelConfig.to_dict()`` | every checkpoint |
| ``class_names`` | the names of the classes, or None | every checkpoint |
| ``iteration``, ``optimizer``, ``scaler``, ``rng``, ``config`` | the training state | training |
| ``converted_from`` | the name of the official file | ``cornernet-ref convert`` |

The file is the zip archive ``torch.save`` writes, which keeps a CRC-32 of every record.

**Atomic.** :func:`save_checkpoint` writes a temporary file of a unique name in the
target's folder, forces it to disk (``fsync``), renames it over the target (``os.replace``,
atomic) and forces the folder's entry to disk too. A process killed at any moment leaves
the old checkpoint or the new one, never a mix; its temporary file is removed by the next
write of the same file. A Ctrl-C during the write takes effect once the new file is in
place. A write that fails (a full disk, a read-only folder) removes its temporary file,
keeps the old checkpoint and raises :class:`OutputError`, naming the file and the operating
system's reason.

**Clear errors.** :func:`load_checkpoint` raises :class:`CheckpointError`, naming the file,
when it is missing, truncated or corrupt (not a zip archive, or a record whose bytes no
longer match their CRC: checked before unpickling, since damaged bytes can make the
unpickler ask for any amount of memory), unreadable (the operating system's reason), in
torch's legacy format (how to save it again is said), not a checkpoint of this project (an
official state dict is told to be converted first), written by a newer format version,
holds weights with NaN or infinite values (naming the tensor), or, for resuming, holds a
model without its training state. Files written before the format had
a version (a dict with ``model`` and ``model_kwargs``) are read as version 0.

**Versions.** Version 2 calls the model's configuration
(:class:`~cornernet_ref.model.ModelConfig`) ``model_config``; versions 0 and 1
stored the same dict under ``model_kwargs``, which :func:`load_checkpoint` renames. Version 3
nests the loss weights of the training configuration in ``config["loss"]``
(:class:`~cornernet_ref.losses.LossConfig`); earlier versions kept ``pull_weight``,
``push_weight`` and ``offset_weight`` at its top, which :func:`load_checkpoint` moves. So
older files load unchanged, and resume with the configuration they were trained with.

Checkpoints are pickles (the random states are Python objects): load only files you trust.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import signal
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from cornernet_ref.errors import InputError, first_line

FORMAT = "cornernet-ref checkpoint"
VERSION = 3
MODEL_KEYS = ("model", "model_config")
_OLD_MODEL_CONFIG_KEY = "model_kwargs"  # versions 0 and 1
_OLD_LOSS_FIELDS = ("pull_weight", "push_weight", "offset_weight")  # top-level up to version 2
RESUME_KEYS = ("iteration", "optimizer", "scaler", "rng", "config")
# The first bytes of a file of torch.save's legacy format (a pickle, no zip archive): the
# pickle protocol 2 marker and torch's magic number, 0x1950A86A20F9469CFC6C, pickled.
_LEGACY_HEAD = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


class CheckpointError(InputError, ValueError):
    r"""A checkpoint file cannot be used; the message names the file and what is wrong."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    r"""Write ``state`` (with at least :data:`MODEL_KEYS`) to ``path`` atomically.

    The format marker and the version are added here.
    """
    missing = [key for key in (*MODEL_KEYS, "class_names") if key not in state]
    if missing:
        raise ValueError(f"a checkpoint needs {missing}")
    payload = {**state, "format": FORMAT, "version": VERSION}
    write_atomically(Path(path), lambda file: torch.save(payload, file))


class OutputError(InputError, OSError):
    r"""A file cannot be written (a full disk, a read-only or unwritable folder); the message
    names the file and the operating system's reason."""


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    r"""Call ``write`` on a temporary file beside ``path``, force it to disk, rename it over.

    A Ctrl-C meanwhile takes effect once the file is in place (:func:`interrupt_deferred`):
    a checkpoint being saved is finished, not abandoned halfway. See :func:`atomic_path`.
    """
    with interrupt_deferred(), atomic_path(path) as temporary, temporary.open("wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


@contextlib.contextmanager
def interrupt_deferred() -> Iterator[None]:
    r"""Hold a Ctrl-C (SIGINT) until the block is over, then raise ``KeyboardInterrupt``.

    Interrupted inside a writer, a KeyboardInterrupt can turn into another error on its
    way out (``torch.save`` closing its archive raises a ``RuntimeError`` about the file
    position), which would end the command with a traceback instead of the one line of a
    Ctrl-C. Signals reach the main thread only, and only Python's own handler is replaced:
    elsewhere, or with a handler of the caller's, the block runs as it is. An error raised
    by the block goes on its way, the held Ctrl-C with it.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    r"""A temporary path beside ``path`` to write to; on success it is renamed over ``path``.

    The temporary name is unique to this write (``.<name>.<pid>.<random>.tmp``), so writers
    of the same file never share one. On any failure the temporary file is removed and
    ``path`` is left as it was; after the rename the folder's entry is forced to disk, and
    temporary files of ``path`` left by killed writers (whose pid no longer runs) are removed.

    Raises:
        OutputError: the folder cannot be made or written, or the disk is full: naming
            ``path`` and the operating system's reason (also when the writer wrapped that
            error in another, as ``torch.save`` does).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):  # never written, or its folder is gone
            temporary.unlink()
        cause = _os_error(error)
        if cause is None:
            raise
        reason = cause.strerror or str(cause)
        if isinstance(cause, FileExistsError):  # from mkdir: a file where a folder should be
            reason = f"{cause.filename} is not a folder"
        kept = "; the previous file is unchanged" if path.is_file() else ""
        raise OutputError(f"cannot write {path}: {reason}{kept}") from error
    if os.name == "posix":  # the rename itself reaches the disk with the folder's entry
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    _remove_stale_temporaries(path)


def _remove_stale_temporaries(path: Path) -> None:
    r"""Remove the temporary files of ``path`` left by writers killed mid-write: those
    whose process (the pid in the name) no longer runs."""
    for temporary in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = temporary.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                temporary.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def _os_error(error: BaseException | None) -> OSError | None:
    r"""The operating system's error behind ``error``: itself, or one it was raised from."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def load_checkpoint(path: str | Path, *, resume: bool = False) -> dict[str, Any]:
    r"""Read and check a checkpoint (on the CPU).

    Args:
        path: the file.
        resume: also require the training state (:data:`RESUME_KEYS`).

    Returns:
        The dict of the table above, in the layout of :data:`VERSION` (an older version's
        ``model_kwargs`` renamed ``model_config``, its loss weights moved into
        ``config["loss"]``).

    Raises:
        CheckpointError: naming ``path`` and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} is a folder, not a file"
            if path.is_dir()
            else f"checkpoint not found: {path}"
        )
    try:
        with path.open("rb") as file:
            head = file.read(len(_LEGACY_HEAD))
    except OSError as error:  # no permission, a read error: as the operating system says
        raise CheckpointError(
            f"cannot read checkpoint {path}: {error.strerror or error}"
        ) from error
    if head == _LEGACY_HEAD:
        raise CheckpointError(
            f"checkpoint {path} is in the legacy torch format (before torch 1.6), which is not "
            'read here; save it again in the current format with `python -c "import torch; '
            f"torch.save(torch.load('{path}', weights_only=False), 'NEW.pt')\"` (trusted files "
            "only)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every record and checks its CRC-32
        if damaged is not None:
            raise CheckpointError(f"checkpoint {path} is corrupt: record {damaged!r} is damaged")
        state = torch.load(path, map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as error:  # damaged bytes make the readers raise any of many types
        reason = first_line(error)
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {reason}") from error
    state = _upgrade(state)
    _check(path, state, resume)
    return state


def _upgrade(state: Any) -> Any:
    r"""An older version's checkpoint in the layout of the current one (else ``state``)."""
    version = state.get("version", 0) if isinstance(state, dict) else None
    if not isinstance(version, int):
        return state  # not a checkpoint: _check names what it is
    if version <= 1 and _OLD_MODEL_CONFIG_KEY in state:
        state["model_config"] = state.pop(_OLD_MODEL_CONFIG_KEY)
    if version <= 2 and isinstance(state.get("config"), dict):
        config = dict(state["config"])
        loss = {name: config.pop(name) for name in _OLD_LOSS_FIELDS if name in config}
        state["config"] = config | {"loss": loss}
    return state


def _check(path: Path, state: Any, resume: bool) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} is not a cornernet-ref checkpoint: it holds a {type(state).__name__}"
        )
    if state.get("format", FORMAT) != FORMAT or not set(MODEL_KEYS) <= state.keys():
        if any("kps.0." in str(key) for key in state):
            raise CheckpointError(
                f"{path} holds an official CornerNet state dict; convert it first with "
                "`cornernet-ref convert OFFICIAL.pkl OUT.pt`"
            )
        raise CheckpointError(
            f"{path} is not a cornernet-ref checkpoint: expected a dict with 'model' and "
            f"'model_config', got keys {sorted(map(str, state))[:5]}"
        )
    version = state.get("version", 0)
    if not isinstance(version, int) or not 0 <= version <= VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this cornernet-ref reads "
            f"versions 0 to {VERSION} (a newer cornernet-ref wrote it?)"
        )
    missing = [key for key in RESUME_KEYS if key not in state]
    if resume and missing:
        raise CheckpointError(
            f"{path} holds a model without its training state ({', '.join(missing)} missing): "
            "it cannot be resumed"
        )
    for name, tensor in state["model"].items():  # a diverged run's weights predict nothing
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not tensor.isfinite().all():
            raise CheckpointError(
                f"checkpoint {path}: its weight {name!r} holds NaN or infinite values "
                "(saved from a run that diverged?)"
            )


__all__ = [
    "FORMAT",
    "MODEL_KEYS",
    "RESUME_KEYS",
    "VERSION",
    "CheckpointError",
    "OutputError",
    "atomic_path",
    "interrupt_deferred",
    "load_checkpoint",
    "save_checkpoint",
    "write_atomically",
]
