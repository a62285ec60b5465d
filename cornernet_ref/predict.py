r"""Detect objects in one image with a trained checkpoint (or its ONNX export) and draw them.

The image goes through the test procedure of §4.1 (:mod:`cornernet_ref.inference`: official
padding, flip testing, decoding and soft-NMS); boxes scoring at least ``--threshold`` are
drawn with their class name and score.
"""

from __future__ import annotations

from pathlib import Path

from cornernet_ref.data.image import read_image
from cornernet_ref.inference import (
    ImageDetections,
    OutputSource,
    TestConfig,
    detect_image,
    model_source,
)
from cornernet_ref.model import CornerNet
from cornernet_ref.visualize import DRAW_THRESHOLD, render_detections


def load_source(
    checkpoint: str | Path, images_dir: str | Path, device: str = "cpu"
) -> tuple[OutputSource, list[str]]:
    r"""The maps of the images of ``images_dir`` and the class names, from a checkpoint or
    from a file written by ``cornernet-ref export`` (``.onnx``, run by onnxruntime on the
    CPU: ``device`` is then ignored)."""
    if Path(checkpoint).suffix == ".onnx":
        from cornernet_ref.export import OnnxModel, onnx_source

        exported = OnnxModel(checkpoint)
        return onnx_source(exported, images_dir), exported.class_names
    model = CornerNet.from_checkpoint(checkpoint)
    names = model.class_names or [str(i) for i in range(model.config.num_classes)]
    return model_source(model, images_dir, device), names


def image_record(image_path: str | Path) -> dict:
    r"""The COCO record of one image file: ``file_name``, ``height`` and ``width``."""
    height, width = read_image(image_path).shape[:2]
    return {"file_name": Path(image_path).name, "height": height, "width": width}


def detect(
    checkpoint: str | Path,
    image_path: str | Path,
    *,
    config: TestConfig = TestConfig(),
    device: str = "cpu",
) -> tuple[ImageDetections, list[str]]:
    r"""Detections of one image (image pixels) and the class names of the checkpoint (or of
    the ``.onnx`` export: :func:`load_source`)."""
    source, names = load_source(checkpoint, Path(image_path).parent, device)
    return detect_image(source, image_record(image_path), config), names


def draw_detections(
    image_path: str | Path,
    detections: ImageDetections,
    names: list[str],
    out: str | Path,
    threshold: float = DRAW_THRESHOLD,
) -> int:
    r"""Draw the detections scoring ``>= threshold`` onto the image; returns how many.

    Small images are upscaled and the labels placed apart
    (:func:`cornernet_ref.visualize.render_detections`).
    """
    picture, _ = render_detections(read_image(image_path), detections, names, threshold=threshold)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return int((detections.scores >= threshold).sum())
