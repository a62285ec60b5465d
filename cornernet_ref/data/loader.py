r"""Feeding the trainer: augmented samples, a resumable distributed batch order, DataLoaders.

**The sample stream.** Training sees one endless stream of samples: epoch $e$ is a
permutation of the dataset drawn from ``(seed, e)``, and the global batch of iteration $t$
is the stretch of stream positions $[tB, (t + 1)B)$. Rank $r$ of $R$ takes the $r$-th
contiguous share of that stretch, split further into gradient-accumulation micro-batches.
Each sample's augmentation draws from a generator seeded by ``(seed, position)``.

So the samples of iteration $t$ depend on $t$ alone: not on the number of processes, the
number of DataLoader workers, nor on whether the run was interrupted and resumed. That is
what lets the tests compare a 2-process run with a single-process one, and a resumed run
with an uninterrupted one, parameter for parameter. (PyTorch's ``DistributedSampler`` works
per epoch and cannot start in the middle of one; :class:`StreamBatchSampler` plays its role
here.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cornernet_ref.data.augment import AugmentConfig, augment
from cornernet_ref.data.coco import CocoDetection
from cornernet_ref.data.image import normalize
from cornernet_ref.errors import InputError
from cornernet_ref.targets import TargetConfig, build_targets, collate_targets

StreamKey = tuple[int, int]  # (dataset index, stream position)


class TrainingSet(Dataset):
    r"""Pairs ``(normalised (3, S, S) image, targets of build_targets)`` of augmented samples.

    Items are addressed by ``(dataset index, stream position)``; the position seeds the
    augmentation, so the same key always gives the same sample.

    Args:
        source: the images and boxes.
        augment_config: the augmentation (its ``input_size`` is the network input side).
        output_size: side of the network's output maps.
        target_config: how the targets are drawn
            (:class:`~cornernet_ref.targets.TargetConfig`); objects beyond its
            ``max_objects`` are dropped.
        seed: the seed of the whole stream.
    """

    def __init__(
        self,
        source: CocoDetection,
        augment_config: AugmentConfig,
        *,
        output_size: int,
        target_config: TargetConfig = TargetConfig(),
        seed: int = 0,
    ) -> None:
        self.source = source
        self.augment_config = augment_config
        self.output_size = output_size
        self.target_config = target_config
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: StreamKey) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, position = key
        rng = np.random.default_rng([self.seed, position])
        sample = self.source[index]
        image, boxes, labels = augment(
            sample.image, sample.boxes, sample.labels, self.augment_config, rng
        )
        capacity = self.target_config.max_objects
        boxes, labels = boxes[:capacity], labels[:capacity]
        targets = build_targets(
            boxes,
            labels,
            num_classes=self.source.num_classes,
            input_size=self.augment_config.input_size,
            output_size=self.output_size,
            config=self.target_config,
        )
        return normalize(image), targets


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Stack images to ``(B, 3, S, S)`` and targets with ``collate_targets``."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), collate_targets(list(targets))


def stream_keys(dataset_size: int, seed: int, start: int, stop: int) -> list[StreamKey]:
    r"""Keys ``(index, position)`` of stream positions ``start .. stop - 1``."""
    orders: dict[int, np.ndarray] = {}  # one permutation per epoch touched
    keys = []
    for position in range(start, stop):
        epoch, offset = divmod(position, dataset_size)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(dataset_size)
        keys.append((int(orders[epoch][offset]), position))
    return keys


class StreamBatchSampler(Sampler[list[StreamKey]]):
    r"""This rank's micro-batches of iterations ``start_iteration .. stop_iteration - 1``.

    Yields ``accumulation`` micro-batches per iteration (lists of stream keys). The global
    batch must split evenly across ranks; a rank's share is split across micro-batches as
    evenly as possible.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch: int,
        *,
        start_iteration: int,
        stop_iteration: int,
        rank: int = 0,
        world_size: int = 1,
        accumulation: int = 1,
        seed: int = 0,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("the dataset is empty")
        if global_batch % world_size:
            raise ValueError(f"batch {global_batch} does not split across {world_size} ranks")
        if not 1 <= accumulation <= global_batch // world_size:
            raise ValueError(
                f"accumulation {accumulation} must be in 1..{global_batch // world_size}"
            )
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.start_iteration, self.stop_iteration = start_iteration, stop_iteration
        self.rank, self.world_size = rank, world_size
        self.accumulation = accumulation
        self.seed = seed

    def rank_keys(self, iteration: int) -> list[StreamKey]:
        r"""This rank's share of the global batch of ``iteration``."""
        share = self.global_batch // self.world_size
        start = iteration * self.global_batch + self.rank * share
        return stream_keys(self.dataset_size, self.seed, start, start + share)

    def __len__(self) -> int:
        return (self.stop_iteration - self.start_iteration) * self.accumulation

    def __iter__(self) -> Iterator[list[StreamKey]]:
        for iteration in range(self.start_iteration, self.stop_iteration):
            keys = self.rank_keys(iteration)
            for part in np.array_split(np.arange(len(keys)), self.accumulation):
                yield [keys[i] for i in part]


class _Loader(DataLoader):
    r"""A DataLoader whose workers' bad-input errors keep their one-line message.

    A worker's exception reaches the main process re-raised with the worker's whole
    traceback as its message; for an :class:`~cornernet_ref.errors.InputError` (an
    undecodable image, say) that is a page where one line is due, so the original
    message is restored.
    """

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        try:
            yield from super().__iter__()
        except InputError as error:
            # The worker's text ends with "<module>.<type>: <message>", as traceback prints it.
            kind = type(error)
            _, found, message = str(error).rpartition(f"{kind.__module__}.{kind.__qualname__}: ")
            if not found:
                raise
            raise kind(message.strip()) from None


def make_loader(
    dataset: TrainingSet, sampler: StreamBatchSampler, *, workers: int, pin_memory: bool
) -> DataLoader:
    r"""A DataLoader over ``sampler``'s micro-batches, ``workers`` processes, optionally pinned.

    An :class:`~cornernet_ref.errors.InputError` raised in a worker is raised again in the
    main process with its own message, not the worker's traceback.
    """
    return _Loader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=collate,
        persistent_workers=False,
    )
