"""The micro-batch rule of one-GPU training, and the one-stack configuration beside the paper's."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cornernet_ref.config import (
    STEP_MEMORY_GIB,
    STEP_MEMORY_PER_IMAGE_GIB,
    accumulation_for_memory,
    get_config,
)

GIB = 2**30
# Peaks of gpu_check's train_throughput step on one H200 (2026-12-04), batch -> GiB.
MEASURED_PEAKS = {8: 10.908148288726807, 16: 19.104066371917725, 122: 127.63811349868774}


def predicted_gib(images: int) -> float:
    return STEP_MEMORY_GIB + STEP_MEMORY_PER_IMAGE_GIB * images


@pytest.mark.parametrize(("batch", "peak"), MEASURED_PEAKS.items())
def test_the_line_passes_through_the_measured_peaks(batch, peak):
    assert predicted_gib(batch) == pytest.approx(peak, abs=0.01)


@pytest.mark.parametrize(
    ("memory_gib", "steps"),
    [
        (139.8, 1),  # H200: 52.9 GiB of 125.8
        (79.2, 1),  # an 80 GB H100 or A100: 52.9 of 71.3
        (40.0, 2),  # 25 images: 28.3 GiB of 36
        (24.0, 3),  # 17 images: 20.1 GiB of 21.6 (25 would take 28.3)
        (16.0, 5),  # 10 images: 12.96 GiB of 14.4
    ],
)
def test_hand_computed_micro_batches(memory_gib, steps):
    assert accumulation_for_memory(int(memory_gib * GIB)) == steps


@given(
    memory_gib=st.floats(5.0, 200.0),
    batch=st.integers(1, 128),
    headroom=st.floats(0.5, 1.0),
)
def test_the_fewest_micro_batches_that_fit(memory_gib, batch, headroom):
    """Brute force: k fits (its largest micro-batch, ceil(B / k), within the headroom) and
    k - 1 does not."""
    memory = int(memory_gib * GIB)

    def fits(steps: int) -> bool:
        return predicted_gib(-(-batch // steps)) <= headroom * memory / GIB

    if not fits(batch):
        with pytest.raises(ValueError, match="too little for batch"):
            accumulation_for_memory(memory, batch, headroom=headroom, max_steps=batch)
        return
    steps = accumulation_for_memory(memory, batch, headroom=headroom, max_steps=batch)
    assert 1 <= steps <= batch and fits(steps)
    assert steps == 1 or not fits(steps - 1)


def test_hourglass52_is_the_paper_configuration_with_one_stack():
    paper, small = get_config("hourglass104_coco"), get_config("hourglass52_coco")
    assert small.model == replace(paper.model, nstack=1)
    assert replace(small, name=paper.name, model=paper.model, out=paper.out) == paper
