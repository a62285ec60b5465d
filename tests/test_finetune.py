"""Fine-tuning: ``--init-from`` loads by name and shape, and the recipe of docs/run.md runs.

The recipe test builds a small COCO-format dataset (shapes drawn by the shapes code, saved
as PNG and JPEG, category ids 7 and 1001, an image without boxes, a crowd box), pretrains a
tiny network on the three shapes classes, and runs the command of "Train on your own data"
as the page writes it, with the paths replaced and options that shrink the model appended.
"""

from __future__ import annotations

import json
import re
import shlex
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cornernet_ref.checkpoint import load_checkpoint, save_checkpoint
from cornernet_ref.cli import main
from cornernet_ref.config import TrainConfig
from cornernet_ref.convert import convert_file, to_official_state_dict
from cornernet_ref.data.shapes import render_shapes_image
from cornernet_ref.errors import InputError
from cornernet_ref.finetune import init_from, load_matching
from cornernet_ref.heads import HEATMAP_BIAS
from cornernet_ref.model import CornerNet, ModelConfig
from cornernet_ref.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(n=2, nstack=2, dims=(8, 8, 8), modules=(1, 1, 1), cnv_dim=8, pre_dim=8, pool_dim=8)
RUN_MD = Path(__file__).resolve().parents[1] / "docs" / "run.md"


def heatmap_outputs(nstack: int) -> set[str]:
    """Names of the last heatmap convolution of every prediction module."""
    return {
        f"{corner}.{stack}.heatmap.out.{kind}"
        for corner in ("top_left", "bottom_right")
        for stack in range(nstack)
        for kind in ("weight", "bias")
    }


def trained_looking(num_classes: int, seed: int = 1, **kwargs) -> CornerNet:
    """A model whose every tensor is random (none equal to a fresh model's)."""
    model = CornerNet(ModelConfig(num_classes=num_classes, **(SMALL | kwargs)))
    generator = torch.Generator().manual_seed(seed)
    state = {
        name: torch.randint(1, 100, (), generator=generator)
        if name.endswith("num_batches_tracked")
        else 0.5 + torch.rand(value.shape, generator=generator)
        for name, value in model.state_dict().items()
    }
    model.load_state_dict(state)
    return model


def fresh(num_classes: int, **kwargs) -> CornerNet:
    torch.manual_seed(0)
    return CornerNet(ModelConfig(num_classes=num_classes, **(SMALL | kwargs)))


def test_another_class_count_loads_all_but_the_heatmap_outputs():
    source = trained_looking(3).state_dict()
    model, new = fresh(2), fresh(2).state_dict()
    report = load_matching(model, source, "source.pt")
    heads = heatmap_outputs(SMALL["nstack"])
    assert set(report.fresh) == heads and report.unused == []
    assert (
        report.fresh["top_left.0.heatmap.out.weight"] == "shape 3x8x1x1 in the file, 2x8x1x1 here"
    )
    for name, value in model.state_dict().items():
        assert torch.equal(value, new[name] if name in heads else source[name]), name
    for module in (*model.top_left, *model.bottom_right):
        assert torch.all(module.heatmap.out.bias == HEATMAP_BIAS)  # the focal-loss prior
    assert f"loaded {len(new) - len(heads)} of the model's {len(new)} tensors" in report.summary()
    assert "fresh  bottom_right.1.heatmap.out.bias: shape 3 in the file, 2 here" in report.summary()


def test_same_classes_load_everything_the_heatmap_heads_too():
    source = trained_looking(3).state_dict()
    model = fresh(3)
    report = load_matching(model, source)
    assert report.fresh == {} and report.unused == [] and report.loaded == list(source)
    for name, value in model.state_dict().items():
        assert torch.equal(value, source[name]), name


ARCHITECTURES = st.fixed_dictionaries(
    {"nstack": st.sampled_from([1, 2]), "cnv_dim": st.sampled_from([6, 8])}
)


