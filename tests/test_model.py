"""The network: parameter count, output sizes, stacks, initialisation, layouts, precision."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cornernet_ref.checkpoint import save_checkpoint
from cornernet_ref.heads import HEATMAP_BIAS, CornerPoolingModule
from cornernet_ref.hourglass import receptive_field, receptive_field_bound, stem_output_size
from cornernet_ref.model import CornerNet, ModelConfig

CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "04_hourglass.md"
TINY = dict(n=2, nstack=2, dims=(8, 8, 8), modules=(1, 1, 1), cnv_dim=8, pre_dim=8, pool_dim=8)
SMALL = dict(
    n=3, nstack=1, dims=(32, 48, 64, 64), modules=(1, 1, 1, 1), cnv_dim=64, pre_dim=32, pool_dim=32
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hourglass104() -> CornerNet:
    """The full model on the meta device: shapes without memory.

    Corner pooling reads values (NaN checks), which meta tensors do not have; it keeps the
    shape of its input and has no parameters, so the plain sum stands in for it here.
    """
    with torch.device("meta"):
        return CornerNet(ModelConfig(corner_pooling=False))


def tiny_model(seed: int = 0, **overrides) -> CornerNet:
    torch.manual_seed(seed)
    return CornerNet(ModelConfig(num_classes=3, **{**TINY, **overrides}))


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- Parameter counts, by hand ------------------------------------------------------------


def conv_bn(a: int, b: int, k: int) -> int:
    return a * b * k * k + 2 * b  # weight (no bias) + BN scale and shift


def residual(a: int, b: int, stride: int = 1) -> int:
    shortcut = conv_bn(a, b, 1) if stride != 1 or a != b else 0
    return conv_bn(a, b, 3) + conv_bn(b, b, 3) + shortcut


def hourglass(dims: tuple, modules: tuple) -> int:
    d0, d1, m = dims[0], dims[1], modules[0]
    skip = m * residual(d0, d0)
    down = residual(d0, d1, 2) + (m - 1) * residual(d1, d1)
    inner = hourglass(dims[1:], modules[1:]) if len(dims) > 2 else modules[1] * residual(d1, d1)
    up = (m - 1) * residual(d1, d1) + residual(d1, d0)
    return skip + down + inner + up


def head(a: int, hidden: int, out: int) -> int:
    return a * hidden * 9 + hidden + hidden * out + out  # both convolutions with bias


def prediction(classes: int, cnv: int, width: int, pool: int) -> int:
    pooling = 2 * conv_bn(cnv, pool, 3) + conv_bn(pool, cnv, 3) + conv_bn(cnv, cnv, 1)
    pooling += conv_bn(cnv, cnv, 3)
    return pooling + sum(head(cnv, width, out) for out in (classes, 1, 2))


def expected_counts(classes, n, nstack, dims, modules, cnv_dim, pre_dim, pool_dim) -> dict:
    transition = conv_bn(dims[0], dims[0], 1) + conv_bn(cnv_dim, dims[0], 1)
    return {
        "stem": conv_bn(3, pre_dim, 7) + residual(pre_dim, dims[0], 2),
        "hourglasses": nstack * hourglass(tuple(dims), tuple(modules)),
        "features": nstack * conv_bn(dims[0], cnv_dim, 3),
        "top_left": nstack * prediction(classes, cnv_dim, dims[0], pool_dim),
        "bottom_right": nstack * prediction(classes, cnv_dim, dims[0], pool_dim),
        "transitions": (nstack - 1) * (transition + residual(dims[0], dims[0])),
    }


@pytest.mark.claim("param-count")
def test_hourglass104_has_the_official_parameter_count(hourglass104):
    assert count(hourglass104) == 201_035_212


@pytest.mark.parametrize(
    "classes, kwargs",
    [(80, {}), (3, TINY), (5, SMALL), (2, dict(TINY, dims=(4, 6, 10), modules=(2, 1, 3)))],
    ids=["hourglass104", "tiny", "small", "odd"],
)
def test_parameter_count_per_part_by_hand(classes, kwargs):
    with torch.device("meta"):
        model = CornerNet(ModelConfig(num_classes=classes, **kwargs))
    config = ModelConfig(**kwargs)  # the defaults where kwargs are silent
    expected = expected_counts(
        classes, config.n, config.nstack, config.dims, config.modules,
        config.cnv_dim, config.pre_dim, config.pool_dim,
    )  # fmt: skip
    assert {name: count(child) for name, child in model.named_children()} == expected


def test_chapter_table_matches_the_model(hourglass104):
    """The per-part parameter table quoted in chapter 4 is what the model has."""
    text = CHAPTER.read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d,]+) \|", text, flags=re.MULTILINE))
    counts = {name: count(child) for name, child in hourglass104.named_children()}
    assert rows, "no parameter table in the chapter"
    assert {name: int(value.replace(",", "")) for name, value in rows.items()} == counts


# --- Sizes ---------------------------------------------------------------------------------


@pytest.mark.claim("output-size")
@pytest.mark.parametrize("size, out", [((511, 511), (128, 128)), ((767, 1023), (192, 256))])
def test_hourglass104_output_size(hourglass104, size, out):
    hourglass104.train()
    outputs = hourglass104(torch.zeros(1, 3, *size, device="meta"))
    assert len(outputs) == 2
    for maps in outputs:
        assert maps.tl_heat.shape == maps.br_heat.shape == (1, 80, *out)
        assert maps.tl_tag.shape == maps.br_tag.shape == (1, 1, *out)
        assert maps.tl_off.shape == maps.br_off.shape == (1, 2, *out)


@pytest.mark.claim("output-size")
def test_small_model_at_511_gives_128():
    model = tiny_model().eval()
    with torch.no_grad():
        (maps,) = model(torch.randn(1, 3, 511, 511))
    assert maps.tl_heat.shape == (1, 3, 128, 128) and maps.br_off.shape == (1, 2, 128, 128)
    assert all(torch.isfinite(t).all() for t in maps)


@pytest.fixture(scope="module")
def tiny_meta() -> CornerNet:
    with torch.device("meta"):
        return CornerNet(ModelConfig(num_classes=3, corner_pooling=False, **TINY))


@settings(max_examples=30)
@given(side=st.integers(16, 400))
def test_sides_that_the_hourglass_can_halve(tiny_meta, side):
    """Output side = ceil(side / 4); accepted exactly when it is a multiple of 2**n."""
    assert stem_output_size(side) == -(-side // 4)
    model = tiny_meta
    images = torch.zeros(1, 3, side, 31, device="meta")
    if -(-side // 4) % 4 == 0:
        assert model(images)[0].tl_heat.shape[-2:] == (-(-side // 4), 8)
    else:
        with pytest.raises(ValueError, match=f"input height {side} "):
            model(images)


def test_bad_inputs_and_configurations():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 63, 63))
    with pytest.raises(ValueError, match="n \\+ 1 = 3 entries"):
        ModelConfig(**dict(TINY, dims=(8, 8)))
    with pytest.raises(ValueError, match="modules must be positive"):
        ModelConfig(**dict(TINY, modules=(1, 0, 1)))
    with pytest.raises(ValueError, match="pool_dim must be >= 1"):
        ModelConfig(**dict(TINY, pool_dim=0))
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ModelConfig(num_classes=0, **TINY)
    with pytest.raises(ValueError, match="n \\(hourglass depth\\) must be >= 1"):
        ModelConfig(**dict(TINY, n=0, dims=(8,), modules=(1,)))
    with pytest.raises(ValueError, match="batchnorm_init"):
        ModelConfig(batchnorm_init="zeros", **TINY)
    with pytest.raises(TypeError, match="takes a ModelConfig, got int"):
        CornerNet(3)


def test_lists_are_accepted_as_in_saved_configs():
    config = ModelConfig(num_classes=3, **dict(TINY, dims=[8, 8, 8], modules=[1, 1, 1]))
    assert config == ModelConfig(num_classes=3, **TINY) and config.dims == (8, 8, 8)
    assert count(CornerNet(config)) == count(tiny_model())


def test_the_model_config_round_trips_through_a_dict():
    config = ModelConfig(num_classes=3, corner_pooling=False, batchnorm_init="ones", **TINY)
    values = config.to_dict()
    assert values["dims"] == [8, 8, 8] and values["num_classes"] == 3
    assert ModelConfig.from_dict(values) == config
    assert ModelConfig.from_dict({}) == ModelConfig()  # Hourglass-104, 80 classes
    assert tiny_model().config == ModelConfig(num_classes=3, **TINY)
    unknown = r"unknown ModelConfig field\(s\) \['depth'\]; the fields are \['num_classes', "
    with pytest.raises(ValueError, match=unknown):
        ModelConfig.from_dict(values | {"depth": 3})


# --- Stacks, initialisation ----------------------------------------------------------------


def test_training_returns_every_stack_eval_the_last():
    model = tiny_model()
    images = torch.randn(2, 3, 63, 63)
    model.train()
    for module in model.modules():  # running statistics, so that both modes compare
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        stacks = model(images)
        model.eval()
        (last,) = model(images)
    assert len(stacks) == 2
    for a, b in zip(stacks[-1], last, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(stacks[0].tl_heat, stacks[1].tl_heat)


def test_heatmap_bias_prior():
    model = tiny_model()
    for module in (*model.top_left, *model.bottom_right):
        assert torch.all(module.heatmap.out.bias == HEATMAP_BIAS)
        assert not torch.any(module.embedding.out.bias == HEATMAP_BIAS)
    assert HEATMAP_BIAS == -2.19
    assert abs(torch.sigmoid(torch.tensor(HEATMAP_BIAS)).item() - 0.1) < 1e-3


@pytest.mark.parametrize("init", ["uniform", "ones"])
def test_batchnorm_initialisation(init):
    scales = torch.cat(
        [
            m.weight
            for m in tiny_model(batchnorm_init=init).modules()
            if isinstance(m, nn.BatchNorm2d)
        ]
    )
    if init == "ones":
        assert torch.all(scales == 1)
    else:  # U(0, 1), as PyTorch 0.4.0 drew them
        assert torch.all((scales >= 0) & (scales < 1)) and 0.4 < scales.mean() < 0.6


# --- Corner pooling on and off -------------------------------------------------------------


@pytest.mark.parametrize("corner", ["tl", "br"])
def test_corner_pooling_sees_along_its_directions_only(corner):
    """A cell of the top-left module sees far down its column and far right along its row,
    through corner pooling only; nothing far above or to the left. The bottom-right module
    mirrors it. Without pooling the module is local (three 3x3 convolutions: 7x7)."""
    torch.manual_seed(0)
    pooled = CornerPoolingModule(corner, 6, 4).eval()
    plain = CornerPoolingModule(corner, 6, 4, corner_pooling=False).eval()
    plain.load_state_dict(pooled.state_dict())
    features = torch.randn(1, 6, 24, 24)
    ahead, behind = [(21, 12), (12, 21)], [(2, 12), (12, 2)]  # below / right, above / left
    if corner == "br":
        ahead, behind = behind, ahead
    with torch.no_grad():
        for module, reaches in ((pooled, True), (plain, False)):
            before = module(features)[0, :, 12, 12]
            for far, expected in [(p, reaches) for p in ahead] + [(p, False) for p in behind]:
                changed = features.clone()
                changed[0, :, far[0], far[1]] += 100.0
                after = module(changed)[0, :, 12, 12]
                assert (not torch.allclose(before, after)) == expected, (module.pool, far)


def test_without_corner_pooling_same_parameters():
    pooled, plain = tiny_model(), tiny_model(corner_pooling=False)
    assert {k: v.shape for k, v in pooled.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    plain.load_state_dict(pooled.state_dict())
    images = torch.randn(1, 3, 63, 63)
    with torch.no_grad():
        a, b = pooled.eval()(images)[0], plain.eval()(images)[0]
    assert a.tl_heat.shape == b.tl_heat.shape and not torch.allclose(a.tl_heat, b.tl_heat)


# --- Layouts, precision, compilation -------------------------------------------------------


def test_channels_last_gives_the_same_maps():
    model = tiny_model().eval()
    images = torch.randn(2, 3, 63, 63)
    with torch.no_grad():
        expected = model(images)[0]
        model = model.to(memory_format=torch.channels_last)
        got = model(images.contiguous(memory_format=torch.channels_last))[0]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bfloat16_autocast_on_cpu():
    model = tiny_model().eval()
    images = torch.randn(2, 3, 63, 63)
    with torch.no_grad():
        expected = model(images)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(images)[0]
    for a, b in zip(got, expected, strict=True):
        assert torch.isfinite(a).all()
        scale = b.abs().max().item() + 1e-3
        assert (a.float() - b).abs().max().item() < 0.1 * scale


@pytest.mark.slow
def test_compiles_in_one_graph():
    """The model's own code traces into one graph. The corner pool is left out: its
    reference scan writes into row slices (``out=``), which dynamo does not trace, so with
    it ``torch.compile`` splits the graph around each pool."""
    model = tiny_model(corner_pooling=False).eval()
    images = torch.randn(1, 3, 63, 63)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for a, b in zip(compiled(images)[0], model(images)[0], strict=True):
            torch.testing.assert_close(a, b)


# --- Checkpoints ---------------------------------------------------------------------------


def test_from_checkpoint(tmp_path):
    model = tiny_model(seed=3).eval()
    state = {"model": model.state_dict(), "model_config": model.config.to_dict()}
    save_checkpoint(tmp_path / "last.pt", state | {"class_names": None})
    loaded = CornerNet.from_checkpoint(tmp_path / "last.pt").eval()
    assert loaded.config == model.config
    images = torch.randn(1, 3, 63, 63)
    with torch.no_grad():
        for a, b in zip(loaded(images)[0], model(images)[0], strict=True):
            assert torch.equal(a, b)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="'model' and 'model_config'"):
        CornerNet.from_checkpoint(tmp_path / "other.pt")


# --- Receptive field -----------------------------------------------------------------------


def interval_fields(modules: tuple, side: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last input pixel each output cell of stem + hourglass can see (one axis).

    Independent of the network code: intervals propagated through the layer geometry (a
    k x k stride-s layer joins the intervals of the cells it reads; padding reads nothing;
    nearest upsampling copies; a sum joins).
    """

    def conv(f, k, s):
        low, high = f
        pad = (k - 1) // 2
        size = (len(low) + 2 * pad - k) // s + 1
        taps = np.arange(size)[:, None] * s - pad + np.arange(k)[None, :]
        valid = (taps >= 0) & (taps < len(low))
        taps = taps.clip(0, len(low) - 1)
        return (
            np.where(valid, low[taps], np.iinfo(np.int64).max).min(1),
            np.where(valid, high[taps], -1).max(1),
        )

    def join(f, g):
        return np.minimum(f[0], g[0]), np.maximum(f[1], g[1])

    def block(f, s=1):
        return join(conv(conv(f, 3, s), 3, 1), conv(f, 1, s))

    def blocks(f, count, s=1):
        for i in range(count):
            f = block(f, s if i == 0 else 1)
        return f

    def hourglass(f, modules):
        low = blocks(f, modules[0], 2)
        low = hourglass(low, modules[1:]) if len(modules) > 2 else blocks(low, modules[1])
        low = blocks(low, modules[0])
        return join(blocks(f, modules[0]), (low[0].repeat(2), low[1].repeat(2)))

    pixels = np.arange(side)
    return hourglass(block(conv((pixels, pixels), 7, 2), 2), modules)


