"""The official weights: layout, strict conversion, and the same outputs as the official net.

The official network cannot run here (it needs PyTorch 0.4 and a compiled extension), so
:func:`official_forward` re-states it from its description, reading the tensors by their
*official* names with plain functional calls. A random model converted to official names
and fed to it must give this model's outputs: a renaming that swapped two tensors of one
shape (the two pooling branches, the two 1x1 convolutions between stacks, the two
convolutions of a residual block) would not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cornernet_ref import cli
from cornernet_ref.convert import (
    COCO_CLASS_NAMES,
    RULES,
    convert_official_state_dict,
    infer_model_kwargs,
    official_to_ours,
    ours_to_official,
)
from cornernet_ref.model import CornerNet
from cornernet_ref.output import CornerNetOutput

# Every width different, so that a tensor put in the wrong place fails on its shape, and
# block counts that differ per level.
ODD = dict(n=2, nstack=2, dims=(6, 10, 12), modules=(2, 1, 3), cnv_dim=7, pre_dim=5, pool_dim=4)
ODD_CLASSES = 3
ODD_SIZE = (31, 47)  # sides 16k - 1, non-square


pytestmark = pytest.mark.usefixtures("one_thread")


def official_layout(shared_dir: Path) -> dict[str, Tensor]:
    """The official Hourglass-104 state dict as meta tensors (shapes only, no memory)."""
    state = {}
    text = (shared_dir / "reference" / "official_cornernet_state_dict.txt").read_text()
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split()
        if shape == "scalar":
            state[key] = torch.empty((), dtype=torch.long, device="meta")
        else:
            state[key] = torch.empty(tuple(map(int, shape.split("x"))), device="meta")
    return state


@pytest.fixture(scope="module")
def layout(shared_dir: Path) -> dict[str, Tensor]:
    return official_layout(shared_dir)


def random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, Tensor]:
    """Random values for every tensor, running variances positive."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 1000, (), generator=generator)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        else:
            state[key] = 0.5 * torch.randn(value.shape, generator=generator)
    return state


