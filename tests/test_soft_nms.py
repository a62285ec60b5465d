"""Soft-NMS, compiled and vectorised, against the official loop written out in Python.

The GPU's way (rows sorted by PyTorch, then the loop of each class) runs here with the CPU
build of the loop; the tests marked ``cuda`` run it on a GPU."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import cornernet_ref.decode as decode_module
from cornernet_ref import soft_nms_op
from cornernet_ref.decode import REJECTED, SoftNMSResult, decode, soft_nms, soft_nms_all
from cornernet_ref.inference import (
    TestConfig,
    boxes_to_image,
    canvas_geometry,
    detect_image,
    mirror_boxes,
    scale_detections,
)
from cornernet_ref.output import CornerNetOutput

IMPLEMENTATIONS = ["compiled", "vectorised", "device_path"]
f32 = np.float32


def official_soft_nms(rows, method, sigma=0.5, nt=0.5, threshold=0.001):
    """The official soft-NMS of one class, one box at a time, on ``[x1, y1, x2, y2, s,
    index]`` rows (a list, changed in place) in float32 as the official code computes.
    Returns the kept rows, in the order kept."""
    n = len(rows)
    for i in range(n):
        best = i
        for pos in range(i + 1, n):
            if rows[best][4] < rows[pos][4]:  # strict: the first maximum in the array
                best = pos
        rows[i], rows[best] = rows[best], rows[i]
        tx1, ty1, tx2, ty2 = rows[i][:4]
        pos = i + 1
        while pos < n:
            x1, y1, x2, y2 = rows[pos][:4]
            iw = min(tx2, x2) - max(tx1, x1) + f32(1)
            ih = min(ty2, y2) - max(ty1, y1) + f32(1)
            if iw > 0 and ih > 0:
                ua = (
                    (tx2 - tx1 + f32(1)) * (ty2 - ty1 + f32(1))
                    + (x2 - x1 + f32(1)) * (y2 - y1 + f32(1))
                    - iw * ih
                )
                ov = iw * ih / ua
                if method == "gaussian":
                    weight = f32(math.exp(float(-(ov * ov) / f32(sigma))))
                else:
                    weight = f32(1) - ov if ov > f32(nt) else f32(1)
                rows[pos][4] = weight * rows[pos][4]
                if rows[pos][4] < f32(threshold):  # the last box takes its place
                    rows[pos], rows[n - 1] = rows[n - 1], rows[pos]
                    n -= 1
                    continue
            pos += 1
    return rows[:n]


def official_per_class(boxes, scores, labels, method):
    """The official loop on each class, ascending, the boxes of a class in input order:
    ``(keep, new_scores)`` lists."""
    keep, new_scores = [], []
    for label in sorted(set(labels)):
        rows = [
            [*map(f32, box), f32(score), index]
            for index, (box, score, lab) in enumerate(zip(boxes, scores, labels, strict=True))
            if lab == label
        ]
        for row in official_soft_nms(rows, method):
            keep.append(row[5])
            new_scores.append(float(row[4]))
    return keep, new_scores


def run_soft_nms(implementation, boxes, scores, labels, *, valid=None, method="gaussian"):
    """soft_nms_all with the compiled loop or the vectorised form, or the GPU's way (rows
    sorted by PyTorch, then the loop of each class) run with the CPU build of the loop."""
    if implementation == "device_path":
        keys = labels.long() if valid is None else torch.where(valid, labels.long(), -1)
        options = (soft_nms_op.METHODS[method], 0.5, 0.5, 0.001)
        launch = soft_nms_op.load("cpu").soft_nms_rows
        return SoftNMSResult(
            *soft_nms_op.soft_nms_sorted_rows(boxes, scores, keys, *options, launch)
        )
    compiled = implementation == "compiled"
    return soft_nms_all(boxes, scores, labels, valid=valid, method=method, compiled=compiled)


def check_against_official(boxes, scores, labels, method, implementation):
    result = run_soft_nms(
        implementation,
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.long),
        method=method,
    )
    expected_keep, expected_scores = official_per_class(boxes, scores, labels, method)
    assert result.order[result.kept].tolist() == expected_keep  # the same boxes, same order
    assert result.scores[result.kept].tolist() == pytest.approx(expected_scores, abs=1e-6)
    assert sorted(result.order.tolist()) == list(range(len(scores)))  # every box once
    assert result.kept.tolist() == sorted(result.kept.tolist(), reverse=True)  # kept first


# Boxes on a small grid, so that many touch and some are equal; scores from a short list, so
# that ties are common, and near the threshold, so that drops are common.
SCORES = [0.9, 0.5, 0.5, 0.3, 0.0012, 0.0015, 0.002, 0.0009, 0.0011]
box_rows = st.lists(
    st.tuples(
        st.integers(0, 12),
        st.integers(0, 12),
        st.integers(0, 8),
        st.integers(0, 8),
        st.sampled_from(SCORES) | st.floats(0.0005, 1.0).map(f32),
    ),
    max_size=30,
)


@pytest.mark.claim("soft-nms")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@given(
    rows=box_rows,
    classes=st.sampled_from([1, 3, 80]),
    method=st.sampled_from(["gaussian", "linear"]),
    data=st.data(),
)
def test_soft_nms_equals_the_official_loop(rows, classes, method, data, implementation) -> None:
    """Ties, threshold crossings, one class or many, empty input, both methods."""
    labels = data.draw(
        st.lists(st.integers(0, classes - 1), min_size=len(rows), max_size=len(rows))
    )
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _ in rows]
    scores = [s for *_, s in rows]
    check_against_official(boxes, scores, labels, method, implementation)


@pytest.mark.claim("soft-nms")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@given(data=st.data(), method=st.sampled_from(["gaussian", "linear"]))
def test_soft_nms_of_equal_boxes_follows_the_official_order(data, method, implementation) -> None:
    """Copies of a few boxes with a few scores: nearly every choice is a tie, decided by
    the order the official swaps leave."""
    count = data.draw(st.integers(0, 40))
    shapes = [[0, 0, 9, 9], [0, 0, 9, 4], [5, 0, 14, 9], [0, 0, 9, 9.5]]
    boxes = data.draw(st.lists(st.sampled_from(shapes), min_size=count, max_size=count))
    scores = data.draw(st.lists(st.sampled_from([0.8, 0.4, 0.002]), min_size=count, max_size=count))
    labels = data.draw(st.lists(st.integers(0, 1), min_size=count, max_size=count))
    check_against_official(boxes, scores, labels, method, implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_soft_nms_ties_follow_the_array_not_the_input_order(implementation) -> None:
    """Boxes 2 and 3 are equal, far from the others, and score 0.5 each. Step 0 keeps box 0
    and drops its copy, box 1 (0.001 e^{-2} < 0.001): the last box, 3, takes position 1, so
    the array is 0, 3, 2. Step 1 then keeps box 3, the first 0.5 in the array (box 2 in the
    input order), and decays its copy, box 2, by e^{-2}."""
    boxes = [[0, 0, 9, 9], [0, 0, 9, 9], [100, 0, 109, 9], [100, 0, 109, 9]]
    result = run_soft_nms(
        implementation,
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor([0.9, 0.001, 0.5, 0.5]),
        torch.zeros(4, dtype=torch.long),
    )
    assert result.order[result.kept].tolist() == [0, 3, 2]
    assert result.scores[result.kept].tolist() == pytest.approx([0.9, 0.5, 0.5 * math.exp(-2)])


@pytest.mark.claim("soft-nms")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_soft_nms_hand_computed(implementation) -> None:
    boxes = torch.tensor(
        [[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 4], [0, 0, 9, 9]], dtype=torch.float
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 1])
    result = run_soft_nms(implementation, boxes, scores, labels)
    by_index = dict(
        zip(result.order[result.kept].tolist(), result.scores[result.kept].tolist(), strict=True)
    )
    assert by_index[0] == pytest.approx(0.9)
    assert by_index[3] == pytest.approx(0.6)  # another class: untouched
    # Box 2 (half of box 0, IoU 50/100 with "+1" areas) is decayed once by box 0, then
    # is the best left (0.7 e^{-0.5} = 0.42 > 0.8 e^{-2} = 0.108) and decays box 1 again.
    assert by_index[2] == pytest.approx(0.7 * math.exp(-(0.5**2) / 0.5))
    assert by_index[1] == pytest.approx(0.8 * math.exp(-2) * math.exp(-(0.5**2) / 0.5))
    result = run_soft_nms(implementation, boxes, scores, labels, method="linear")
    by_index = dict(
        zip(result.order[result.kept].tolist(), result.scores[result.kept].tolist(), strict=True)
    )
    assert 1 not in by_index  # IoU 1 > 0.5: score x (1 - 1) = 0, dropped
    assert by_index[2] == pytest.approx(0.7)  # IoU 0.5 is not > 0.5


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_soft_nms_leaves_out_the_invalid_boxes(implementation) -> None:
    """A left-out box is never kept and decays nothing, even an exact copy of a kept box."""
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9]], dtype=torch.float)
    scores = torch.tensor([0.5, 0.9, 0.7])
    valid = torch.tensor([True, False, True])
    result = run_soft_nms(implementation, boxes, scores, torch.zeros(3), valid=valid)
    assert result.order[result.kept].tolist() == [2, 0]
    assert result.scores[result.kept].tolist() == pytest.approx([0.7, 0.5 * math.exp(-2)])


@given(data=st.data())
def test_soft_nms_depends_on_the_order_of_the_labels_only(data) -> None:
    """Labels far apart (grouped by a comparison sort, not by counting) give the result of
    small labels in the same order."""
    count = data.draw(st.integers(1, 30))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    corners = torch.rand(count, 2, generator=g) * 30
    boxes = torch.cat((corners, corners + torch.rand(count, 2, generator=g) * 20), dim=1)
    scores, labels = torch.rand(count, generator=g), torch.randint(0, 3, (count,), generator=g)
    small = soft_nms_all(boxes, scores, labels)
    spread = soft_nms_all(boxes, scores, labels * 10**12 + 5)
    assert torch.equal(spread.order, small.order) and torch.equal(spread.scores, small.scores)


def test_soft_nms_returns_the_kept_boxes_grouped_by_class() -> None:
    boxes = torch.tensor([[0, 0, 9, 9], [20, 0, 29, 9], [40, 0, 49, 9]], dtype=torch.float)
    keep, new_scores = soft_nms(boxes, torch.tensor([0.2, 0.9, 0.5]), torch.tensor([2, 0, 2]))
    assert keep.tolist() == [1, 2, 0]  # class 0, then class 2 best first
    assert new_scores.tolist() == pytest.approx([0.9, 0.5, 0.2])


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "vectorised"])
def test_a_score_decayed_exactly_to_the_threshold_is_kept(compiled) -> None:
    """The official loop drops a box whose score falls *below* the threshold. Boxes
    (0, 0, 9, 9) and (0, 0, 9, 4) share 50 of their 100 and 50 pixels ("+1" rule): IoU
    exactly 0.5, so the linear decay takes the second score from 1 to 0.5, the threshold."""
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.0]])
    result = soft_nms_all(
        boxes, torch.tensor([2.0, 1.0]), torch.zeros(2, dtype=torch.long),
        method="linear", iou_threshold=0.3, score_threshold=0.5, compiled=compiled,
    )  # fmt: skip
    assert result.kept.tolist() == [True, True]
    assert result.order.tolist() == [0, 1] and result.scores.tolist() == [2.0, 0.5]


@pytest.mark.parametrize("compiled", [True, False])
def test_soft_nms_runs_the_form_it_is_asked_for(monkeypatch, compiled) -> None:
    """``compiled=True`` runs the compiled loop, ``False`` the vectorised form, even where
    the other one would run by default."""

    def must_not_run(*args, **kwargs):
        raise AssertionError("the other form ran")

    if compiled:
        monkeypatch.setattr(decode_module, "soft_nms_vectorised", must_not_run)
    else:
        monkeypatch.setattr(soft_nms_op, "soft_nms_compiled", must_not_run)
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [1.0, 1.0, 8.0, 8.0]])
    result = soft_nms_all(boxes, torch.tensor([0.9, 0.8]), torch.zeros(2), compiled=compiled)
    assert result.order[0].item() == 0


def test_soft_nms_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="boxes"):
        soft_nms(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="method"):
        soft_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), method="hard")


def test_the_compiled_soft_nms_builds_where_there_is_a_compiler() -> None:
    """Else every other test of the compiled loop would test the fallback twice."""
    assert soft_nms_op.available("cpu"), soft_nms_op._build_errors.get("cpu")


def test_the_compiled_soft_nms_is_a_well_formed_operator() -> None:
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=g) * 30
    boxes = torch.cat((corners, corners + torch.rand(40, 2, generator=g) * 20), dim=1)
    args = (boxes, torch.rand(40, generator=g), torch.randint(-1, 3, (40,), generator=g))
    for method in soft_nms_op.METHODS.values():
        torch.library.opcheck(soft_nms_op.soft_nms_op, (*args, method, 0.5, 0.5, 0.001))


# -------------------------------------------------- the whole test, against the official loop


def flat_maps(seed: int, classes: int = 3, height: int = 24, width: int = 24) -> CornerNetOutput:
    """Random maps of a canvas and its mirror whose corners make many valid, overlapping
    pairs: embeddings all near 0, heatmap logits spread so that scores differ."""
    g = torch.Generator().manual_seed(seed)

    def heat() -> torch.Tensor:
        return torch.randn(2, classes, height, width, generator=g) * 2 - 1

    def tags() -> torch.Tensor:
        return torch.rand(2, 1, height, width, generator=g) * 0.4

    def offsets() -> torch.Tensor:
        return torch.rand(2, 2, height, width, generator=g)

    return CornerNetOutput(heat(), heat(), tags(), tags(), offsets(), offsets())


def official_detect(out: CornerNetOutput, record: dict, config: TestConfig):
    """The single-scale flip test of the official script, with its soft-NMS loop: the valid
    pairs of both halves, the mirror's boxes mirrored back, soft-NMS per class, and the
    scores at least the ``max_per_image``-th best. Rows ``(x1, y1, x2, y2, score, label)``."""
    geometry = canvas_geometry(record["height"], record["width"])
    dets = decode(out, config.decode)
    boxes = torch.stack((dets.boxes[0], mirror_boxes(dets.boxes[1], geometry.output_size[1])))
    boxes = boxes_to_image(boxes, geometry).reshape(-1, 4).tolist()
    scores, labels = dets.scores.reshape(-1).tolist(), dets.labels.reshape(-1).tolist()
    valid = [i for i, s in enumerate(scores) if s > REJECTED]
    keep, new_scores = official_per_class(
        [boxes[i] for i in valid],
        [scores[i] for i in valid],
        [labels[i] for i in valid],
        config.nms_method,
    )
    cut = sorted(new_scores, reverse=True)[: config.max_per_image][-1]
    return [
        (*boxes[valid[k]], s, labels[valid[k]])
        for k, s in zip(keep, new_scores, strict=True)
        if s >= cut
    ]


@pytest.mark.claim("soft-nms")
@pytest.mark.parametrize(("seed", "max_per_image"), [(0, 60), (1, 60), (0, 5000)])
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_detect_image_gives_the_detections_of_the_official_loop(seed, max_per_image, method):
    """With 60 boxes per image, the cut is tested; with 5000, every kept box is returned."""
    out = flat_maps(seed)
    record = {"id": 1, "file_name": "unused.png", "height": 93, "width": 90}
    config = TestConfig(nms_method=method, max_per_image=max_per_image)
    dets = detect_image(lambda *_: out, record, config)
    expected = official_detect(out, record, config)
    assert len(expected) > 30  # a real load: many boxes survive soft-NMS
    got = [
        (*box, s, lab)
        for box, s, lab in zip(
            dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True
        )
    ]
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):  # the same order: by class, as kept
        assert row == pytest.approx(want, abs=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compiled", [True, False])
def test_soft_nms_on_a_gpu_equals_the_cpu(compiled) -> None:
    g = torch.Generator().manual_seed(0)
    corners = torch.rand(1000, 2, generator=g) * 400
    boxes = torch.cat((corners, corners + torch.rand(1000, 2, generator=g) * 100 + 5), dim=1)
    scores, labels = torch.rand(1000, generator=g), torch.randint(0, 80, (1000,), generator=g)
    cpu = soft_nms_all(boxes, scores, labels)
    gpu = soft_nms_all(boxes.cuda(), scores.cuda(), labels.cuda(), compiled=compiled)
    assert torch.equal(gpu.order.cpu()[gpu.kept.cpu()], cpu.order[cpu.kept])
    torch.testing.assert_close(gpu.scores.cpu()[gpu.kept.cpu()], cpu.scores[cpu.kept])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decoding_and_soft_nms_on_a_gpu_never_wait_for_it() -> None:
    """From the network's maps to the kept boxes, nothing is read back to the host: every
    operation that would wait for the GPU raises in this mode. The final selection of the
    kept boxes (a variable size) is left out."""
    out = CornerNetOutput(*(t.cuda() for t in flat_maps(0)))
    record = {"id": 1, "file_name": "unused.png", "height": 93, "width": 90}
    config = TestConfig()
    geometry = canvas_geometry(record["height"], record["width"])

    def decode_and_soft_nms() -> tuple:
        part = scale_detections(out, geometry, config)
        valid = part.scores > REJECTED
        return part, soft_nms_all(part.boxes, part.scores, part.labels, valid=valid, compiled=True)

    decode_and_soft_nms()  # once before the check: the build and CUDA's lazy set-up
    torch.cuda.synchronize()
    with warnings.catch_warnings():  # torch warns that the debug mode is a prototype
        warnings.filterwarnings("ignore", "Synchronization debug mode", UserWarning)
        torch.cuda.set_sync_debug_mode("error")
    try:
        part, result = decode_and_soft_nms()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = soft_nms_all(
        part.boxes.cpu(), part.scores.cpu(), part.labels.cpu(), valid=part.scores.cpu() > REJECTED
    )
    assert torch.equal(result.order.cpu()[result.kept.cpu()], expected.order[expected.kept])
