"""Configurations: the paper's numbers, round trips through JSON, command-line overrides."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from cornernet_ref.cli.options import add_config_options, overrides_from_args
from cornernet_ref.config import (
    CONFIGS,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    get_config,
    short_coco_run,
)
from cornernet_ref.data.augment import AugmentConfig
from cornernet_ref.decode import DecodeConfig
from cornernet_ref.inference import TestConfig
from cornernet_ref.losses import LossConfig
from cornernet_ref.model import ModelConfig
from cornernet_ref.printable import PrintableConfig
from cornernet_ref.targets import TargetConfig

CONFIG_CLASSES = (
    TrainConfig, ModelConfig, AugmentConfig, TargetConfig, LossConfig, TestConfig, DecodeConfig
)  # fmt: skip


@pytest.mark.claim("training-hyperparameters")
def test_paper_config():
    config = get_config("hourglass104_coco")
    assert (config.lr, config.batch_size, config.max_iters) == (2.5e-4, 49, 500_000)
    assert config.lr_decay_iters == (450_000,) and config.lr_decay == 0.1
    assert (config.augment.input_size, config.output_size) == (511, 128)
    assert config.augment.border == 128 and config.targets.gaussian_iou == 0.3
    assert config.targets.radius_variant == "official" and config.targets.penalty_reduction
    assert config.loss == LossConfig(pull_weight=0.1, push_weight=0.1, offset_weight=1.0)
    assert not config.loss.single_object_push  # the push of Eq. 5 as written (chapter 2)
    assert (config.model.nstack, config.model.n) == (2, 5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_json_round_trip(name):
    config = get_config(name)
    assert config_from_dict(json.loads(str(config)), TrainConfig) == config


def test_command_line_overrides():
    parser = argparse.ArgumentParser()
    add_config_options(parser, TrainConfig())
    args = parser.parse_args(
        ["--lr", "0.5", "--model.nstack", "1", "--augment.flip", "false",
         "--lr-decay-iters", "10,20", "--dataset", "coco", "--train-images", "x",
         "--train-annotations", "y.json", "--test.flip", "false",
         "--test.scales", "0.5,1", "--test.decode.K", "50"]
    )  # fmt: skip
    config = apply_overrides(get_config("small_shapes"), overrides_from_args(args))
    assert config.lr == 0.5 and config.model.nstack == 1 and config.augment.flip is False
    assert config.lr_decay_iters == (10, 20) and config.train_images == "x"
    assert config.model.dims == get_config("small_shapes").model.dims  # untouched
    assert config.test.flip is False and config.test.scales == (0.5, 1.0)
    assert config.test.decode.K == 50  # two levels down
    assert config.test.decode.num_dets == TrainConfig().test.decode.num_dets  # untouched
    assert parser.parse_args([]).__dict__ == {}  # nothing given, nothing overridden


def test_target_options_are_nested_under_targets():
    parser = argparse.ArgumentParser()
    add_config_options(parser, TrainConfig())
    args = parser.parse_args(
        ["--targets.gaussian-iou", "0.5", "--targets.radius-variant", "exact",
         "--targets.penalty-reduction", "false", "--targets.max-objects", "9"]
    )  # fmt: skip
    config = apply_overrides(get_config("small_shapes"), overrides_from_args(args))
    assert config.targets == TargetConfig(0.5, "exact", False, 9)
    assert config_from_dict(json.loads(str(config)), TrainConfig) == config
    with pytest.raises(SystemExit):  # the flat options of the fields' earlier place are gone
        parser.parse_args(["--gaussian-iou", "0.5"])
    with pytest.raises(ValueError, match="radius_variant must be one of"):
        apply_overrides(config, {"targets.radius_variant": "round"})


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="train_images"):
        TrainConfig(dataset="coco")
    with pytest.raises(ValueError, match="nope"):
        apply_overrides(TrainConfig(), {"nope": 1})
    with pytest.raises(ValueError, match="'test.decode.nope'"):  # named from the top
        apply_overrides(TrainConfig(), {"test.decode.nope": 1})
    with pytest.raises(ValueError, match="unknown config"):
        get_config("nope")


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_every_configuration_follows_one_pattern(cls):
    """Frozen, printed as the JSON of its fields, rebuilt by from_dict, nested as such."""
    config = cls()
    assert isinstance(config, PrintableConfig) and cls.__dataclass_params__.frozen
    assert json.loads(str(config)) == json.loads(json.dumps(dataclasses.asdict(config)))
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()  # JSON values
    assert cls.from_dict(json.loads(str(config))) == config
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            assert type(value) in CONFIG_CLASSES, item.name


# One value out of range per configuration: each is refused on construction, named.
OUT_OF_RANGE = [
    (TrainConfig, {"max_iters": 0}, "max_iters"),
    (ModelConfig, {"pool_dim": 0}, "pool_dim"),
    (AugmentConfig, {"input_size": 0}, "input_size"),
    (AugmentConfig, {"scales": ()}, "scales"),
    (AugmentConfig, {"scales": (1.0, -0.5)}, "scales"),
    (AugmentConfig, {"scales": (0.0,)}, "scales"),
    (AugmentConfig, {"border": -1}, "border"),
    (AugmentConfig, {"jitter": 1.0}, "jitter"),
    (AugmentConfig, {"jitter": -0.1}, "jitter"),
    (AugmentConfig, {"lighting_std": float("nan")}, "lighting_std"),
    (AugmentConfig, {"lighting_std": float("inf")}, "lighting_std"),
    (AugmentConfig, {"lighting_std": -0.1}, "lighting_std"),
    (TargetConfig, {"gaussian_iou": 1.0}, "gaussian_iou"),
    (LossConfig, {"pull_weight": -0.1}, "pull_weight"),
    (LossConfig, {"push_weight": float("inf")}, "push_weight"),
    (LossConfig, {"offset_weight": float("nan")}, "offset_weight"),
    (TestConfig, {"max_per_image": 0}, "max_per_image"),
    (DecodeConfig, {"K": 0}, "K"),
]


@pytest.mark.parametrize(("cls", "values", "field"), OUT_OF_RANGE)
def test_every_configuration_names_a_value_out_of_range(cls, values, field):
    with pytest.raises(ValueError, match=field):
        cls(**values)
    cls.from_dict({})  # while the defaults build


def test_the_edges_of_the_augmentation_and_loss_options_are_accepted():
    AugmentConfig(input_size=1, scales=(1e-3,), border=0, jitter=0.0, lighting_std=0.0)
    LossConfig(pull_weight=0.0, push_weight=0.0, offset_weight=0.0)


def test_output_size_and_input_size_are_checked_together():
    """The maps of a 127-pixel input have (127 - 1) // 4 + 1 = 32 cells a side (two
    stride-2 steps rounding up: 127 -> 64 -> 32); any other output_size is refused up front,
    and so is an input the hourglass cannot halve n times."""
    small = get_config("small_shapes")
    assert (small.augment.input_size, small.output_size) == (127, 32)
    with pytest.raises(ValueError, match="output_size must be 32 for augment.input_size 127"):
        dataclasses.replace(small, output_size=31)
    with pytest.raises(ValueError, match="output_size must be 64 for augment.input_size 255"):
        apply_overrides(small, {"augment.input_size": 255})
    assert apply_overrides(small, {"augment.input_size": 255, "output_size": 64}).output_size == 64
    # 119 -> 60 -> 30 cells, not a multiple of 2**3: small_shapes' hourglass cannot take it.
    with pytest.raises(
        ValueError, match="input_size does not fit the model: input height 119 gives 30 cells"
    ):
        apply_overrides(small, {"augment.input_size": 119, "output_size": 30})


def test_the_test_configuration_is_the_official_one():
    """shared/reference/official_constants.md: top_k 100, ae_threshold 0.5, nms_kernel 3,
    Gaussian soft-NMS, the top 100 detections per image, original and flipped image."""
    config = TrainConfig().test
    assert (config.decode.K, config.decode.ae_threshold, config.decode.kernel) == (100, 0.5, 3)
    assert (config.nms_method, config.max_per_image, config.flip) == ("gaussian", 100, True)
    assert config.scales == (1.0,) and config.decode.num_dets == 1000
    assert all(named.test == config for named in CONFIGS.values())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TestConfig(scales=()), r"scales must lie in \(0, 4\]"),
        (lambda: TestConfig(scales=(1.0, 0.0)), r"scales must lie in \(0, 4\]"),
        (lambda: TestConfig(scales=(float("inf"),)), r"scales must lie in \(0, 4\]"),
        (lambda: TestConfig(scales=(float("nan"),)), r"scales must lie in \(0, 4\]"),
        (lambda: TestConfig(scales=(1.0, 4.5)), r"scales must lie in \(0, 4\], got \(1.0, 4.5\)"),
        (lambda: TestConfig(nms_method="hard"), "nms_method must be one of"),
        (lambda: TestConfig(max_per_image=0), "max_per_image must be positive"),
    ],
)
def test_bad_test_options_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_edges_of_the_test_options_are_accepted():
    TestConfig(scales=(1e-3,), max_per_image=1, nms_method="linear")


def test_saved_configurations_with_unknown_fields_are_refused():
    """A field that moved (``gaussian_iou`` is now ``targets.gaussian_iou``) is named rather
    than silently replaced by its default."""
    values = TrainConfig().to_dict()
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['gaussian_iou'\]"):
        config_from_dict(values | {"gaussian_iou": 0.5}, TrainConfig)
    values["model"]["depth"] = 3
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['depth'\]"):
        config_from_dict(values, TrainConfig)


def test_a_short_coco_run_is_the_paper_configuration_on_one_set():
    config = short_coco_run("imgs", "ann.json", 2000, accumulation=7)
    assert (config.train_images, config.val_images) == ("imgs", "imgs")
    assert (config.train_annotations, config.val_annotations) == ("ann.json", "ann.json")
    assert (config.max_iters, config.lr_decay_iters, config.val_every) == (2000, (1800,), 0)
    assert config.accumulation == 7
    paper = get_config("hourglass104_coco")
    assert (
        dataclasses.replace(
            config,
            train_images=paper.train_images,
            train_annotations=paper.train_annotations,
            val_images=paper.val_images,
            val_annotations=paper.val_annotations,
            max_iters=paper.max_iters,
            lr_decay_iters=paper.lr_decay_iters,
            val_every=paper.val_every,
            accumulation=paper.accumulation,
        )
        == paper
    )