def to_official(state: dict[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    return {prefix + ours_to_official(key): value for key, value in state.items()}


# --- The official network, re-stated from its description --------------------------------


def conv_bn(state, conv: str, bn: str | None, x: Tensor, stride: int = 1, relu: bool = True):
    weight = state[conv + ".weight"]
    y = F.conv2d(x, weight, state.get(conv + ".bias"), stride, weight.shape[-1] // 2)
    if bn is not None:
        y = F.batch_norm(
            y,
            state[bn + ".running_mean"],
            state[bn + ".running_var"],
            state[bn + ".weight"],
            state[bn + ".bias"],
            training=False,
            eps=1e-5,
        )
    return F.relu(y) if relu else y


def residual(state, p: str, x: Tensor, stride: int = 1) -> Tensor:
    y = conv_bn(state, p + "conv1", p + "bn1", x, stride)
    y = conv_bn(state, p + "conv2", p + "bn2", y, relu=False)
    if p + "skip.0.weight" in state:
        x = conv_bn(state, p + "skip.0", p + "skip.1", x, stride, relu=False)
    return F.relu(y + x)


def chain(state, p: str, x: Tensor, stride: int = 1) -> Tensor:
    block = 0
    while f"{p}.{block}.conv1.weight" in state:
        x = residual(state, f"{p}.{block}.", x, stride if block == 0 else 1)
        block += 1
    return x


def kp_module(state, p: str, x: Tensor) -> Tensor:
    low = chain(state, p + "low1", x, stride=2)
    if p + "low2.up1.0.conv1.weight" in state:
        low = kp_module(state, p + "low2.", low)
    else:
        low = chain(state, p + "low2", low)
    low = chain(state, p + "low3", low)
    upsampled = low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return chain(state, p + "up1", x) + upsampled


def suffix_max(x: Tensor, dim: int) -> Tensor:
    """``out[i] = max(x[i:])`` along ``dim``, by brute force."""
    size = x.shape[dim]
    return torch.stack([x.narrow(dim, i, size - i).amax(dim) for i in range(size)], dim)


def corner_pool_module(state, p: str, x: Tensor, corner: str) -> Tensor:
    a = conv_bn(state, p + "p1_conv1.conv", p + "p1_conv1.bn", x)  # top / bottom pool
    b = conv_bn(state, p + "p2_conv1.conv", p + "p2_conv1.bn", x)  # left / right pool
    if corner == "tl":  # max below, max to the right
        pooled = suffix_max(a, 2) + suffix_max(b, 3)
    else:  # max above, max to the left
        pooled = suffix_max(a.flip(2), 2).flip(2) + suffix_max(b.flip(3), 3).flip(3)
    y = conv_bn(state, p + "p_conv1", p + "p_bn1", pooled, relu=False)
    y = F.relu(y + conv_bn(state, p + "conv1", p + "bn1", x, relu=False))
    return conv_bn(state, p + "conv2.conv", p + "conv2.bn", y)


def kp_head(state, p: str, x: Tensor) -> Tensor:
    return conv_bn(state, p + "1", None, conv_bn(state, p + "0.conv", None, x), relu=False)


def official_forward(state: dict[str, Tensor], image: Tensor, all_stacks: bool) -> list:
    """The official forward pass (batch norm with running statistics)."""
    state = {key.removeprefix("module."): value for key, value in state.items()}
    nstack = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("kps."))
    inter = residual(state, "pre.1.", conv_bn(state, "pre.0.conv", "pre.0.bn", image, 2), 2)
    outputs = []
    for s in range(nstack):
        cnv = conv_bn(state, f"cnvs.{s}.conv", f"cnvs.{s}.bn", kp_module(state, f"kps.{s}.", inter))
        if all_stacks or s == nstack - 1:
            tl = corner_pool_module(state, f"tl_cnvs.{s}.", cnv, "tl")
            br = corner_pool_module(state, f"br_cnvs.{s}.", cnv, "br")
            maps = [
                kp_head(state, f"{name}.{s}.", features)
                for kind in ("heats", "tags", "regrs")
                for name, features in ((f"tl_{kind}", tl), (f"br_{kind}", br))
            ]
            outputs.append(CornerNetOutput(*maps))
        if s < nstack - 1:
            merged = conv_bn(state, f"inters_.{s}.0", f"inters_.{s}.1", inter, relu=False)
            merged = merged + conv_bn(state, f"cnvs_.{s}.0", f"cnvs_.{s}.1", cnv, relu=False)
            inter = residual(state, f"inters.{s}.", F.relu(merged))
    return outputs


def assert_same_outputs(ours: list, official: list) -> None:
    assert len(ours) == len(official)
    for mine, theirs in zip(ours, official, strict=True):
        for name, a, b in zip(CornerNetOutput._fields, mine, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


@pytest.fixture(scope="module")
def odd_model() -> CornerNet:
    model = CornerNet(ODD_CLASSES, **ODD)
    model.load_state_dict(random_state(model))
    return model


# --- Tests ---------------------------------------------------------------------------------


@pytest.mark.shared
@pytest.mark.claim("official-weights")
@pytest.mark.parametrize("prefix", ["module.", ""])
@pytest.mark.parametrize("with_counters", [True, False])
def test_official_layout_converts_strictly(layout, prefix, with_counters):
    official = {
        key.replace("module.", prefix, 1): value
        for key, value in layout.items()
        if with_counters or not key.endswith("num_batches_tracked")
    }
    kwargs = infer_model_kwargs(official)
    assert kwargs == dict(
        num_classes=80,
        n=5,
        nstack=2,
        dims=[256, 256, 384, 384, 384, 512],
        modules=[2, 2, 2, 2, 2, 4],
        cnv_dim=256,
        pre_dim=128,
        pool_dim=128,
    )
    converted = convert_official_state_dict(official)
    with torch.device("meta"):
        model = CornerNet()
    assert list(converted) == list(model.state_dict())  # every tensor, in this model's order
    model.load_state_dict(converted, strict=True, assign=True)
    used = {ours_to_official(key) for key in converted}
    assert {key.removeprefix(prefix) for key in official} <= used


@pytest.mark.shared
def test_official_names_map_one_to_one(layout):
    official = [key.removeprefix("module.") for key in layout]
    ours = [official_to_ours(key) for key in official]
    assert len(set(ours)) == len(official)
    assert [ours_to_official(key) for key in ours] == official


@pytest.mark.shared
def test_every_rule_is_used(layout):
    """No dead rule: every fragment of the table occurs in the official layout."""
    keys = ["." + key.removeprefix("module.") + "." for key in layout]
    for official, _ in RULES:
        pattern = official.replace("#", "0")
        assert any(f".{pattern}." in key for key in keys), official


def test_round_trip_of_a_small_model(odd_model):
    state = odd_model.state_dict()
    official = to_official(state)
    assert len(official) == len(state)
    back = convert_official_state_dict(official)
    assert list(back) == list(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


@pytest.mark.claim("official-weights")
@pytest.mark.parametrize("training", [False, True])
def test_converted_model_computes_the_official_network(odd_model, training):
    official = to_official(odd_model.state_dict())
    model = CornerNet(ODD_CLASSES, **ODD)
    model.load_state_dict(convert_official_state_dict(official))
    model.train(training)
    for module in model.modules():  # all stacks in training mode, running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    image = torch.randn(2, 3, *ODD_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(image)
    assert len(ours) == (2 if training else 1)
    assert_same_outputs(ours, official_forward(official, image, all_stacks=training))


def test_infer_configuration_of_a_small_model(odd_model):
    kwargs = infer_model_kwargs(to_official(odd_model.state_dict()))
    expected = {
        key: list(value) if isinstance(value, tuple) else value for key, value in ODD.items()
    }
    assert kwargs == {"num_classes": ODD_CLASSES, **expected}


def test_wrong_shape_is_named(odd_model):
    official = to_official(odd_model.state_dict())
    official["module.tl_cnvs.1.p2_conv1.conv.weight"] = torch.zeros(4, 7, 3, 1)
    with pytest.raises(ValueError, match=r"tl_cnvs\.1\.p2_conv1\.conv\.weight.*\(4, 7, 3, 1\)"):
        convert_official_state_dict(official)


def test_missing_key_is_named(odd_model):
    official = to_official(odd_model.state_dict())
    del official["module.kps.1.low2.low3.0.bn2.running_var"]
    with pytest.raises(ValueError, match=r"no 'kps\.1\.low2\.low3\.0\.bn2\.running_var'"):
        convert_official_state_dict(official)


def test_unexpected_key_is_named(odd_model):
    official = to_official(odd_model.state_dict())
    official["module.kps.1.up1.2.conv1.weight"] = torch.zeros(6, 6, 3, 3)
    with pytest.raises(ValueError, match=r"unexpected official key .kps\.1\.up1\.2\.conv1"):
        convert_official_state_dict(official)


def test_not_an_official_state_dict(odd_model):
    with pytest.raises(ValueError, match="not an official CornerNet state dict"):
        convert_official_state_dict(odd_model.state_dict())


@pytest.mark.claim("official-weights")
def test_convert_command(odd_model, tmp_path):
    official = {
        key: value
        for key, value in to_official(odd_model.state_dict()).items()
        if not key.endswith("num_batches_tracked")  # as in checkpoints of PyTorch 0.4
    }
    source, target = tmp_path / "CornerNet_fake.pkl", tmp_path / "converted.pt"
    torch.save(official, source)
    assert cli.main(["convert", str(source), str(target)]) == 0
    model = CornerNet.from_checkpoint(target).eval()
    saved = torch.load(target, weights_only=True)
    assert saved["class_names"] == ["0", "1", "2"]
    image = torch.randn(1, 3, *ODD_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert_same_outputs(model(image), official_forward(official, image, all_stacks=False))
    with pytest.raises(ValueError, match="cornernet-ref convert"):
        CornerNet.from_checkpoint(source)


def test_coco_class_names():
    assert len(COCO_CLASS_NAMES) == len(set(COCO_CLASS_NAMES)) == 80
    assert COCO_CLASS_NAMES[0] == "person" and COCO_CLASS_NAMES[-1] == "toothbrush"
