"""Bad input at the command line: one clear line and a non-zero exit, never a traceback.

And the help of ``train`` shows the defaults of the configuration the command will run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cornernet_ref import evaluate as evaluate_module
from cornernet_ref.checkpoint import save_checkpoint
from cornernet_ref.cli import INTERRUPTED, main
from cornernet_ref.config import CONFIGS, get_config
from cornernet_ref.inference import TestConfig
from cornernet_ref.model import CornerNet, ModelConfig

TINY_CONFIG = {
    "num_classes": 2, "n": 2, "nstack": 1, "dims": [4, 4, 4], "modules": [1, 1, 1],
    "cnv_dim": 4, "pre_dim": 4, "pool_dim": 4,
}  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A good checkpoint, image folder and annotation file, and damaged versions of each."""
    root = tmp_path_factory.mktemp("inputs")
    images = root / "images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    annotations = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
             "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
    }  # fmt: skip
    (root / "annotations.json").write_text(json.dumps(annotations))
    (root / "broken.json").write_text('{"images": [')
    (root / "list.json").write_text("[1, 2]")
    torch.manual_seed(0)
    model = CornerNet(ModelConfig.from_dict(TINY_CONFIG))
    state = {"model": model.state_dict(), "model_config": TINY_CONFIG, "class_names": ["x", "y"]}
    save_checkpoint(root / "model.pt", state)
    data = (root / "model.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    training = {"iteration": 1, "optimizer": {}, "scaler": {}, "rng": {}}
    moved = get_config("small_shapes").to_dict() | {"gaussian_iou": 0.3}  # now targets.*
    save_checkpoint(root / "old_config.pt", state | training | {"config": moved})
    return {
        "root": root,
        "images": images,
        "image": images / "a.png",
        "annotations": root / "annotations.json",
        "checkpoint": root / "model.pt",
    }


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``cornernet-ref ARGV`` (argparse's errors exit)."""
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


def assert_one_error_line(stderr: str, *fragments: str, after_log: bool = False) -> None:
    """stderr is one error line naming every fragment (``after_log``: the last line is)."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert after_log or len(lines) == 1, stderr
    assert re.match(r"cornernet-ref[\w ]*: error: ", lines[-1]), stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def evaluate_args(files, **changes) -> list:
    options = {
        "--images": files["images"],
        "--annotations": files["annotations"],
        "--checkpoint": files["checkpoint"],
        "--metrics-out": files["root"] / "metrics.json",
    } | changes
    return ["evaluate", *(item for pair in options.items() for item in pair if item is not None)]


def predict_args(files, image=None, **changes) -> list:
    options = {"--checkpoint": files["checkpoint"], "--out": files["root"] / "boxes.png"} | changes
    return ["predict", image or files["image"], *(x for pair in options.items() for x in pair)]


def test_the_good_inputs_work(files, capsys):
    """The baseline the other cases damage: evaluate and predict succeed with these files."""
    status, err = run(evaluate_args(files, **{"--limit": "1"}), capsys)
    assert status == 0, err
    status, err = run(predict_args(files), capsys)
    assert status == 0, err


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ({"--checkpoint": "missing.pt"}, ["checkpoint not found", "missing.pt"]),
        ({"--checkpoint": "truncated.pt"}, ["truncated.pt is truncated or corrupt"]),
        ({"--checkpoint": "annotations.json"}, ["annotations.json is truncated or corrupt"]),
        ({"--annotations": "missing.json"}, ["annotation file not found", "missing.json"]),
        ({"--annotations": "broken.json"}, ["broken.json: not valid JSON"]),
        ({"--annotations": "list.json"}, ["list.json: expected a JSON object with 'images'"]),
        ({"--images": "nowhere"}, ["image folder not found", "nowhere"]),
    ],
)
def test_evaluate_names_the_bad_file(files, capsys, damage, fragments):
    damage = {key: files["root"] / value for key, value in damage.items()}
    status, err = run(evaluate_args(files, **damage), capsys)
    assert status == 2
    assert_one_error_line(err, *fragments)


@pytest.mark.parametrize(
    ("image", "checkpoint", "fragments"),
    [
        ("images/missing.png", "model.pt", ["image file not found", "missing.png"]),
        ("images/broken.png", "model.pt", ["cannot decode image file", "broken.png"]),
        ("images/a.png", "missing.pt", ["checkpoint not found", "missing.pt"]),
        ("images/a.png", "truncated.pt", ["truncated.pt is truncated or corrupt"]),
    ],
)
def test_predict_names_the_bad_file(files, capsys, image, checkpoint, fragments):
    root = files["root"]
    argv = predict_args(files, root / image, **{"--checkpoint": root / checkpoint})
    status, err = run(argv, capsys)
    assert status == 2
    assert_one_error_line(err, *fragments)


def _interrupted_import():
    """What torch.onnx.export raised when Ctrl-C stopped an import it ran: handling the
    KeyboardInterrupt failed on the half-made module, and the exporter wrapped that."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        try:
            raise AttributeError("module 'torch._dynamo' has no attribute 'exc'")
        except AttributeError as error:
            raise RuntimeError("Failed to export the model with torch.export") from error


def test_an_error_raised_by_ctrl_c_ends_as_a_ctrl_c(files, capsys, monkeypatch):
    """Libraries that catch broadly turn a KeyboardInterrupt into errors of their own; it
    stays in the chain of contexts, and the command ends with one line and status 130."""
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *args, **kwargs: _interrupted_import())
    status, err = run(evaluate_args(files), capsys)
    assert status == INTERRUPTED
    assert_one_error_line(err, "interrupted (Ctrl-C)", after_log=True)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--test.scales", "1,a"], ["--test.scales", "'1,a'"]),
        (["--test.scales", "0"], ["--test.scales 0.0: must lie in (0, 4]"]),
        (["--test.scales", "nan"], ["--test.scales nan: must lie in (0, 4]"]),
        (["--test.scales", "1,inf"], ["--test.scales 1.0,inf: must lie in (0, 4]"]),
        (["--test.scales", ","], ["--test.scales : must lie in (0, 4]"]),
        (["--test.flip", "maybe"], ["--test.flip", "'maybe'"]),
        (["--test.decode.K", "0"], ["--test.decode.K 0: must be positive"]),
        (["--limit", "0"], ["--limit", "'0'"]),
        (["--limit", "many"], ["--limit", "'many'"]),
        (["--test.nms-method", "box"], ["--test.nms-method 'box': must be one of"]),
        (["--ground-truth", "heatmaps", "--oracle"], ["--oracle", "--checkpoint"]),
    ],
)
def test_evaluate_rejects_bad_options(files, capsys, argv, fragments):
    args = evaluate_args(files)
    if "--oracle" in argv:
        del args[args.index("--checkpoint") : args.index("--checkpoint") + 2]
    status, err = run([*args, *argv], capsys)
    assert status == 2
    assert_one_error_line(err, *fragments)


