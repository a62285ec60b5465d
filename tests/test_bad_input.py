"""Every subcommand, every bad input: one line ``cornernet-ref: error: ...`` naming the file
or option at fault, exit status 2, no traceback, and nothing of an earlier run lost.

Each case runs ``cornernet-ref`` in this process against a finished tiny run (its
``last.pt``, ``history.jsonl``, ``config.json``, data and pictures); what a command would
write goes into that run's folder, so a command that wrote anything changes the folder's
snapshot. The damaged inputs other test files cover one at a time (images, truncated
checkpoints, options out of range) are not repeated here.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAINING, tiny_arguments
from test_cli import assert_one_error_line, files, run  # noqa: F401 (files: a fixture)

from cornernet_ref.checkpoint import load_checkpoint, save_checkpoint
from cornernet_ref.convert import to_official_state_dict
from cornernet_ref.errors import InputError
from cornernet_ref.run import RunFolder, check_resumed_classes
from cornernet_ref.train import train


@pytest.fixture(scope="module")
def world(files, tmp_path_factory) -> dict[str, Path]:  # noqa: F811 (test_cli's fixture)
    """The finished tiny run (2 of 2 iterations, 3 classes) and the bad files of the cases."""
    root = tmp_path_factory.mktemp("bad_input")
    run_folder = RunFolder(root / "run")
    torch.manual_seed(0)
    train(replace(TINY_TRAINING, max_iters=2, out=str(run_folder.root)))
    last = run_folder.checkpoint
    state = load_checkpoint(last, resume=True)

    poisoned = {**state, "model": dict(state["model"])}
    poisoned["model"]["stem.conv7x7.conv.weight"] = torch.full_like(
        state["model"]["stem.conv7x7.conv.weight"], float("nan")
    )
    save_checkpoint(root / "nan.pt", poisoned)
    torch.save(state, root / "legacy.pt", _use_new_zipfile_serialization=False)
    shutil.copy(last, root / "denied.pt")

    official = to_official_state_dict(state["model"])
    torch.save(official, root / "official.pkl")
    dropped = next(key for key in reversed(official) if key.endswith("running_var"))
    torch.save({k: v for k, v in official.items() if k != dropped}, root / "incomplete.pkl")
    torch.save({"conv.weight": torch.ones(2, 3)}, root / "other.pkl")  # some other network
    torch.save({"weights": [1.0, 2.0]}, root / "not_tensors.pkl")

    coco = json.loads(files["annotations"].read_text())  # 1 image, 2 categories, 1 box
    variants = {
        "no_images": {**coco, "images": [], "annotations": []},
        "no_categories": {**coco, "categories": [], "annotations": []},
        "no_annotations": {**coco, "annotations": []},
        "big_area": {**coco, "annotations": [{**coco["annotations"][0], "area": "big"}]},
        "denied": coco,
    }
    for name, dataset in variants.items():
        (root / f"{name}.json").write_text(json.dumps(dataset))
    (root / "nested.json").write_text("[" * 100_000 + "]" * 100_000)

    (root / "empty.onnx").write_bytes(b"")
    rng = np.random.default_rng(0)
    (root / "random.onnx").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "checkpoint.onnx").write_bytes(last.read_bytes()[:2000])  # a cut-off other file
    return {
        "root": root,
        "run": run_folder.root,
        "ck": last,
        "images": files["images"],
        "image": files["image"],
        "annotations": files["annotations"],
    }


def _coco_train(annotations: str, *more: str) -> list[str]:
    """``train`` on COCO data (the tiny test image) written into the finished run's folder."""
    return [
        "train",
        "--dataset",
        "coco",
        "--images",
        "{images}",
        "--annotations",
        annotations,
        *more,
        "--max-iters",
        "1",
        "--out",
        "{run}",
    ]  # fmt: skip (short, if ever it trains)


def _evaluate(annotations: str, *which: str) -> list[str]:
    which = which or ("--checkpoint", "{ck}")
    return ["evaluate", "--images", "{images}", "--annotations", annotations, *which,
            "--metrics-out", "{run}/metrics.json"]  # fmt: skip


def _predict(checkpoint: str) -> list[str]:
    return ["predict", "{image}", "--checkpoint", checkpoint, "--out", "{run}/boxes.png"]


def _export(checkpoint: str) -> list[str]:
    return ["export", "--checkpoint", checkpoint, "--out", "{run}/model.onnx"]


