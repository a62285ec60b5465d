r"""Reading a detection dataset in COCO format.

A COCO annotation file lists images, categories and boxes ``[x, y, width, height]``. This
reader returns, per image, the RGB pixels and the boxes as ``(x0, y0, x1, y1)`` with
``x1 = x + width`` (the official conversion), labelled ``0 .. C-1`` as
:func:`category_ids` orders the categories.

Crowd annotations (``iscrowd = 1``) mark regions of many objects; as in the official code they
are not training targets. Boxes without area are dropped too. Images without any box are
kept: they teach the network what background looks like.

**Any COCO-format file.** Category ids may be any integers; ``iscrowd`` defaults to 0 and
``area`` to the box's width times height, which the COCO evaluation needs. Before anything
is trained, :func:`check_coco` checks the structure (the three lists, their ids, every
annotation's image, category and box) and :class:`CocoDetection` checks that every image
file exists; a problem stops it with an :class:`AnnotationError` naming the file, the record
and the field, e.g.
``train.json: annotations[17] (id 42): field 'category_id': 5 is not the id of any of the
categories``. Each image's size is checked against its record when the image is read: boxes
drawn on other pixels would train the network on wrong targets.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cornernet_ref.data.image import ImageReadError, read_image
from cornernet_ref.errors import InputError

if TYPE_CHECKING:
    from pycocotools.coco import COCO


class Sample(NamedTuple):
    r"""One image of a detection dataset."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (N, 4) float32 xyxy, image pixels
    labels: np.ndarray  # (N,) int64, 0-based
    image_id: int  # the COCO image id


IN_MEMORY = "<annotation dict>"  # the name of an annotation dict in messages


