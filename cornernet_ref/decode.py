r"""From heatmaps to boxes: decoding and soft-NMS (paper §4.1, "Testing details").

The network gives, for each corner type, a heatmap per class, an embedding and an
offset at every cell of the ``H x W`` output grid (:class:`~cornernet_ref.output.CornerNetOutput`).
Decoding turns them into scored boxes in four steps, each function stating its rule:

1. [local_maxima][cornernet_ref.decode.local_maxima]: corner candidates are the peaks
   of a 3x3 max-pool ("NMS by max pooling");
2. [top_corners][cornernet_ref.decode.top_corners]: the ``K`` best corners of each
   type over all classes and cells, with their offsets added back;
3. [decode][cornernet_ref.decode.decode]: every top-left paired with every bottom-right,
   scored, and rejected on class, embedding distance or an inverted box;
4. [soft_nms][cornernet_ref.decode.soft_nms]: after the boxes are mapped back to the
   image, overlapping boxes of one class decay each other's scores (Bodla et al., 2017).

The options of steps 1 to 3 are one [DecodeConfig][cornernet_ref.decode.DecodeConfig], the
official values by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from cornernet_ref import soft_nms_op
from cornernet_ref.output import CornerNetOutput, gather_at
from cornernet_ref.printable import FieldError, PrintableConfig

REJECTED = -1.0  # the score the official decoder gives to a rejected pair


class Detections(NamedTuple):
    r"""Decoded boxes of a batch, best first.

    Attributes:
        boxes: ``(B, D, 4)`` boxes ``(x1, y1, x2, y2)`` in heatmap (output grid) coordinates.
        scores: ``(B, D)`` box scores, the mean of the two corner scores; ``-1`` if rejected.
        tl_scores: ``(B, D)`` top-left corner scores.
        br_scores: ``(B, D)`` bottom-right corner scores.
        labels: ``(B, D)`` 0-based class indices (int64).
    """

    boxes: Tensor
    scores: Tensor
    tl_scores: Tensor
    br_scores: Tensor
    labels: Tensor


@dataclass(frozen=True)
class DecodeConfig(PrintableConfig):
    r"""The options of [decode][cornernet_ref.decode.decode]; the defaults are the official ones.

    Attributes:
        K: corners of each type kept by
            [top_corners][cornernet_ref.decode.top_corners] (clipped to ``C * H * W`` for
            tiny maps); official ``top_k`` 100.
        kernel: side of the max-pool window of
            [local_maxima][cornernet_ref.decode.local_maxima]; official ``nms_kernel`` 3.
        ae_threshold: largest embedding distance of a valid pair; official 0.5.
        num_dets: pairs returned per image (clipped to ``K * K``); official 1000.
    """

    K: int = 100
    kernel: int = 3
    ae_threshold: float = 0.5
    num_dets: int = 1000

    def __post_init__(self) -> None:
        for name in ("K", "num_dets"):
            if getattr(self, name) < 1:
                raise FieldError(name, getattr(self, name), "must be positive")
        check_kernel(self.kernel)
        if not self.ae_threshold >= 0:
            raise FieldError("ae_threshold", self.ae_threshold, "must be at least 0")


def check_kernel(kernel: int) -> None:
    r"""Raise ``ValueError`` unless ``kernel`` is a window side: positive and odd."""
    if kernel < 1 or kernel % 2 == 0:
        raise FieldError("kernel", kernel, "must be a positive odd number")


def local_maxima(heat: Tensor, kernel: int = DecodeConfig.kernel) -> Tensor:
    r"""Zero every cell of ``(B, C, H, W)`` that is not the maximum of its ``kernel`` window.

    With $p = \sigma(\text{logit})$ the heatmap probabilities and $k = 3$:

    $$ \tilde p_{cij} = p_{cij}\,\big[\,p_{cij} = \max_{|i'-i|,\,|j'-j| \le (k-1)/2}
       p_{ci'j'}\,\big] $$

    Ties survive: two equal neighbouring peaks are both kept, as in the official code.
    """
    check_kernel(kernel)
    # Pooled in channels_last, where PyTorch's CPU max-pool is several times faster
    # (benchmarks/soft_nms.py, decode); a maximum is exact in any layout.
    window_max = F.max_pool2d(
        heat.contiguous(memory_format=torch.channels_last),
        kernel,
        stride=1,
        padding=(kernel - 1) // 2,
    ).contiguous()
    return heat * (window_max == heat)  # step 1: keep the peaks only


class Corners(NamedTuple):
    r"""The top-K corners of one type: each ``(B, K)``."""

    scores: Tensor
    cells: Tensor  # flat cell index y * W + x
    labels: Tensor
    xs: Tensor
    ys: Tensor


def top_corners(heat: Tensor, offsets: Tensor, k: int) -> Corners:
    r"""The ``k`` best corners of ``(B, C, H, W)`` peak scores, over classes and cells.

    A flat index $n$ of the $(C, H, W)$ map gives the class $n \,\mathrm{div}\, HW$ and the
    cell $n \bmod HW$, that is $y = \text{cell} \,\mathrm{div}\, W$ and
    $x = \text{cell} \bmod W$. The offset $o$ predicted at the cell undoes the flooring of
    Eq. 2 ([build_targets][cornernet_ref.targets.build_targets]):

    $$ (x, y) = (\lfloor x \rfloor + o_x,\; \lfloor y \rfloor + o_y) $$

    Args:
        heat: peak probabilities (after :func:`local_maxima`).
        offsets: ``(B, 2, H, W)`` predicted ``(dx, dy)`` offsets, added to the cell corner.
        k: number of corners to keep.
    """
    batch, _, height, width = heat.shape
    scores, flat = heat.reshape(batch, -1).topk(k)  # step 2: over classes and cells at once
    labels = flat // (height * width)
    cells = flat % (height * width)
    offset = gather_at(offsets, cells)  # (B, K, 2)
    xs = (cells % width).to(offset.dtype) + offset[..., 0]  # Eq. (2) inverted: floor + offset
    ys = (cells // width).to(offset.dtype) + offset[..., 1]
    return Corners(scores, cells, labels, xs, ys)


def best_corners(heat: Tensor, offsets: Tensor, config: DecodeConfig) -> Corners:
    r"""Steps 1 and 2 for one corner type: the ``K`` best peaks (at most ``C * H * W``) of
    the ``(B, C, H, W)`` heatmap logits ``heat``, placed with ``offsets`` ``(B, 2, H, W)``."""
    k = min(config.K, heat[0].numel())
    return top_corners(local_maxima(heat.sigmoid(), config.kernel), offsets, k)


def decode(out: CornerNetOutput, config: DecodeConfig = DecodeConfig()) -> Detections:
    r"""Decode raw network maps into the ``num_dets`` best corner pairs of each image.

    The ``K`` best top-left corners $i$ and bottom-right corners $j$ of
    [top_corners][cornernet_ref.decode.top_corners] (after
    [local_maxima][cornernet_ref.decode.local_maxima]) make $K \times K$ pairs. A pair
    scores the mean of its corner scores and is rejected (score $-1$) when the classes
    differ, the embeddings are far apart, or the box is inverted:

    $$ s_{ij} = \tfrac12 (s^{tl}_i + s^{br}_j), \qquad
       \text{reject if } c_i \ne c_j \;\lor\; |e^{tl}_i - e^{br}_j| > 0.5
       \;\lor\; x^{br}_j < x^{tl}_i \;\lor\; y^{br}_j < y^{tl}_i $$

    The ``num_dets`` best pairs are kept, rejected ones included with score $-1$, as the
    official decoder returns them (the test pipeline drops them).

    Args:
        out: raw (pre-sigmoid) maps of one stack, heatmaps ``(B, C, H, W)``.
        config: ``K``, ``kernel``, ``ae_threshold`` and ``num_dets``.

    Returns:
        :class:`Detections` with ``D = min(num_dets, K * K)`` pairs per image, sorted by
        score; rejected pairs carry score ``-1``.
    """
    if out.tl_heat.dim() != 4 or out.tl_heat.shape != out.br_heat.shape:
        raise ValueError(
            f"expected two (B, C, H, W) heatmaps of one shape, got {tuple(out.tl_heat.shape)} "
            f"and {tuple(out.br_heat.shape)}"
        )
    batch = out.tl_heat.shape[0]
    tl = best_corners(out.tl_heat, out.tl_off, config)
    br = best_corners(out.br_heat, out.br_off, config)
    k = tl.scores.shape[1]

    # Step 3: all K x K pairs, top-left i along dim 1 and bottom-right j along dim 2.
    boxes = torch.stack(
        torch.broadcast_tensors(
            tl.xs[:, :, None], tl.ys[:, :, None], br.xs[:, None, :], br.ys[:, None, :]
        ),
        dim=-1,
    )  # (B, K, K, 4)
    tl_scores, br_scores = torch.broadcast_tensors(tl.scores[:, :, None], br.scores[:, None, :])
    scores = (tl_scores + br_scores) / 2  # s_ij = (s_i + s_j) / 2
    tl_tags = gather_at(out.tl_tag, tl.cells)  # (B, K, 1)
    br_tags = gather_at(out.br_tag, br.cells).transpose(1, 2)  # (B, 1, K)
    rejected = (
        (tl.labels[:, :, None] != br.labels[:, None, :])  # classes differ
        | ((tl_tags - br_tags).abs() > config.ae_threshold)  # embeddings too far apart
        | (boxes[..., 2] < boxes[..., 0])  # bottom-right left of top-left
        | (boxes[..., 3] < boxes[..., 1])  # bottom-right above top-left
    )
    scores = scores.masked_fill(rejected, REJECTED)

    best, pick = scores.reshape(batch, -1).topk(min(config.num_dets, k * k))
    # Pair (i, j) sits at flat index i * K + j of a (K, K) grid: read it like a map cell.
    labels = tl.labels[:, :, None].expand(-1, -1, k)
    return Detections(
        boxes=gather_at(boxes.permute(0, 3, 1, 2), pick),
        scores=best,
        tl_scores=gather_at(tl_scores[:, None], pick)[..., 0],
        br_scores=gather_at(br_scores[:, None], pick)[..., 0],
        labels=gather_at(labels[:, None], pick)[..., 0],
    )


def box_iou_plus_one(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    r"""IoU of ``(..., 4)`` boxes ``a`` and ``b`` (broadcast) with the official "+1 pixel" rule.

    The official soft-NMS (from the Fast R-CNN code base) counts a box from ``x1`` to ``x2``
    as ``x2 - x1 + 1`` pixels wide, and only boxes whose "+1" intersection is positive in
    both axes are touched by a decay. Both conventions are kept here so that the scores
    match the official ones; the IoU of two boxes that do not touch is 0.

    Returns:
        ``(iou, touching)``: the IoU and a boolean overlap mask, of the broadcast shape.
    """
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    inter_w = torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1) + 1
    inter_h = torch.minimum(ay2, by2) - torch.maximum(ay1, by1) + 1
    touching = (inter_w > 0) & (inter_h > 0)
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    area_a = (ax2 - ax1 + 1) * (ay2 - ay1 + 1)
    area_b = (bx2 - bx1 + 1) * (by2 - by1 + 1)
    iou = inter / (area_a + area_b - inter)
    return torch.where(touching, iou, torch.zeros_like(iou)), touching


class SoftNMSResult(NamedTuple):
    r"""Soft-NMS of ``N`` boxes as fixed-size ``(N,)`` tensors, in the kept order.

    Attributes:
        order: every box index once: the kept boxes first, grouped by class ascending and,
            within a class, in the order they were kept; then the others.
        scores: the decayed score of box ``order[n]``.
        kept: whether box ``order[n]`` is kept (``True`` for the first ones, then ``False``).
    """

    order: Tensor
    scores: Tensor
    kept: Tensor


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    method: Literal["gaussian", "linear"] = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    r"""Soft-NMS of ``(N, 4)`` boxes, each class on its own (step 4).

    Repeatedly keep the highest-scoring box $M$ and decay the score of every box $b$ of
    its class that overlaps it:

    $$ s_b \leftarrow s_b\, e^{-\mathrm{IoU}(M, b)^2 / \sigma}
       \;\;(\text{Gaussian}, \sigma = 0.5), \qquad
       s_b \leftarrow s_b\,(1 - \mathrm{IoU}(M, b)) \text{ if } \mathrm{IoU}(M, b) > N_t
       \;\;(\text{linear}, N_t = 0.5), $$

    with the IoU of [box_iou_plus_one][cornernet_ref.decode.box_iou_plus_one]. Gaussian
    is the official default. A decayed box whose score falls below ``score_threshold`` is
    dropped; a box that never touches a kept one is kept whatever its score.

    This is the official algorithm, step for step, ties included: it keeps the boxes of a
    class in an array, takes as $M$ the first highest score after the boxes already kept,
    swaps it to the front, and moves each dropped box behind the last remaining one, which
    takes its place; these moves decide which of two equal scores comes first.
    [soft_nms_all][cornernet_ref.decode.soft_nms_all] runs it.

    Returns:
        ``(keep, new_scores)``: indices of the kept boxes, grouped by class (ascending) and
        in the order they were kept, and their decayed scores. On a GPU, this selection is
        the one step that waits for the device (the number of kept boxes is read).
    """
    result = soft_nms_all(
        boxes,
        scores,
        labels,
        method=method,
        sigma=sigma,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
    )
    count = int(result.kept.count_nonzero())  # the kept boxes come first
    return result.order[:count], result.scores[:count]


def soft_nms_all(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    valid: Tensor | None = None,
    method: Literal["gaussian", "linear"] = "gaussian",
    sigma: float = 0.5,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.001,
    compiled: bool | None = None,
) -> SoftNMSResult:
    r"""[soft_nms][cornernet_ref.decode.soft_nms] with a result of fixed size: on a GPU,
    nothing waits for the device.

    Two implementations give the same result: the official loop compiled
    ([cornernet_ref.soft_nms_op][]: C++ on the CPU, one CUDA thread per class on a GPU) and
    the readable [soft_nms_vectorised][cornernet_ref.decode.soft_nms_vectorised].

    Args:
        boxes: ``(N, 4)`` ``(x1, y1, x2, y2)``; computed in float32.
        scores: ``(N,)``.
        labels: ``(N,)`` classes, integers from 0.
        valid: ``(N,)`` booleans, ``False`` for a box to leave out (never kept, decays
            nothing); all boxes by default.
        method: as :func:`soft_nms`.
        sigma: as :func:`soft_nms`.
        iou_threshold: as :func:`soft_nms`.
        score_threshold: as :func:`soft_nms`.
        compiled: ``True`` for the compiled loop, ``False`` for the vectorised form,
            ``None`` (default) for the compiled loop where it builds.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} "
            f"and {tuple(scores.shape)}"
        )
    if method not in soft_nms_op.METHODS:
        raise ValueError(f"method must be one of {tuple(soft_nms_op.METHODS)}, got {method!r}")
    keys = labels.long() if valid is None else torch.where(valid, labels.long(), -1)
    options = (soft_nms_op.METHODS[method], sigma, iou_threshold, score_threshold)
    if compiled is None:
        compiled = soft_nms_op.available(boxes.device.type)
    if compiled:
        return SoftNMSResult(*soft_nms_op.soft_nms_compiled(boxes, scores, keys, *options))
    return soft_nms_vectorised(boxes, scores, keys, *options)


