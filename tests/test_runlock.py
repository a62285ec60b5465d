"""One run per folder: a second process is refused at once; a dead holder's lock is taken."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cornernet_ref.checkpoint import OutputError
from cornernet_ref.runlock import LOCK_NAME, FolderInUseError, run_lock

REPO_ROOT = Path(__file__).resolve().parents[1]
HOLD = (
    "import sys; from cornernet_ref.runlock import run_lock\n"
    "with run_lock(sys.argv[1]):\n"
    "    print('held', flush=True); sys.stdin.read()\n"
)


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock on ``tmp_path / "run"`` until it is killed."""
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdout.readline() == "held\n"
    yield out, process
    process.kill()
    process.wait()
    process.stdout.close()
    process.stdin.close()


def test_a_second_run_on_the_folder_is_refused_naming_the_holder(holder):
    out, process = holder
    message = (
        rf"^the run folder {out} is in use by another run \(pid {process.pid} on "
        rf"{socket.gethostname()}, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC\); wait"
    )
    with pytest.raises(FolderInUseError, match=message):
        with run_lock(out):
            pytest.fail("the lock was taken twice")


def test_the_train_command_stops_at_once_with_one_line(holder):
    out, process = holder
    result = subprocess.run(
        [sys.executable, "-m", "cornernet_ref", "train", "--out", str(out), "--max-iters", "1"],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"cornernet-ref: error: the run folder {out} is in use")
    assert f"pid {process.pid}" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written


def test_a_dead_holders_lock_is_taken_over(holder):
    """After a crash (SIGKILL: no clean-up ran) the lock file remains, naming the dead run;
    the next run, say a --resume, takes the folder."""
    out, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert f"pid {process.pid} " in (out / LOCK_NAME).read_text()
    with run_lock(out) as path:
        assert path.read_text().startswith(f"pid {os.getpid()} on ")
    assert not path.exists()  # removed when the run ends
    with run_lock(out):  # and free again
        pass


def test_an_unusable_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"^cannot lock the run folder .*file/run: "):
        with run_lock(tmp_path / "file" / "run"):
            pass
