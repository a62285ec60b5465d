"""Every option is checked before any work starts: one line naming the option and its value,
exit status 2, and nothing written. And what the commands print: the defaults in their
help, evaluate's metrics, training's short summary and its full configuration on disk.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from helpers import TINY_TRAINING
from test_cli import files  # noqa: F401 (a fixture: the checkpoint, images and annotations)

from cornernet_ref import evaluate as evaluate_module
from cornernet_ref import train as train_module
from cornernet_ref.cli import build_parser, main
from cornernet_ref.cli.commands import DEFAULT_DEVICE
from cornernet_ref.config import TrainConfig, config_from_dict
from cornernet_ref.losses import CornerNetLoss
from cornernet_ref.train import NonFiniteLossError, train
from cornernet_ref.visualize import DRAW_THRESHOLD

TINY_MODEL = {
    "num_classes": 2, "n": 2, "nstack": 1, "dims": [4, 4, 4], "modules": [1, 1, 1],
    "cnv_dim": 4, "pre_dim": 4, "pool_dim": 4,
}  # fmt: skip


def run(argv: list, capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``cornernet-ref ARGV`` run in this process."""
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as stop:  # argparse's errors and --help exit
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


COCO = ["--dataset", "coco", "--images", "IMAGES", "--annotations", "ANNOTATIONS"]

# (options of `train`, what its one line must say): the option and the value as given.
TRAIN_CASES = [
    (["--lr", "-1"], ["--lr -1.0:", "> 0"]),
    (["--lr", "nan"], ["--lr nan:", "finite"]),
    (["--lr", "inf"], ["--lr inf:", "finite"]),
    (["--lr", "abc"], ["--lr", "'abc'"]),
    (["--lr-decay", "-1"], ["--lr-decay -1.0:", "(0, 1]"]),
    (["--lr-decay", "0"], ["--lr-decay 0.0:", "(0, 1]"]),
    (["--lr-decay", "1.5"], ["--lr-decay 1.5:", "(0, 1]"]),
    (["--lr-decay-iters", "0"], ["--lr-decay-iters 0:", "positive"]),
    (["--max-iters", "0"], ["--max-iters 0:", "positive"]),
    (["--checkpoint-every", "0"], ["--checkpoint-every 0:", "positive"]),
    (["--log-every", "0"], ["--log-every 0:", "positive"]),
    (["--val-every", "-1"], ["--val-every -1:", "0 or more"]),
    (["--val-limit", "-1"], ["--val-limit -1:", "0 or more"]),
    (["--workers", "-1"], ["--workers -1:", "0 or more"]),
    (["--seed", "-1"], ["--seed -1:", "0 or more"]),
    (["--batch-size", "0"], ["--batch-size 0:", "positive"]),
    (["--accumulation", "3", "--batch-size", "2"], ["--accumulation 3:", "batch_size 2"]),
    (["--output-size", "31"], ["--output-size 31:", "must be 32", "input_size 127"]),
    (["--augment.input-size", "119", "--output-size", "30"],
     ["--augment.input-size 119:", "30 cells"]),
    (["--augment.jitter", "1"], ["--augment.jitter 1.0:", "[0, 1)"]),
    (["--augment.lighting-std", "inf"], ["--augment.lighting-std inf:", "finite"]),
    (["--model.n", "0"], ["--model.n 0:", ">= 1"]),
    (["--model.dims", "4,4"], ["--model.dims 4,4:", "n + 1 = 4 entries"]),
    (["--targets.gaussian-iou", "1"], ["--targets.gaussian-iou 1.0:", "(0, 1)"]),
    (["--loss.pull-weight", "nan"], ["--loss.pull-weight nan:", "finite"]),
    (["--loss.push-weight", "-1"], ["--loss.push-weight -1.0:", ">= 0"]),
    (["--precision", "fp8"], ["--precision 'fp8':", "must be one of"]),
    (["--device", "bogus"], ["--device 'bogus':", "must be one of"]),
    (["--device", "cuda"], ["--device cuda:", "this machine", "cpu"]),
    (["--test.scales", "100"], ["--test.scales 100.0:", "(0, 4]"]),
    (["--test.decode.K", "0"], ["--test.decode.K 0:", "positive"]),
    (["--test.precision", "fp8"], ["--test.precision 'fp8':", "must be one of"]),
    # Data and configuration agree: nothing given is silently ignored.
    (["--images", "IMAGES", "--annotations", "ANNOTATIONS"],
     ["--train-images", "/images'", "dataset 'shapes'", "--dataset coco"]),
    (["--dataset", "coco", "--images", "IMAGES"], ["--train-annotations ''", "train_images"]),
    ([*COCO, "--val-images", "IMAGES"], ["--val-annotations ''", "val_images"]),
    ([*COCO, "--shapes-train", "5"], ["--shapes-train:", "'coco'", "--dataset shapes"]),
    ([*COCO, "--val-limit", "5"], ["--val-limit:", "no validation", "--val-images"]),
    (["--shapes-val", "0", "--val-every", "5"], ["--val-every:", "no validation", "--shapes-val"]),
]  # fmt: skip

