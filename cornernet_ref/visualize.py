r"""Pictures of a trained CornerNet: its detections, its loss curve, its corner heatmaps.

``cornernet-ref train`` writes three of them under ``<out>/pictures`` at the end of a run,
and ``cornernet-ref predict --heatmaps`` the third for any image:

* ``detections.png``: the boxes found on a few validation images by the test pipeline
  (flip testing, soft-NMS). Of the boxes scoring at least the threshold, as many as the
  image holds objects are drawn bold and labelled, the best first, and the rest faint and
  unlabelled: the eye goes to the boxes that should match the objects, and the faint ones
  show what else the model finds. A caption under each image gives the threshold and both
  counts. (``predict`` knows no objects: it labels the best box of each object, and draws
  faint the boxes overlapping a better one by an IoU over :data:`DUPLICATE_IOU`, which
  soft-NMS lowers but keeps.) Small images are upscaled by a whole factor (a 127-pixel
  shape becomes 635 pixels) and each label is put where it covers no other label
  (:func:`place_labels`).
* ``loss.png``: the loss terms of ``history.jsonl`` against the iteration.
* ``heatmaps.png``: for one image, the top-left and bottom-right heatmaps (the largest
  class probability of each cell) with the corners of the detected boxes and their
  embeddings. The two corners of one object carry close embeddings; that is how they were
  paired (paper §3.3; :mod:`cornernet_ref.decode`). It draws as many boxes as the image
  holds objects, one per object, from one pass of the network on the image as it is, so
  its scores are those of the decoder before flip testing and soft-NMS, and differ from
  those of ``detections.png``; its title says so.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from cornernet_ref.data.image import read_image
from cornernet_ref.decode import DecodeConfig, best_corners, decode
from cornernet_ref.inference import (
    CanvasGeometry,
    ImageDetections,
    OutputSource,
    TestConfig,
    canvas_geometry,
    detect_image,
    model_source,
)
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.run import RunFolder

DRAW_THRESHOLD = 0.3  # the smallest score drawn, by default
# Ten colours told apart at a glance, dark enough for white text.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (240, 50, 230), (0, 128, 128), (170, 110, 40), (0, 0, 128), (128, 128, 0),
)  # fmt: skip
DUPLICATE_IOU = 0.5  # a box overlapping a better one by more is drawn as its duplicate
Box = tuple[float, float, float, float]  # (x1, y1, x2, y2)


def overlaps(a: Box, b: Box) -> bool:
    r"""Whether two boxes share some area (touching edges do not count)."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def iou(a: Box, b: Box) -> float:
    r"""Intersection over union of two boxes, $|a \cap b| / |a \cup b|$ (0 for empty boxes)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(
        0.0, min(a[3], b[3]) - max(a[1], b[1])
    )
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def best_per_object(boxes: Sequence[Box], max_iou: float = DUPLICATE_IOU) -> list[bool]:
    r"""Which of ``boxes`` (best first) are the best box of their object.

    Greedy, as non-maximum suppression: a box is kept unless it overlaps a kept box by an
    IoU over ``max_iou``, whatever the classes (a second class on one object is a second
    guess, not a second object).
    """
    kept: list[Box] = []
    best = []
    for box in boxes:
        best.append(all(iou(box, other) <= max_iou for other in kept))
        if best[-1]:
            kept.append(box)
    return best


def place_labels(
    boxes: Sequence[Box], sizes: Sequence[tuple[int, int]], bounds: tuple[int, int]
) -> list[Box | None]:
    r"""Where to write the label of each box, so that no two labels overlap.

    Greedy, in the order given (best detection first): each label of size ``(w, h)`` takes
    the first free spot among just above the box's top-left corner, just inside it, just
    below the box and inside its bottom (each pushed into the picture where it sticks
    out); failing those, the free spot nearest to the first one anywhere in the picture. A
    spot is free when it lies within ``bounds = (width, height)`` and overlaps no label
    placed before it.

    Returns:
        One label box per input box, or None for a label that finds no free spot.
    """
    width, height = bounds
    placed: list[Box] = []

    def first_free(spots: Sequence[tuple[float, float]], w: int, h: int) -> Box | None:
        for x, y in spots:
            label = (x, y, x + w, y + h)
            if x >= 0 and y >= 0 and not any(overlaps(label, other) for other in placed):
                return label
        return None

    result: list[Box | None] = []
    for (x1, y1, _, y2), (w, h) in zip(boxes, sizes, strict=True):
        preferred = [(x1, y1 - h), (x1, y1), (x1, y2), (x1, y2 - h)]
        spots = [(min(max(x, 0), width - w), min(max(y, 0), height - h)) for x, y in preferred]
        label = first_free(spots, w, h)
        if label is None:  # anywhere, nearest to the first spot first
            grid = [
                (x, y)
                for y in range(0, height - h + 1, max(1, h // 2))
                for x in range(0, width - w + 1, max(1, w // 4))
            ]
            ax, ay = spots[0]
            label = first_free(
                sorted(grid, key=lambda p: (p[0] - ax) ** 2 + (p[1] - ay) ** 2), w, h
            )
        if label is not None:
            placed.append(label)
        result.append(label)
    return result


def upscale_factor(height: int, width: int, min_side: int = 512) -> int:
    r"""The whole factor that brings the longer side of an image to at least ``min_side``."""
    return max(1, math.ceil(min_side / max(height, width)))


def render_detections(
    image: np.ndarray,
    detections: ImageDetections,
    names: Sequence[str],
    *,
    threshold: float = DRAW_THRESHOLD,
    min_side: int = 512,
    top: int | None = None,
) -> tuple[Image.Image, list[Box]]:
    r"""Draw the detections scoring ``>= threshold`` on an ``(h, w, 3)`` RGB image.

    The image is upscaled by :func:`upscale_factor` first (nearest neighbour: the pixels
    stay visible). The boxes a reader should look at are drawn bold and labelled with
    their class and score, the others thin and faint: with ``top`` (the number of objects
    the image holds, when known), the ``top`` best boxes; without it, the best box of each
    object (:func:`best_per_object`). A caption under the image names the threshold, the
    rule and both counts.

    Returns:
        The picture and the label boxes drawn (picture pixels), one per label placed.
    """
    factor = upscale_factor(*image.shape[:2], min_side)
    picture = Image.fromarray(image).resize(
        (image.shape[1] * factor, image.shape[0] * factor), Image.Resampling.NEAREST
    )
    font = ImageFont.load_default(size=max(12, picture.height // 40))
    order = detections.scores.argsort(descending=True)
    order = order[detections.scores[order] >= threshold]
    boxes = (detections.boxes[order] * factor).tolist()
    labels = detections.labels[order].tolist()
    scores = detections.scores[order].tolist()
    best = best_per_object(boxes) if top is None else [k < top for k in range(len(boxes))]
    faint = Image.new("RGBA", picture.size)  # the other boxes, blended in at 60 % opacity
    faint_pen = ImageDraw.Draw(faint)
    for box, label, is_best in zip(boxes, labels, best, strict=True):
        if not is_best:
            faint_pen.rectangle(box, outline=(*PALETTE[label % len(PALETTE)], 150), width=2)
    picture = Image.alpha_composite(picture.convert("RGBA"), faint).convert("RGB")
    pen = ImageDraw.Draw(picture)
    shown = [i for i, is_best in enumerate(best) if is_best]
    colours = [PALETTE[labels[i] % len(PALETTE)] for i in shown]
    texts = [f"{names[labels[i]]} {scores[i]:.2f}" for i in shown]
    sizes = []
    for text in texts:
        *_, right, bottom = pen.textbbox((0, 0), text, font=font)
        sizes.append((right + 4, bottom + 4))  # 2 pixels of margin on every side
    for i, colour in zip(shown, colours, strict=True):
        pen.rectangle(boxes[i], outline=colour, width=3)
    placed = place_labels([boxes[i] for i in shown], sizes, picture.size)
    for label, text, colour in zip(placed, texts, colours, strict=True):
        if label is not None:
            pen.rectangle(label, fill=colour)
            pen.text((label[0] + 2, label[1] + 2), text, fill=(255, 255, 255), font=font)
    caption = detections_caption(threshold, len(shown), len(boxes) - len(shown), top)
    return with_caption(picture, caption, font), [box for box in placed if box is not None]


def detections_caption(
    threshold: float, labelled: int, faint: int, top: int | None = None
) -> list[str]:
    r"""The caption of a detections picture: the threshold and what is drawn how."""
    rule = (
        f"overlapping a better box by IoU > {DUPLICATE_IOU}"
        if top is None
        else f"after the best {top}, as many as the objects in the image"
    )
    return [
        f"score >= {threshold:.2f}: {labelled} boxes labelled, {faint} faint",
        f"(faint: {rule})",
    ]


def with_caption(
    picture: Image.Image, lines: Sequence[str], font: ImageFont.ImageFont
) -> Image.Image:
    r"""``picture`` above a white band holding ``lines`` of dark text."""
    pen = ImageDraw.Draw(picture)
    line_height = pen.textbbox((0, 0), "Ag", font=font)[3] + 4
    framed = Image.new(
        "RGB", (picture.width, picture.height + line_height * len(lines) + 8), "white"
    )
    framed.paste(picture, (0, 0))
    pen = ImageDraw.Draw(framed)
    for k, line in enumerate(lines):
        pen.text((4, picture.height + 4 + k * line_height), line, fill=(40, 40, 40), font=font)
    return framed


def side_by_side(pictures: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    r"""The pictures in one row on a white background."""
    width = sum(picture.width for picture in pictures) + gap * (len(pictures) - 1)
    row = Image.new("RGB", (width, max(picture.height for picture in pictures)), "white")
    x = 0
    for picture in pictures:
        row.paste(picture, (x, 0))
        x += picture.width + gap
    return row


def plot_loss_curve(history: Sequence[dict], out: str | Path) -> Path:
    r"""Plot the loss terms of ``history`` (the records of ``history.jsonl``) to ``out``."""
    import matplotlib.pyplot as plt  # slow to import: only when drawing

    figure, axis = plt.subplots(figsize=(8, 4))
    steps = [record["iteration"] for record in history]
    for term in ("total", "focal", "pull", "push", "offset"):
        axis.plot(steps, [record[term] for record in history], label=term)
    axis.set_yscale("log")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.set_title("Training loss (focal + 0.1 pull + 0.1 push + offset = total)")
    axis.legend(ncol=5, fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


class CornerMark(NamedTuple):
    r"""A detected corner: position on the output grid (offset added) and embedding."""

    x: float
    y: float
    embedding: float


class PairMark(NamedTuple):
    r"""A detected box: class, score and its two corners."""

    label: int
    score: float
    top_left: CornerMark
    bottom_right: CornerMark


class HeatmapPanel(NamedTuple):
    r"""What the heatmap picture shows.

    Attributes:
        tl_heat, br_heat: ``(H, W)`` arrays, ``max_c sigmoid(heatmap logits)`` per cell.
        pairs: the detected boxes scoring at least the threshold, one per object, best first.
        geometry: where the image sits on the output grid.
    """

    tl_heat: np.ndarray
    br_heat: np.ndarray
    pairs: list[PairMark]
    geometry: CanvasGeometry


def heatmap_panel(
    maps: CornerNetOutput,
    geometry: CanvasGeometry,
    *,
    threshold: float = DRAW_THRESHOLD,
    max_pairs: int = 8,
) -> HeatmapPanel:
    r"""The panel of the maps of one test canvas (a batch of 1, placed by ``geometry``).

    The pairs are the decoder's (:func:`cornernet_ref.decode.decode`), best first: those
    scoring at least ``threshold``, the best of each object (:func:`best_per_object`), at
    most ``max_pairs``. Each corner's embedding is read at the cell the decoder took it from.
    """
    out = CornerNetOutput(*(t.float().cpu() for t in maps))
    config = DecodeConfig()
    dets = decode(out, config)
    corners = {
        "tl": best_corners(out.tl_heat, out.tl_off, config),
        "br": best_corners(out.br_heat, out.br_off, config),
    }
    tags = {"tl": out.tl_tag[0, 0].flatten(), "br": out.br_tag[0, 0].flatten()}

    def mark(name: str, x: float, y: float, label: int) -> CornerMark:
        found = corners[name]
        same = (found.xs[0] == x) & (found.ys[0] == y) & (found.labels[0] == label)
        cell = found.cells[0][same.nonzero()[0, 0]]
        return CornerMark(x, y, float(tags[name][cell]))

    pairs = []
    boxes, scores, labels = (
        dets.boxes[0].tolist(),
        dets.scores[0].tolist(),
        dets.labels[0].tolist(),
    )
    for box, score, label, is_best in zip(
        boxes, scores, labels, best_per_object(boxes), strict=True
    ):
        if score < threshold or len(pairs) == max_pairs:
            break
        if not is_best:
            continue
        top_left, bottom_right = (
            mark("tl", box[0], box[1], label),
            mark("br", box[2], box[3], label),
        )
        pairs.append(PairMark(label, score, top_left, bottom_right))
    heats = (out.tl_heat[0].sigmoid().amax(0).numpy(), out.br_heat[0].sigmoid().amax(0).numpy())
    return HeatmapPanel(*heats, pairs, geometry)


def plot_heatmap_panel(
    panel: HeatmapPanel, image: np.ndarray, names: Sequence[str], out: str | Path
) -> Path:
    r"""Draw the image and its two heatmaps with the detected corners and their embeddings.

    The panels show the image's part of the output grid (the padding around it holds no
    objects); the boxes are listed below all three, with their scores and embeddings.
    """
    import matplotlib.pyplot as plt  # slow to import: only when drawing

    ratio_y, ratio_x = panel.geometry.ratio
    top, left = panel.geometry.border
    height, width = image.shape[:2]
    # The image on the output grid: pixel p of the canvas is cell p * ratio.
    x_min, x_max = left * ratio_x, (left + width) * ratio_x
    y_min, y_max = top * ratio_y, (top + height) * ratio_y
    out_h, out_w = panel.tl_heat.shape
    panel_width = 4.4 * (x_max - x_min) / (y_max - y_min)  # inches, for 4.4 high
    figure, axes = plt.subplots(
        1,
        3,
        figsize=(3 * panel_width + 1.2, 5.6 + 0.3 * math.ceil(len(panel.pairs) / 4)),
        layout="constrained",
    )
    figure.suptitle(
        "One pass at scale 1, no flip: the decoder's scores before flip testing and soft-NMS, "
        "so they differ from those of the detections picture",
        fontsize=10,
    )
    axes[0].imshow(image, extent=(x_min, x_max, y_max, y_min))
    axes[0].set_title("input: detected boxes")
    for axis, heat, corner in (
        (axes[1], panel.tl_heat, "top-left"),
        (axes[2], panel.br_heat, "bottom-right"),
    ):
        shown = axis.imshow(heat, cmap="magma", vmin=0, vmax=1, extent=(0, out_w, out_h, 0))
        axis.set_title(f"{corner} heatmap, corners' embeddings e")
    figure.colorbar(
        shown, ax=axes[1:], fraction=0.03, label="corner probability (max over classes)"
    )
    annotated: dict[int, list[tuple[float, float]]] = {id(axis): [] for axis in axes[1:]}
    for k, pair in enumerate(panel.pairs):
        colour = np.array(PALETTE[k % len(PALETTE)]) / 255
        (x1, y1, e1), (x2, y2, e2) = pair.top_left, pair.bottom_right
        caption = f"{names[pair.label]} {pair.score:.2f}: e {e1:+.2f} / {e2:+.2f}"
        box = plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=2)
        axes[0].add_patch(box)
        box.set_label(caption)  # captions go to the legend, where they cannot overlap
        for axis, corner in ((axes[1], pair.top_left), (axes[2], pair.bottom_right)):
            done = annotated[id(axis)]
            if (corner.x, corner.y) in done:  # a corner shared by several boxes
                continue
            # Stack the captions of nearby corners instead of writing them over each other.
            nearby = sum(abs(corner.x - x) < 6 and abs(corner.y - y) < 1.5 for x, y in done)
            done.append((corner.x, corner.y))
            axis.plot(corner.x, corner.y, "o", mfc="none", mec=colour, mew=2, ms=10)
            axis.annotate(
                f"e={corner.embedding:+.2f}",
                (corner.x, corner.y),
                xytext=(6, -6 - 14 * nearby),
                textcoords="offset points",
                color=colour,
                fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.8, "pad": 1},
            )
    if panel.pairs:
        figure.legend(
            loc="outside lower center",
            ncol=min(len(panel.pairs), 4),
            fontsize=9,
            title="boxes (class score: embeddings top-left / bottom-right)",
            title_fontsize=9,
        )
    for axis in axes:
        axis.set_xlim(x_min, x_max)
        axis.set_ylim(y_max, y_min)
    out = Path(out)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def write_heatmap_picture(
    source: OutputSource,
    images_dir: str | Path,
    record: dict,
    names: Sequence[str],
    out: str | Path,
    threshold: float = DRAW_THRESHOLD,
    *,
    max_pairs: int = 8,
) -> Path:
    r""":func:`heatmap_panel` of one image, drawn to ``out``.

    Args:
        source: the maps of the images of ``images_dir``: a model
            (:func:`~cornernet_ref.inference.model_source`) or an ONNX export
            (:func:`~cornernet_ref.export.onnx_source`).
        images_dir: the folder of the image.
        record: its COCO record (``file_name``, ``height``, ``width``).
        names: the class names.
        out: the picture to write.
        threshold: the smallest score of a pair drawn.
        max_pairs: the most pairs drawn.
    """
    geometry = canvas_geometry(record["height"], record["width"])  # scale 1
    panel = heatmap_panel(
        source(record, geometry, False), geometry, threshold=threshold, max_pairs=max_pairs
    )
    image = read_image(Path(images_dir) / record["file_name"])
    return plot_heatmap_panel(panel, image, names, out)


def write_pictures(
    model: nn.Module,
    out: str | Path,
    val: tuple[Path, Path] | None,
    names: Sequence[str],
    *,
    count: int = 4,
    test: TestConfig = TestConfig(),
    threshold: float = DRAW_THRESHOLD,
) -> Path:
    r"""The end-of-training pictures, in ``<out>/pictures``; returns that folder.

    Args:
        model: the trained model (left in the mode it was in).
        out: the run folder, holding ``history.jsonl``.
        val: (images, annotations) of the validation split; without it only the loss curve.
        names: the class names.
        count: validation images drawn.
        test: how the images are tested.
        threshold: the smallest score drawn.
    """
    run = RunFolder(Path(out))
    folder = run.pictures
    folder.mkdir(parents=True, exist_ok=True)
    if run.history.is_file():
        history = [json.loads(line) for line in run.history.read_text().splitlines()]
        plot_loss_curve(history, folder / "loss.png")
    if val is None:
        return folder
    images, annotations = val
    dataset = json.loads(Path(annotations).read_text())
    records = dataset["images"][:count]
    objects = Counter(a["image_id"] for a in dataset["annotations"] if not a.get("iscrowd", 0))
    was_training = model.training
    source = model_source(model, images, next(model.parameters()).device)
    pictures = []
    for record in records:
        detections = detect_image(source, record, test)
        image = read_image(Path(images) / record["file_name"])
        top = objects[record["id"]]  # the top boxes, as many as the objects, drawn bold
        picture, _ = render_detections(image, detections, names, threshold=threshold, top=top)
        pictures.append(picture)
    side_by_side(pictures).save(folder / "detections.png")
    pairs = objects[records[0]["id"]]  # the boxes of as many pairs as the image holds objects
    write_heatmap_picture(
        source, images, records[0], names, folder / "heatmaps.png", threshold, max_pairs=pairs
    )
    model.train(was_training)
    return folder


__all__ = [
    "DRAW_THRESHOLD",
    "CornerMark",
    "HeatmapPanel",
    "PairMark",
    "DUPLICATE_IOU",
    "PALETTE",
    "best_per_object",
    "detections_caption",
    "heatmap_panel",
    "iou",
    "overlaps",
    "place_labels",
    "plot_heatmap_panel",
    "plot_loss_curve",
    "render_detections",
    "side_by_side",
    "upscale_factor",
    "with_caption",
    "write_heatmap_picture",
    "write_pictures",
]
