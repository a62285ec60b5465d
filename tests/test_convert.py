"""The official weights: layout, strict conversion, and the same outputs as the official net.

The official network cannot run here (it needs PyTorch 0.4 and a compiled extension), so
:func:`official_forward` re-states it from its description, reading the tensors by their
*official* names with plain functional calls. Random official weights, fed to it with an
image preprocessed the official way (BGR pixels, BGR constants), must give the outputs of
the converted model fed the same pixels the way of this project (RGB): a renaming that
swapped two tensors of one shape (the two pooling branches, the two 1x1 convolutions between
stacks, the two convolutions of a residual block) would not, nor would a converter that
left the colour channels of the first convolution in BGR order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from cornernet_ref import cli
from cornernet_ref.convert import (
    COCO_CLASS_NAMES,
    FIRST_CONV,
    RULES,
    convert_official_state_dict,
    infer_model_config,
    official_to_ours,
    ours_to_official,
    to_official_state_dict,
)
from cornernet_ref.data.image import normalize
from cornernet_ref.model import CornerNet, ModelConfig
from cornernet_ref.output import CornerNetOutput

# Every width different, so that a tensor put in the wrong place fails on its shape, and
# block counts that differ per level.
ODD = ModelConfig(
    num_classes=3, n=2, nstack=2, dims=(6, 10, 12), modules=(2, 1, 3), cnv_dim=7, pre_dim=5,
    pool_dim=4,
)  # fmt: skip
ODD_SIZE = (31, 47)  # sides 16k - 1, non-square
# The official normalisation, in its own (BGR) order: shared/reference/official_constants.md.
OFFICIAL_MEAN_BGR = np.array([0.40789654, 0.44719302, 0.47026115], dtype=np.float32)
OFFICIAL_STD_BGR = np.array([0.28863828, 0.27408164, 0.27809835], dtype=np.float32)


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


def rgb_images(count: int, seed: int) -> np.ndarray:
    """``(count, H, W, 3)`` uint8 RGB pixels, each channel over its own range."""
    generator = np.random.default_rng(seed)
    low, high = np.array([0, 60, 120]), np.array([255, 200, 140])  # R, G, B
    return generator.integers(low, high + 1, (count, *ODD_SIZE, 3)).astype(np.uint8)


def official_input(rgb: np.ndarray) -> Tensor:
    """The official preprocessing: pixels in BGR order (as OpenCV reads them), BGR constants."""
    bgr = rgb[..., ::-1].astype(np.float32) / 255
    normalised = (bgr - OFFICIAL_MEAN_BGR) / OFFICIAL_STD_BGR
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))


def our_input(rgb: np.ndarray) -> Tensor:
    """This project's preprocessing of the same pixels: RGB order, RGB constants."""
    return torch.stack([normalize(image) for image in rgb])


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
    """The official forward pass (batch norm with running statistics), in float64.

    Random weights give maps of magnitude ~1e6, where float32 leaves errors of ~1e-3 in the
    cells of small value; float64 keeps the comparison tight.
    """
    state = {
        key.removeprefix("module."): value.double() if value.is_floating_point() else value
        for key, value in state.items()
    }
    image = image.double()
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
            torch.testing.assert_close(a, b, msg=name)  # float64 tolerances


@pytest.fixture(scope="module")
def odd_model() -> CornerNet:
    model = CornerNet(ODD)
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
    config = infer_model_config(official)
    assert config == ModelConfig(
        num_classes=80,
        n=5,
        nstack=2,
        dims=(256, 256, 384, 384, 384, 512),
        modules=(2, 2, 2, 2, 2, 4),
        cnv_dim=256,
        pre_dim=128,
        pool_dim=128,
    )
    assert config == ModelConfig()  # the defaults are the official model
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
    official = to_official_state_dict(state)
    assert len(official) == len(state)
    back = convert_official_state_dict(official)
    assert list(back) == list(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key
    # Besides renaming, the conversion changes exactly one tensor: the colour order of the
    # first convolution's inputs.
    renamed = {ours_to_official(key): value for key, value in state.items()}
    converted = convert_official_state_dict(renamed)
    assert [key for key in state if not torch.equal(converted[key], state[key])] == [FIRST_CONV]
    assert torch.equal(converted[FIRST_CONV], state[FIRST_CONV][:, [2, 1, 0]])


@pytest.mark.claim("official-weights")
@pytest.mark.parametrize("training", [False, True])
def test_converted_model_computes_the_official_network(odd_model, training):
    official = to_official_state_dict(odd_model.state_dict())
    model = CornerNet(ODD)
    model.load_state_dict(convert_official_state_dict(official))
    model.double().train(training)
    for module in model.modules():  # all stacks in training mode, running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    rgb = rgb_images(2, seed=1)
    with torch.no_grad():
        ours = model(our_input(rgb).double())
        theirs = official_forward(official, official_input(rgb), all_stacks=training)
    assert len(ours) == (2 if training else 1)
    assert_same_outputs(ours, theirs)


def test_infer_configuration_of_a_small_model(odd_model):
    assert infer_model_config(to_official_state_dict(odd_model.state_dict())) == ODD


def test_wrong_shape_is_named(odd_model):
    official = to_official_state_dict(odd_model.state_dict())
    official["module.tl_cnvs.1.p2_conv1.conv.weight"] = torch.zeros(4, 7, 3, 1)
    with pytest.raises(ValueError, match=r"tl_cnvs\.1\.p2_conv1\.conv\.weight.*\(4, 7, 3, 1\)"):
        convert_official_state_dict(official)


def test_missing_key_is_named(odd_model):
    official = to_official_state_dict(odd_model.state_dict())
    del official["module.kps.1.low2.low3.0.bn2.running_var"]
    with pytest.raises(ValueError, match=r"no 'kps\.1\.low2\.low3\.0\.bn2\.running_var'"):
        convert_official_state_dict(official)


def test_unexpected_key_is_named(odd_model):
    official = to_official_state_dict(odd_model.state_dict())
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
        for key, value in to_official_state_dict(odd_model.state_dict()).items()
        if not key.endswith("num_batches_tracked")  # as in checkpoints of PyTorch 0.4
    }
    source, target = tmp_path / "CornerNet_fake.pkl", tmp_path / "converted.pt"
    torch.save(official, source)
    assert cli.main(["convert", str(source), str(target)]) == 0
    model = CornerNet.from_checkpoint(target).double().eval()
    saved = torch.load(target, weights_only=True)
    assert saved["class_names"] == ["0", "1", "2"]
    rgb = rgb_images(1, seed=2)
    with torch.no_grad():
        theirs = official_forward(official, official_input(rgb), all_stacks=False)
        assert_same_outputs(model(our_input(rgb).double()), theirs)
    with pytest.raises(ValueError, match="cornernet-ref convert"):
        CornerNet.from_checkpoint(source)


def test_coco_class_names():
    assert len(COCO_CLASS_NAMES) == len(set(COCO_CLASS_NAMES)) == 80
    assert COCO_CLASS_NAMES[0] == "person" and COCO_CLASS_NAMES[-1] == "toothbrush"
