"""The losses: hand-computed cases, limits, invariances, and the official aggregation.

The reference for the official numbers, :func:`official_loss_by_loops`, is written from
the formulas alone (per cell, per object and per pair of objects, in plain Python floats).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cornernet_ref.losses import CornerNetLoss, LossConfig, ae_loss, focal_loss, offset_loss
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.targets import TARGET_KEYS

EPS = 1e-4
LOG = math.log


def random_case(seed, *, batch=2, classes=2, size=4, slots=5, counts=None, stacks=1, scale=2.0):
    """Random raw outputs and consistent targets; ``counts`` objects per image, random slots."""
    gen = torch.Generator().manual_seed(seed)
    counts = counts or [int(torch.randint(0, slots + 1, (1,), generator=gen)) for _ in range(batch)]
    batch = len(counts)
    cells = size * size
    targets = {}
    for corner in ("tl", "br"):
        heat = torch.rand(batch, classes, size, size, generator=gen) ** 3 * 0.99
        heat[torch.rand(heat.shape, generator=gen) < 0.1] = 1.0
        targets[f"{corner}_heat"] = heat
        targets[f"{corner}_ind"] = torch.randint(0, cells, (batch, slots), generator=gen)
        targets[f"{corner}_off"] = torch.rand(batch, slots, 2, generator=gen)
    mask = torch.zeros(batch, slots, dtype=torch.bool)
    for b, n in enumerate(counts):
        mask[b, torch.randperm(slots, generator=gen)[:n]] = True
    targets["mask"] = mask

    def maps(channels):
        return torch.randn(batch, channels, size, size, generator=gen) * scale

    outputs = [
        CornerNetOutput(maps(classes), maps(classes), maps(1), maps(1), maps(2), maps(2))
        for _ in range(stacks)
    ]
    return outputs, targets


def official_loss_by_loops(outputs, targets, weights=(0.1, 0.1, 1.0), single_object_push=False):
    """The official aggregation, re-expressed with loops over cells, objects and pairs."""
    pull_weight, push_weight, offset_weight = weights
    mask = targets["mask"].tolist()
    batch, classes, height, width = targets["tl_heat"].shape
    focal = pull = push = offset = 0.0
    for out in outputs:
        for corner in ("tl", "br"):
            logits = getattr(out, f"{corner}_heat").tolist()
            target = targets[f"{corner}_heat"].tolist()
            positives, total = 0, 0.0
            for b in range(batch):
                for c in range(classes):
                    for i in range(height):
                        for j in range(width):
                            p = min(max(1 / (1 + math.exp(-logits[b][c][i][j])), EPS), 1 - EPS)
                            y = target[b][c][i][j]
                            if y == 1:
                                positives += 1
                                total += (1 - p) ** 2 * LOG(p)
                            else:
                                total += (1 - y) ** 4 * p**2 * LOG(1 - p)
            focal += -total / positives if positives else -total

        def read(maps, corner, b, k):
            cell = int(targets[f"{corner}_ind"][b, k])
            return maps[b, :, cell // width, cell % width].tolist()

        objects = sum(map(sum, mask))
        for corner in ("tl", "br"):
            smooth_l1 = 0.0
            for b in range(batch):
                for k in range(len(mask[b])):
                    if mask[b][k]:
                        predicted = read(getattr(out, f"{corner}_off"), corner, b, k)
                        target = targets[f"{corner}_off"][b, k].tolist()
                        for x, t in zip(predicted, target, strict=True):
                            d = abs(x - t)
                            smooth_l1 += 0.5 * d * d if d < 1 else d - 0.5
            offset += smooth_l1 / (objects + EPS)
        for b in range(batch):
            slots = [k for k in range(len(mask[b])) if mask[b][k]]
            n = len(slots)
            tl = [read(out.tl_tag, "tl", b, k)[0] for k in slots]
            br = [read(out.br_tag, "br", b, k)[0] for k in slots]
            means = [(a + c) / 2 for a, c in zip(tl, br, strict=True)]
            pulled = [(a - e) ** 2 + (c - e) ** 2 for a, c, e in zip(tl, br, means, strict=True)]
            pull += sum(pulled) / (n + EPS)
            if n >= 2 or (n == 1 and single_object_push):
                for ek in means:
                    for ej in means:
                        hinge = max(0.0, 1 - abs(ek - ej))
                        push += (hinge - 1 / (n + EPS)) / (n * (n - 1) + EPS)
    stacks = len(outputs)
    terms = {
        "focal": focal / stacks,
        "pull": pull_weight * pull / stacks,
        "push": push_weight * push / stacks,
        "offset": offset_weight * offset / stacks,
    }
    terms["total"] = sum(terms.values())
    return terms


# --- The official aggregation -----------------------------------------------------------


@pytest.mark.claim("official-loss-values")
@settings(max_examples=25)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.sampled_from([0, 2, 3, 5]), min_size=1, max_size=3),
    st.integers(1, 2),
)
def test_total_matches_the_official_computation(seed, counts, stacks):
    outputs, targets = random_case(seed, counts=counts, stacks=stacks)
    losses = CornerNetLoss()(outputs, targets)
    expected = official_loss_by_loops(outputs, targets)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name


@pytest.mark.claim("official-loss-values")
@settings(max_examples=10)
@given(st.integers(0, 2**31 - 1), st.lists(st.integers(0, 4), min_size=1, max_size=3))
def test_flag_restores_the_official_single_object_push(seed, counts):
    outputs, targets = random_case(seed, counts=counts, stacks=2)
    weights = (0.5, 0.3, 2.0)
    losses = CornerNetLoss(LossConfig(*weights, single_object_push=True))(outputs, targets)
    expected = official_loss_by_loops(outputs, targets, weights, single_object_push=True)
    # In float32, 1 - 1/(1 + 1e-4) keeps only about three digits (as in the official code):
    # the single-object constant is within 1e-3 of its value.
    singles = sum(n == 1 for n in counts)  # per image, averaged over the stacks
    for name, value in expected.items():
        tolerance = 1e-6 + (1e-3 * singles if name in ("push", "total") else 0)
        assert losses[name].item() == pytest.approx(value, rel=1e-5, abs=tolerance), name


def test_by_default_an_image_with_one_object_pushes_nothing():
    """L_push sums over pairs of distinct objects: one object has none, so by default its
    image adds 0; the official constant, 1 / (1 + 1e-4) per such image (summed over the
    images, within 1e-3 each in float32), is the flag's."""
    outputs, targets = random_case(5, counts=[1, 1], stacks=1)
    assert CornerNetLoss()(outputs, targets)["push"].item() == 0.0
    official = CornerNetLoss(LossConfig(push_weight=1.0, single_object_push=True))
    assert official(outputs, targets)["push"].item() == pytest.approx(2 / (1 + 1e-4), abs=2e-3)


