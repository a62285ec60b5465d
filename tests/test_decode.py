"""Decoding (peaks, top-K, pairing rules) against simple loop versions, and the IoU of
soft-NMS (tests/test_soft_nms.py tests soft-NMS itself)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from cornernet_ref.decode import DecodeConfig, box_iou_plus_one, decode, local_maxima
from cornernet_ref.output import CornerNetOutput

LOW, HIGH = -20.0, 4.0  # background and peak logits of the hand-built maps


def blank_maps(classes: int = 3, height: int = 16, width: int = 16) -> CornerNetOutput:
    heat = torch.full((1, classes, height, width), LOW)
    tag = torch.zeros(1, 1, height, width)
    off = torch.zeros(1, 2, height, width)
    return CornerNetOutput(heat.clone(), heat.clone(), tag.clone(), tag.clone(), off.clone(), off)


def put_corner(out, corner, label, y, x, tag=0.0, offset=(0.0, 0.0), logit=HIGH):
    getattr(out, f"{corner}_heat")[0, label, y, x] = logit
    getattr(out, f"{corner}_tag")[0, 0, y, x] = tag
    getattr(out, f"{corner}_off")[0, :, y, x] = torch.tensor(offset)


def confident(dets, threshold: float = 0.6):
    """(box, label, score) of the first image's detections above ``threshold``.

    The flat background is a local maximum everywhere, so a peak paired with a background
    corner scores about half a peak: the threshold keeps pairs of two peaks only.
    """
    keep = dets.scores[0] > threshold
    return list(
        zip(
            dets.boxes[0][keep].tolist(),
            dets.labels[0][keep].tolist(),
            dets.scores[0][keep].tolist(),
            strict=True,
        )
    )


@pytest.mark.claim("decode-rules")
def test_one_object_with_offsets() -> None:
    out = blank_maps()
    put_corner(out, "tl", 2, 3, 4, offset=(0.25, 0.5))
    put_corner(out, "br", 2, 10, 12, offset=(0.75, 0.125), logit=2.0)
    dets = decode(out, DecodeConfig(K=20, num_dets=50))
    [(box, label, score)] = confident(dets)
    assert box == pytest.approx([4.25, 3.5, 12.75, 10.125])
    assert label == 2
    expected = (1 / (1 + math.exp(-HIGH)) + 1 / (1 + math.exp(-2.0))) / 2
    assert score == pytest.approx(expected)
    assert dets.tl_scores[0, 0] == pytest.approx(1 / (1 + math.exp(-HIGH)))
    assert dets.br_scores[0, 0] == pytest.approx(1 / (1 + math.exp(-2.0)))


@pytest.mark.claim("decode-rules")
def test_two_objects_of_one_class_are_paired_by_embeddings() -> None:
    out = blank_maps()
    put_corner(out, "tl", 0, 1, 1, tag=0.0)
    put_corner(out, "br", 0, 12, 12, tag=0.2)
    put_corner(out, "tl", 0, 4, 5, tag=3.0)
    put_corner(out, "br", 0, 8, 9, tag=3.3)
    boxes = sorted(box for box, _, _ in confident(decode(out, DecodeConfig(K=20, num_dets=100))))
    # The cross pair (1, 1)-(8, 9) is a valid box too, but its tags are 3.3 apart.
    assert boxes == [[1.0, 1.0, 12.0, 12.0], [5.0, 4.0, 9.0, 8.0]]


@pytest.mark.claim("decode-rules")
def test_corners_of_different_classes_are_not_paired() -> None:
    out = blank_maps()
    put_corner(out, "tl", 0, 2, 2)
    put_corner(out, "br", 1, 9, 9)
    assert confident(decode(out, DecodeConfig(K=20, num_dets=100))) == []


@pytest.mark.claim("decode-rules")
@pytest.mark.parametrize(("tl", "br"), [((2, 9), (9, 4)), ((9, 2), (4, 9)), ((9, 9), (4, 4))])
def test_inverted_boxes_are_rejected(tl, br) -> None:
    out = blank_maps()
    put_corner(out, "tl", 1, *tl)
    put_corner(out, "br", 1, *br)
    assert confident(decode(out, DecodeConfig(K=20, num_dets=100))) == []


@pytest.mark.claim("decode-rules")
def test_only_local_maxima_survive() -> None:
    heat = torch.zeros(1, 1, 5, 5)
    heat[0, 0, 2, 2] = 0.9
    heat[0, 0, 2, 3] = 0.5  # beside a larger peak
    heat[0, 0, 0, 0] = 0.4  # alone in its window
    peaks = local_maxima(heat, kernel=3)
    assert peaks[0, 0, 2, 3] == 0
    assert peaks[0, 0, 2, 2] == pytest.approx(0.9)
    assert peaks[0, 0, 0, 0] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="odd"):
        local_maxima(heat, kernel=2)


def brute_force_pairs(out: CornerNetOutput, kernel: int, ae_threshold: float) -> list[float]:
    """Scores of every valid pair of cells of image 0 (score 0 where not a peak), by loops:
    every cell is among the top K."""
    tl = ranked_corners(out.tl_heat, out.tl_tag, out.tl_off, 0, kernel)
    br = ranked_corners(out.br_heat, out.br_tag, out.br_off, 0, kernel)
    pairs = brute_force_pairs_of_top_k(tl, br, len(tl), ae_threshold)
    return sorted((pair[0] for pair in pairs if pair[0] != -1), reverse=True)


@pytest.mark.claim("decode-rules")
@given(seed=st.integers(0, 2**31 - 1), kernel=st.sampled_from([1, 3]))
def test_decode_equals_brute_force_over_all_pairs(seed: int, kernel: int) -> None:
    g = torch.Generator().manual_seed(seed)
    classes, height, width = 2, 4, 5
    out = CornerNetOutput(
        torch.randn(1, classes, height, width, generator=g) * 3,
        torch.randn(1, classes, height, width, generator=g) * 3,
        torch.rand(1, 1, height, width, generator=g) * 2,
        torch.rand(1, 1, height, width, generator=g) * 2,
        torch.rand(1, 2, height, width, generator=g),
        torch.rand(1, 2, height, width, generator=g),
    )
    n = classes * height * width
    dets = decode(out, DecodeConfig(K=n, kernel=kernel, num_dets=n * n))
    valid = dets.scores[0][dets.scores[0] > -1]
    assert valid.tolist() == pytest.approx(brute_force_pairs(out, kernel, 0.5))
    assert torch.all(dets.scores[0][:-1] >= dets.scores[0][1:])  # best first


def test_decode_rejects_mismatched_heatmaps() -> None:
    out = blank_maps()
    with pytest.raises(ValueError, match="heatmaps"):
        decode(out._replace(br_heat=out.br_heat[:, :2]))


# ------------------------------------------------------- the IoU of soft-NMS


def pairwise_iou(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return box_iou_plus_one(boxes[:, None], boxes[None])


def test_iou_plus_one_convention() -> None:
    iou, touching = pairwise_iou(torch.tensor([[0.0, 0, 9, 9], [10, 0, 19, 9], [9, 0, 18, 9]]))
    assert not touching[0, 1]  # adjacent: 10 pixels each, no shared pixel
    assert iou[0, 2] == pytest.approx(10 / 190)  # one shared pixel column of 10
    iou, touching = pairwise_iou(torch.tensor([[0.0, 0, 9, 9], [0, 10, 9, 19], [0, 9, 9, 18]]))
    assert not touching[0, 1]
    assert touching[0, 2] and iou[0, 2] == pytest.approx(10 / 190)  # one shared pixel row


def test_iou_plus_one_of_fractional_boxes() -> None:
    """Decoded corners fall between cells: an overlap of half a pixel is half a pixel."""
    boxes = torch.tensor([[0.0, 0, 9, 9], [9.5, 0, 19, 9], [0, 9.5, 9, 19]])
    iou, touching = pairwise_iou(boxes)
    assert touching[0, 1] and touching[0, 2]
    # areas 10 x 10 and 10.5 x 10, intersection 0.5 x 10
    assert iou[0, 1] == pytest.approx(5 / (100 + 105 - 5))
    assert iou[0, 2] == pytest.approx(5 / (100 + 105 - 5))


# ------------------------------------------------- decoding of a batch against brute force


def ranked_corners(heat, tags, offs, b: int, kernel: int) -> list[tuple]:
    """Every cell of image ``b`` as a corner ``(score, class, tag, x, y)``, best first, by
    loops (score 0 where the cell is not a peak). float32 arithmetic, as in :func:`decode`,
    so that equal scores are equal here too; the sigmoid of the whole batch, as there (a
    vectorised and a scalar sigmoid may differ in the last bit)."""
    prob = heat.sigmoid()[b].numpy()
    classes, height, width = prob.shape
    r = (kernel - 1) // 2
    found = []
    for c in range(classes):
        for y in range(height):
            for x in range(width):
                window = prob[c, max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
                peak = prob[c, y, x] == window.max()
                found.append(
                    (
                        prob[c, y, x] if peak else np.float32(0),
                        c,
                        tags[b, 0, y, x].numpy(),
                        np.float32(x) + offs[b, 0, y, x].numpy(),
                        np.float32(y) + offs[b, 1, y, x].numpy(),
                    )
                )
    return sorted(found, key=lambda corner: -corner[0])


def brute_force_pairs_of_top_k(tl: list[tuple], br: list[tuple], k: int, ae_threshold: float):
    """All pairs of the ``k`` best corners of each type, as tuples
    ``(score, x1, y1, x2, y2, label, tl_score, br_score)``; a rejected pair scores -1. The
    label of a pair is the class of its top-left corner (the bottom-right one's too for every
    valid pair)."""
    pairs = []
    for s1, c1, e1, x1, y1 in tl[:k]:
        for s2, c2, e2, x2, y2 in br[:k]:
            valid = c1 == c2 and abs(e1 - e2) <= ae_threshold and x2 >= x1 and y2 >= y1
            score = (s1 + s2) / np.float32(2) if valid else np.float32(-1)
            pairs.append(tuple(map(float, (score, x1, y1, x2, y2, c1, s1, s2))))
    return pairs


def tied_maps(data, batch: int, classes: int, height: int, width: int) -> CornerNetOutput:
    """Maps with many equal scores, embedding distances exactly at the threshold and boxes
    of zero width or height.

    Each heatmap cell is either high (logit 2 or 3: equal scores, plateaus of equal peaks)
    or low, with a logit of its own (all different), so that the cut between the K-th and the
    (K+1)-th corner can fall where no two scores are equal.
    """
    n = classes * height * width

    def heat() -> torch.Tensor:
        maps = []
        for _ in range(batch):
            high = st.sampled_from([3.0, 2.0] + [None] * 6)
            levels = data.draw(st.lists(high, min_size=n, max_size=n))
            ranks = data.draw(st.permutations(range(n)))
            maps.append(
                [-2.0 + 0.01 * r if v is None else v for v, r in zip(levels, ranks, strict=True)]
            )
        return torch.tensor(maps).reshape(batch, classes, height, width)

    def levels(channels: int, values: list[float]) -> torch.Tensor:
        size = batch * channels * height * width
        drawn = data.draw(st.lists(st.sampled_from(values), min_size=size, max_size=size))
        return torch.tensor(drawn).reshape(batch, channels, height, width)

    tags, offsets = [0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.75]
    return CornerNetOutput(
        heat(), heat(), levels(1, tags), levels(1, tags), levels(2, offsets), levels(2, offsets)
    )


@pytest.mark.claim("decode-rules")
@given(
    data=st.data(),
    batch=st.integers(2, 3),
    classes=st.integers(1, 3),
    height=st.integers(2, 5),
    width=st.integers(2, 5),
    kernel=st.sampled_from([1, 3]),
)
def test_decode_of_a_batch_equals_brute_force(data, batch, classes, height, width, kernel):
    """Boxes, scores, corner scores and labels of every image, K smaller than the cells.

    The order among equal scores is not specified (``torch.topk``), so K is drawn among the
    values where the K-th and (K+1)-th corner scores differ in every image and corner type
    (the top-K corners are then one set), and the detections are compared as multisets;
    at the ``num_dets`` cut, the detections scored like the last one may be any of the pairs
    with that score.
    """
    out = tied_maps(data, batch, classes, height, width)
    corners = [
        (ranked_corners(out.tl_heat, out.tl_tag, out.tl_off, b, kernel),
         ranked_corners(out.br_heat, out.br_tag, out.br_off, b, kernel))
        for b in range(batch)
    ]  # fmt: skip
    cells = classes * height * width
    cuts = [
        k
        for k in range(1, cells)
        if all(ranked[k - 1][0] > ranked[k][0] for image in corners for ranked in image)
    ]
    assume(cuts)
    k = data.draw(st.sampled_from(cuts), label="K")
    num_dets = data.draw(st.integers(1, k * k), label="num_dets")
    dets = decode(out, DecodeConfig(K=k, kernel=kernel, num_dets=num_dets))
    assert dets.scores.shape == (batch, num_dets)
    for b, (tl, br) in enumerate(corners):
        pairs = brute_force_pairs_of_top_k(tl, br, k, 0.5)
        expected = sorted(pairs, reverse=True)[:num_dets]
        got = sorted(
            zip(
                dets.scores[b].tolist(),
                *dets.boxes[b].T.tolist(),
                dets.labels[b].tolist(),
                dets.tl_scores[b].tolist(),
                dets.br_scores[b].tolist(),
                strict=True,
            ),
            reverse=True,
        )
        assert [p[0] for p in got] == [p[0] for p in expected]  # the same scores
        cut = expected[-1][0]
        assert [p for p in got if p[0] > cut] == [p for p in expected if p[0] > cut]
        tied = [p for p in pairs if p[0] == cut]
        for pair in (p for p in got if p[0] == cut):
            assert pair in tied
            tied.remove(pair)
        assert dets.scores[b].tolist() == [p[0] for p in got]  # best first


def test_the_decode_configuration_is_frozen():
    """It is the default argument of decode: a mutable one would carry a change made in one
    call into every later call."""
    config = DecodeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.K = 5  # type: ignore[misc]
    assert DecodeConfig().K == 100


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"K": 0}, "K must be positive"),
        ({"num_dets": 0}, "num_dets must be positive"),
        ({"kernel": 0}, "kernel must be a positive odd number"),
        ({"kernel": -1}, "kernel must be a positive odd number"),
        ({"kernel": 4}, "kernel must be a positive odd number"),
        ({"ae_threshold": -0.1}, "ae_threshold must be at least 0"),
        ({"ae_threshold": float("nan")}, "ae_threshold must be at least 0"),
    ],
)
def test_the_decode_configuration_names_each_bad_field(fields, message):
    with pytest.raises(ValueError, match=message):
        DecodeConfig(**fields)


def test_the_decode_configuration_accepts_the_edges_of_its_fields():
    config = DecodeConfig(K=1, num_dets=1, kernel=1, ae_threshold=0.0)
    assert (config.K, config.num_dets, config.kernel, config.ae_threshold) == (1, 1, 1, 0.0)


def test_the_decode_defaults_are_the_official_ones():
    """shared/reference/official_constants.md: top_k 100, nms_kernel 3, ae_threshold 0.5,
    1000 detections kept from the pairs."""
    config = DecodeConfig()
    assert (config.K, config.kernel, config.ae_threshold, config.num_dets) == (100, 3, 0.5, 1000)
