"""The sample stream: ranks and resumes see the same batches; samples are reproducible."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cornernet_ref.data.augment import AugmentConfig, augment
from cornernet_ref.data.image import ImageReadError
from cornernet_ref.data.loader import StreamBatchSampler, TrainingSet, make_loader
from cornernet_ref.data.shapes import CLASS_NAMES, shapes_detection
from cornernet_ref.targets import TargetConfig

matplotlib.use("Agg")
REPO_ROOT = Path(__file__).resolve().parents[1]
EIGHT_SLOTS = TargetConfig(max_objects=8)


def keys_of(sampler: StreamBatchSampler) -> list[list[tuple[int, int]]]:
    return list(iter(sampler))


@given(
    st.integers(1, 30),
    st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2), (4, 1)]),
    st.integers(1, 3),
    st.integers(0, 5),
)
def test_ranks_and_accumulation_split_the_same_global_batches(size, layout, per_part, start):
    world, accumulation = layout
    batch = world * accumulation * per_part
    common = dict(start_iteration=start, stop_iteration=start + 3, seed=7)
    single = keys_of(StreamBatchSampler(size, batch, **common))
    ranks = [
        keys_of(
            StreamBatchSampler(
                size, batch, rank=r, world_size=world, accumulation=accumulation, **common
            )
        )
        for r in range(world)
    ]
    for iteration in range(3):
        joined = []
        for rank_keys in ranks:  # rank r holds the r-th share, split into micro-batches
            micro = rank_keys[iteration * accumulation : (iteration + 1) * accumulation]
            joined += [key for part in micro for key in part]
        assert joined == single[iteration]
        positions = [position for _, position in joined]
        assert positions == list(
            range((start + iteration) * batch, (start + iteration + 1) * batch)
        )


@given(st.integers(1, 20), st.integers(0, 100))
def test_every_epoch_is_a_permutation(size, seed):
    sampler = StreamBatchSampler(size, 1, start_iteration=0, stop_iteration=3 * size, seed=seed)
    indices = [part[0][0] for part in sampler]
    for epoch in range(3):
        assert sorted(indices[epoch * size : (epoch + 1) * size]) == list(range(size))


def test_sampler_rejects_bad_splits():
    with pytest.raises(ValueError, match="ranks"):
        StreamBatchSampler(10, 5, start_iteration=0, stop_iteration=1, world_size=2)
    with pytest.raises(ValueError, match="accumulation"):
        StreamBatchSampler(10, 4, start_iteration=0, stop_iteration=1, accumulation=5)
    with pytest.raises(ValueError, match="empty"):
        StreamBatchSampler(0, 4, start_iteration=0, stop_iteration=1)


def test_training_samples_are_reproducible_and_batched():
    source = shapes_detection(6, seed=0, size=64)
    config = AugmentConfig(input_size=63, border=16)
    dataset = TrainingSet(source, config, output_size=16, target_config=EIGHT_SLOTS, seed=1)
    image, targets = dataset[(2, 11)]
    again, targets_again = dataset[(2, 11)]
    assert image.shape == (3, 63, 63) and image.dtype == torch.float32
    torch.testing.assert_close(image, again, rtol=0, atol=0)
    for name in targets:
        torch.testing.assert_close(targets[name], targets_again[name], rtol=0, atol=0)
    other, _ = dataset[(2, 12)]  # another stream position, another augmentation
    assert not torch.equal(image, other)
    sampler = StreamBatchSampler(6, 4, start_iteration=0, stop_iteration=2, accumulation=2)
    batches = list(make_loader(dataset, sampler, workers=0, pin_memory=False))
    assert len(batches) == 4
    images, batch_targets = batches[0]
    assert images.shape == (2, 3, 63, 63)
    assert all(value.shape[0] == 2 for value in batch_targets.values())


def test_loader_batches_are_the_dataset_items_with_workers():
    """Two worker processes: each micro-batch stacks the items of its sampler keys, in order."""
    source = shapes_detection(5, seed=0, size=64)
    config = AugmentConfig(input_size=63, border=16)
    dataset = TrainingSet(source, config, output_size=16, target_config=EIGHT_SLOTS, seed=3)
    sampler = StreamBatchSampler(5, 3, start_iteration=1, stop_iteration=3, accumulation=2)
    keys = list(sampler)
    batches = list(make_loader(dataset, sampler, workers=2, pin_memory=False))
    assert len(batches) == len(keys) == 4 and [len(k) for k in keys] == [2, 1, 2, 1]
    for (images, targets), part in zip(batches, keys, strict=True):
        items = [dataset[key] for key in part]
        expected_images = torch.stack([image for image, _ in items])
        torch.testing.assert_close(images, expected_images, rtol=0, atol=0)
        assert set(targets) == set(items[0][1])
        for name, value in targets.items():
            expected = torch.stack([item_targets[name] for _, item_targets in items])
            torch.testing.assert_close(value, expected, rtol=0, atol=0)


def test_target_options_reach_the_targets():
    """The ablation options of the configuration change the targets the trainer sees."""
    source = shapes_detection(4, seed=0, size=64)
    config = AugmentConfig(input_size=63, border=16)

    def heat(**options) -> torch.Tensor:
        targets = TargetConfig(max_objects=8, **options)
        dataset = TrainingSet(source, config, output_size=16, target_config=targets)
        return dataset[(1, 3)][1]["tl_heat"]

    official = heat()
    binary = heat(penalty_reduction=False)
    assert torch.equal(binary, (official == 1).float()) and (official < 1).any()
    exact = heat(radius_variant="exact", gaussian_iou=0.3)
    assert torch.equal(exact == 1, official == 1)
    assert (exact >= official).all() and (exact > official).any()  # larger radius, wider bumps
    wide = heat(gaussian_iou=0.1)  # a lower overlap to keep: a larger radius
    assert torch.equal(wide == 1, official == 1)
    assert (wide >= official).all() and (wide > official).any()


def test_draw_augmented_samples_for_a_person():
    """Writes runs/test_images/augmented_shapes.png: boxes should sit on their shapes."""
    import matplotlib.pyplot as plt

    source = shapes_detection(8, seed=0, size=120)
    config = AugmentConfig(input_size=127, border=32)
    figure, axes = plt.subplots(2, 4, figsize=(12, 6))
    for index, axis in enumerate(axes.flat):
        sample = source[index]
        image, boxes, labels = augment(
            sample.image, sample.boxes, sample.labels, config, np.random.default_rng(index)
        )
        axis.imshow(np.clip(image, 0, 255).astype(np.uint8))
        for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
            axis.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime"))
            axis.text(x0, y0, CLASS_NAMES[label], color="lime", fontsize=7, va="bottom")
        axis.set_axis_off()
    out = REPO_ROOT / "runs" / "test_images" / "augmented_shapes.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    assert plt.imread(out).shape == (6 * 80, 12 * 80, 4)  # the whole figure, as RGBA


def test_a_bad_image_in_a_worker_stops_with_its_own_one_line_message():
    """The worker's traceback stays in the worker: the error is the reader's one line."""
    source = shapes_detection(3, seed=0, size=64)

    def unreadable(name: str) -> np.ndarray:
        raise ImageReadError(f"cannot decode image file {name}: broken")

    source.image_reader = unreadable
    config = AugmentConfig(input_size=63, border=16)
    dataset = TrainingSet(source, config, output_size=16, target_config=EIGHT_SLOTS)
    sampler = StreamBatchSampler(3, 1, start_iteration=0, stop_iteration=1)
    ((index, _),) = next(iter(sampler))
    with pytest.raises(ImageReadError) as raised:
        list(make_loader(dataset, sampler, workers=1, pin_memory=False))
    assert str(raised.value) == f"cannot decode image file {source.file_name(index)}: broken"
