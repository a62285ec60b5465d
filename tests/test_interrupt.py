"""Ctrl-C: one line, status 130, and the checkpoint on disk whole and resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cornernet_ref.checkpoint import load_checkpoint
from cornernet_ref.cli import INTERRUPTED

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    tiny_run = (
        "--shapes-train 4 --shapes-val 0 --shapes-size 64 --batch-size 2 --workers 1 "
        "--checkpoint-every 1 --max-iters 100000"
    ).split()
    process = subprocess.Popen(
        [sys.executable, "-m", "cornernet_ref", "train", "--out", str(out), *tiny_run],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO_ROOT)},
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
        # Ctrl-C as a terminal delivers it, even where this test runs with SIGINT ignored
        # (a shell's background job): an ignored SIGINT is inherited, and Python keeps it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: to the command and its loader worker
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == INTERRUPTED == 130, stderr  # what it printed, if it failed
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("cornernet-ref: error: interrupted (Ctrl-C)")
    assert "Traceback" not in stderr
    assert load_checkpoint(checkpoint, resume=True)["iteration"] >= 1
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["last.pt"]
    assert not (out / "run.lock").exists()  # the folder is free for the --resume
