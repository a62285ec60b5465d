r"""The training losses: heatmaps, offsets, embeddings (paper §3.2, §3.3, §3.5, §4.1).

The network's raw maps (:class:`~cornernet_ref.output.CornerNetOutput`) are compared with
the targets of :mod:`cornernet_ref.targets`. Each loss carries its equation in its own
docstring, beside the lines that compute it, in the paper's order:

* :func:`focal_loss`: the heatmaps (Eq. 1);
* :func:`offset_loss`: the offsets (Eq. 3);
* :func:`ae_loss`: the embeddings, pull and push (Eq. 4, 5), and the single-object rule;
* :class:`CornerNetLoss`: the weighted total over every hourglass stack (§3.5, §4.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cornernet_ref.corner_pool import CORNERS
from cornernet_ref.output import CornerNetOutput, gather_at
from cornernet_ref.printable import FieldError, PrintableConfig
from cornernet_ref.targets import TARGET_KEYS

EPSILON = 1e-4  # the official normaliser epsilon and probability clamp


def focal_loss(logits: Tensor, target: Tensor, *, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    r"""CornerNet's focal loss (Eq. 1) of ``(B, C, H, W)`` heatmap logits and targets.

    With $p_{cij}$ the sigmoid of the logit, clamped to $[10^{-4}, 1 - 10^{-4}]$ so that
    the logarithms stay finite, and $y_{cij}$ the Gaussian target:

    $$ L_{det} = \frac{-1}{N} \sum_{c=1}^{C} \sum_{i=1}^{H} \sum_{j=1}^{W} \begin{cases}
       (1 - p_{cij})^{\alpha} \log p_{cij} & \text{if } y_{cij} = 1 \\
       (1 - y_{cij})^{\beta}\, p_{cij}^{\alpha} \log(1 - p_{cij}) & \text{otherwise}
       \end{cases} \qquad \alpha = 2,\ \beta = 4. $$

    As in the official code, $N$ is the number of positive cells ($y = 1$) in the whole
    batch; a batch without any keeps the sum of the negative terms, not divided.

    Args:
        logits: raw heatmap logits.
        target: Gaussian targets in $[0, 1]$, exactly 1 at the corners.
        alpha: the focusing exponent $\alpha$.
        beta: the exponent $\beta$ of the forgiveness $(1 - y)^\beta$ near a corner.

    Returns:
        The scalar loss $L_{det}$.
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"heatmap logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ"
        )
    p = logits.float().sigmoid().clamp(EPSILON, 1 - EPSILON)  # p_cij, logarithms finite
    y = target.float()  # y_cij
    positive = y == 1  # the first case; N counts these cells
    pos_terms = torch.log(p) * (1 - p).pow(alpha)  # (1 - p)^alpha log p
    neg_terms = torch.log(1 - p) * p.pow(alpha) * (1 - y).pow(beta)  # (1-y)^beta p^alpha log(1-p)
    total = torch.where(positive, pos_terms, 0).sum() + torch.where(y < 1, neg_terms, 0).sum()
    # Dividing by max(N, 1) leaves a batch without positives un-normalised, as officially.
    return -total / positive.sum().clamp(min=1)