@pytest.mark.claim("official-loss-values")
def test_each_term_is_the_weighted_mean_over_stacks():
    outputs, targets = random_case(3, counts=[2, 3], stacks=2)
    losses = CornerNetLoss(LossConfig(0.2, 0.3, 4.0))(outputs, targets)
    single = [CornerNetLoss(LossConfig(1.0, 1.0, 1.0))(out, targets) for out in outputs]
    for name, weight in (("focal", 1.0), ("pull", 0.2), ("push", 0.3), ("offset", 4.0)):
        by_stack = sum(terms[name] for terms in single) / len(single)
        assert losses[name].item() == pytest.approx(weight * by_stack.item(), rel=1e-6)


@settings(max_examples=15)
@given(
    st.integers(0, 2**31 - 1),
    st.lists(st.sampled_from([0, 1, 2, 4]), min_size=1, max_size=3),
    st.integers(1, 3),
    st.tuples(*[st.floats(0.0, 5.0)] * 3),
    st.booleans(),
)
def test_total_is_exactly_the_sum_of_the_reported_terms(seed, counts, stacks, weights, single):
    outputs, targets = random_case(seed, counts=counts, stacks=stacks)
    losses = CornerNetLoss(LossConfig(*weights, single_object_push=single))(outputs, targets)
    parts = losses["focal"] + losses["pull"] + losses["push"] + losses["offset"]
    assert torch.equal(losses["total"], parts)


