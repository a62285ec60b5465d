r"""The test procedure of paper §4.1 ("Testing details"): from an image to its final boxes.

CornerNet is tested at the image's own resolution, as the official code does:

1. [canvas_geometry][cornernet_ref.inference.canvas_geometry] and
   [pad_image][cornernet_ref.inference.pad_image]: the image (resized by a test scale) is
   centred on a black canvas of sides ``128 n - 1``; the network reads it on a grid 4 times
   smaller;
2. [scale_detections][cornernet_ref.inference.scale_detections]: the maps of the canvas
   (and, with flip testing, of its mirror) are decoded
   ([decode][cornernet_ref.decode.decode]), the mirror's boxes mirrored back
   ([mirror_boxes][cornernet_ref.inference.mirror_boxes]) and every box mapped back to the
   image's pixels ([boxes_to_image][cornernet_ref.inference.boxes_to_image]);
3. [merge_detections][cornernet_ref.inference.merge_detections]: the boxes of every scale
   are pooled, merged by soft-NMS per class and the best 100 kept.

[detect_image][cornernet_ref.inference.detect_image] runs the three steps on one image,
with the options of one [TestConfig][cornernet_ref.inference.TestConfig]. Where the maps
come from is an [OutputSource][cornernet_ref.inference.OutputSource]: a model
([model_source][cornernet_ref.inference.model_source]), an ONNX export
([onnx_source][cornernet_ref.export.onnx_source]) or the ground truth
([oracle_source][cornernet_ref.analysis.oracle_source]). The network runs at the
precision the configuration names ([network_precision][cornernet_ref.inference.network_precision]);
everything after it in float32.

[detect_images][cornernet_ref.inference.detect_images] tests many images: a model's
images are read and padded in worker processes
([canvas_loader][cornernet_ref.inference.canvas_loader]) while the network works on the
previous ones. Scoring the boxes with COCO's metrics is
[cornernet_ref.evaluate][].
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cornernet_ref.data.image import MEAN_RGB, STD_RGB, normalize, read_image, resize_image
from cornernet_ref.decode import REJECTED, DecodeConfig, decode, soft_nms_all
from cornernet_ref.errors import InputError
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.printable import FieldError, PrintableConfig

NMS_METHODS = ("gaussian", "linear")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
# The largest test scale. The canvas of an image resized by s has about s^2 times its pixels,
# and the network's memory grows with them: the official multi-scale test stops at 1.5, and
# at 100 a 640 x 480 image would make a 64,000 x 48,000 canvas, which no device holds.
MAX_TEST_SCALE = 4.0


@dataclass(frozen=True)
class TestConfig(PrintableConfig):
    r"""How an image is tested; the defaults are the official single-scale test.

    Attributes:
        flip: test the mirrored canvas as well and pool its boxes (official).
        scales: test the image resized by each of these, in $(0, 4]$ (the canvas grows as
            the square of the scale); ``(1,)`` is the single-scale
            test, the official multi-scale configuration uses ``0.5, 0.75, 1, 1.25, 1.5``.
        nms_method: ``"gaussian"`` (official) or ``"linear"`` soft-NMS
            ([soft_nms][cornernet_ref.decode.soft_nms]).
        max_per_image: boxes kept per image after soft-NMS (official 100).
        decode: the options of [decode][cornernet_ref.decode.decode].
        precision: the network's arithmetic
            ([network_precision][cornernet_ref.inference.network_precision]): ``"auto"``
            (bfloat16 on CUDA, float32 on the CPU), ``"fp32"`` (IEEE float32 everywhere,
            the reference), ``"tf32"`` (TF32 convolutions on CUDA) or ``"bf16"``
            (bfloat16 autocast on CUDA and on the CPU). Decoding and soft-NMS are float32
            whatever it says.
        workers: processes reading and padding a model's images ahead of the network
            ([canvas_loader][cornernet_ref.inference.canvas_loader]); 0 reads them in the
            calling process.
    """

    __test__ = False  # not a pytest test class, despite its name

    flip: bool = True
    scales: tuple[float, ...] = (1.0,)
    nms_method: str = "gaussian"
    max_per_image: int = 100
    decode: DecodeConfig = DecodeConfig()
    precision: str = "auto"
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.scales or not all(0 < s <= MAX_TEST_SCALE for s in self.scales):
            raise FieldError("scales", self.scales, f"must lie in (0, {MAX_TEST_SCALE:g}]")
        if self.nms_method not in NMS_METHODS:
            raise FieldError("nms_method", self.nms_method, f"must be one of {NMS_METHODS}")
        if self.max_per_image < 1:
            raise FieldError("max_per_image", self.max_per_image, "must be positive")
        if self.precision not in PRECISIONS:
            raise FieldError("precision", self.precision, f"must be one of {PRECISIONS}")
        if self.workers < 0:
            raise FieldError("workers", self.workers, "must be 0 or more")


class CanvasGeometry(NamedTuple):
    r"""Where an ``(h, w)`` image, resized by ``scale``, sits in its test canvas and output grid."""

    image_size: tuple[int, int]  # the original image
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    border: tuple[int, int]  # (top, left) padding of the canvas
    scale: float = 1.0

    @property
    def scaled_size(self) -> tuple[int, int]:
        r"""The image resized by ``scale``: ``(int(h * scale), int(w * scale))``."""
        return int(self.image_size[0] * self.scale), int(self.image_size[1] * self.scale)

    @property
    def ratio(self) -> tuple[float, float]:
        r"""``(output / input)`` per axis, ``(y, x)``."""
        return (
            self.output_size[0] / self.input_size[0],
            self.output_size[1] / self.input_size[1],
        )


def canvas_geometry(height: int, width: int, scale: float = 1.0) -> CanvasGeometry:
    r"""The official test canvas of an ``height x width`` image resized by ``scale``.

    The image resized by $s$ has sides $h = \lfloor s \cdot \text{height} \rfloor$ and
    $w = \lfloor s \cdot \text{width} \rfloor$. The canvas sides are the smallest numbers
    $\ge$ those of the form $128 n - 1$ ($|$ is bitwise or), and the network reads its
    output on a grid 4 times smaller:

    $$ H_{in} = h \,|\, 127, \quad W_{in} = w \,|\, 127, \qquad H_{out} = \frac{H_{in} + 1}{4},
    \quad W_{out} = \frac{W_{in} + 1}{4} $$

    The image sits in the centre of the canvas, at the border

    $$ b_y = \left\lfloor \frac{H_{in} - h}{2} \right\rfloor, \qquad
       b_x = \left\lfloor \frac{W_{in} - w}{2} \right\rfloor $$
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    resized_h, resized_w = int(height * scale), int(width * scale)
    if not scale > 0 or min(resized_h, resized_w) < 1:
        raise ValueError(f"scale {scale} leaves nothing of a {height} x {width} image")
    input_size = (resized_h | 127, resized_w | 127)
    output_size = ((input_size[0] + 1) // 4, (input_size[1] + 1) // 4)
    # The official crop centres the image: border = input // 2 - size // 2 = (input - size) // 2.
    border = ((input_size[0] - resized_h) // 2, (input_size[1] - resized_w) // 2)
    return CanvasGeometry((height, width), input_size, output_size, border, scale)


def pad_image(
    image: np.ndarray, scale: float = 1.0, *, mean: np.ndarray = MEAN_RGB, std: np.ndarray = STD_RGB
) -> tuple[Tensor, CanvasGeometry]:
    r"""Normalised ``(3, H_in, W_in)`` test canvas of an ``(h, w, 3)`` RGB image.

    ``mean`` and ``std`` are those of :func:`cornernet_ref.data.image.normalize`.

    The image is first resized by ``scale`` (bilinear, as OpenCV) unless ``scale`` is 1. As
    in the official crop, the pixels of the canvas are copied up to ``size // 2 + input //
    2`` from the image centre, so an image whose side is already ``128 n - 1`` loses its last
    row or column (the canvas is one pixel short on that side).
    """
    geometry = canvas_geometry(*image.shape[:2], scale)
    if scale != 1:
        image = resize_image(image, geometry.scaled_size)
    height, width = geometry.scaled_size
    (top, left), (in_h, in_w) = geometry.border, geometry.input_size
    kept_h = min(height, height // 2 + in_h // 2)
    kept_w = min(width, width // 2 + in_w // 2)
    canvas = np.zeros((in_h, in_w, 3), dtype=image.dtype)  # black padding, then normalised
    canvas[top : top + kept_h, left : left + kept_w] = image[:kept_h, :kept_w]
    return normalize(canvas, mean, std), geometry


def boxes_to_image(boxes: Tensor, geometry: CanvasGeometry) -> Tensor:
    r"""Map ``(..., 4)`` xyxy boxes on the output grid to pixels of the original image.

    A coordinate is divided by the ratio $r = W_{out} / W_{in}$, moved by the border $b$,
    clipped to the image as resized by the scale $s$ (of width $w = \lfloor s \cdot
    \text{width} \rfloor$) and divided by $s$; likewise in $y$:

    $$ x_{image} = \operatorname{clip}(x_{out} / r - b,\; 0,\; w) / s $$
    """
    ratio_y, ratio_x = geometry.ratio
    top, left = geometry.border
    height, width = geometry.scaled_size
    x = (boxes[..., 0::2] / ratio_x - left).clamp(0, width) / geometry.scale
    y = (boxes[..., 1::2] / ratio_y - top).clamp(0, height) / geometry.scale
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def mirror_boxes(boxes: Tensor, width: float) -> Tensor:
    r"""Mirror ``(..., 4)`` xyxy boxes in a frame of width $W$, swapping $x_1$ and $x_2$.

    $$ x \mapsto W - x: \qquad (x_1, y_1, x_2, y_2) \mapsto (W - x_2,\; y_1,\; W - x_1,\; y_2) $$

    Flip testing mirrors the boxes of the mirrored canvas back on the output grid, $W =
    W_{out}$ ([scale_detections][cornernet_ref.inference.scale_detections]).
    """
    return torch.stack(
        (width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]), dim=-1
    )


class ImageDetections(NamedTuple):
    r"""Final detections of one image in image pixels: ``boxes (N, 4)`` xyxy, scores, labels."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def scale_detections(
    out: CornerNetOutput, geometry: CanvasGeometry, config: TestConfig = TestConfig()
) -> ImageDetections:
    r"""The pairs of one scale (and its mirror, with ``config.flip``) in image pixels.

    The mirror's boxes are mirrored back on the output grid before the ratio and the border
    are undone: the whole canvas was mirrored, so this is exact even when its two borders
    differ by a pixel. Rejected pairs are kept, with their score ``-1``, so that the number
    of boxes does not depend on the maps (nothing waits for a GPU);
    [merge_detections][cornernet_ref.inference.merge_detections] leaves them out.

    Args:
        out: raw maps of a batch of 1 (the canvas) or, with ``config.flip``, 2 (the canvas
            and its mirror).
        geometry: the canvas geometry of the image at this scale.
        config: ``flip`` and the ``decode`` options.

    Returns:
        ``(D, 4)`` boxes, ``(D,)`` scores and labels: ``num_dets`` pairs per canvas
        ([decode][cornernet_ref.decode.decode]).
    """
    expected = 2 if config.flip else 1
    if out.tl_heat.shape[0] != expected:
        raise ValueError(
            f"flip={config.flip} needs a batch of {expected}, got {out.tl_heat.shape[0]}"
        )
    dets = decode(out, config.decode)
    boxes = dets.boxes
    if config.flip:  # mirror the mirror's boxes back on the output grid
        boxes = torch.stack((boxes[0], mirror_boxes(boxes[1], geometry.output_size[1])))
    boxes = boxes_to_image(boxes, geometry).reshape(-1, 4)
    return ImageDetections(boxes, dets.scores.reshape(-1), dets.labels.reshape(-1))


def merge_detections(
    parts: Sequence[ImageDetections], config: TestConfig = TestConfig()
) -> ImageDetections:
    r"""Pool the detections of every scale, soft-NMS per class, keep the best ``max_per_image``.

    Rejected pairs (score ``-1``) are left out of soft-NMS. Ties with the last kept score are
    kept too, as the official threshold does. Everything up to the last line has a size
    fixed by the inputs'; the last line selects the final boxes, and on a GPU it is the one
    step that waits for the device (to read how many there are).

    Args:
        parts: the detections of each scale (:func:`scale_detections`).
        config: ``nms_method`` and ``max_per_image``.
    """
    boxes = torch.cat([part.boxes for part in parts])
    scores = torch.cat([part.scores for part in parts])
    labels = torch.cat([part.labels for part in parts])
    result = soft_nms_all(boxes, scores, labels, valid=scores > REJECTED, method=config.nms_method)
    # The max_per_image-th best kept score (-inf if fewer are kept) is the threshold.
    kept_scores = torch.where(result.kept, result.scores, -torch.inf)
    threshold = kept_scores.topk(min(config.max_per_image, len(scores))).values[-1:]
    final = result.kept & (result.scores >= threshold)
    pick = result.order[final]  # the variable-size result: read back from a GPU here
    return ImageDetections(boxes[pick], result.scores[final], labels[pick])


OutputSource = Callable[[dict, CanvasGeometry, bool], CornerNetOutput]
"""The raw maps of one image: ``(COCO image record, geometry, flip) -> CornerNetOutput``, a
batch of 1 (the canvas) or, with ``flip``, 2 (the canvas and its mirror)."""


def canvas_batch(
    images_dir: str | Path,
    record: dict,
    geometry: CanvasGeometry,
    flip: bool,
    *,
    mean: np.ndarray = MEAN_RGB,
    std: np.ndarray = STD_RGB,
) -> Tensor:
    r"""The ``(1 or 2, 3, H_in, W_in)`` batch an image is tested on: its canvas at
    ``geometry.scale`` (:func:`pad_image`) and, with ``flip``, the canvas mirrored.

    Raises:
        InputError: the image file's size differs from the record's.
    """
    image = read_image(Path(images_dir) / record["file_name"])
    canvas, padded = pad_image(image, geometry.scale, mean=mean, std=std)
    if padded != geometry:
        raise InputError(
            f"{record['file_name']}: image is {padded.image_size}, annotations say "
            f"{geometry.image_size}"
        )
    return torch.stack((canvas, canvas.flip(-1)) if flip else (canvas,))


@contextlib.contextmanager
def network_precision(precision: str) -> Iterator[None]:
    r"""Run the network inside this block at ``precision`` (one of ``PRECISIONS``).

    * ``"fp32"``: IEEE float32, cuDNN's TF32 convolutions switched off: the reference;
    * ``"tf32"``: CUDA convolutions read their float32 inputs as TF32 (a 10-bit mantissa)
      and accumulate in float32;
    * ``"bf16"``: autocast to bfloat16 (an 8-bit mantissa) on CUDA and on the CPU:
      convolutions take bfloat16 inputs and give bfloat16 outputs, normalisations and
      reductions stay float32;
    * ``"auto"``: bfloat16 autocast on CUDA only, so that a network on the CPU runs in
      float32.

    Whatever the network gives is made float32 by
    [detect_image][cornernet_ref.inference.detect_image] before decoding.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cudnn = torch.backends.cudnn
    with contextlib.ExitStack() as stack:
        if precision in ("fp32", "tf32"):
            allowed, cudnn.allow_tf32 = cudnn.allow_tf32, precision == "tf32"
            stack.callback(setattr, cudnn, "allow_tf32", allowed)
        if precision == "bf16":
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        if precision in ("bf16", "auto") and torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16))
        yield


class ModelSource:
    r"""The [OutputSource][cornernet_ref.inference.OutputSource] of a network: read the
    image, pad it (:func:`canvas_batch`) and run ``model`` on it.

    [detect_images][cornernet_ref.inference.detect_images] splits the two halves, reading
    in worker processes (:func:`canvas_loader`) and calling :meth:`maps` here.

    Args:
        model: ``(B, 3, H, W) -> list[CornerNetOutput]`` (the last stack is used), or one
            ``CornerNetOutput``. It is put in eval mode on ``device``, in channels_last on
            CUDA (the layout of cuDNN's fastest reduced-precision convolutions).
        images_dir: the folder the records' ``file_name`` are in.
        device: where the network runs.
        maps_device: where its maps go for decoding; ``None`` leaves them on ``device``.
    """

    def __init__(
        self,
        model: nn.Module,
        images_dir: str | Path,
        device: str | torch.device = "cpu",
        maps_device: str | torch.device | None = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.memory_format = (
            torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        )
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.images_dir = Path(images_dir)
        self.maps_device = maps_device

    @torch.no_grad()
    def maps(self, batch: Tensor) -> CornerNetOutput:
        r"""The network's maps of a ``(B, 3, H_in, W_in)`` canvas batch, on ``maps_device``."""
        batch = batch.to(self.device, non_blocking=True).contiguous(
            memory_format=self.memory_format
        )
        result = self.model(batch)
        out = result[-1] if isinstance(result, list) else result
        # Back to the (B, C, H, W) layout the decoder reads, on the device, before copying.
        return CornerNetOutput(*(t.contiguous().to(self.maps_device or self.device) for t in out))

    def __call__(self, record: dict, geometry: CanvasGeometry, flip: bool) -> CornerNetOutput:
        return self.maps(canvas_batch(self.images_dir, record, geometry, flip))

    def with_canvases(self, canvases: dict[float, Tensor]) -> OutputSource:
        r"""This source for one image whose canvas batches, by scale, are already read."""
        return lambda record, geometry, flip: self.maps(canvases[geometry.scale])


def model_source(
    model: nn.Module,
    images_dir: str | Path,
    device: str | torch.device = "cpu",
    maps_device: str | torch.device | None = "cpu",
) -> ModelSource:
    r"""Run ``model`` (``(B, 3, H, W) -> list[CornerNetOutput]``, last stack used) on each
    image (:class:`ModelSource`)."""
    return ModelSource(model, images_dir, device, maps_device)


def detect_image(
    source: OutputSource, record: dict, config: TestConfig = TestConfig()
) -> ImageDetections:
    r"""Final detections of one image (its COCO record): every scale, flip, soft-NMS, top 100.

    The source runs at ``config.precision`` (:func:`network_precision`); its maps are
    made float32 before decoding.

    Args:
        source: raw maps of the image at a scale (:func:`model_source`, or the oracle of
            :mod:`cornernet_ref.analysis`).
        record: the image's COCO record (``file_name``, ``height``, ``width``).
        config: the scales, flip testing, soft-NMS and decoding options.
    """
    parts = []
    for scale in config.scales:
        geometry = canvas_geometry(record["height"], record["width"], scale)
        with network_precision(config.precision):
            out = source(record, geometry, config.flip)
        out = CornerNetOutput(*(t.float() for t in out))
        parts.append(scale_detections(out, geometry, config))
    return merge_detections(parts, config)


class CanvasSet(Dataset):
    r"""Item ``i``: ``(records[i], canvases)``, ``canvases[s]`` the ``(1 or 2, 3, H_in,
    W_in)`` batch of :func:`canvas_batch` at ``config.scales[s]``.

    An image that cannot be tested gives its :class:`~cornernet_ref.errors.InputError` in
    place of the canvases, raised again in the calling process
    (:func:`canvas_loader`), where its one-line message is not wrapped in a worker's
    traceback.
    """

    def __init__(self, images_dir: str | Path, records: Sequence[dict], config: TestConfig):
        self.images_dir, self.records, self.config = Path(images_dir), records, config

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[dict, list[Tensor] | InputError]:
        record = self.records[index]
        try:
            canvases = [
                canvas_batch(
                    self.images_dir,
                    record,
                    canvas_geometry(record["height"], record["width"], scale),
                    self.config.flip,
                )
                for scale in self.config.scales
            ]
        except InputError as error:
            return record, error
        return record, canvases


def _as_is(item: tuple) -> tuple:
    r"""The collate function of a loader of single items: the item itself."""
    return item


def canvas_loader(
    images_dir: str | Path,
    records: Sequence[dict],
    config: TestConfig = TestConfig(),
    pin_memory: bool = False,
) -> Iterator[tuple[dict, list[Tensor]]]:
    r"""``(record, canvases)`` of each record in order (:class:`CanvasSet`), read and padded
    by ``config.workers`` processes ahead of the caller (0: by the caller, one at a time).

    Args:
        pin_memory: copy the canvases to page-locked memory, for asynchronous copies to a
            GPU.

    Raises:
        InputError: an image that cannot be tested (the first, in order).
    """
    loader = DataLoader(
        CanvasSet(images_dir, records, config),
        batch_size=None,  # one image per item: its canvases differ in size from the next's
        collate_fn=_as_is,
        num_workers=config.workers,
        pin_memory=pin_memory,
    )
    for record, canvases in loader:
        if isinstance(canvases, InputError):
            raise canvases
        yield record, canvases


def detect_images(
    source: OutputSource, records: Iterable[dict], config: TestConfig = TestConfig()
) -> Iterator[tuple[dict, ImageDetections]]:
    r"""``(record, detections)`` of each record in order (:func:`detect_image`).

    A :class:`ModelSource`'s images are read and padded by :func:`canvas_loader` while the
    network works; other sources (the oracle, an ONNX export) are called one image at a
    time. Both give the same detections.
    """
    if not isinstance(source, ModelSource):
        for record in records:
            yield record, detect_image(source, record, config)
        return
    pin_memory = source.device.type == "cuda"
    for record, canvases in canvas_loader(source.images_dir, list(records), config, pin_memory):
        by_scale = dict(zip(config.scales, canvases, strict=True))
        yield record, detect_image(source.with_canvases(by_scale), record, config)


__all__ = [
    "PRECISIONS",
    "CanvasGeometry",
    "CanvasSet",
    "ImageDetections",
    "ModelSource",
    "OutputSource",
    "TestConfig",
    "boxes_to_image",
    "canvas_batch",
    "canvas_geometry",
    "canvas_loader",
    "detect_image",
    "detect_images",
    "merge_detections",
    "mirror_boxes",
    "model_source",
    "network_precision",
    "pad_image",
    "scale_detections",
]
