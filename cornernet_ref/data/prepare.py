r"""The data of a training run: the training set and the validation split of a
[TrainConfig][cornernet_ref.config.TrainConfig], on every process of the run.

The synthetic shapes are written once, by rank 0, under the run folder; COCO-format data is
read where it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cornernet_ref.data.coco import CocoDetection
from cornernet_ref.data.shapes import write_shapes
from cornernet_ref.errors import InputError
from cornernet_ref.run import RunFolder

if TYPE_CHECKING:
    from cornernet_ref.config import TrainConfig
    from cornernet_ref.run import Distributed


def shared_data(
    config: TrainConfig, job: Distributed
) -> tuple[CocoDetection, tuple[Path, Path] | None]:
    r""":func:`prepare_data` on every rank, rank 0 first where it writes the shapes data.

    COCO data is read by every rank before any waits, so a bad path stops all of them rather
    than leaving some waiting.
    """
    if job.is_main or config.dataset == "coco":
        data = prepare_data(config)
    job.barrier()
    if not job.is_main and config.dataset == "shapes":
        data = prepare_data(config)
    return data


def prepare_data(config: TrainConfig) -> tuple[CocoDetection, tuple[Path, Path] | None]:
    r"""The training set and the (images, annotations) of the validation split, if any.

    The shapes splits are written under ``<out>/data`` (reused when already there);
    ``shapes_val = 0`` means no validation split.
    """
    if config.dataset == "shapes":
        root = RunFolder(Path(config.out)).data
        size, seed = config.shapes_size, config.shapes_seed
        images, annotations = write_shapes(
            root / "train", config.shapes_train, seed=seed, size=size
        )
        training_split = CocoDetection(annotations, images)
        if not config.shapes_val:
            return training_split, None
        return training_split, write_shapes(
            root / "val", config.shapes_val, seed=seed + 1, size=size
        )
    if not Path(config.train_images).is_dir():
        raise InputError(f"training image folder not found: {config.train_images}")
    source = CocoDetection(
        config.train_annotations, config.train_images, skip_unreadable=config.skip_unreadable
    )
    if config.val_images and config.val_annotations:
        if not Path(config.val_annotations).is_file():  # refused now, not after training
            raise InputError(
                f"validation annotations not found: {config.val_annotations} (give "
                "--val-annotations '' to train without validation)"
            )
        CocoDetection(config.val_annotations, config.val_images)  # checked now, not at the end
        return source, (Path(config.val_images), Path(config.val_annotations))
    return source, None


__all__ = ["prepare_data", "shared_data"]