def soft_nms_vectorised(
    boxes: Tensor,
    scores: Tensor,
    keys: Tensor,
    method: int,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
) -> SoftNMSResult:
    r"""The official soft-NMS loop of every class at once, as tensor operations, on any device.

    The boxes of each class fill a row of a padded ``(S, W)`` table (``S`` classes, ``W``
    boxes in the largest), in their order in the input: a row is the official array of its
    class. Step $i$ of the loop runs in all rows together, so there are ``W`` steps, not ``N``
    (:func:`_soft_nms_step`). The table's size is read from the class sizes: on a GPU, one
    wait for the device, which the compiled loop does not have.

    Args:
        boxes: ``(N, 4)``.
        scores: ``(N,)``.
        keys: ``(N,)`` int64 class of each box, ``-1`` for a box to leave out.
        method: ``METHODS["gaussian"]`` or ``METHODS["linear"]``
            (:mod:`cornernet_ref.soft_nms_op`).
        sigma: as :func:`soft_nms`.
        iou_threshold: as :func:`soft_nms`.
        score_threshold: as :func:`soft_nms`.
    """
    total = len(keys)
    sorted_keys, order = torch.sort(keys, stable=True)
    class_keys, sizes = torch.unique_consecutive(sorted_keys, return_counts=True)
    width = max(sizes.tolist(), default=0)  # W; the one read from the device
    starts = sizes.cumsum(0) - sizes
    column = torch.arange(width, device=keys.device)
    present = column < sizes[:, None]  # (S, W): not padding
    row = (starts[:, None] + column).clamp(max=max(total - 1, 0))  # the sorted box there
    index = order[row]  # (S, W) the box at each position of each class's array
    count = torch.where(class_keys >= 0, sizes, 0)  # N of each array; left-out boxes: none
    table = (index, scores.float()[index], boxes.float()[index])
    for i in range(width):
        table, count = _soft_nms_step(
            i, table, count, method, sigma, iou_threshold, score_threshold
        )
    index, decayed, _ = table
    # Back to one (N,) result, read row by row; padding goes to a spare last slot.
    slot = torch.where(present, row, total).flatten()
    kept = column < count[:, None]

    def flat(values: Tensor) -> Tensor:
        spare = values.new_zeros(total + 1)
        return spare.scatter(0, slot, values.flatten())[:total]

    return SoftNMSResult(*soft_nms_op.kept_first(flat(index), flat(decayed), flat(kept)))


