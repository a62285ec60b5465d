"""CornerNetOutput and gather_at."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cornernet_ref
from cornernet_ref.output import gather_at


def test_output_fields_in_documented_order() -> None:
    assert cornernet_ref.CornerNetOutput._fields == (
        "tl_heat",
        "br_heat",
        "tl_tag",
        "br_tag",
        "tl_off",
        "br_off",
    )


@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    k=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_gather_at_equals_loop(batch, channels, height, width, k, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, channels, height, width, generator=generator)
    index = torch.randint(0, height * width, (batch, k), generator=generator)
    out = gather_at(maps, index)
    assert out.shape == (batch, k, channels)
    for b in range(batch):
        for j in range(k):
            y, x = divmod(int(index[b, j]), width)
            assert torch.equal(out[b, j], maps[b, :, y, x])


def test_gather_at_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="index"):
        gather_at(torch.zeros(2, 3, 4, 4), torch.zeros(3, 5, dtype=torch.long))