@pytest.mark.parametrize("threshold", ["1.5", "-0.1", "nan", "high"])
def test_predict_rejects_a_threshold_outside_0_1(files, capsys, threshold):
    status, err = run(predict_args(files, **{"--threshold": threshold}), capsys)
    assert status == 2
    assert_one_error_line(err, "--threshold", repr(threshold))


def test_non_finite_metrics_fail_the_command(files, capsys, monkeypatch):
    metrics = dict.fromkeys(evaluate_module.METRIC_NAMES, 0.5) | {"AP": math.nan}
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *args, **kwargs: metrics)
    status, err = run(evaluate_args(files), capsys)
    assert status == 1
    assert_one_error_line(err, "non-finite metrics AP", after_log=True)  # after the config
    assert math.isnan(json.loads((files["root"] / "metrics.json").read_text())["AP"])


def test_a_bug_keeps_its_traceback(files, monkeypatch):
    """Only bad input becomes one line; any other exception propagates."""

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(evaluate_module, "evaluate", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main([str(arg) for arg in evaluate_args(files)])


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--config", "nope"], ["--config", "'nope'", "small_shapes"]),
        (["--batch-size", "0"], ["--batch-size 0: must be positive"]),
        (["--accumulation", "0"], ["--accumulation 0: must be positive"]),
        (["--precision", "fp8"], ["--precision 'fp8': must be one of"]),
        (["--test.scales", "0.5,0"], ["--test.scales 0.5,0.0: must lie in"]),
        (["--test.nms-method", "box"], ["--test.nms-method 'box': must be one of"]),
        (["--test.decode.kernel", "2"], ["--test.decode.kernel 2: must be a positive odd number"]),
        (["--max-iters", "ten"], ["--max-iters", "'ten'"]),
        (["--flip-me", "1"], ["unrecognized arguments: --flip-me"]),
        (["--resume", "missing.pt"], ["checkpoint not found", "missing.pt"]),
        (["--resume", "truncated.pt"], ["truncated.pt is truncated or corrupt"]),
        (["--resume", "model.pt"], ["model.pt holds a model without its training state"]),
        (["--resume", "old_config.pt"],
         ["old_config.pt: its training configuration", "unknown TrainConfig", "'gaussian_iou'"]),
        (["--dataset", "coco", "--images", "nowhere", "--annotations", "annotations.json"],
         ["training image folder not found", "nowhere"]),
        (["--dataset", "coco", "--images", "images", "--annotations", "missing.json"],
         ["annotation file not found", "missing.json"]),
    ],
)  # fmt: skip
def test_train_rejects_bad_input_before_training(files, capsys, tmp_path, argv, fragments):
    root = files["root"]
    paths = ("missing.pt", "truncated.pt", "model.pt", "old_config.pt", "nowhere", "images")
    argv = [str(root / arg) if arg in paths or arg.endswith(".json") else arg for arg in argv]
    status, err = run(["train", *argv, "--out", tmp_path], capsys)
    assert status == 2
    assert_one_error_line(err, *fragments)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("official", "fragments"),
    [
        ("missing.pkl", ["official weights not found", "missing.pkl"]),
        ("truncated.pt", ["truncated.pt is truncated or corrupt"]),
        ("annotations.json", ["annotations.json is truncated or corrupt"]),
    ],
)
def test_convert_names_the_bad_file(files, capsys, tmp_path, official, fragments):
    status, err = run(["convert", files["root"] / official, tmp_path / "out.pt"], capsys)
    assert status == 2
    assert_one_error_line(err, *fragments)
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "nowhere.png", "--checkpoint", "missing.pt", "--out", "x.png"],
        ["evaluate", "--images", ".", "--annotations", "a.json", "--oracle", "--test.scales", "x"],
    ],
)
def test_the_installed_command_prints_one_line(tmp_path, command):
    """Through a real process: exit status 2, one line on stderr, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "cornernet_ref", *command, "--metrics-out", "m.json"]
        if command[0] == "evaluate"
        else [sys.executable, "-m", "cornernet_ref", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def help_defaults(text: str) -> dict[str, str]:
    """``{"--max-iters": "1200", ...}`` read off the help text."""
    flat = " ".join(text.split())
    # An option, its metavar, its description (no other option in it), then its default.
    shown = re.findall(r"(--[\w.-]+) [A-Z]+ ((?:(?!--[\w.-]+ [A-Z]).)*?)\(default: ([^)]*)\)", flat)
    return {option: default for option, _, default in shown}


@pytest.mark.parametrize("name", [None, *sorted(CONFIGS)])
def test_train_help_shows_the_defaults_of_the_config_it_runs(capsys, name):
    argv = ["train", "--help"] if name is None else ["train", "--config", name, "--help"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    config = get_config(name or "small_shapes")
    shown = help_defaults(capsys.readouterr().out)
    assert shown["--max-iters"] == str(config.max_iters)
    assert shown["--batch-size"] == str(config.batch_size)
    assert shown["--lr"] == str(config.lr)
    assert shown["--dataset"] == repr(config.dataset)
    assert shown["--lr-decay-iters"] == ",".join(map(str, config.lr_decay_iters))
    assert shown["--val-limit"] == str(config.val_limit)


def leaf_paths(config, prefix: str = "") -> list[str]:
    """``["test.flip", ..., "test.decode.K", ...]``: the paths of a configuration's leaves."""
    paths = []
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            paths += leaf_paths(value, f"{prefix}{item.name}.")
        else:
            paths.append(prefix + item.name)
    return paths


