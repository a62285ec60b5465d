"""The converter's bookkeeping: counters it adds, the count of missing tensors it reports, and
the safe loading of official files."""

from __future__ import annotations

import io
import pickle
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


def saved_bytes(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        # Not a pickle: the weights-only unpickler's own reason, not its long preamble.
        (b"\x80\x02garbage", "Unsupported operand 103"),
        # Nothing at all: the error has no message, so its type is named.
        (b"", "EOFError"),
        # A pickle cut short: the reader fails with an IndexError.
        (pickle.dumps({"weight": 1}, protocol=2)[:-3], "index out of range"),
        # Half of a torch.save archive: the zip reader's first line.
        (
            saved_bytes({"weight": torch.ones(2)})[:200],
            "PytorchStreamReader failed reading zip archive: failed finding central directory",
        ),
    ],
    ids=["not-a-pickle", "empty", "cut-pickle", "cut-archive"],
)
def test_a_damaged_official_file_is_named_with_one_reason(tmp_path, content, reason) -> None:
    path = tmp_path / "official.pkl"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        load_official(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is truncated or corrupt: {reason}")
    assert "\n" not in message and "weights_only" not in message


def test_official_files_with_more_than_tensors_need_trust(tmp_path) -> None:
    path = tmp_path / "official.pkl"
    torch.save({"weight": torch.ones(2), "note": Fraction(1, 3)}, path)
    command = f"cornernet-ref convert --trust {path} OUT.pt"
    with pytest.raises(InputError, match=f"(?s)holds more than tensors.*{re.escape(command)}"):
        load_official(path)
    assert load_official(path, trust=True)["note"] == Fraction(1, 3)
