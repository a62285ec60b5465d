r"""The five subcommands: a function adding each parser, and the function that runs it.

Each ``add_*`` adds one subcommand to the subparsers of ``cornernet-ref`` and sets its
``func``, which is called with the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from cornernet_ref import analysis, evaluate, export, predict, train
from cornernet_ref.checkpoint import load_checkpoint
from cornernet_ref.cli.options import (
    ShowConfigDefaults,
    add_config_options,
    check_device,
    device_option,
    option_name,
    overrides_from_args,
    positive_int,
    refused,
    unit_interval,
)
from cornernet_ref.config import CONFIGS, TrainConfig, apply_overrides, get_config
from cornernet_ref.convert import convert_file
from cornernet_ref.data.coco import category_ids, load_coco
from cornernet_ref.errors import InputError, print_error
from cornernet_ref.inference import TestConfig, detect_image, model_source
from cornernet_ref.model import CornerNet
from cornernet_ref.printable import FieldError, config_from_dict
from cornernet_ref.run import RunFolder
from cornernet_ref.runlock import run_lock
from cornernet_ref.visualize import DRAW_THRESHOLD, write_heatmap_picture

TEST_PREFIX = "test."  # the options of a TestConfig: --test.flip, --test.decode.K, ...
DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _description(module) -> str:
    return module.__doc__.splitlines()[0]


def test_config_from_args(args: argparse.Namespace) -> TestConfig:
    r"""The :class:`TestConfig` of the ``--test.*`` options given (its defaults otherwise)."""
    try:
        return apply_overrides(TestConfig(), overrides_from_args(args, TEST_PREFIX))
    except FieldError as error:
        raise refused(error, TEST_PREFIX) from None


def add_train(subparsers: argparse._SubParsersAction) -> None:
    r"""``cornernet-ref train``: with no arguments, the small config on shapes on the CPU."""
    parser = subparsers.add_parser(
        "train",
        help="train CornerNet (no arguments: a small model on synthetic shapes, CPU, minutes)",
        description=f"{_description(train)} The defaults shown are those of --config; "
        "give --config NAME before --help to see NAME's.",
    )
    parser.add_argument(
        "--config",
        default="small_shapes",
        choices=sorted(CONFIGS),
        action=ShowConfigDefaults,
        help="named configuration (before --help: the defaults shown are its values)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", type=Path, help="checkpoint to continue from")
    start.add_argument(
        "--init-from",
        type=Path,
        help="start a new run from these weights (official .pkl or checkpoint): tensors of "
        "matching name and shape load, the others start fresh",
    )
    parser.add_argument(
        "--images",
        dest="config__train_images",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="training images (COCO format; the same as --train-images)",
    )
    parser.add_argument(
        "--annotations",
        dest="config__train_annotations",
        default=argparse.SUPPRESS,
        metavar="JSON",
        help="training annotation JSON (the same as --train-annotations)",
    )
    add_config_options(parser, get_config(parser.get_default("config")))
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        saved = load_checkpoint(args.resume, resume=True)["config"]
        try:
            config = config_from_dict(saved, TrainConfig)
        except ValueError as error:  # written by a version with other fields
            raise InputError(f"{args.resume}: its training configuration: {error}") from error
    else:
        config = get_config(args.config)
    given = overrides_from_args(args)
    try:
        config = apply_overrides(config, given)
    except FieldError as error:  # a field out of range, or two that disagree
        raise refused(error) from None
    check_used(config, given)
    if config.device == "cuda":
        check_device("cuda")
    main = int(os.environ.get("RANK", "0")) == 0
    with run_lock(config.out) if main else contextlib.nullcontext():  # one run per folder
        try:
            _, summary = train.train(config, resume=args.resume, init_from=args.init_from)
        except train.NonFiniteLossError as error:
            print_error(str(error))
            return 1
        if main:
            print(json.dumps(summary, indent=2))
            if "metrics" in summary:
                path = RunFolder(Path(config.out)).metrics
                path.write_text(json.dumps(summary["metrics"], indent=2) + "\n")
                print(f"metrics written to {path}", file=sys.stderr)
    return 0


def check_used(config: TrainConfig, given: dict[str, object]) -> None:
    r"""Raise :class:`InputError` for a field option given that ``config`` would ignore: the
    ``--shapes-*`` options with COCO data, the ``--val-*`` ones with no validation split."""
    for key in given:
        if key.startswith("shapes_") and config.dataset != "shapes":
            raise InputError(
                f"{option_name(key)}: the dataset is {config.dataset!r}, which has no shapes; "
                "give --dataset shapes to train on the shapes, or leave the option out"
            )
        if key in ("val_every", "val_limit") and not config.has_validation:
            how = (
                "--shapes-val N"
                if config.dataset == "shapes"
                else "--val-images and --val-annotations"
            )
            raise InputError(
                f"{option_name(key)}: this run has no validation split; give {how} for one, "
                "or leave the option out"
            )


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    r"""``cornernet-ref evaluate``: COCO metrics of a checkpoint or of the ground-truth oracle."""
    parser = subparsers.add_parser(
        "evaluate",
        help="COCO bbox metrics of a checkpoint, or of the ground truth itself (--oracle)",
        description=_description(evaluate),
    )
    parser.add_argument("--images", type=Path, required=True, help="folder of the images")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO annotation JSON")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="model checkpoint to evaluate")
    which.add_argument(
        "--oracle", action="store_true", help="ground truth as predictions (no model)"
    )
    parser.add_argument(
        "--ground-truth",
        choices=("heatmaps", "heatmaps+offsets"),
        help="with --checkpoint: replace these predicted maps by ground truth (Table 6; "
        "default: none, every map predicted)",
    )
    parser.add_argument(
        "--device",
        type=device_option,
        default=DEFAULT_DEVICE,
        help="where the network runs: cpu, cuda, cuda:1, ... (default: %(default)s)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="evaluate on the first N images only (default: all)",
    )
    parser.add_argument(
        "--results-out", type=Path, help="write the COCO results JSON here (default: not written)"
    )
    parser.add_argument(
        "--metrics-out", type=Path, help="also write the metrics JSON here (default: only print)"
    )
    add_config_options(parser, TestConfig(), TEST_PREFIX)
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.ground_truth and not args.checkpoint:
        raise InputError(
            "--ground-truth needs --checkpoint (with --oracle all maps are ground truth)"
        )
    config = test_config_from_args(args)
    if not args.images.is_dir():
        raise InputError(f"image folder not found: {args.images}")
    coco = load_coco(args.annotations)
    num_classes = len(category_ids(coco))
    image_ids = sorted(coco.getImgIds())[: args.limit] if args.limit else None
    if not coco.getAnnIds(imgIds=image_ids or []):  # every score would be 0 (or -1)
        raise InputError(f"{args.annotations}: no annotations on the images evaluated")
    if args.oracle:
        source = analysis.oracle_source(coco, num_classes=num_classes)
    else:
        model = CornerNet.from_checkpoint(args.checkpoint)
        if model.config.num_classes != num_classes:  # its labels would name other categories
            raise InputError(
                f"{args.checkpoint} detects {model.config.num_classes} classes, "
                f"{args.annotations} has {num_classes} categories: evaluate it on its own classes"
            )
        source = model_source(model, args.images, args.device)
        if args.ground_truth:
            source = analysis.with_ground_truth_source(
                source,
                analysis.oracle_source(coco, num_classes=num_classes),
                offsets=args.ground_truth == "heatmaps+offsets",
            )
    print(f"test config: {json.dumps(config.to_dict())}", file=sys.stderr)  # one line
    with contextlib.redirect_stdout(sys.stderr):  # pycocotools' table: stdout is the JSON
        metrics = evaluate.evaluate(
            source, coco, image_ids=image_ids, results_out=args.results_out, config=config
        )
    print(json.dumps(metrics, indent=2))
    if args.metrics_out is not None:
        args.metrics_out.parent.mkdir(parents=True, exist_ok=True)
        args.metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    non_finite = [name for name, value in metrics.items() if not math.isfinite(value)]
    if non_finite:
        print_error(f"non-finite metrics {', '.join(non_finite)}")
        return 1
    return 0


def add_predict(subparsers: argparse._SubParsersAction) -> None:
    r"""``cornernet-ref predict --checkpoint CKPT IMAGE --out PNG``."""
    parser = subparsers.add_parser(
        "predict",
        help="detect objects in an image and draw them",
        description=_description(predict),
    )
    parser.add_argument("image", type=Path, help="the image")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="trained checkpoint, or an ONNX file written by `cornernet-ref export` (.onnx)",
    )
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument(
        "--threshold",
        type=unit_interval,
        default=DRAW_THRESHOLD,
        help="minimum score drawn (0 to 1; default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        type=device_option,
        default=DEFAULT_DEVICE,
        help="where the network runs: cpu, cuda, cuda:1, ... (default: %(default)s)",
    )
    parser.add_argument(
        "--heatmaps",
        action="store_true",
        help="also draw the top-left and bottom-right heatmaps with the embeddings of the "
        "detected corners (to OUT with _heatmaps before the suffix)",
    )
    add_config_options(parser, TestConfig(), TEST_PREFIX)
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    config = test_config_from_args(args)
    # One source of maps, the checkpoint's model or the .onnx export, for both pictures.
    source, names = predict.load_source(args.checkpoint, args.image.parent, args.device)
    record = predict.image_record(args.image)
    detections = detect_image(source, record, config)
    count = predict.draw_detections(args.image, detections, names, args.out, args.threshold)
    print(f"{count} detections drawn to {args.out}")
    if args.heatmaps:
        panel = args.out.with_name(f"{args.out.stem}_heatmaps{args.out.suffix}")
        write_heatmap_picture(source, args.image.parent, record, names, panel, args.threshold)
        print(f"heatmaps drawn to {panel}")
    return 0


def add_convert(subparsers: argparse._SubParsersAction) -> None:
    r"""``cornernet-ref convert OFFICIAL.pkl OUT.pt``."""
    parser = subparsers.add_parser(
        "convert",
        help="convert official CornerNet weights (e.g. CornerNet_500000.pkl)",
        description="Convert an official CornerNet state dict into a checkpoint of this model.",
    )
    parser.add_argument("official", type=Path, help="the official .pkl (a saved state dict)")
    parser.add_argument("out", type=Path, help="where to write the converted checkpoint")
    parser.add_argument(
        "--trust",
        action="store_true",
        help="unpickle in full if the safe loader refuses the file (trusted files only)",
    )
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    config = convert_file(args.official, args.out, trust=args.trust)
    print(f"wrote {args.out}: {config}")
    return 0


def add_export(subparsers: argparse._SubParsersAction) -> None:
    r"""``cornernet-ref export --checkpoint CKPT --out model.onnx``."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (the last stack's six maps)",
        description=_description(export),
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--max-input-side",
        type=positive_int,
        default=export.MAX_INPUT_SIDE,
        help="largest input side the exported corner pools cover (default: %(default)s)",
    )
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    if not args.out.parent.is_dir():
        raise InputError(f"the folder of --out does not exist: {args.out.parent}")
    model = CornerNet.from_checkpoint(args.checkpoint)
    export.export_onnx(model, args.out, max_input_side=args.max_input_side)
    print(f"exported {args.checkpoint} to {args.out}")
    return 0


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_train,
    add_evaluate,
    add_predict,
    add_convert,
    add_export,
)
"""The subcommands, in the order ``cornernet-ref --help`` lists them."""
