r"""One run per folder: a lock on a run's output folder.

Two training runs writing into one folder would overwrite each other's checkpoints and mix
their histories. :func:`run_lock` stops the second at once, with one line naming the
folder and the run that holds it.

The lock is the file ``<out>/run.lock`` under an exclusive ``flock``, taken without
waiting. The kernel releases a ``flock`` when its process ends, however it ends (a crash,
``SIGKILL``, a power cut), so a lock can never be stale: the next run on the folder, such
as ``--resume`` after a crash, takes it over. The file's text names the holder (its pid,
host and start time) for the second run's message; it is removed when the run ends.

``flock`` locks are per open file, so this holds between processes on one machine and on
local file systems; a folder on a network file system shared by several machines may not
honour them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cornernet_ref.checkpoint import OutputError
from cornernet_ref.errors import InputError

LOCK_NAME = "run.lock"


class FolderInUseError(InputError):
    r"""Another run holds the output folder; the message names the folder and the holder."""


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[Path]:
    r"""Hold the lock on the run folder ``out`` (made if missing) for the ``with`` block.

    Yields:
        The lock file's path.

    Raises:
        FolderInUseError: another process holds ``out``; naming it and the holder.
        OutputError: ``out`` cannot be made or written, with the operating system's reason.
    """
    path = Path(out) / LOCK_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = _locked_descriptor(path)
    except OSError as error:
        raise OutputError(f"cannot lock the run folder {out}: {error.strerror}") from error
    try:
        holder = f"pid {os.getpid()} on {socket.gethostname()}, started {_now()}\n"
        os.ftruncate(descriptor, 0)
        os.write(descriptor, holder.encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before the unlock: a waiting run then finds the file gone
        os.close(descriptor)  # releases the lock


def _locked_descriptor(path: Path) -> int:
    r"""An open descriptor of ``path`` holding its ``flock``.

    Raises:
        FolderInUseError: another open file holds the lock.
    """
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 200).decode(errors="replace").strip() or "starting"
            os.close(descriptor)
            raise FolderInUseError(
                f"the run folder {path.parent} is in use by another run ({holder}); wait for "
                "it to end or give another --out"
            ) from None
        # The holder may have removed the file between our open and our lock: then the lock
        # is on a file nobody else sees, and the new one at `path` is to be taken instead.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        os.close(descriptor)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


__all__ = ["LOCK_NAME", "FolderInUseError", "run_lock"]