@settings(max_examples=10)
@given(
    classes=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    architectures=st.tuples(ARCHITECTURES, ARCHITECTURES),
)
def test_load_matching_rule(classes, architectures):
    """Loaded: exactly the names of both with equal shapes, with the file's values; the rest
    of the model keeps its fresh values; unused: the names the model lacks."""
    source = trained_looking(classes[0], **architectures[0]).state_dict()
    model = fresh(classes[1], **architectures[1])
    new = {name: value.clone() for name, value in model.state_dict().items()}
    report = load_matching(model, source)
    matching = [n for n in new if n in source and source[n].shape == new[n].shape]
    assert report.loaded == matching
    assert set(report.fresh) == set(new) - set(matching)
    assert report.unused == [n for n in source if n not in new]
    for name, value in model.state_dict().items():
        assert torch.equal(value, source[name] if name in matching else new[name]), name


def test_official_pkl_and_converted_checkpoint(tmp_path):
    """An official .pkl is converted (colour order included); `convert` output loads too."""
    source = trained_looking(3).state_dict()
    official = tmp_path / "CornerNet_fake.pkl"
    torch.save(to_official_state_dict(source), official)
    converted = tmp_path / "converted.pt"
    convert_file(official, converted)
    for path in (official, converted):
        model = fresh(2)
        report = init_from(model, path)
        assert report.source == str(path)
        assert report.loaded == [name for name in source if name not in heatmap_outputs(2)]
        for name in report.loaded:  # the first convolution too: BGR and back
            assert torch.equal(model.state_dict()[name], source[name]), name


def test_unusable_files_are_named(tmp_path):
    with pytest.raises(InputError, match=r"--init-from: file not found: .*nothing\.pt"):
        init_from(fresh(2), tmp_path / "nothing.pt")
    unconverted = tmp_path / "official.pt"  # an official state dict, not under .pkl
    torch.save(to_official_state_dict(trained_looking(2).state_dict()), unconverted)
    with pytest.raises(ValueError, match="convert it first"):
        init_from(fresh(2), unconverted)
    pickled = tmp_path / "CornerNet_note.pkl"  # more than tensors: the safe loader refuses
    torch.save({"note": Fraction(1, 3)}, pickled)
    command = f"cornernet-ref convert --trust {pickled} OUT.pt"  # train has no --trust
    with pytest.raises(InputError, match=re.escape(command)):
        init_from(fresh(2), pickled)


def test_init_from_is_not_resume(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--resume", "a.pt", "--init-from", "b.pkl"])
    assert "argument --init-from: not allowed with argument --resume" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        train(TrainConfig(), resume="a.pt", init_from="b.pkl")


# --- The recipe of docs/run.md, end to end -------------------------------------------------

CATEGORIES = [{"id": 1001, "name": "round"}, {"id": 7, "name": "box"}]  # shapes 0 -> 7, else 1001


def write_coco_split(folder: Path, seed: int, count: int) -> tuple[Path, Path]:
    """``count`` shapes images (PNG and JPEG) + one without boxes, and their annotation file."""
    images, annotations = [], []
    (folder / "images").mkdir(parents=True)
    for index in range(count + 1):
        pixels, boxes, labels = render_shapes_image(seed, index, size=64)
        if index == count:  # no objects: a flat image, no annotations
            pixels, boxes, labels = np.full_like(pixels, 90), boxes[:0], labels[:0]
        file_name = f"{index:03d}." + ("jpg" if index % 2 else "png")
        Image.fromarray(pixels).save(folder / "images" / file_name)
        images.append({"id": 100 + index, "file_name": file_name, "width": 64, "height": 64})
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), labels.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + index,
                    "category_id": 7 if label == 0 else 1001,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                }  # no iscrowd, no area
            )
    annotations.append(  # a crowd box over the first image
        {"id": len(annotations) + 1, "image_id": 100, "category_id": 7, "bbox": [0, 0, 64, 64],
         "iscrowd": 1}
    )  # fmt: skip
    path = folder / "annotations.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return folder / "images", path


def tiny_options() -> list[str]:
    """Options appended to the documented command: a tiny network, two iterations, CPU."""
    return [
        "--model.n", "2", "--model.nstack", "2", "--model.dims", "8,8,8",
        "--model.modules", "1,1,1", "--model.cnv-dim", "8", "--model.pre-dim", "8",
        "--model.pool-dim", "8", "--augment.input-size", "63", "--augment.border", "16",
        "--output-size", "16", "--batch-size", "2", "--workers", "0", "--device", "cpu",
        "--log-every", "1", "--max-iters", "2", "--lr-decay-iters", "1",
    ]  # fmt: skip


