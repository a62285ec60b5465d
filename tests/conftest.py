"""Shared test configuration: hypothesis profiles and the location of ``../shared``.

Hypothesis profiles (choose with ``HYPOTHESIS_PROFILE=...``):

* ``ci``   deterministic (derandomised) and bounded, the default when ``CI`` is set;
* ``dev``  the default otherwise: random examples, a moderate budget;
* ``deep`` many examples, for a thorough local run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from cornernet_ref.data.examples import shared_dir

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("deep", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

SHARED_DIR = shared_dir()  # $CORNERNET_SHARED, else ../shared beside the checkout


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests that need it skip (with a reason) without it."""
    if not (SHARED_DIR / "data" / "coco128").is_dir():
        pytest.skip(f"needs the shared data folder at {SHARED_DIR} (set CORNERNET_SHARED)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def coco128(shared_dir: Path) -> tuple[Path, Path]:
    """(image folder, annotation file) of the 128-image COCO sample."""
    root = shared_dir / "data" / "coco128"
    return root / "train2017", root / "annotations" / "instances_train2017.json"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors: faster, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
