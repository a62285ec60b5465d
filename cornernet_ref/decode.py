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

from cornernet_ref.output import CornerNetOutput, gather_at
from cornernet_ref.printable import PrintableConfig

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
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        check_kernel(self.kernel)
        if not self.ae_threshold >= 0:
            raise ValueError(f"ae_threshold must be at least 0, got {self.ae_threshold}")


def check_kernel(kernel: int) -> None:
    r"""Raise ``ValueError`` unless ``kernel`` is a window side: positive and odd."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd number, got {kernel}")


def local_maxima(heat: Tensor, kernel: int = DecodeConfig.kernel) -> Tensor:
    r"""Zero every cell of ``(B, C, H, W)`` that is not the maximum of its ``kernel`` window.

    With $p = \sigma(\text{logit})$ the heatmap probabilities and $k = 3$:

    $$ \tilde p_{cij} = p_{cij}\,\big[\,p_{cij} = \max_{|i'-i|,\,|j'-j| \le (k-1)/2}
       p_{ci'j'}\,\big] $$

    Ties survive: two equal neighbouring peaks are both kept, as in the official code.
    """
    check_kernel(kernel)
    window_max = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
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


def box_iou_plus_one(boxes: Tensor) -> tuple[Tensor, Tensor]:
    r"""Pairwise IoU of ``(N, 4)`` boxes with the official "+1 pixel" convention.

    The official soft-NMS (from the Fast R-CNN code base) counts a box from ``x1`` to ``x2``
    as ``x2 - x1 + 1`` pixels wide, and only boxes whose "+1" intersection is positive in
    both axes are touched by a decay. Both conventions are kept here so that the scores
    match the official ones.

    Returns:
        ``(iou, touching)``: ``(N, N)`` IoU and a boolean ``(N, N)`` overlap mask.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    inter_w = torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None]) + 1
    inter_h = torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None]) + 1
    touching = (inter_w > 0) & (inter_h > 0)
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    iou = inter / (areas[:, None] + areas[None] - inter)
    return torch.where(touching, iou, torch.zeros_like(iou)), touching


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
    is the official default.

    Boxes of different classes never decay each other, so all classes run in one loop:
    each step keeps the best remaining box (the first one on ties, as the official code
    does) and decays, in one vectorised update, every remaining box of its class that it
    touches. A decayed box whose score falls below ``score_threshold`` is dropped.

    Returns:
        ``(keep, new_scores)``: indices of the kept boxes, grouped by class (ascending) and
        in the order they were kept, and their decayed scores.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} "
            f"and {tuple(scores.shape)}"
        )
    if method not in ("gaussian", "linear"):
        raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}")
    iou, touching = box_iou_plus_one(boxes.float())
    same_class = labels[:, None] == labels[None]
    touching &= same_class
    if method == "gaussian":
        weights = torch.exp(-(iou**2) / sigma)  # s *= exp(-IoU^2 / sigma)
    else:
        weights = torch.where(iou > iou_threshold, 1 - iou, torch.ones_like(iou))  # s *= 1 - IoU
    weights = torch.where(touching, weights, torch.ones_like(weights))

    current = scores.clone().float()
    remaining = torch.ones_like(current, dtype=torch.bool)
    kept = []
    for _ in range(len(current)):
        candidates = torch.where(remaining, current, torch.full_like(current, -torch.inf))
        best = int(candidates.argmax())
        if not remaining[best]:
            break
        kept.append(best)
        remaining[best] = False
        current = torch.where(remaining, current * weights[best], current)
        remaining &= ~(touching[best] & (current < score_threshold))
    keep = torch.tensor(kept, dtype=torch.long, device=boxes.device)
    keep = keep[torch.sort(labels[keep], stable=True).indices]  # group by class, as COCO files
    return keep, current[keep]