def offset_loss(pred_off: Tensor, target_off: Tensor, mask: Tensor) -> Tensor:
    r"""Smooth L1 offset loss (Eq. 3) at the ground-truth corners.

    With $o_k$ the target offset of corner $k$
    (Eq. 2, [build_targets][cornernet_ref.targets.build_targets]), $\hat o_k$ the
    prediction read at its cell and $N$ the number of objects in the batch:

    $$ L_{off} = \frac{1}{N + 10^{-4}} \sum_{k=1}^{N} \operatorname{SmoothL1}(o_k, \hat o_k),
       \qquad \operatorname{SmoothL1}(d) = \begin{cases} d^2 / 2 & |d| < 1 \\
       |d| - 1/2 & \text{otherwise} \end{cases} $$

    summed over both coordinates.

    Args:
        pred_off: ``(B, K, 2)`` predicted offsets read at the corners.
        target_off: ``(B, K, 2)`` target offsets.
        mask: ``(B, K)`` bool, the occupied slots.

    Returns:
        The scalar loss $L_{off}$.
    """
    if pred_off.shape != target_off.shape or pred_off.shape[:2] != mask.shape:
        raise ValueError(
            f"expected (B, K, 2) offsets and a (B, K) mask, got {tuple(pred_off.shape)}, "
            f"{tuple(target_off.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    # The sum over k and both coordinates; beta = 1 is the |d| < 1 of SmoothL1.
    loss = F.smooth_l1_loss(
        pred_off.float()[mask], target_off.float()[mask], reduction="sum", beta=1.0
    )
    return loss / (mask.sum() + EPSILON)  # N + 1e-4, N over the whole batch


def ae_loss(
    tl_tag: Tensor, br_tag: Tensor, mask: Tensor, *, single_object_push: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Pull and push losses (Eq. 4, 5) of the embeddings read at the ground-truth corners.

    With $e_{t_k}, e_{b_k}$ the tags of the two corners of object $k$, $e_k$ their mean and
    $N$ the number of objects of the image:

    $$ L_{pull} = \frac{1}{N + 10^{-4}} \sum_{k=1}^{N}
       \left[(e_{t_k} - e_k)^2 + (e_{b_k} - e_k)^2\right], $$

    $$ L_{push} = \frac{1}{N(N - 1) + 10^{-4}} \sum_{k=1}^{N} \sum_{j=1}^{N}
       \left[\max(0, \Delta - |e_k - e_j|) - \frac{1}{N + 10^{-4}}\right],
       \qquad \Delta = 1. $$

    As in the official code, the push sums over *all* ordered pairs, where the paper skips
    $j = k$: the terms $-1/(N + 10^{-4})$ cancel the diagonal up to a constant without
    gradient (chapter 2, section 3, works it out).

    **Single object.** For an image with one object ($N(N - 1) = 0$) the official push is
    a constant, without gradient:

    $$ \frac{1 - 1/(1 + 10^{-4})}{0 + 10^{-4}} = \frac{1}{1 + 10^{-4}} \approx 0.9999 . $$

    By default images with fewer than two objects add no push term;
    ``single_object_push=True`` adds the constant, as the official code does (chapter 2
    says why the default differs).

    Args:
        tl_tag: ``(B, K)`` embeddings of the top-left corner of each object slot (or
            ``(B, K, 1)``).
        br_tag: the same for the bottom-right corners.
        mask: ``(B, K)`` bool, the occupied slots.
        single_object_push: add the official single-object constant (see above).

    Returns:
        ``(pull, push)``, each summed over the images of the batch.
    """
    if tl_tag.dim() == 3:
        tl_tag, br_tag = tl_tag.squeeze(-1), br_tag.squeeze(-1)
    if tl_tag.dim() != 2 or tl_tag.shape != br_tag.shape or mask.shape != tl_tag.shape:
        raise ValueError(
            f"expected (B, K) tags and mask, got {tuple(tl_tag.shape)}, {tuple(br_tag.shape)} "
            f"and {tuple(mask.shape)}"
        )
    tl_tag, br_tag, mask = tl_tag.float(), br_tag.float(), mask.bool()
    count = mask.sum(1, keepdim=True).float()  # (B, 1): N of each image
    mean = (tl_tag + br_tag) / 2  # e_k
    # (B, K): the term of L_pull of each object, over N + 1e-4 of its image
    pulled = ((tl_tag - mean).pow(2) + (br_tag - mean).pow(2)) / (count + EPSILON)
    pull = pulled[mask].sum()  # over the objects k, then over the images

    hinge = F.relu(1 - (mean[:, :, None] - mean[:, None, :]).abs())  # max(0, Δ - |e_k - e_j|)
    count = count[:, :, None]  # (B, 1, 1)
    # (B, K, K): the term of L_push of each ordered pair (k, j)
    pushed = (hinge - 1 / (count + EPSILON)) / (count * (count - 1) + EPSILON)
    pairs = mask[:, :, None] & mask[:, None, :]  # all ordered pairs, k == j included
    pairs &= count >= (1 if single_object_push else 2)  # images that take part
    push = pushed[pairs].sum()  # over the pairs, then over the images
    return pull, push


@dataclass(frozen=True)
class LossConfig(PrintableConfig):
    r"""How :class:`CornerNetLoss` weighs its terms; the defaults are the paper's (§4.1).

    Attributes:
        pull_weight: the weight $\alpha$ of the pull term (0.1 in the paper).
        push_weight: the weight $\beta$ of the push term (0.1).
        offset_weight: the weight $\gamma$ of the offset term (1); the focal term has
            weight 1.
        single_object_push: give images with one object the official constant push term
            (see :func:`ae_loss`); it changes the logged push loss, not the gradient.

    Raises:
        ValueError: a weight that is negative or not finite.
    """

    pull_weight: float = 0.1
    push_weight: float = 0.1
    offset_weight: float = 1.0
    single_object_push: bool = False

    def __post_init__(self) -> None:
        for name in ("pull_weight", "push_weight", "offset_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise FieldError(name, value, "must be a finite number >= 0")


class CornerNetLoss(nn.Module):
    r"""The full training loss, over every hourglass stack (§3.5, §4.1).

    Calling it on the list of stack outputs and the batched targets of
    :func:`~cornernet_ref.targets.collate_targets` returns the dict of scalar tensors
    described in :meth:`forward`. All maps are cast to float32 first, so the loss is
    computed in full precision under mixed-precision autocast.

    Args:
        config: the weights of the terms and the single-object rule (:class:`LossConfig`).
    """

    def __init__(self, config: LossConfig = LossConfig()) -> None:
        super().__init__()
        self.pull_weight = config.pull_weight
        self.push_weight = config.push_weight
        self.offset_weight = config.offset_weight
        self.single_object_push = config.single_object_push

    def forward(
        self,
        outputs: Sequence[CornerNetOutput] | CornerNetOutput,
        targets: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        r"""Loss terms of the raw stack outputs (a single output counts as one stack).

        The losses are applied to the maps of every stack $s = 1, \dots, S$ (intermediate
        supervision, §3.5) and averaged:

        $$ L = \frac{1}{S} \sum_{s=1}^{S} \Big(L_{det}^{tl} + L_{det}^{br} + 0.1\, L_{pull}
             + 0.1\, L_{push} + L_{off}^{tl} + L_{off}^{br}\Big)_s $$

        with each of the two heatmap losses (:func:`focal_loss`) and each of the two offset
        losses (:func:`offset_loss`) normalised on its own, and $0.1, 0.1, 1$ the weights.

        Returns:
            ``"focal"``, ``"pull"``, ``"push"`` and ``"offset"``, each weighted and averaged
            over the stacks, and ``"total"``, the loss to minimise, their sum $L$.
        """
        if isinstance(outputs, CornerNetOutput):
            outputs = [outputs]
        _check_inputs(outputs, targets)
        focal = pull = push = offset = torch.zeros((), device=targets["mask"].device)
        mask = targets["mask"]
        for out in outputs:  # one iteration per stack s
            focal = focal + focal_loss(out.tl_heat, targets["tl_heat"])  # L_det^tl
            focal = focal + focal_loss(out.br_heat, targets["br_heat"])  # L_det^br
            # The tags e_{t_k}, e_{b_k}: the tag maps read at the ground-truth corners
            tl_tag = gather_at(out.tl_tag.float(), targets["tl_ind"])
            br_tag = gather_at(out.br_tag.float(), targets["br_ind"])
            pulled, pushed = ae_loss(
                tl_tag, br_tag, mask, single_object_push=self.single_object_push
            )
            pull, push = pull + pulled, push + pushed
            for corner in CORNERS:  # L_off^tl, then L_off^br
                predicted = gather_at(  # \hat o_k, read at the corner's cell
                    getattr(out, f"{corner}_off").float(), targets[f"{corner}_ind"]
                )
                offset = offset + offset_loss(predicted, targets[f"{corner}_off"], mask)
        stacks = len(outputs)  # S
        terms = {  # each term weighted, then averaged over the stacks
            "focal": focal / stacks,
            "pull": self.pull_weight * pull / stacks,
            "push": self.push_weight * push / stacks,
            "offset": self.offset_weight * offset / stacks,
        }
        total = terms["focal"] + terms["pull"] + terms["push"] + terms["offset"]  # L
        return {"total": total, **terms}


def _check_inputs(outputs: Sequence[CornerNetOutput], targets: dict[str, Tensor]) -> None:
    r"""Raise ``ValueError`` naming the problem when outputs and targets do not fit together."""
    if len(outputs) == 0:
        raise ValueError("outputs is empty: expected one CornerNetOutput per hourglass stack")
    missing = [key for key in TARGET_KEYS if key not in targets]
    if missing:
        raise ValueError(f"targets lack keys {missing}; expected {list(TARGET_KEYS)}")
    heat_shape = tuple(targets["tl_heat"].shape)
    if len(heat_shape) != 4 or tuple(targets["br_heat"].shape) != heat_shape:
        raise ValueError(
            f"target heatmaps must be two (B, C, H, W) of one shape, got {heat_shape} and "
            f"{tuple(targets['br_heat'].shape)}"
        )
    batch, _, height, width = heat_shape
    slots = tuple(targets["mask"].shape)
    if len(slots) != 2 or slots[0] != batch:
        raise ValueError(f"targets['mask'] must be (B, K) with B = {batch}, got {slots}")
    expected = {"tl_ind": slots, "br_ind": slots, "tl_off": (*slots, 2), "br_off": (*slots, 2)}
    for key, shape in expected.items():
        if tuple(targets[key].shape) != shape:
            actual = tuple(targets[key].shape)
            raise ValueError(f"targets[{key!r}] must have shape {shape}, got {actual}")
    channels = {"heat": heat_shape[1], "tag": 1, "off": 2}
    for stack, out in enumerate(outputs):
        if not isinstance(out, CornerNetOutput):
            raise ValueError(f"outputs[{stack}] is a {type(out).__name__}, not a CornerNetOutput")
        for name, value in out._asdict().items():
            shape = (batch, channels[name.split("_")[1]], height, width)
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"outputs[{stack}].{name} has shape {tuple(value.shape)}, expected {shape}"
                )
