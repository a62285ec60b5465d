"""The network's precision at test time: bfloat16 keeps the detections of a trained model,
and whatever the network gives, decoding and soft-NMS work in float32."""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import RectangleFinder

from cornernet_ref.config import get_config
from cornernet_ref.data.coco import CocoDetection, load_coco
from cornernet_ref.data.loader import TrainingSet
from cornernet_ref.data.shapes import CLASS_NAMES, write_shapes
from cornernet_ref.evaluate import evaluate
from cornernet_ref.inference import (
    PRECISIONS,
    TestConfig,
    detect_image,
    model_source,
    network_precision,
)
from cornernet_ref.losses import CornerNetLoss
from cornernet_ref.model import CornerNet
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.targets import collate_targets

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGES = 8
STEPS = 50  # AP about 0.4 on the 8 images: enough detections, right and wrong, to compare
# bfloat16 convolutions on the CPU differ between processors (oneDNN picks its kernels by
# instruction set), and an AP over 8 images moves in steps: float32 0.435 and bfloat16 0.442
# on an AMD EPYC, within 0.005 of each other on the Intel Xeon where the test was written.
AP_TOLERANCE = 0.01
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_shapes(tmp_path_factory.mktemp("shapes"), IMAGES, seed=0, size=120)


@pytest.fixture(scope="module")
def trained(shapes: tuple[Path, Path]) -> CornerNet:
    """The small_shapes network fitted to the 8 images, unaugmented (seconds per step of 8
    images on a busy 2-core machine, so few steps)."""
    images, annotations = shapes
    config = get_config("small_shapes")
    unaugmented = replace(config.augment, random_crop=False, flip=False, color_jitter=False)
    samples = TrainingSet(
        CocoDetection(annotations, images),
        unaugmented,
        output_size=config.output_size,
        target_config=config.targets,
    )
    batch = [samples[(i, i)] for i in range(IMAGES)]
    inputs, targets = torch.stack([x for x, _ in batch]), collate_targets([y for _, y in batch])
    torch.manual_seed(0)
    model = CornerNet(replace(config.model, num_classes=len(CLASS_NAMES)))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    criterion = CornerNetLoss()
    for _ in range(STEPS):
        optimizer.zero_grad()
        criterion(model(inputs), targets)["total"].backward()
        optimizer.step()
    return model.eval()


def average_precision(
    model: CornerNet, shapes: tuple[Path, Path], precision: str, device: str
) -> float:
    images, annotations = shapes
    source = model_source(copy.deepcopy(model), images, device)  # moved, made channels_last
    config = TestConfig(precision=precision, workers=0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its table
        return evaluate(source, load_coco(annotations), config=config)["AP"]


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_bfloat16_keeps_the_average_precision_of_float32(trained, shapes, device):
    """CPU autocast here; on a GPU, CUDA autocast and channels_last, as the paper's test
    runs there by default."""
    reference = average_precision(trained, shapes, "fp32", device)
    assert reference > 0.2  # the model has learnt: the comparison means something
    for precision in ("bf16", "auto"):
        ap = average_precision(trained, shapes, precision, device)
        assert ap == pytest.approx(reference, abs=AP_TOLERANCE), precision
        if device == "cpu" and precision == "auto":
            assert ap == reference  # float32 on the CPU


def conv_dtype() -> torch.dtype:
    return torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1)).dtype


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("fp32", torch.float32), ("tf32", torch.float32), ("auto", torch.float32)]
    + [("bf16", torch.bfloat16)],
)
def test_convolutions_on_the_cpu_run_at_the_precision_asked(precision, dtype):
    with network_precision(precision):
        assert conv_dtype() == dtype
    assert conv_dtype() == torch.float32


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_tf32_is_allowed_only_inside_tf32_and_restored(precision):
    before = torch.backends.cudnn.allow_tf32
    with network_precision(precision):
        assert torch.backends.cudnn.allow_tf32 == (precision == "tf32")
    assert torch.backends.cudnn.allow_tf32 == before


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        TestConfig(precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"), network_precision("fp8"):
        pass
    assert set(PRECISIONS) == {"auto", "fp32", "tf32", "bf16"}


def test_decoding_reads_float32_maps_whatever_the_network_gives(tmp_path):
    """A source whose maps come in bfloat16 gives the boxes of the same maps in float32,
    rounded to bfloat16 once (not decoded in bfloat16)."""
    from helpers import draw_rectangles

    record = {"id": 1, "file_name": "a.png", "height": 120, "width": 160}
    draw_rectangles(tmp_path, [record], [(1, 1, 10.0, 20.0, 60.0, 50.0, 0)])
    source = model_source(RectangleFinder(), tmp_path)

    def rounded(record, geometry, flip):
        return CornerNetOutput(*(t.bfloat16() for t in source(record, geometry, flip)))

    def rounded_then_float(record, geometry, flip):
        return CornerNetOutput(*(t.float() for t in rounded(record, geometry, flip)))

    config = TestConfig(flip=True)
    got, expected = (
        detect_image(rounded, record, config),
        detect_image(rounded_then_float, record, config),
    )
    assert all(t.dtype == torch.float32 for t in (got.boxes, got.scores))
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