@pytest.mark.parametrize("modules", [(1, 1), (2, 1, 3), (1, 1, 1, 1, 1), (1, 1, 1, 2, 1)])
def test_receptive_field(modules):
    period = 2 ** (len(modules) - 1)
    low, high = interval_fields(modules, 4 * period * 64 - 1)
    middle = len(low) // 2
    sizes = (high - low + 1)[middle : middle + period]
    assert receptive_field(modules) == (sizes.min(), sizes.max())
    if sizes.min() == sizes.max():  # evenly spaced fields: the textbook rule is exact
        assert receptive_field_bound(modules) == sizes.min()


@pytest.mark.slow
def test_receptive_field_of_hourglass104_in_the_chapter():
    measured = receptive_field((2, 2, 2, 2, 2, 4))
    low, high = interval_fields((2, 2, 2, 2, 2, 4), 128 * 64 - 1)
    sizes = (high - low + 1)[1024 : 1024 + 32]
    assert measured == (sizes.min(), sizes.max())
    quoted = re.search(r"between ([\d,]+) and ([\d,]+) pixels", CHAPTER.read_text())
    assert quoted, "the chapter quotes the receptive field"
    assert tuple(int(v.replace(",", "")) for v in quoted.groups()) == measured
    assert f"{receptive_field_bound((2, 2, 2, 2, 2, 4)):,}" in CHAPTER.read_text()