# --- Focal loss -------------------------------------------------------------------------


@pytest.mark.claim("focal-loss")
def test_focal_loss_by_hand():
    # p = sigmoid(logits) = [[0.5, 0.75], [0.25, 0.5]]; one positive, y = 0.5 beside it.
    logits = torch.tensor([[[[0.0, math.log(3)], [-math.log(3), 0.0]]]])
    target = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    expected = (
        0.5**2 * LOG(2)  # positive: -(1 - p)^2 log p
        + 0.5**4 * 0.75**2 * LOG(4)  # -(1 - y)^4 p^2 log(1 - p), y = 0.5
        + 0.25**2 * LOG(4 / 3)
        + 0.5**2 * LOG(2)
    )
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # Without a positive the sum of the negative terms is kept, not divided.
    no_positive = target.clone()
    no_positive[0, 0, 0, 0] = 0.0
    expected = 0.5**2 * LOG(2) + 0.5**4 * 0.75**2 * LOG(4) + 0.25**2 * LOG(4 / 3) + 0.25 * LOG(2)
    assert focal_loss(logits, no_positive).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.claim("focal-loss")
def test_focal_loss_is_normalised_by_the_positives_of_the_batch():
    logits = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(2, 3, 5, 5)
    target[0, 1, 2, 2] = target[1, 0, 4, 1] = 1.0
    doubled = focal_loss(torch.cat([logits, logits]), torch.cat([target, target]))
    assert doubled.item() == pytest.approx(focal_loss(logits, target).item(), rel=1e-6)
    # A second positive cell halves the weight of every term already there.
    positive = (target == 1).sum()
    one_more = target.clone()
    one_more[0, 0, 0, 0] = 1.0
    sums = [focal_loss(logits, t) * n for t, n in ((target, positive), (one_more, positive + 1))]
    p = logits[0, 0, 0, 0].sigmoid()
    change = (1 - p) ** 2 * torch.log(p) - p**2 * torch.log(1 - p)  # negative -> positive
    assert (sums[0] - sums[1]).item() == pytest.approx(change.item(), rel=1e-5)


@pytest.mark.claim("focal-loss")
@given(st.integers(0, 2**31 - 1))
@settings(max_examples=20)
def test_focal_loss_vanishes_for_a_perfect_prediction(seed):
    _, targets = random_case(seed)
    target = targets["tl_heat"]
    signs = torch.where(target == 1, 1.0, -1.0)
    values = [focal_loss(scale * signs, target).item() for scale in (1, 2, 4, 8, 50)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < 1e-7  # the clamp at 1e-4 keeps it from reaching 0


@pytest.mark.claim("focal-loss")
def test_focal_weight_forgives_negatives_near_a_corner():
    logits = torch.zeros(1, 1, 1, 3)
    losses = [focal_loss(logits, torch.full((1, 1, 1, 3), y)).item() for y in (0.0, 0.5, 0.9)]
    assert losses[1] == pytest.approx(losses[0] * 0.5**4) and losses[2] < losses[1]


# --- Embeddings -------------------------------------------------------------------------


@pytest.mark.claim("pull-push")
def test_pull_and_push_by_hand():
    # Two objects: means 0.3 and 0.8, 0.5 apart.
    tl, br = torch.tensor([[0.2, 0.6, 5.0]]), torch.tensor([[0.4, 1.0, -5.0]])
    mask = torch.tensor([[True, True, False]])
    pull, push = ae_loss(tl, br, mask)
    assert pull.item() == pytest.approx((2 * 0.1**2 + 2 * 0.2**2) / (2 + EPS), rel=1e-6)
    # Ordered pairs: two on the diagonal (hinge 1) and two off it (hinge 1 - 0.5).
    expected = (2 * 1 + 2 * 0.5 - 4 / (2 + EPS)) / (2 * 1 + EPS)
    assert push.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.claim("pull-push")
def test_pull_vanishes_when_the_corners_agree():
    tags = torch.randn(3, 6)
    mask = torch.rand(3, 6) < 0.6
    pull, _ = ae_loss(tags, tags.clone(), mask)
    assert pull.item() == 0.0


@pytest.mark.claim("pull-push")
@given(st.integers(2, 6), st.floats(1.0, 10.0))
def test_push_leaves_only_a_constant_when_objects_are_delta_apart(count, gap):
    means = torch.arange(count, dtype=torch.float32) * gap
    tl = (means + 0.3).requires_grad_()
    br = (means - 0.3).requires_grad_()
    mask = torch.ones(1, count, dtype=torch.bool)
    _, push = ae_loss(tl[None], br[None], mask)
    # Every hinge off the diagonal is 0; the diagonal and the -1/N terms leave the official
    # epsilon residue, a constant without gradient.
    # In float32 the residue keeps about two digits, as in the official code.
    n = count
    assert push.item() == pytest.approx((n - n * n / (n + EPS)) / (n * (n - 1) + EPS), rel=1e-2)
    assert push.item() < 1e-4
    push.backward()
    assert not tl.grad.any() and not br.grad.any()


@pytest.mark.claim("pull-push")
def test_images_with_fewer_than_two_objects_have_no_push():
    tl = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], requires_grad=True)
    br = torch.tensor([[0.2, 0.1], [0.9, 0.4], [0.5, 0.6]])
    mask = torch.tensor([[False, False], [True, False], [False, True]])
    pull, push = ae_loss(tl, br, mask)
    assert push.item() == 0.0
    assert pull.item() == pytest.approx(2 * 0.3**2 / (1 + EPS), rel=1e-6)  # image 1
    _, official = ae_loss(tl, br, mask, single_object_push=True)
    assert official.item() == pytest.approx(2 * (1 - 1 / (1 + EPS)) / EPS, rel=1e-3)
    official.backward()
    assert not tl.grad.any()  # a constant: training does not see it