EVALUATE = ["evaluate", "--images", "IMAGES", "--annotations", "ANNOTATIONS",
            "--checkpoint", "CHECKPOINT", "--metrics-out", "OUT/metrics.json"]  # fmt: skip
PREDICT = ["predict", "IMAGE", "--checkpoint", "CHECKPOINT", "--out", "OUT/boxes.png"]
TEST_CASES = [
    (["--device", "bogus"], ["--device", "bogus", "not a device", "cpu"]),
    (["--device", "cuda"], ["--device", "cuda", "not on this machine", "cpu"]),
    (["--device", "cuda:7"], ["--device", "cuda:7", "not on this machine"]),
    (["--test.scales", "100"], ["--test.scales 100.0:", "(0, 4]"]),
    (["--test.scales", "0.5,nan"], ["--test.scales 0.5,nan:", "(0, 4]"]),
    (["--test.decode.ae-threshold", "nan"], ["--test.decode.ae-threshold nan:", "at least 0"]),
    (["--test.decode.kernel", "2"], ["--test.decode.kernel 2:", "odd"]),
    (["--test.max-per-image", "0"], ["--test.max-per-image 0:", "positive"]),
    (["--test.workers", "-1"], ["--test.workers -1:", "0 or more"]),
    (["--test.flip", "maybe"], ["--test.flip", "'maybe'"]),
]
CASES = (
    [pytest.param(["train", *argv, "--out", "OUT"], said, id="train " + " ".join(argv))
     for argv, said in TRAIN_CASES]
    + [pytest.param([*EVALUATE, *argv], said, id="evaluate " + " ".join(argv))
       for argv, said in TEST_CASES]
    + [pytest.param([*PREDICT, *argv], said, id="predict " + " ".join(argv))
       for argv, said in [*TEST_CASES, (["--threshold", "nan"], ["--threshold", "'nan'"])]]
)  # fmt: skip


