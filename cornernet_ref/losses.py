r"""The training losses: heatmaps, embeddings, offsets (paper §3.2, §3.3, §3.5, §4.1).

The network is trained on the targets of :mod:`cornernet_ref.targets`: per corner type a
heatmap per class, and at the $N$ ground-truth corners an index (where to read the
predicted maps), an offset and a mask of the occupied slots.

**Heatmaps** (Eq. 1). A variant of the focal loss, with $p_{cij} = \sigma(\text{logit})$
clamped to $[10^{-4}, 1 - 10^{-4}]$ and the Gaussian targets $y_{cij}$:

$$ L_{det} = \frac{-1}{N} \sum_{c,i,j} \begin{cases}
   (1 - p_{cij})^{\alpha} \log p_{cij} & \text{if } y_{cij} = 1 \\
   (1 - y_{cij})^{\beta}\, p_{cij}^{\alpha} \log(1 - p_{cij}) & \text{otherwise}
   \end{cases} \qquad \alpha = 2,\ \beta = 4. $$

The factor $(1 - y_{cij})^\beta$ forgives the negatives near a corner. As in the official
code $N$ is the number of positive cells ($y = 1$) in the whole batch; a batch without any
keeps the sum of the negative terms, not divided.

**Offsets** (Eq. 3). Smooth L1 (quadratic below 1) between the predicted and the target offset
at each ground-truth corner, summed over the batch and divided by the number of objects
in the batch plus $10^{-4}$:

$$ L_{off} = \frac{1}{N + 10^{-4}} \sum_k \operatorname{SmoothL1}(o_k, \hat o_k). $$

**Embeddings** (Eq. 4, 5). With $e_{t_k}, e_{b_k}$ the tags of the two corners of object
$k$ and $e_k$ their mean, per image of $N$ objects:

$$ L_{pull} = \frac{1}{N + 10^{-4}} \sum_{k} \left[(e_{t_k} - e_k)^2 + (e_{b_k} - e_k)^2\right], $$

$$ L_{push} = \frac{1}{N(N - 1) + 10^{-4}} \sum_{k} \sum_{j}
   \left[\max(0, \Delta - |e_k - e_j|) - \frac{1}{N + 10^{-4}}\right], \qquad \Delta = 1. $$

The official code sums over *all* ordered pairs, $j = k$ included: each diagonal pair
contributes $\max(0, 1 - 0) = 1$, which the $-1/(N + 10^{-4})$ terms cancel up to a
constant of about $10^{-4} / (N(N-1))$ (no gradient). Both terms are summed, not
averaged, over the images of the batch. For an image with one object the constant becomes
$(1 - 1/(1 + 10^{-4})) / 10^{-4} \approx 0.9999$; here images with fewer than two objects
add no push term unless ``single_object_push=True`` restores that constant.

**Total** (§4.1), applied to the output of every hourglass stack (§3.5):

$$ L = \frac{1}{S} \sum_{s=1}^{S} \left(L_{det} + 0.1\, L_{pull} + 0.1\, L_{push}
   + L_{off}\right)_s $$

with each $L_{det}$ the sum of the top-left and bottom-right losses, each normalised on
its own, and likewise $L_{off}$.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cornernet_ref.output import CornerNetOutput, gather_at
from cornernet_ref.targets import TARGET_KEYS

EPSILON = 1e-4  # the official normaliser epsilon and probability clamp


def focal_loss(logits: Tensor, target: Tensor, *, alpha: float = 2.0, beta: float = 4.0) -> Tensor:
    r"""CornerNet's focal loss (Eq. 1) of ``(B, C, H, W)`` heatmap logits and targets.

    Args:
        logits: raw heatmap logits.
        target: Gaussian targets in $[0, 1]$, exactly 1 at the corners.
        alpha, beta: the exponents $\alpha$ (focusing) and $\beta$ (forgiveness near a
            corner).

    Returns:
        The scalar loss, normalised by the number of positive cells in the batch (not
        normalised when there is none).
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"heatmap logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ"
        )
    p = logits.float().sigmoid().clamp(EPSILON, 1 - EPSILON)
    y = target.float()
    positive = y == 1
    pos_terms = torch.log(p) * (1 - p).pow(alpha)  # (1 - p)^alpha log p
    neg_terms = torch.log(1 - p) * p.pow(alpha) * (1 - y).pow(beta)  # (1-y)^beta p^alpha log(1-p)
    total = torch.where(positive, pos_terms, 0).sum() + torch.where(y < 1, neg_terms, 0).sum()
    # Dividing by max(N, 1) leaves a batch without positives un-normalised, as officially.
    return -total / positive.sum().clamp(min=1)


