"""ONNX export: onnxruntime gives PyTorch's maps and detections; doubling pools equal the scan.

Agreement of maps is measured per map, relative to the map's largest magnitude:
``max |onnx - torch| <= 1e-4 * max |torch|``. The network is the small_shapes one trained
for a few steps (a random network's corner scores differ from one another by about 1e-6,
as little as the two runtimes differ, so its detections are a matter of rounding); one
export, by the command, serves the whole module.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch import Tensor, nn

from cornernet_ref import export
from cornernet_ref.cli import main
from cornernet_ref.config import get_config
from cornernet_ref.corner_pool import CORNERS, DIRECTIONS, corner_pool, pool
from cornernet_ref.data.image import MEAN_RGB, STD_RGB, read_image
from cornernet_ref.data.loader import TrainingSet
from cornernet_ref.data.shapes import CLASS_NAMES, render_shapes_image, shapes_detection
from cornernet_ref.export import (
    OUTPUT_NAMES,
    DoublingCornerPool,
    OnnxFileError,
    OnnxModel,
    doubling_pool,
    onnx_source,
)
from cornernet_ref.inference import (
    TestConfig,
    canvas_geometry,
    detect_image,
    model_source,
    pad_image,
)
from cornernet_ref.losses import CornerNetLoss
from cornernet_ref.model import CornerNet
from cornernet_ref.predict import detect, image_record
from cornernet_ref.targets import collate_targets
from cornernet_ref.visualize import heatmap_panel

# Tests marked slow share one briefly trained network and its export (a minute on 2 cores).
pytestmark = pytest.mark.usefixtures("one_thread")

TRAINING_STEPS = 60
MAX_INPUT_SIDE = 1024  # 8 doubling steps: maps of up to 256 cells
MAP_TOLERANCE = 1e-4


def briefly_trained_model(steps: int = TRAINING_STEPS) -> CornerNet:
    """The small_shapes network after ``steps`` Adam steps on batches of four shapes images."""
    config = get_config("small_shapes")
    torch.manual_seed(0)
    model = CornerNet(replace(config.model, num_classes=len(CLASS_NAMES)))
    model.class_names = list(CLASS_NAMES)
    samples = TrainingSet(
        shapes_detection(4, seed=0, size=120),
        config.augment,
        output_size=config.output_size,
        target_config=config.targets,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    criterion = CornerNetLoss()
    for step in range(steps):
        batch = [samples[(i, 4 * step + i)] for i in range(4)]
        images, targets = torch.stack([x for x, _ in batch]), [y for _, y in batch]
        optimizer.zero_grad()
        criterion(model(images), collate_targets(targets))["total"].backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> CornerNet:
    return briefly_trained_model()


@pytest.fixture(scope="module")
def checkpoint(model: CornerNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    torch.save(model.checkpoint_state(), path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path) -> Path:
    """``cornernet-ref export``, end to end."""
    out = checkpoint.parent / "model.onnx"
    args = ["--checkpoint", str(checkpoint), "--out", str(out)]
    assert main(["export", *args, "--max-input-side", str(MAX_INPUT_SIDE)]) == 0
    assert out.is_file() and not out.with_name(out.name + ".tmp").exists()
    return out


@pytest.fixture(scope="module")
def session(exported: Path) -> OnnxModel:
    return OnnxModel(exported, threads=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two shapes images: square (canvas 127 x 127) and wide (canvas 127 x 255)."""
    folder = tmp_path_factory.mktemp("images")
    square = render_shapes_image(0, 1, size=120)[0]
    wide = render_shapes_image(0, 2, size=200)[0][:110]
    paths = [folder / "square.png", folder / "wide.png"]
    for path, pixels in zip(paths, (square, wide), strict=True):
        Image.fromarray(pixels).save(path)
    return paths


def relative_difference(onnx_map: Tensor, torch_map: Tensor) -> float:
    """``max |onnx - torch| / max |torch|``, the tolerance's definition."""
    return ((onnx_map - torch_map).abs().max() / torch_map.abs().max()).item()