def _soft_nms_step(
    i: int,
    table: tuple[Tensor, Tensor, Tensor],
    count: Tensor,
    method: int,
    sigma: float,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    r"""Step $i$ of the official loop in every class's array at once.

    ``table`` is ``(index, s, box)``: ``(S, W)`` box indices, ``(S, W)`` scores and
    ``(S, W, 4)`` boxes, position by position; ``count`` ``(S,)`` is the number ``N`` of
    boxes still in each array (positions ``0..N-1``). The official loop, in each array:
    $M$ is the first highest score at positions ``i..N-1``, swapped to position ``i``; every
    box after it that touches it is decayed; each one whose score falls below the threshold
    is swapped with the last box, which is examined in its place, and ``N`` shrinks.

    The swaps of the drops come out as follows: the boxes that survive stay where they are
    if they are before the new end ``N'``, and the ``k``-th dropped box before ``N'`` (from
    the left) changes places with the ``k``-th survivor after it (from the right).
    """
    index, s, box = table
    column = torch.arange(s.shape[1], device=s.device)
    alive = column < count[:, None]  # positions 0..N-1
    live = i < count  # the classes with a box left to keep
    # M: the first highest score at or after i (argmax returns the first of equal maxima).
    candidates = torch.where(alive & (column >= i), s, -torch.inf)
    best = torch.where(live, candidates.argmax(1), i)
    swap = column.expand_as(s).scatter(1, best[:, None], i)
    swap[:, i] = best
    index, s, box = _permute(swap, index, s, box)

    iou, touching = box_iou_plus_one(box[:, i : i + 1], box)  # IoU(M, b) for every b
    decayed = alive & (column > i) & touching  # the boxes b after M that touch it
    if method == soft_nms_op.METHODS["gaussian"]:
        # e^{-IoU^2 / sigma}: the exponential in double, as numpy's in the official code
        weights = torch.exp((-(iou * iou) / sigma).double()).float()
    else:
        weights = torch.where(iou > iou_threshold, 1 - iou, 1.0)  # 1 - IoU above N_t
    s = torch.where(decayed, s * weights, s)  # s_b <- s_b w(IoU(M, b))
    dropped = decayed & (s < score_threshold)

    survived = alive & (column > i) & ~dropped
    new_count = torch.where(live, i + 1 + survived.sum(1), count)  # N'
    holes = dropped & (column < new_count[:, None])
    movers = survived & (column >= new_count[:, None])
    hole_rank = holes.cumsum(1) - 1  # k, from the left
    mover_rank = movers.flip(1).cumsum(1).flip(1) - 1  # k, from the right
    spare = s.shape[1]  # a last column for the positions that are neither
    by_rank = torch.zeros(len(s), spare + 1, dtype=torch.long, device=s.device)  # rank -> j
    hole_at = by_rank.scatter(1, torch.where(holes, hole_rank, spare), column.expand_as(s))
    mover_at = by_rank.scatter(1, torch.where(movers, mover_rank, spare), column.expand_as(s))
    moves = torch.where(
        holes,
        mover_at.gather(1, hole_rank.clamp(min=0)),
        torch.where(movers, hole_at.gather(1, mover_rank.clamp(min=0)), column),
    )
    return _permute(moves, index, s, box), new_count


def _permute(source: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    r"""Each ``(S, W, ...)`` tensor with position ``j`` of row ``r`` read from ``source[r, j]``."""
    return tuple(
        t.gather(1, source.view(*source.shape, *[1] * (t.dim() - 2)).expand_as(t)) for t in tensors
    )
