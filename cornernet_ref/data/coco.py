"""Reading a detection dataset in COCO format.

A COCO annotation file lists images, categories and boxes ``[x, y, width, height]``. This
reader returns, per image, the RGB pixels and the boxes as ``(x0, y0, x1, y1)`` with
``x1 = x + width`` (the official conversion), labelled ``0 .. C-1`` by the rank of their
category id (COCO's 80 ids, 1..90 with gaps, become 0..79 in order).

Crowd annotations (``iscrowd = 1``) mark regions of many objects; as in the official code they
are not training targets. Boxes without area are dropped too. Images without any box are
kept: they teach the network what background looks like.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pycocotools.coco import COCO

from cornernet_ref.data.image import ImageReadError, read_image
from cornernet_ref.errors import InputError


class Sample(NamedTuple):
    """One image of a detection dataset."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 xyxy, image pixels
    labels: np.ndarray  # (N,) int64, 0-based
    image_id: int  # the COCO image id


class AnnotationError(InputError, ValueError):
    """An annotation file is missing, unreadable or not in COCO format; the message names it."""


def load_coco(annotations: str | Path | dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` index of an annotation file or of an annotation dict.

    Raises:
        AnnotationError: the file is missing, not JSON, or lacks the COCO lists.
    """
    coco = COCO()
    where = "the annotation dict"
    if isinstance(annotations, dict):
        coco.dataset = annotations
    else:
        path = where = Path(annotations)
        if not path.is_file():
            raise AnnotationError(f"annotation file not found: {path}")
        try:
            with path.open("rb") as file:
                coco.dataset = json.load(file)
        except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON
            raise AnnotationError(f"cannot read annotation file {path}: {error}") from error
    if not isinstance(coco.dataset, dict) or not {"images", "annotations"} <= coco.dataset.keys():
        raise AnnotationError(f"{where} is not COCO: it needs 'images' and 'annotations' lists")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection:
    """Images and boxes of a COCO-format dataset.

    Args:
        annotations: path of the annotation json, or the annotation dict itself.
        image_dir: folder holding the images named by ``file_name``.
        image_reader: instead of ``image_dir``, a function ``file_name -> (H, W, 3) uint8``.
        skip_unreadable: when an image cannot be read, warn and return the next readable one
            instead of raising :class:`~cornernet_ref.data.image.ImageReadError`.
    """

    def __init__(
        self,
        annotations: str | Path | dict[str, Any],
        image_dir: str | Path | None = None,
        *,
        image_reader: Callable[[str], np.ndarray] | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        if (image_dir is None) == (image_reader is None):
            raise ValueError("give exactly one of image_dir and image_reader")
        self.coco = load_coco(annotations)
        self.image_dir = None if image_dir is None else Path(image_dir)
        self.image_reader = image_reader
        self.skip_unreadable = skip_unreadable
        self.category_ids: list[int] = sorted(self.coco.getCatIds())
        self.class_names: list[str] = [self.coco.cats[i]["name"] for i in self.category_ids]
        self.label_of_category = {cat: label for label, cat in enumerate(self.category_ids)}
        self.image_ids: list[int] = sorted(self.coco.getImgIds())

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_name(self, index: int) -> str:
        return self.coco.imgs[self.image_ids[index]]["file_name"]

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(N, 4)`` xyxy and 0-based labels ``(N,)`` of image ``index``, crowds excluded."""
        boxes, labels = [], []
        for annotation in self.coco.imgToAnns.get(self.image_ids[index], []):
            x, y, width, height = annotation["bbox"]
            if annotation.get("iscrowd", 0) or width <= 0 or height <= 0:
                continue
            boxes.append([x, y, x + width, y + height])
            labels.append(self.label_of_category[annotation["category_id"]])
        return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)

    def read(self, index: int) -> np.ndarray:
        """The pixels of image ``index``; raises ``ImageReadError`` naming the file."""
        if self.image_reader is not None:
            return self.image_reader(self.file_name(index))
        return read_image(self.image_dir / self.file_name(index))

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                image = self.read(current)
            except ImageReadError as error:
                if not self.skip_unreadable:
                    raise
                warnings.warn(f"skipping unreadable image: {error}", stacklevel=2)
                continue
            boxes, labels = self.annotations(current)
            return Sample(image, boxes, labels, self.image_ids[current])
        raise ImageReadError(f"no readable image in the dataset of {len(self)} images")
