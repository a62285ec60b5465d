r"""Detect objects in one image with a trained checkpoint (or its ONNX export) and draw them.

The image goes through the test procedure of §4.1 (:mod:`cornernet_ref.inference`: official
padding, flip testing, decoding and soft-NMS); boxes scoring at least ``--threshold`` are
drawn with their class name and score.
"""

from __future__ import annotations

from pathlib import Path

from cornernet_ref.data.image import read_image
from cornernet_ref.inference import ImageDetections, TestConfig, detect_image, model_source
from cornernet_ref.model import CornerNet
from cornernet_ref.visualize import render_detections


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