def ae_loss(
    tl_tag: Tensor, br_tag: Tensor, mask: Tensor, *, single_object_push: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Pull and push losses (Eq. 4, 5) of the embeddings read at the ground-truth corners.

    Args:
        tl_tag, br_tag: ``(B, K)`` embeddings of the top-left and bottom-right corner of each
            object slot (or ``(B, K, 1)``).
        mask: ``(B, K)`` bool, the occupied slots.
        single_object_push: ``True`` adds the official constant
            $(1 - 1/(1 + 10^{-4})) / 10^{-4} \approx 0.9999$ for each image with exactly one
            object; by default images with fewer than two objects add no push term. The
            constant has no gradient, so training is the same either way.

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
    pulled = ((tl_tag - mean).pow(2) + (br_tag - mean).pow(2)) / (count + EPSILON)
    pull = pulled[mask].sum()

    hinge = F.relu(1 - (mean[:, :, None] - mean[:, None, :]).abs())  # max(0, Δ - |e_k - e_j|)
    count = count[:, :, None]  # (B, 1, 1)
    pushed = (hinge - 1 / (count + EPSILON)) / (count * (count - 1) + EPSILON)
    pairs = mask[:, :, None] & mask[:, None, :]  # all ordered pairs, k == j included
    pairs &= count >= (1 if single_object_push else 2)  # images that take part
    push = pushed[pairs].sum()
    return pull, push


def offset_loss(pred_off: Tensor, target_off: Tensor, mask: Tensor) -> Tensor:
    r"""Smooth L1 offset loss (Eq. 3) at the ground-truth corners.

    Args:
        pred_off: ``(B, K, 2)`` predicted offsets read at the corners.
        target_off: ``(B, K, 2)`` target offsets.
        mask: ``(B, K)`` bool, the occupied slots.

    Returns:
        The loss summed over corners and both coordinates, divided by the number of objects
        in the batch plus $10^{-4}$.
    """
    if pred_off.shape != target_off.shape or pred_off.shape[:2] != mask.shape:
        raise ValueError(
            f"expected (B, K, 2) offsets and a (B, K) mask, got {tuple(pred_off.shape)}, "
            f"{tuple(target_off.shape)} and {tuple(mask.shape)}"
        )
    mask = mask.bool()
    loss = F.smooth_l1_loss(
        pred_off.float()[mask], target_off.float()[mask], reduction="sum", beta=1.0
    )
    return loss / (mask.sum() + EPSILON)


class CornerNetLoss(nn.Module):
    r"""The full training loss, over every hourglass stack (§3.5, §4.1).

    Calling it on the list of stack outputs and the batched targets of
    :func:`~cornernet_ref.targets.collate_targets` returns a dict of scalar tensors:
    ``"focal"``, ``"pull"``, ``"push"`` and ``"offset"``, each summed over the $S$ stacks
    and multiplied by its weight, and ``"total"``, the loss to minimise:

    $$ \text{total} = (\text{focal} + \text{pull} + \text{push} + \text{offset}) / S. $$

    All maps are cast to float32 first, so the loss is computed in full precision under
    mixed-precision autocast.

    Args:
        pull_weight, push_weight, offset_weight: the weights of the pull, push and offset
            terms (0.1, 0.1 and 1 in the paper); the focal term has weight 1.
        single_object_push: see :func:`ae_loss`.
    """

    def __init__(
        self,
        pull_weight: float = 0.1,
        push_weight: float = 0.1,
        offset_weight: float = 1.0,
        *,
        single_object_push: bool = False,
    ) -> None:
        super().__init__()
        self.pull_weight = pull_weight
        self.push_weight = push_weight
        self.offset_weight = offset_weight
        self.single_object_push = single_object_push

    def forward(
        self,
        outputs: Sequence[CornerNetOutput] | CornerNetOutput,
        targets: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """Loss terms of the raw stack outputs (a single output counts as one stack)."""
        if isinstance(outputs, CornerNetOutput):
            outputs = [outputs]
        _check_inputs(outputs, targets)
        focal = pull = push = offset = torch.zeros((), device=targets["mask"].device)
        mask = targets["mask"]
        for out in outputs:  # one iteration per stack
            focal = focal + focal_loss(out.tl_heat, targets["tl_heat"])
            focal = focal + focal_loss(out.br_heat, targets["br_heat"])
            tl_tag = gather_at(out.tl_tag.float(), targets["tl_ind"])
            br_tag = gather_at(out.br_tag.float(), targets["br_ind"])
            pulled, pushed = ae_loss(
                tl_tag, br_tag, mask, single_object_push=self.single_object_push
            )
            pull, push = pull + pulled, push + pushed
            for corner in ("tl", "br"):
                predicted = gather_at(
                    getattr(out, f"{corner}_off").float(), targets[f"{corner}_ind"]
                )
                offset = offset + offset_loss(predicted, targets[f"{corner}_off"], mask)
        terms = {
            "focal": focal,
            "pull": self.pull_weight * pull,
            "push": self.push_weight * push,
            "offset": self.offset_weight * offset,
        }
        total = (terms["focal"] + terms["pull"] + terms["push"] + terms["offset"]) / len(outputs)
        return {"total": total, **terms}


def _check_inputs(outputs: Sequence[CornerNetOutput], targets: dict[str, Tensor]) -> None:
    """Raise ``ValueError`` naming the problem when outputs and targets do not fit together."""
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
