"""The ground-truth oracle: maps that decode to the annotations, and its AP on COCO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from pycocotools.coco import COCO

from cornernet_ref import cli
from cornernet_ref.analysis import heatmap_logits, oracle_outputs, oracle_source, with_ground_truth
from cornernet_ref.decode import decode, local_maxima
from cornernet_ref.evaluate import evaluate
from cornernet_ref.inference import TestConfig
from cornernet_ref.targets import build_targets, collate_targets

INPUT, OUTPUT = (511, 511), (128, 128)
RATIO = OUTPUT[0] / INPUT[0]


def decoded_boxes(boxes: torch.Tensor, labels: torch.Tensor, classes: int = 5) -> list:
    targets = build_targets(
        boxes, labels, num_classes=classes, input_size=INPUT, output_size=OUTPUT
    )
    dets = decode(oracle_outputs(collate_targets([targets])))
    keep = dets.scores[0] > 0.5  # pairs of two exact corners score 1
    found = torch.cat((dets.boxes[0][keep], dets.labels[0][keep, None].float()), dim=1)
    return sorted(found.tolist())


boxes_strategy = st.lists(
    st.tuples(st.floats(0, 400), st.floats(0, 400), st.floats(8, 110), st.floats(8, 110)),
    min_size=1,
    max_size=5,
)


@pytest.mark.claim("oracle-ap")
@given(rows=boxes_strategy)
def test_oracle_maps_decode_to_the_ground_truth(rows) -> None:
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float32)
    cells = (boxes * RATIO).floor()
    # One embedding and one offset per cell: corners sharing a cell are the next test.
    assume(len(set(map(tuple, cells[:, :2].tolist()))) == len(rows))
    assume(len(set(map(tuple, cells[:, 2:].tolist()))) == len(rows))
    labels = torch.arange(len(rows))
    expected = sorted(
        [*(box * RATIO).tolist(), float(label)]
        for box, label in zip(boxes, labels.tolist(), strict=True)
    )
    found = decoded_boxes(boxes, labels)
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.claim("oracle-ap")
@pytest.mark.parametrize("labels", [[0, 0], [0, 1]])
def test_corners_sharing_a_cell_lose_one_object(labels) -> None:
    # Top-left corners (8, 8) and (9, 9) both fall into cell (2, 2) at 4x downsampling.
    # Heatmaps have a channel per class, but embeddings and offsets one per cell: even
    # of two classes only one object can own the cell.
    boxes = torch.tensor([[8.0, 8.0, 100.0, 100.0], [9.0, 9.0, 60.0, 200.0]])
    [found] = decoded_boxes(boxes, torch.tensor(labels))
    assert found[2:4] == pytest.approx([60 * RATIO, 200 * RATIO], abs=1e-4)  # the later one
    moved = boxes + torch.tensor([[0.0, 0, 0, 0], [4, 0, 0, 0]])  # into the next cell
    assert len(decoded_boxes(moved, torch.tensor(labels))) == 2


def test_heatmap_logits_keep_exact_corners_as_the_only_peaks() -> None:
    target = torch.tensor([[[[0.5, 0.9999, 1.0, 0.99999, 0.9]]]])
    peaks = local_maxima(heatmap_logits(target).sigmoid())
    assert peaks[0, 0, 0].nonzero().flatten().tolist() == [2]  # Gaussian cells stay below
    assert peaks[0, 0, 0, 2] == 1.0


def test_with_ground_truth_replaces_only_what_is_asked() -> None:
    predicted = oracle_outputs(
        collate_targets(
            [
                build_targets(
                    torch.tensor([[10.0, 10.0, 90.0, 90.0]]),
                    torch.tensor([0]),
                    num_classes=2,
                    input_size=INPUT,
                    output_size=OUTPUT,
                )
            ]
        )
    )
    oracle = predicted._replace(**{k: v + 1 for k, v in predicted._asdict().items()})
    heat_only = with_ground_truth(predicted, oracle)
    assert heat_only.tl_heat is oracle.tl_heat and heat_only.br_heat is oracle.br_heat
    assert heat_only.tl_off is predicted.tl_off and heat_only.tl_tag is predicted.tl_tag
    both = with_ground_truth(predicted, oracle, offsets=True)
    assert both.br_off is oracle.br_off and both.br_tag is predicted.br_tag
    with pytest.raises(ValueError, match="differ"):
        with_ground_truth(predicted, oracle._replace(tl_heat=oracle.tl_heat[:, :1]))


def test_oracle_rejects_unbatched_targets() -> None:
    targets = build_targets(
        torch.tensor([[10.0, 10.0, 90.0, 90.0]]),
        torch.tensor([0]),
        num_classes=2,
        input_size=INPUT,
        output_size=OUTPUT,
    )
    with pytest.raises(ValueError, match="batched"):
        oracle_outputs(targets)


@pytest.mark.parametrize("scales", ["1", "0.5,1,1.5"])
def test_cli_evaluates_the_oracle(tmp_path: Path, scales: str) -> None:
    annotations = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 300, "width": 400}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 4,
                "bbox": [30, 40, 100, 80],
                "area": 8000,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 1,
                "category_id": 2,
                "bbox": [200, 10, 150, 250],
                "area": 37500,
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 2, "name": "b"}, {"id": 4, "name": "d"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotations))
    metrics_out = tmp_path / "metrics.json"
    status = cli.main(
        ["evaluate", "--images", str(tmp_path), "--annotations", str(path), "--oracle",
         "--test.scales", scales, "--metrics-out", str(metrics_out), "--results-out",
         str(tmp_path / "results.json")]
    )  # fmt: skip
    assert status == 0
    assert json.loads(metrics_out.read_text())["AP"] == pytest.approx(1.0)
    # Every scale (and mirror) finds both objects exactly; soft-NMS keeps one copy of each
    # at score 1 and decays the other copies, dropping those that fall below 0.001.
    results = json.loads((tmp_path / "results.json").read_text())
    truth = {a["category_id"]: a["bbox"] for a in annotations["annotations"]}
    for result in results:
        assert result["bbox"] == pytest.approx(truth[result["category_id"]], abs=0.01)
    scores = sorted((r["score"] for r in results), reverse=True)
    assert scores[:2] == [1.0, 1.0] and scores[2] < 0.2


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.claim("oracle-ap")
def test_oracle_ap_on_coco128(coco128: tuple[Path, Path]) -> None:
    _, annotations = coco128
    coco = COCO(str(annotations))
    metrics = evaluate(oracle_source(coco, num_classes=80), coco, config=TestConfig(flip=False))
    assert metrics["AP"] >= 0.99