class AnnotationError(InputError, ValueError):
    r"""A malformed COCO annotation file; the message names the file, the record and the field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _record_name(section: str, index: int, record: Any) -> str:
    r"""``annotations[17] (id 42)``, or ``annotations[17]`` when the record has no usable id."""
    if isinstance(record, dict) and _is_int(record.get("id")):
        return f"{section}[{index}] (id {record['id']})"
    return f"{section}[{index}]"


def check_coco(dataset: Any, source: str = IN_MEMORY) -> None:
    r"""Check the structure of a COCO detection dataset; fill in ``iscrowd`` and ``area``.

    Checked: a JSON object with the lists ``images``, ``annotations`` and ``categories``; in
    each record an integer ``id``, unique in its list; a non-empty ``file_name`` and positive
    integer ``width`` and ``height`` of every image (the evaluation needs them), a non-empty
    ``name`` of every category; every annotation's ``image_id`` and
    ``category_id`` among the listed ones, its ``bbox`` four finite numbers
    ``[x, y, width, height]`` with ``width, height >= 0``, its ``iscrowd`` 0 or 1, its
    ``area`` a finite number; at least one image and one category. Absent ``iscrowd``
    becomes 0 and absent ``area`` ``width * height`` (in place).

    Raises:
        AnnotationError: the first problem, naming ``source``, the record and the field.
    """
    if not isinstance(dataset, dict):
        raise AnnotationError(
            f"{source}: expected a JSON object with 'images', 'annotations' and 'categories', "
            f"got {type(dataset).__name__}"
        )
    for section in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(section), list):
            found = type(dataset[section]).__name__ if section in dataset else "nothing"
            raise AnnotationError(f"{source}: field {section!r} must be a list, found {found}")
    for section in ("images", "categories"):  # nothing to train on, nor to score
        if not dataset[section]:
            raise AnnotationError(f"{source}: field {section!r} is empty: there is nothing to use")

    def problem(section: str, index: int, field: str, text: str) -> AnnotationError:
        record = _record_name(section, index, dataset[section][index])
        return AnnotationError(f"{source}: {record}: field {field!r}: {text}")

    def unique_ids(section: str) -> set[int]:
        ids: set[int] = set()
        for index, record in enumerate(dataset[section]):
            if not isinstance(record, dict):
                raise AnnotationError(f"{source}: {section}[{index}] is not an object: {record!r}")
            if not _is_int(record.get("id")):
                raise problem(
                    section, index, "id", f"expected an integer, got {record.get('id')!r}"
                )
            if record["id"] in ids:
                raise problem(section, index, "id", f"{record['id']} occurs twice")
            ids.add(record["id"])
        return ids

    known = {section: unique_ids(section) for section in ("images", "categories", "annotations")}
    for section, field in (("images", "file_name"), ("categories", "name")):
        for index, record in enumerate(dataset[section]):
            if not (isinstance(record.get(field), str) and record[field]):
                text = f"expected a non-empty string, got {record.get(field)!r}"
                raise problem(section, index, field, text)
    for index, record in enumerate(dataset["images"]):
        for field in ("width", "height"):
            if not (_is_int(record.get(field)) and record[field] > 0):
                text = f"expected a positive integer, got {record.get(field)!r}"
                raise problem("images", index, field, text)
    for index, record in enumerate(dataset["annotations"]):
        for field, section in (("image_id", "images"), ("category_id", "categories")):
            value = record.get(field)
            if not _is_int(value) or value not in known[section]:
                text = f"{value!r} is not the id of any of the {section}"
                raise problem("annotations", index, field, text)
        box = record.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            text = f"expected four finite numbers [x, y, width, height], got {box!r}"
            raise problem("annotations", index, "bbox", text)
        if box[2] < 0 or box[3] < 0:
            raise problem("annotations", index, "bbox", f"negative width or height in {box}")
        if record.setdefault("iscrowd", 0) not in (0, 1):
            raise problem(
                "annotations", index, "iscrowd", f"expected 0 or 1, got {record['iscrowd']!r}"
            )
        if not _is_number(record.setdefault("area", box[2] * box[3])):
            text = f"expected a finite number, got {record['area']!r}"
            raise problem("annotations", index, "area", text)


def load_coco(annotations: str | Path | dict[str, Any]) -> COCO:
    r"""A pycocotools ``COCO`` index of an annotation file or dict, checked by :func:`check_coco`.

    Raises:
        AnnotationError: the file is missing, unreadable, not JSON or not a valid COCO
            detection dataset.
    """
    from pycocotools.coco import COCO  # imported here: inference runs without pycocotools

    coco = COCO()
    if isinstance(annotations, dict):
        source = IN_MEMORY
        coco.dataset = annotations
    else:
        path = Path(annotations)
        source = str(path)
        if not path.is_file():
            raise AnnotationError(f"annotation file not found: {path}")
        try:
            with path.open("rb") as file:
                coco.dataset = json.load(file)
        except OSError as error:  # no permission, a read error: as the system says
            raise AnnotationError(f"cannot read {path}: {error.strerror or error}") from error
        except ValueError as error:  # not UTF-8, not JSON
            raise AnnotationError(f"{path}: not valid JSON ({error})") from error
        except RecursionError as error:  # arrays or objects nested thousands deep
            raise AnnotationError(f"{path}: its JSON is nested too deeply to read") from error
    check_coco(coco.dataset, source)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def category_ids(coco: COCO) -> list[int]:
    r"""The category ids of ``coco`` in label order: label ``i`` is the ``i``-th smallest id.

    This is the official rule: COCO's 80 ids (1 to 90, with gaps) become labels 0 to 79 in
    order. Any integers work alike: ids ``7`` and ``1001`` become labels 0 and 1.
    """
    return sorted(coco.getCatIds())


class CocoDetection:
    r"""Images and boxes of a COCO-format dataset.

    Args:
        annotations: path of the annotation json, or the annotation dict itself.
        image_dir: folder holding the images named by ``file_name``; every listed file must
            exist there (checked here, before any training).
        image_reader: instead of ``image_dir``, a function ``file_name -> (H, W, 3) uint8``.
        skip_unreadable: leave out the images whose file is missing (with one warning), and
            when an image cannot be decoded or is not of its record's size, warn and return
            the next readable one, instead of raising :class:`AnnotationError` or
            :class:`~cornernet_ref.data.image.ImageReadError`.
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
        self.category_ids = category_ids(self.coco)
        self.class_names: list[str] = [self.coco.cats[i]["name"] for i in self.category_ids]
        self.label_of_category = {cat: label for label, cat in enumerate(self.category_ids)}
        self.image_ids: list[int] = sorted(self.coco.getImgIds())
        if self.image_dir is not None:
            self._check_image_files(annotations)

    def _check_image_files(self, annotations: str | Path | dict[str, Any]) -> None:
        r"""Raise (with ``skip_unreadable``: warn and drop) when listed image files are missing."""
        if not self.image_dir.is_dir():
            raise InputError(f"image folder not found: {self.image_dir}")
        records = self.coco.dataset["images"]
        missing = [
            i
            for i, record in enumerate(records)
            if not (self.image_dir / record["file_name"]).is_file()
        ]
        if not missing:
            return
        names = ", ".join(records[i]["file_name"] for i in missing[:5])
        count = f"{len(missing)} of {len(records)} image files missing in {self.image_dir}"
        if self.skip_unreadable and len(missing) < len(records):
            warnings.warn(f"skipping {count}: {names}", stacklevel=3)
            dropped = {records[i]["id"] for i in missing}
            self.image_ids = [i for i in self.image_ids if i not in dropped]
            return
        source = IN_MEMORY if isinstance(annotations, dict) else str(annotations)
        first = missing[0]
        raise AnnotationError(
            f"{source}: {_record_name('images', first, records[first])}: field 'file_name': "
            f"{self.image_dir / records[first]['file_name']} not found ({count}: {names})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def file_name(self, index: int) -> str:
        return self.coco.imgs[self.image_ids[index]]["file_name"]

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        r"""Boxes ``(N, 4)`` xyxy and 0-based labels ``(N,)`` of image ``index``, without crowds."""
        boxes, labels = [], []
        for annotation in self.coco.imgToAnns.get(self.image_ids[index], []):
            x, y, width, height = annotation["bbox"]
            if annotation.get("iscrowd", 0) or width <= 0 or height <= 0:
                continue
            boxes.append([x, y, x + width, y + height])
            labels.append(self.label_of_category[annotation["category_id"]])
        return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)

    def read(self, index: int) -> np.ndarray:
        r"""The ``(H, W, 3)`` pixels of image ``index``, of the size its record gives.

        Raises:
            ImageReadError: naming the file: it cannot be read, or its size is not the
                record's ``width`` and ``height`` (the boxes would not fit it).
        """
        name = self.file_name(index)
        if self.image_reader is not None:
            image = self.image_reader(name)
        else:
            name = str(self.image_dir / name)
            image = read_image(name)
        record = self.coco.imgs[self.image_ids[index]]
        height, width = image.shape[:2]
        if (width, height) != (record["width"], record["height"]):
            # The usual cause: an EXIF orientation tag that read_image applies, in a record
            # written from the stored (unrotated) pixels.
            swapped = (height, width) == (record["width"], record["height"])
            hint = " (sides swapped: an EXIF orientation tag?)" if swapped else ""
            raise ImageReadError(
                f"{name}: the image is {width} x {height} pixels, its record says "
                f"{record['width']} x {record['height']}{hint}"
            )
        return image

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
