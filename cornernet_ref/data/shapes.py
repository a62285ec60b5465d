r"""``shapes``: a synthetic detection dataset that needs no download.

Coloured rectangles, ellipses and triangles (three classes) on textured backgrounds, a few per
image and allowed to overlap. Every image is a pure function of ``(seed, index)``, so a split
is reproducible from two integers. The data is exposed in COCO format, either written to a
folder (images + an annotation json, what the trainer and evaluator read) or kept in memory
(:func:`shapes_detection`); both go through the same :class:`~cornernet_ref.data.coco.CocoDetection`
reader.

Each box is the tight box of the shape's own pixels (before later shapes cover part of it), in
the COCO convention ``[x, y, width, height]`` with pixel ``(i, j)`` covering ``[j, j + 1) x
[i, i + 1)``. Placements whose box overlaps an earlier one by IoU above ``max_overlap_iou`` are
redrawn, so objects overlap without hiding one another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cornernet_ref.data.coco import CocoDetection

CLASS_NAMES: tuple[str, ...] = ("rectangle", "ellipse", "triangle")


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    r"""A muted background: a base colour, two random gratings and pixel noise."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = rng.uniform(60, 190, size=3)
    for _ in range(2):
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) * (2 * np.pi / period)
        image += np.sin(phase)[..., None] * rng.uniform(-30, 30, size=3)
    image += rng.normal(0, 8, size=image.shape)
    return image


def _shape_mask(label: int, box: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    r"""Boolean mask of a shape inscribed in ``box`` (x0, y0, x1, y1), tested at pixel centres."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    x0, y0, x1, y1 = box
    if label == 0:  # rectangle
        return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if label == 1:  # ellipse
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    # triangle touching the top, left/bottom and right edges of the box
    apex = (x0 + rng.uniform(0, 1) * (x1 - x0), y0)
    left = (x0, y1)
    right = (x1, y0 + rng.uniform(0.5, 1) * (y1 - y0))
    sides = []
    for (ax, ay), (bx, by) in ((apex, left), (left, right), (right, apex)):
        sides.append((bx - ax) * (ys - ay) - (by - ay) * (xs - ax))
    sides = np.stack(sides)
    return (sides >= 0).all(0) | (sides <= 0).all(0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def render_shapes_image(
    seed: int,
    index: int,
    *,
    size: int = 128,
    max_objects: int = 4,
    min_side: int | None = None,
    max_side: int | None = None,
    max_overlap_iou: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Draw image ``index`` of the dataset with ``seed``.

    Object sides are drawn from ``[min_side, max_side]``, by default ``[size // 9, size // 2]``.

    Returns:
        ``(size, size, 3)`` uint8 RGB image, ``(N, 4)`` float32 xyxy boxes, ``(N,)`` int64
        labels (0 rectangle, 1 ellipse, 2 triangle); ``1 <= N <= max_objects``.
    """
    min_side = max(2, size // 9) if min_side is None else min_side
    max_side = size // 2 if max_side is None else max_side
    if not 2 <= min_side <= max_side <= size:
        raise ValueError(f"need 2 <= min_side <= max_side <= size, got {min_side}, {max_side}")
    rng = np.random.default_rng([seed, index])
    image = _texture(rng, size)
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            width, height = rng.uniform(min_side, max_side, size=2)
            x0, y0 = rng.uniform(0, size - width), rng.uniform(0, size - height)
            box = np.array([x0, y0, x0 + width, y0 + height], dtype=np.float32)
            if all(_iou(box, other) <= max_overlap_iou for other in boxes):
                break
        else:
            continue
        label = int(rng.integers(len(CLASS_NAMES)))
        mask = _shape_mask(label, box, size, rng)
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            continue
        colour = rng.uniform(0, 255, size=3)
        colour[rng.integers(3)] = rng.choice([20.0, 235.0])  # saturated, off the background
        image[mask] = colour
        tight = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        boxes.append(np.array(tight, dtype=np.float32))
        labels.append(label)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return pixels, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def shapes_coco(
    num_images: int, *, seed: int, size: int = 128
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    r"""A COCO-format annotation dict and the images (by file name) of a shapes split."""
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASS_NAMES)]
    images, annotations, pixels = [], [], {}
    for index in range(num_images):
        image, boxes, labels = render_shapes_image(seed, index, size=size)
        file_name = f"{seed:04d}_{index:06d}.png"
        pixels[file_name] = image
        images.append({"id": index + 1, "file_name": file_name, "width": size, "height": size})
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    coco = {"images": images, "annotations": annotations, "categories": categories}
    return coco, pixels


def write_shapes(
    directory: str | Path, num_images: int, *, seed: int, size: int = 128
) -> tuple[Path, Path]:
    r"""Write a shapes split as ``directory/images/*.png`` + ``directory/annotations.json``.

    An existing split written with the same arguments is reused.

    Returns:
        (image folder, annotation file).
    """
    directory = Path(directory)
    image_dir, annotation_file = directory / "images", directory / "annotations.json"
    stamp = {"num_images": num_images, "seed": seed, "size": size}
    stamp_file = directory / "shapes.json"
    if annotation_file.exists() and stamp_file.exists():
        if json.loads(stamp_file.read_text()) == stamp:
            return image_dir, annotation_file
    coco, pixels = shapes_coco(num_images, seed=seed, size=size)
    image_dir.mkdir(parents=True, exist_ok=True)
    for file_name, image in pixels.items():
        Image.fromarray(image).save(image_dir / file_name)
    annotation_file.write_text(json.dumps(coco))
    stamp_file.write_text(json.dumps(stamp))
    return image_dir, annotation_file


def shapes_detection(num_images: int, *, seed: int, size: int = 128) -> CocoDetection:
    r"""A shapes split held in memory, read through the COCO reader."""
    coco, pixels = shapes_coco(num_images, seed=seed, size=size)
    return CocoDetection(coco, image_reader=pixels.__getitem__)