@pytest.mark.slow
def test_graph_takes_any_size_and_returns_the_six_maps(exported: Path) -> None:
    graph = onnx.load(exported).graph
    (image,) = graph.input
    dims = [d.dim_value or d.dim_param for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and dims[:2] == [1, 3]
    assert all(isinstance(d, str) for d in dims[2:]), f"height and width are fixed: {dims}"
    assert tuple(output.name for output in graph.output) == OUTPUT_NAMES
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, "a custom operator"


@pytest.mark.slow
@pytest.mark.parametrize("size", [(127, 127), (96, 158), (255, 63)])
def test_onnx_maps_equal_pytorch_maps(model, session, size) -> None:
    """At sizes other than the export's sample (63 x 63), square or not, 128k - 1 or not."""
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        expected = model(images)[-1]
    maps = session(images)
    for name, onnx_map, torch_map in zip(OUTPUT_NAMES, maps, expected, strict=True):
        assert onnx_map.shape == torch_map.shape, name
        assert relative_difference(onnx_map, torch_map) <= MAP_TOLERANCE, name


@pytest.mark.slow
def test_predict_from_onnx_finds_the_checkpoints_detections(checkpoint, exported, images):
    """The whole test pipeline (canvas, flip, decoding, soft-NMS) on both: same boxes."""
    for image in images:
        from_torch, names = detect(checkpoint, image)
        from_onnx, onnx_names = detect(exported, image)
        assert len(from_torch.scores) > 0, f"the network finds nothing in {image.name}"
        assert onnx_names == names == list(CLASS_NAMES)
        assert torch.equal(from_onnx.labels, from_torch.labels)
        torch.testing.assert_close(from_onnx.boxes, from_torch.boxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(from_onnx.scores, from_torch.scores, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_same_detections_after_decoding_one_canvas(model, session, images) -> None:
    """Decoding the maps of one canvas (no flip): the same detections from both."""
    pixels = read_image(images[1])
    canvas, geometry = pad_image(pixels)
    assert geometry.input_size == (127, 255)
    record, no_flip = {"height": pixels.shape[0], "width": pixels.shape[1]}, TestConfig(flip=False)
    with torch.no_grad():
        expected = detect_image(lambda *_: model(canvas[None])[-1], record, no_flip)
    found = detect_image(lambda *_: session(canvas[None]), record, no_flip)
    assert len(expected.scores) > 0
    assert torch.equal(found.labels, expected.labels)
    torch.testing.assert_close(found.boxes, expected.boxes, rtol=0, atol=1e-3)
    torch.testing.assert_close(found.scores, expected.scores, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_predict_command_from_onnx(checkpoint, exported, images, tmp_path, capsys) -> None:
    """The detections and, with --heatmaps, the heatmap panel, from the export as from the
    checkpoint (the panel once reloaded the .onnx file as a checkpoint)."""
    printed = []
    for model_file in (checkpoint, exported):
        out = tmp_path / f"{model_file.suffix[1:]}.png"
        args = ["predict", "--checkpoint", str(model_file), str(images[0]), "--out", str(out)]
        assert main([*args, "--threshold", "0", "--heatmaps"]) == 0, capsys.readouterr().err
        assert out.stat().st_size > 0
        with Image.open(out.with_name(f"{out.stem}_heatmaps.png")) as panel:
            assert panel.format == "PNG"
        printed.append(capsys.readouterr().out)
    assert printed[0].split()[0] == printed[1].split()[0], printed  # the same count


@pytest.mark.slow
def test_the_heatmap_panel_of_the_export_is_the_model_s(model, session, images) -> None:
    record = image_record(images[1])
    geometry = canvas_geometry(record["height"], record["width"])
    folder = images[1].parent
    torch_panel, onnx_panel = (
        heatmap_panel(source(record, geometry, False), geometry, threshold=0.0)
        for source in (model_source(model, folder), onnx_source(session, folder))
    )
    assert onnx_panel.geometry == torch_panel.geometry == geometry
    for name in ("tl_heat", "br_heat"):
        np.testing.assert_allclose(getattr(onnx_panel, name), getattr(torch_panel, name), atol=1e-5)
    assert len(torch_panel.pairs) > 0
    assert [pair.label for pair in onnx_panel.pairs] == [pair.label for pair in torch_panel.pairs]


@pytest.mark.slow
def test_metadata_labels_and_normalises_without_the_checkpoint(session) -> None:
    assert session.class_names == list(CLASS_NAMES)
    np.testing.assert_array_equal(session.mean, MEAN_RGB)
    np.testing.assert_array_equal(session.std, STD_RGB)
    assert session.max_input_side == MAX_INPUT_SIDE and session.hourglass_depth == 3


@pytest.mark.slow
def test_the_normalisation_of_the_metadata_is_applied(model, exported, images, tmp_path):
    """An ONNX file that says mean 0, std 1: its canvases are normalised that way."""
    graph = onnx.load(exported)
    for prop in graph.metadata_props:
        if prop.key == "cornernet_ref.normalization":
            values = json.loads(prop.value) | {"mean": [0.0] * 3, "std": [1.0] * 3}
            prop.value = json.dumps(values)
    path = tmp_path / "plain.onnx"
    onnx.save(graph, path)
    plain = OnnxModel(path, threads=1)
    pixels = read_image(images[0])
    geometry = canvas_geometry(*pixels.shape[:2])
    record = {"file_name": images[0].name}
    maps = export.onnx_source(plain, images[0].parent)(record, geometry, False)
    canvas, _ = pad_image(pixels, mean=np.zeros(3, np.float32), std=np.ones(3, np.float32))
    with torch.no_grad():
        expected = model(canvas[None])[-1]
    assert relative_difference(maps.tl_heat, expected.tl_heat) <= MAP_TOLERANCE
    official, _ = pad_image(pixels)
    with torch.no_grad():
        other = model(official[None])[-1]
    assert relative_difference(maps.tl_heat, other.tl_heat) > MAP_TOLERANCE


# Many ties (small integers), signed zeros and infinities; NaN in a few cells only, so that
# long runs free of NaN, where the window length matters, are common.
values = st.one_of(
    st.integers(-3, 3).map(float),
    st.floats(-4, 4, width=32),
    st.sampled_from([0.0, -0.0, float("inf"), float("-inf")]),
)


@st.composite
def maps(draw: st.DrawFn, batch: int = 2, count: int = 1) -> tuple[Tensor, ...]:
    """``count`` maps of one shape ``(B <= batch, 2, H <= 32, W <= 32)``."""
    side = st.sampled_from([1, 2, 31, 32]) | st.integers(1, 32)  # the bound, often
    shape = (draw(st.integers(1, batch)), 2, draw(side), draw(side))
    size = int(np.prod(shape))
    drawn = []
    for _ in range(count):
        flat = torch.tensor(draw(st.lists(values, min_size=size, max_size=size)))
        flat[draw(st.lists(st.integers(0, size - 1), max_size=3))] = float("nan")
        drawn.append(flat.reshape(shape))
    return tuple(drawn)


@given(x=maps(), direction=st.sampled_from(sorted(DIRECTIONS)))
def test_doubling_pool_equals_the_reference_scan(x: tuple[Tensor], direction: str) -> None:
    """Every value equal as a number (so -0 may stand for +0), NaN where the reference has it."""
    expected = pool(x[0], direction, backend="reference")
    found = doubling_pool(x[0], direction, steps=5)
    torch.testing.assert_close(found, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
def test_doubling_reaches_the_far_border_at_the_bound(direction: str) -> None:
    """32 cells, 5 steps: the single 1 on the far border is every cell's maximum (by hand)."""
    dim, from_end = DIRECTIONS[direction]
    x = torch.zeros(1, 1, 32, 32)
    x.select(dim, 31 if from_end else 0).fill_(1.0)  # the border the scan starts from
    assert torch.equal(doubling_pool(x, direction, steps=5), torch.ones(1, 1, 32, 32))


class BothCorners(nn.Module):
    """The two doubling corner pools of ``a`` and ``b``, given as one ``(B, 2C, H, W)`` input
    (the graph of corner pooling alone)."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.pools = nn.ModuleList(DoublingCornerPool(corner, steps) for corner in CORNERS)

    def forward(self, ab: Tensor) -> tuple[Tensor, ...]:
        a, b = ab.chunk(2, dim=1)
        return tuple(corner(a, b) for corner in self.pools)


@pytest.fixture(scope="module")
def pool_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both corner pools, 5 doubling steps (sides up to 32), as ONNX with H and W free."""
    height, width = torch.export.Dim("height"), torch.export.Dim("width")
    program = export.onnx_program(
        BothCorners(steps=5).eval(),
        (torch.randn(1, 4, 5, 6),),
        input_names=["ab"],
        output_names=list(CORNERS),
        dynamic_shapes=({2: height, 3: width},),
    )
    path = tmp_path_factory.mktemp("pool") / "pool.onnx"
    program.save(path, external_data=False)
    return path


def run_pool_graph(path: Path, a: Tensor, b: Tensor) -> list[Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"ab": torch.cat((a, b), dim=1).numpy()})
    return [torch.from_numpy(output) for output in outputs]


@pytest.mark.slow
@given(ab=maps(batch=1, count=2))
def test_onnxruntime_corner_pools_equal_the_reference(pool_graph, ab) -> None:
    """The graph onnxruntime runs, with H and W other than the sample's."""
    a, b = ab
    found = run_pool_graph(pool_graph, a, b)
    for corner, pooled in zip(CORNERS, found, strict=True):
        expected = corner_pool(a, b, corner, backend="reference")
        torch.testing.assert_close(pooled, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.slow
def test_the_doubling_bound_is_needed_and_checked(pool_graph) -> None:
    """Beyond 2**steps cells the window is too short, so the eager pool refuses."""
    x = torch.zeros(1, 2, 40, 3)
    x[:, :, -1] = 1.0  # the maximum is 39 rows below the top: 5 steps reach 31 rows
    (tl, _) = run_pool_graph(pool_graph, x, x)
    assert not torch.equal(tl, corner_pool(x, x, "tl", backend="reference"))
    with pytest.raises(ValueError, match="5 doubling steps pool at most 32 cells, got 40"):
        doubling_pool(x, "top", steps=5)


@pytest.mark.slow
def test_onnx_model_refuses_sizes_the_graph_cannot_take(session) -> None:
    with pytest.raises(ValueError, match="exceeds 1024, the largest side"):
        session.check_input_size(1151, 127)
    with pytest.raises(ValueError, match="input width 100 is not accepted"):
        session(torch.zeros(1, 3, 127, 100))


@pytest.mark.slow
def test_clear_errors(model, checkpoint, exported, pool_graph, tmp_path, capsys) -> None:
    missing = tmp_path / "missing.pt"
    assert main(["export", "--checkpoint", str(missing), "--out", str(tmp_path / "m.onnx")]) == 2
    assert f"error: checkpoint not found: {missing}" in capsys.readouterr().err
    out = tmp_path / "no" / "such" / "m.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "error: the folder of --out does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="folder of the ONNX file does not exist"):
        export.export_onnx(model, out)
    with pytest.raises(OnnxFileError, match="ONNX file not found"):
        OnnxModel(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="no 'cornernet_ref.class_names' in its metadata"):
        OnnxModel(pool_graph)
    not_onnx = tmp_path / "checkpoint.onnx"
    not_onnx.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ValueError, match="onnxruntime cannot load it"):
        OnnxModel(not_onnx)


def test_an_interrupted_export_leaves_the_previous_file(tmp_path, monkeypatch) -> None:
    """The graph goes to a temporary file first; a failed write keeps the old file whole."""
    model = CornerNet(replace(get_config("small_shapes").model, num_classes=len(CLASS_NAMES)))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")

    class FailingProgram:
        def __init__(self) -> None:
            self.model = type("Model", (), {"metadata_props": {}})()

        def save(self, path: Path, external_data: bool) -> None:
            Path(path).write_bytes(b"half a gra")
            raise OSError("disk full")

    monkeypatch.setattr(export, "onnx_program", lambda *args, **kwargs: FailingProgram())
    with pytest.raises(OSError, match="disk full"):
        export.export_onnx(model, out)
    assert out.read_bytes() == b"previous export"
    assert list(tmp_path.iterdir()) == [out]