def documented_command() -> list[str]:
    """The ``--init-from`` command of the section "Train on your own data", as arguments."""
    section = RUN_MD.read_text().split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    command = next(block for block in blocks if "--init-from" in block)
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:2] == ["cornernet-ref", "train"], words
    return words[1:]


@pytest.fixture
def own_data(tmp_path):
    """Paths of the documented command -> the files of a small dataset made here."""
    train_images, train_annotations = write_coco_split(tmp_path / "my_data" / "train", 0, 4)
    val_images, val_annotations = write_coco_split(tmp_path / "my_data" / "val", 1, 2)
    return {
        "my_data/train": train_images,
        "my_data/train.json": train_annotations,
        "my_data/val": val_images,
        "my_data/val.json": val_annotations,
        "runs/my_data": tmp_path / "run",
    }


def substitute(words: list[str], paths: dict[str, Path]) -> list[str]:
    placeholders = [word for word in words if word.startswith(("my_data", "runs/"))]
    assert set(placeholders) <= set(paths), f"the recipe names paths the test lacks: {placeholders}"
    return [str(paths.get(word, word)) for word in words]


@pytest.mark.slow
def test_recipe_train_on_your_own_data(own_data, tmp_path, capsys):
    pretrained = tmp_path / "pretrained"  # a run on the three shapes classes
    shapes = ["--shapes-train", "4", "--shapes-val", "0", "--shapes-size", "56"]
    assert (
        main(["train", *tiny_options(), *shapes, "--max-iters", "1", "--out", str(pretrained)]) == 0
    )
    capsys.readouterr()
    paths = own_data | {
        "runs/small_shapes/checkpoints/last.pt": pretrained / "checkpoints" / "last.pt"
    }
    assert main([*substitute(documented_command(), paths), *tiny_options()]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    heads = heatmap_outputs(2)
    total = len(load_checkpoint(paths["runs/small_shapes/checkpoints/last.pt"])["model"])
    assert summary["init_from"] == {
        "source": str(paths["runs/small_shapes/checkpoints/last.pt"]),
        "loaded": total - len(heads),
        "fresh": sorted(heads, key=list(fresh(2).state_dict()).index),
        "unused": [],
    }
    assert f"loaded {total - len(heads)} of the model's {total} tensors" in printed.err
    assert all(f"fresh  {name}: shape 3" in printed.err for name in heads)
    out = own_data["runs/my_data"]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["iteration"] == 2 and state["class_names"] == ["box", "round"]  # ids 7, 1001
    assert state["model_config"]["num_classes"] == 2  # the data's classes, not the config's
    assert state["config"]["model"]["num_classes"] == 2
    assert json.loads((out / "history.jsonl").read_text().splitlines()[0])["iteration"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    # COCO reports -1 when it finds no ground truth
    assert set(metrics) >= {"AP", "AP50", "AR100"} and 0 <= metrics["AP"] <= 1


def test_recipe_stops_before_training_on_a_malformed_file(own_data, tmp_path, capsys):
    annotations = own_data["my_data/val.json"]  # the validation file: read only at the end
    data = json.loads(annotations.read_text())
    data["annotations"][1]["bbox"][3] = -2.0
    annotations.write_text(json.dumps(data))
    checkpoint = tmp_path / "pretrained.pt"  # read (and checked) before the data
    save_checkpoint(checkpoint, fresh(3).checkpoint_state())
    paths = own_data | {"runs/small_shapes/checkpoints/last.pt": checkpoint}
    assert main([*substitute(documented_command(), paths), *tiny_options()]) == 2
    error = capsys.readouterr().err
    record = f"annotations[1] (id {data['annotations'][1]['id']})"
    assert f"error: {annotations}: {record}: field 'bbox': negative width or height" in error
    assert not (own_data["runs/my_data"] / "checkpoints").exists()