RESUME = ["train", "--resume", "{ck}"]
# id: (the command, with {name} for the paths of ``world``; fragments its one line names)
CASES: dict[str, tuple[list[str], list[str]]] = {
    # train --resume: a finished run, another model, other data; bad checkpoints.
    "resume-finished": (RESUME, ["last.pt is at iteration 2", "ends at 2", "--max-iters"]),
    "resume-shorter": ([*RESUME, "--max-iters", "1"], ["is at iteration 2", "ends at 1"]),
    "resume-other-model": (
        [*RESUME, "--max-iters", "4", "--model.cnv-dim", "16"],
        ["cannot resume", "last.pt", "model.cnv_dim 8 -> 16", "--init-from"],
    ),
    "resume-other-data": (
        [*RESUME, "--max-iters", "4", "--shapes-train", "20", "--shapes-seed", "5"],
        ["cannot resume", "shapes_train 12 -> 20", "shapes_seed 0 -> 5"],
    ),
    "resume-other-dataset": (
        [
            *RESUME,
            "--max-iters",
            "4",
            "--dataset",
            "coco",
            "--images",
            "{images}",
            "--annotations",
            "{annotations}",
        ],
        ["cannot resume", "dataset 'shapes' -> 'coco'", "train_annotations"],
    ),  # fmt: skip
    "resume-nan-weights": (
        ["train", "--resume", "{root}/nan.pt"],
        ["nan.pt", "'stem.conv7x7.conv.weight' holds NaN"],
    ),
    "resume-legacy": (
        ["train", "--resume", "{root}/legacy.pt"],
        ["legacy.pt is in the legacy torch format", "torch.save"],
    ),
    "resume-denied": (
        ["train", "--resume", "{root}/denied.pt"],
        ["cannot read checkpoint", "denied.pt", "Permission denied"],
    ),
    # train --init-from: dicts that are not complete official state dicts.
    **{
        f"init-from-{name}": (
            [
                "train",
                "--init-from",
                f"{{root}}/{name}.pkl",
                "--max-iters",
                "1",
                *tiny_arguments(Path("{run}")),
            ],  # fmt: skip
            [f"{name}.pkl", fragment],
        )
        for name, fragment in [
            ("incomplete", "official state dict has no"),
            ("other", "not an official CornerNet state dict"),
            ("not_tensors", "'weights' is not a tensor"),
        ]
    },
    # train on COCO data that cannot give a meaningful result.
    "train-no-images": (
        _coco_train("{root}/no_images.json"),
        ["no_images.json", "'images' is empty"],
    ),
    "train-no-categories": (
        _coco_train("{root}/no_categories.json"),
        ["no_categories.json", "'categories' is empty"],
    ),
    "train-area-big": (_coco_train("{root}/big_area.json"), ["big_area.json", "'area'", "'big'"]),
    "train-nested-json": (_coco_train("{root}/nested.json"), ["nested.json", "nested too deeply"]),
    "train-denied-json": (_coco_train("{root}/denied.json"), ["denied.json", "Permission denied"]),
    "train-missing-val": (
        _coco_train(
            "{annotations}", "--val-images", "{images}", "--val-annotations", "{root}/no.json"
        ),
        ["validation annotations not found", "no.json", "--val-annotations"],
    ),
    # evaluate
    "evaluate-no-images": (_evaluate("{root}/no_images.json"), ["'images' is empty"]),
    "evaluate-no-categories": (_evaluate("{root}/no_categories.json"), ["'categories' is empty"]),
    "evaluate-no-annotations": (
        _evaluate("{root}/no_annotations.json", "--oracle"),
        ["no_annotations.json", "no annotations"],
    ),
    "evaluate-other-classes": (
        _evaluate("{annotations}"),
        ["last.pt detects 3 classes", "annotations.json has 2 categories"],
    ),
    "evaluate-nan-weights": (
        _evaluate("{annotations}", "--checkpoint", "{root}/nan.pt"),
        ["nan.pt", "holds NaN"],
    ),
    "evaluate-area-big": (_evaluate("{root}/big_area.json", "--oracle"), ["'area'", "'big'"]),
    "evaluate-nested-json": (_evaluate("{root}/nested.json", "--oracle"), ["nested too deeply"]),
    "evaluate-denied-json": (
        _evaluate("{root}/denied.json", "--oracle"),
        ["cannot read", "denied.json", "Permission denied"],
    ),
    "evaluate-legacy": (
        _evaluate("{annotations}", "--checkpoint", "{root}/legacy.pt"),
        ["legacy torch format"],
    ),
    # predict: checkpoints and .onnx files that cannot run.
    "predict-nan-weights": (_predict("{root}/nan.pt"), ["nan.pt", "holds NaN"]),
    "predict-legacy": (_predict("{root}/legacy.pt"), ["legacy.pt", "legacy torch format"]),
    "predict-denied": (
        _predict("{root}/denied.pt"),
        ["cannot read checkpoint", "denied.pt", "Permission denied"],
    ),
    "predict-missing-onnx": (_predict("{root}/missing.onnx"), ["ONNX file not found", "missing"]),
    **{
        f"predict-{name}-onnx": (
            _predict(f"{{root}}/{name}.onnx"),
            [f"{name}.onnx", "onnxruntime cannot load it"],
        )
        for name in ("empty", "random", "checkpoint")
    },
    # convert
    "convert-incomplete": (
        ["convert", "{root}/incomplete.pkl", "{ck}"],
        ["incomplete.pkl", "official state dict has no", "tensors missing in all"],
    ),
    "convert-other": (
        ["convert", "{root}/other.pkl", "{ck}"],
        ["other.pkl", "not an official CornerNet state dict", "kps.0"],
    ),
    "convert-not-tensors": (
        ["convert", "{root}/not_tensors.pkl", "{ck}"],
        ["not_tensors.pkl", "'weights' is not a tensor"],
    ),
    "convert-checkpoint": (
        ["convert", "{ck}", "{run}/out.pt"],
        ["last.pt is a cornernet-ref checkpoint already", "use it as it is"],
    ),
    "convert-trust-checkpoint": (
        ["convert", "--trust", "{ck}", "{run}/out.pt"],
        ["last.pt is a cornernet-ref checkpoint already", "use it as it is"],
    ),
    "convert-denied": (
        ["convert", "{root}/denied.pt", "{run}/out.pt"],
        ["cannot read", "denied.pt", "Permission denied"],
    ),
    # export
    "export-nan-weights": (_export("{root}/nan.pt"), ["nan.pt", "holds NaN"]),
    "export-legacy": (_export("{root}/legacy.pt"), ["legacy.pt", "legacy torch format"]),
    "export-missing": (_export("{root}/missing.pt"), ["checkpoint not found", "missing.pt"]),
    "export-denied": (
        _export("{root}/denied.pt"),
        ["cannot read checkpoint", "denied.pt", "Permission denied"],
    ),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (lock files aside) and a hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def denied(monkeypatch):
    """Opening a file whose name starts with ``denied`` fails as without read permission (the
    tests may run as root, whom ``chmod`` does not stop)."""
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, str | Path) and Path(file).name.startswith("denied"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)  # what Path.open calls


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_with_status_2_and_loses_nothing(world, capsys, denied, case):
    template, fragments = CASES[case]
    argv = [part.format(**world) for part in template]
    before = snapshot(world["run"])
    status, err = run(argv, capsys)
    assert status == 2, err
    assert_one_error_line(err, *fragments)
    assert err.startswith("cornernet-ref: error: ")
    assert snapshot(world["run"]) == before