@pytest.mark.parametrize(("argv", "said"), CASES)
def test_a_bad_option_is_one_line_and_nothing_is_written(
    files, capsys, tmp_path, monkeypatch, argv, said
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on any machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the options were checked")

    for name in ("train.train", "predict.load_source", "load_coco"):  # the first of each
        monkeypatch.setattr(f"cornernet_ref.cli.commands.{name}", no_work)
    out = tmp_path / "out"
    argv = [arg.replace("OUT", str(out)) for arg in argv]
    argv = [str(files[arg.lower()]) if arg.isupper() else arg for arg in argv]  # IMAGES: a file
    status, stdout, stderr = run(argv, capsys)
    assert status == 2
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cornernet-ref: error: "), stderr
    for fragment in said:
        assert fragment in lines[0], (fragment, lines[0])
    assert stdout == ""
    assert not out.exists()  # no run folder, no lock, no data, no picture, no metrics


def defaults_in_help(command: str, capsys) -> dict[str, str]:
    """``{"--threshold": "0.3", ...}``: each option's default as ``command --help`` shows it."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    shown = re.findall(
        r"(--[\w.-]+)(?: [A-Z_]+)? ((?:(?!--[\w.-]+ ).)*?)\(?default: ([^)]*)\)", text
    )
    return {option: value.rstrip(")") for option, _, value in shown}


def subcommand(name: str):
    parsers = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    return parsers[name]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_show_every_default_they_run(capsys, command):
    """Every option that has a value when not given shows it, as the command runs it."""
    shown = defaults_in_help(command, capsys)
    parser = subcommand(command)
    one_of = [group for group in parser._mutually_exclusive_groups if group.required]  # noqa: SLF001
    for action in parser._actions:  # noqa: SLF001
        chosen = any(action in group._group_actions for group in one_of)  # noqa: SLF001
        if action.required or chosen or action.nargs == 0 or not action.option_strings:
            continue  # given, a flag, or positional: nothing to default
        assert action.option_strings[-1] in shown, action.option_strings
    assert shown["--device"] == DEFAULT_DEVICE
    if command == "predict":
        assert float(shown["--threshold"]) == DRAW_THRESHOLD
    assert shown["--test.decode.K"] == "100"


def test_evaluate_prints_its_metrics_and_writes_them_only_when_asked(
    files, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", "--images", files["images"], "--annotations", files["annotations"]]
    status, stdout, _ = run([*argv, "--oracle"], capsys)
    assert status == 0
    printed = json.loads(stdout)  # stdout is the metrics alone (pycocotools' table: stderr)
    assert list(printed) == list(evaluate_module.METRIC_NAMES)
    assert printed["AP"] == pytest.approx(1.0)  # the ground truth finds itself
    assert list(tmp_path.iterdir()) == []  # nothing written
    status, stdout, _ = run([*argv, "--oracle", "--metrics-out", "m/metrics.json"], capsys)
    assert status == 0
    assert json.loads((tmp_path / "m" / "metrics.json").read_text()) == json.loads(stdout)


SUMMARY_TRAINING = replace(TINY_TRAINING, max_iters=1)


def test_training_prints_a_short_summary_and_saves_the_full_configuration(tmp_path, capsys):
    config = replace(SUMMARY_TRAINING, out=str(tmp_path / "run"))
    train(config)
    err = capsys.readouterr().err
    assert "{" not in err  # no JSON dump
    summary = [line for line in err.splitlines() if re.match(r"(config|data|training|out)", line)]
    assert len(summary) == 4, err
    saved_path = tmp_path / "run" / "config.json"
    assert f"full configuration: {saved_path}" in summary[-1]
    saved = config_from_dict(json.loads(saved_path.read_text()), TrainConfig)
    classes = saved.model.num_classes  # set by the data: the shapes have 3 classes
    assert classes == 3 and saved == replace(config, model=replace(config.model, num_classes=3))


def test_the_summary_says_what_the_run_does():
    config = replace(TINY_TRAINING, batch_size=6, accumulation=2, out="runs/x")
    text = config.summary("cuda:0", 1_234_567)
    assert len(text.splitlines()) == 4
    for fragment in ("config tiny", "2-stack hourglass of depth 2", "1.23 M parameters",
                     "12 training", "56 px", "3 iterations of batch 6 (2 micro-batches)",
                     "at 63 px", "lr 0.001", "on cuda:0",
                     "runs/x (full configuration: runs/x/config.json)"):  # fmt: skip
        assert fragment in text, (fragment, text)


class NanLoss(CornerNetLoss):
    """The loss, NaN from the first call."""

    def forward(self, outputs, targets):
        losses = super().forward(outputs, targets)
        return dict(losses, total=losses["total"] * float("nan"))


def test_a_non_finite_loss_names_no_checkpoint_before_the_first(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "CornerNetLoss", NanLoss)
    config = replace(SUMMARY_TRAINING, out=str(tmp_path))
    with pytest.raises(NonFiniteLossError) as raised:
        train(config)
    assert "iteration 0" in str(raised.value)
    assert "no checkpoint was written yet" in str(raised.value)
    assert "last good checkpoint" not in str(raised.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
        ({"max_iters": 1.5}, "max_iters must be an integer"),
        ({"max_iters": True}, "max_iters must be an integer"),
        ({"compile": 1}, "compile must be true or false"),
        ({"lr_decay_iters": 5}, "lr_decay_iters must be a list"),
        ({"lr_decay_iters": [5, "x"]}, "lr_decay_iters must be an integer each"),
        ({"test": {"decode": {"ae_threshold": None}}}, "ae_threshold must be a number"),
        ({"out": 3}, "out must be a str"),
    ],
)
def test_a_saved_configuration_of_the_wrong_types_is_refused_by_name(values, said):
    """A configuration read back from JSON (a checkpoint's) is checked for types first."""
    with pytest.raises(ValueError, match=re.escape(said)):
        config_from_dict(TrainConfig().to_dict() | values, TrainConfig)
    assert config_from_dict(TrainConfig().to_dict() | {"lr": 1}, TrainConfig).lr == 1  # an int
