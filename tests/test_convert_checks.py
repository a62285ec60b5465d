"""The converter's bookkeeping: counters it adds, the count of missing tensors it reports, and
the safe loading of official files."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import torch

from cornernet_ref.convert import convert_official_state_dict, load_official, ours_to_official
from cornernet_ref.errors import InputError
from cornernet_ref.model import CornerNet, ModelConfig

TINY = ModelConfig(num_classes=3, n=2, nstack=2, dims=(6, 10, 12), modules=(2, 1, 3), cnv_dim=7,
                   pre_dim=5, pool_dim=4)  # fmt: skip
COUNTER = "num_batches_tracked"


@pytest.fixture(scope="module")
def official() -> dict[str, torch.Tensor]:
    state = CornerNet(TINY).state_dict()
    return {"module." + ours_to_official(key): value for key, value in state.items()}


def test_counters_left_out_are_added_as_zero(official) -> None:
    without = {key: value for key, value in official.items() if not key.endswith(COUNTER)}
    converted = convert_official_state_dict(without)
    counters = [value for key, value in converted.items() if key.endswith(COUNTER)]
    assert counters and all(c.dtype == torch.long and c.item() == 0 for c in counters)


def test_missing_tensors_are_counted_without_the_counters(official) -> None:
    gone = [key for key in official if key.endswith("running_var")][:3]
    partial = {
        key: value
        for key, value in official.items()
        if key not in gone and not key.endswith(COUNTER)
    }
    with pytest.raises(ValueError, match=r"; 3 tensors missing in all\)"):
        convert_official_state_dict(partial)


def test_official_files_with_more_than_tensors_need_trust(tmp_path) -> None:
    path = tmp_path / "official.pkl"
    torch.save({"weight": torch.ones(2), "note": Fraction(1, 3)}, path)
    command = f"cornernet-ref convert --trust {path} OUT.pt"
    with pytest.raises(InputError, match=f"(?s)holds more than tensors.*{re.escape(command)}"):
        load_official(path)
    assert load_official(path, trust=True)["note"] == Fraction(1, 3)
