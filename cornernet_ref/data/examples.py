r"""Example data for the figures, notebooks and benchmarks.

The COCO sample (128 train2017 images with their instance annotations) is looked for in
``$CORNERNET_SHARED/data/coco128``, by default in the folder ``shared/`` beside the
checkout. Nothing in the package needs it; where it is absent, :func:`example_image` draws
a stand-in, so that figures and notebooks still run.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from cornernet_ref.data.coco import category_ids
from cornernet_ref.data.image import read_image

EXAMPLE_IMAGE_ID = 136  # coco128: two people and two giraffes

# The stand-in: (category id, x, y, width, height) of three boxes on a 300 x 420 image.
DRAWN_BOXES = ((1, 20, 60, 90, 230), (1, 100, 40, 60, 160), (2, 200, 120, 170, 140))
DRAWN_CATEGORIES = ({"id": 1, "name": "tall"}, {"id": 2, "name": "wide"})


def shared_dir() -> Path:
    r"""``$CORNERNET_SHARED``, else ``shared/`` beside the checkout (which may not exist)."""
    return Path(os.environ.get("CORNERNET_SHARED", Path(__file__).resolve().parents[3] / "shared"))


def coco128() -> tuple[Path, Path]:
    r"""(image folder, annotation file) of the COCO sample; check that they exist."""
    root = shared_dir() / "data" / "coco128"
    return root / "train2017", root / "annotations" / "instances_train2017.json"


def load_coco_quietly(annotations: str | Path) -> COCO:
    r"""pycocotools' index of an annotation file, without its progress messages."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotations))


def drawn_example() -> tuple[np.ndarray, COCO, dict]:
    r"""Three flat-coloured boxes of two classes, in COCO form."""
    image = np.full((300, 420, 3), 200, dtype=np.uint8)
    for i, (_, x, y, w, h) in enumerate(DRAWN_BOXES):
        image[y : y + h, x : x + w] = (60 + 60 * i, 120, 220 - 60 * i)
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "file_name": "drawn.png", "height": 300, "width": 420}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": c, "bbox": [x, y, w, h],
             "area": w * h, "iscrowd": 0}
            for i, (c, x, y, w, h) in enumerate(DRAWN_BOXES)
        ],
        "categories": list(DRAWN_CATEGORIES),
    }  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return image, coco, coco.loadImgs(1)[0]


def example_image(image_id: int = EXAMPLE_IMAGE_ID) -> tuple[np.ndarray, COCO, dict]:
    r"""(RGB image, its annotations, its image record): a coco128 image, or the stand-in."""
    images, annotations = coco128()
    if not annotations.is_file():
        return drawn_example()
    coco = load_coco_quietly(annotations)
    record = coco.loadImgs(image_id)[0]
    return read_image(images / record["file_name"]), coco, record


def class_names(coco: COCO) -> list[str]:
    r"""Category names in label order (:func:`cornernet_ref.data.coco.category_ids`)."""
    return [coco.cats[category]["name"] for category in category_ids(coco)]
