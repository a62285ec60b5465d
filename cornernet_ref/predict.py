r"""Detect objects in one image with a trained checkpoint (or its ONNX export) and draw them.

The image goes through the test procedure of §4.1 (:mod:`cornernet_ref.inference`: official
padding, flip testing, decoding and soft-NMS); boxes scoring at least ``--threshold`` are
drawn with their class name and score.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cornernet_ref.data.image import read_image
from cornernet_ref.evaluate import add_test_arguments, unit_interval
from cornernet_ref.inference import ImageDetections, TestConfig, detect_image, model_source
from cornernet_ref.model import CornerNet
from cornernet_ref.visualize import render_detections, write_heatmap_picture


def detect(
    checkpoint: str | Path,
    image_path: str | Path,
    *,
    config: TestConfig = TestConfig(),
    device: str = "cpu",
) -> tuple[ImageDetections, list[str]]:
    r"""Detections of one image (image pixels) and the class names of the checkpoint.

    ``checkpoint`` may also be a file written by ``cornernet-ref export`` (``.onnx``), run
    by onnxruntime on the CPU (``device`` is then ignored).
    """
    image_path = Path(image_path)
    if Path(checkpoint).suffix == ".onnx":
        from cornernet_ref.export import OnnxModel, onnx_source

        exported = OnnxModel(checkpoint)
        names, source = exported.class_names, onnx_source(exported, image_path.parent)
    else:
        model = CornerNet.from_checkpoint(checkpoint)
        names = model.class_names or [str(i) for i in range(model.config.num_classes)]
        source = model_source(model, image_path.parent, device)
    height, width = read_image(image_path).shape[:2]
    record = {"file_name": image_path.name, "height": height, "width": width}
    return detect_image(source, record, config), names


def draw_detections(
    image_path: str | Path,
    detections: ImageDetections,
    names: list[str],
    out: str | Path,
    threshold: float = 0.3,
) -> int:
    r"""Draw the detections scoring ``>= threshold`` onto the image; returns how many.

    Small images are upscaled and the labels placed apart
    (:func:`cornernet_ref.visualize.render_detections`).
    """
    picture, _ = render_detections(read_image(image_path), detections, names, threshold=threshold)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return int((detections.scores >= threshold).sum())


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    r"""``cornernet-ref predict --checkpoint CKPT IMAGE --out PNG``."""
    parser = subparsers.add_parser(
        "predict",
        help="detect objects in an image and draw them",
        description=__doc__.splitlines()[0],
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
        "--threshold", type=unit_interval, default=0.3, help="minimum score drawn (0 to 1)"
    )
    add_test_arguments(parser)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--heatmaps",
        action="store_true",
        help="also draw the top-left and bottom-right heatmaps with the embeddings of the "
        "detected corners (to OUT with _heatmaps before the suffix)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    config = TestConfig(flip=args.flip, scales=args.scales)
    detections, names = detect(args.checkpoint, args.image, config=config, device=args.device)
    count = draw_detections(args.image, detections, names, args.out, args.threshold)
    print(f"{count} detections drawn to {args.out}")
    if args.heatmaps:
        model = CornerNet.from_checkpoint(args.checkpoint).to(args.device)
        panel = args.out.with_name(f"{args.out.stem}_heatmaps{args.out.suffix}")
        write_heatmap_picture(model, args.image, names, panel, args.threshold)
        print(f"heatmaps drawn to {panel}")
    return 0