def test_a_resumed_run_rewrites_the_history_after_its_checkpoint(tmp_path):
    """A run stopped after its checkpoint logged iterations it redoes when resumed: the
    history then holds each iteration once, in order, and the redone ones as the rerun
    logged them (a resumed run continues exactly, so they equal the stopped run's too)."""
    config = replace(TINY_TRAINING, max_iters=2, out=str(tmp_path / "run"))
    run_folder = RunFolder(tmp_path / "run")
    train(config)
    at_2 = tmp_path / "at_2.pt"
    shutil.copy(run_folder.checkpoint, at_2)
    train(replace(config, max_iters=4), resume=at_2)
    history = run_folder.history.read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in history] == [1, 2, 3, 4]
    # As if stopped after logging 3 and 4 but before the checkpoint at 4: resume from 2.
    train(replace(config, max_iters=4), resume=at_2)
    rerun = run_folder.history.read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in rerun] == [1, 2, 3, 4]
    assert rerun[:2] == history[:2]
    losses = [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in rerun]
    assert losses == [
        {k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in history
    ]


def test_resume_refuses_data_of_other_classes(tmp_path):
    """The data's classes are known only once it is read: the same annotation file, its
    categories changed, is refused before training, naming both lists."""
    state = {"class_names": ["circle", "square", "triangle"], "model_config": {"num_classes": 3}}
    check_resumed_classes("ck.pt", state, ["circle", "square", "triangle"])
    with pytest.raises(InputError, match=r"3 classes .*the data 2"):
        check_resumed_classes("ck.pt", state, ["circle", "square"])