@pytest.mark.claim("pull-push")
def test_push_pulls_close_objects_apart():
    tl = torch.tensor([[0.0, 0.4]], requires_grad=True)
    _, push = ae_loss(tl, tl.detach(), torch.ones(1, 2, dtype=torch.bool))
    push.backward()
    assert tl.grad[0, 0] > 0 > tl.grad[0, 1]  # descending moves the means apart


# --- Offsets ----------------------------------------------------------------------------


@pytest.mark.claim("offset-loss")
def test_offset_loss_by_hand():
    target = torch.tensor([[[0.25, 0.5], [0.1, 0.9], [0.0, 0.0]]])
    pred = torch.tensor([[[0.25, 2.5], [0.6, 0.9], [7.0, 7.0]]])
    mask = torch.tensor([[True, True, False]])
    # |d| = 2 -> 2 - 0.5; |d| = 0.5 -> 0.5 * 0.5^2; the empty slot is ignored.
    expected = (1.5 + 0.125) / (2 + EPS)
    assert offset_loss(pred, target, mask).item() == pytest.approx(expected, rel=1e-6)
    assert offset_loss(target, target, mask).item() == 0.0
    assert offset_loss(pred, target, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


# --- Properties of the whole loss -------------------------------------------------------


@pytest.mark.claim("official-loss-values")
@given(st.integers(0, 2**31 - 1), st.floats(0.1, 30.0))
@settings(max_examples=30)
def test_all_terms_finite_and_nonnegative(seed, scale):
    outputs, targets = random_case(seed, stacks=2, scale=scale)
    for single in (False, True):
        losses = CornerNetLoss(LossConfig(single_object_push=single))(outputs, targets)
        assert set(losses) == {"total", "focal", "pull", "push", "offset"}
        for name, value in losses.items():
            assert value.dim() == 0 and torch.isfinite(value) and value >= 0, name


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=20)
def test_invariant_to_the_order_of_objects(seed):
    outputs, targets = random_case(seed, counts=[4, 2, 0])
    order = torch.randperm(5, generator=torch.Generator().manual_seed(seed))
    permuted = {key: targets[key][:, order] if key[3:] != "heat" else targets[key]
                for key in TARGET_KEYS}  # fmt: skip
    a, b = CornerNetLoss()(outputs, targets), CornerNetLoss()(outputs, permuted)
    for name in a:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-5, abs=1e-7), name