def test_train_evaluate_and_predict_take_the_same_test_options(capsys):
    """One ``--test.*`` option per field of TestConfig (a new field appears in all three),
    listed in each --help with the default that runs."""
    shown = {}
    for command in ("train", "evaluate", "predict"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        options = help_defaults(capsys.readouterr().out)
        shown[command] = {key: value for key, value in options.items() if key.startswith("--test.")}
    assert shown["train"] == shown["evaluate"] == shown["predict"]
    expected = {"--" + path.replace("_", "-") for path in leaf_paths(TestConfig(), "test.")}
    assert set(shown["evaluate"]) == expected
    assert shown["evaluate"]["--test.flip"] == "true"
    assert shown["evaluate"]["--test.scales"] == "1.0"
    assert shown["evaluate"]["--test.decode.K"] == str(TestConfig().decode.K)


def test_the_test_options_reach_the_configuration_of_each_command(files, capsys, monkeypatch):
    """``--test.decode.K 7 --test.flip false`` is the TestConfig evaluate and predict run."""
    used = []

    def spy(source, record, config):
        used.append(config)
        raise ZeroDivisionError("stop here")

    monkeypatch.setattr(
        "cornernet_ref.inference.detect_image", spy
    )  # evaluate's, via detect_images
    monkeypatch.setattr("cornernet_ref.cli.commands.detect_image", spy)  # predict's
    options = ["--test.decode.K", "7", "--test.flip", "false"]
    for argv in (evaluate_args(files), predict_args(files)):
        with pytest.raises(ZeroDivisionError):
            main([str(arg) for arg in [*argv, *options]])
    expected = TestConfig(flip=False, decode=dataclasses.replace(TestConfig().decode, K=7))
    assert used == [expected, expected]