def test_gradients_finite_at_the_clamp_limits():
    outputs, targets = random_case(1, counts=[3, 1], stacks=2)
    saturated = []
    for out in outputs:
        maps = [m.clone() for m in out]
        maps[0] = torch.where(torch.rand_like(maps[0]) < 0.5, 50.0, -50.0)
        maps[1] = torch.where(targets["br_heat"] == 1, -50.0, 50.0)  # wrong everywhere
        saturated.append(CornerNetOutput(*[m.requires_grad_() for m in maps]))
    losses = CornerNetLoss()(saturated, targets)
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    for out in saturated:
        assert all(torch.isfinite(m.grad).all() for m in out)


def test_batch_without_objects_is_finite():
    outputs, targets = random_case(2, counts=[0, 0])
    for key in ("tl_heat", "br_heat"):
        targets[key] = targets[key].clamp(max=0.9)  # no positive cell at all
    losses = CornerNetLoss()(outputs, targets)
    assert losses["pull"] == 0 and losses["push"] == 0 and losses["offset"] == 0
    expected = focal_loss(outputs[0].tl_heat, targets["tl_heat"]) + focal_loss(
        outputs[0].br_heat, targets["br_heat"]
    )
    assert losses["total"].item() == pytest.approx(expected.item()) and losses["total"] > 0


def test_computed_in_float32_under_autocast():
    outputs, targets = random_case(4, counts=[3, 2], stacks=2)
    low = [CornerNetOutput(*[m.to(torch.bfloat16) for m in out]) for out in outputs]
    reference = CornerNetLoss()(
        [CornerNetOutput(*[m.float() for m in out]) for out in low], targets
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = CornerNetLoss()(low, targets)
    for name, value in losses.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference[name].item(), rel=1e-6), name


# --- Bad input --------------------------------------------------------------------------


def test_bad_inputs_are_named():
    outputs, targets = random_case(0, counts=[2, 1])
    criterion = CornerNetLoss()
    with pytest.raises(ValueError, match="outputs is empty"):
        criterion([], targets)
    with pytest.raises(ValueError, match="lack keys \\['mask'\\]"):
        criterion(outputs, {k: v for k, v in targets.items() if k != "mask"})
    with pytest.raises(ValueError, match="tl_tag has shape"):
        criterion([outputs[0]._replace(tl_tag=torch.zeros(2, 2, 4, 4))], targets)
    with pytest.raises(ValueError, match="br_heat has shape"):
        criterion([outputs[0]._replace(br_heat=torch.zeros(2, 3, 4, 4))], targets)
    with pytest.raises(ValueError, match="br_off'\\] must have shape"):
        criterion(outputs, targets | {"br_off": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="not a CornerNetOutput"):
        criterion([tuple(outputs[0])], targets)
    with pytest.raises(ValueError, match="differ"):
        focal_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="tags and mask"):
        ae_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="offsets"):
        offset_loss(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.zeros(1, 2))
    assert criterion(outputs[0], targets)["total"] == criterion(outputs, targets)["total"]


def test_each_bad_target_shape_is_named_on_its_own():
    """One wrong property at a time: every condition of the target check rejects alone."""
    outputs, targets = random_case(0, counts=[2, 1])
    criterion = CornerNetLoss()
    heat = targets["br_heat"]
    with pytest.raises(ValueError, match="target heatmaps"):  # four dimensions, not one shape
        criterion(outputs, targets | {"br_heat": heat[:, :, :-1]})
    with pytest.raises(ValueError, match="target heatmaps"):  # one shape, not four dimensions
        criterion(outputs, targets | {"tl_heat": heat[0], "br_heat": heat[0]})
    mask = targets["mask"]
    with pytest.raises(ValueError, match="targets\\['mask'\\] must be"):  # (B, K), B wrong
        criterion(outputs, targets | {"mask": torch.cat([mask, mask])})
    with pytest.raises(ValueError, match="targets\\['mask'\\] must be"):  # B right, not (B, K)
        criterion(outputs, targets | {"mask": mask[..., None]})
