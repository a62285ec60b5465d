r"""Error analysis: ground truth in place of predictions (paper §4.4, Table 6).

What each of CornerNet's three outputs costs is measured by replacing predicted maps with
ground truth ([with_ground_truth][cornernet_ref.analysis.with_ground_truth]); chapter 7
gives the paper's figures and what they show.

The *oracle* goes one step further and replaces every map: whatever AP it loses is lost by
the representation and the test pipeline themselves (corners that share a cell at 4x
downsampling, more corners than top-K, rounding), not by any network. It turns training
targets (:func:`cornernet_ref.targets.build_targets`) into raw maps that decode to the
ground truth:

* **heatmap logits** $\operatorname{logit}(y)$ of the Gaussian targets $y$ (clamped
  below 1, so that the exact corners, set to a larger logit, stay the only peaks);
* **embeddings** that separate objects: object slot $k$ gets tag $(k + 1)\,\delta$ at
  both of its corners, $\delta$ = 1 > the pairing threshold 0.5; every other cell gets
  tag $+B$ in the top-left map and $-B$ in the bottom-right one ($B$ = 10^4), so no corner
  of the background pairs with anything (the flat background is a "peak" everywhere);
* **offsets**: the true fractions of Eq. 2 at the corner cells.

Where two corners of one class fall into one cell, the later object owns the cell (its
tag and offset): the earlier one cannot be paired any more, which is exactly the
collision a network cannot resolve either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from cornernet_ref.data.coco import category_ids
from cornernet_ref.inference import CanvasGeometry, OutputSource, mirror_boxes
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.targets import TargetConfig, build_targets, collate_targets

if TYPE_CHECKING:
    from pycocotools.coco import COCO

PEAK_LOGIT = 20.0  # sigmoid(20) == 1 in float32: the exact corners
MAX_TARGET = 0.999  # the Gaussian around a corner stays strictly below its peak
MIN_TARGET = 1e-6  # background: a score far below soft-NMS's 0.001
BACKGROUND_TAG = 1e4  # +B in top-left maps, -B in bottom-right maps: never within 0.5


def heatmap_logits(target: Tensor) -> Tensor:
    r"""Logits whose sigmoid is the Gaussian target, the exact corners (target 1) highest."""
    logits = torch.logit(target.clamp(MIN_TARGET, MAX_TARGET))
    return torch.where(target == 1, torch.full_like(logits, PEAK_LOGIT), logits)


def corner_maps(
    index: Tensor,
    mask: Tensor,
    offsets: Tensor,
    size: tuple[int, int],
    tag_spacing: float,
    background_tag: float,
) -> tuple[Tensor, Tensor]:
    r"""Embedding ``(B, 1, H, W)`` and offset ``(B, 2, H, W)`` maps of one corner type.

    Args:
        index: ``(B, K)`` flat cells ``y * W + x`` of the corners.
        mask: ``(B, K)`` which of the ``K`` slots hold an object.
        offsets: ``(B, K, 2)`` true offsets of the corners.
        size: ``(H, W)`` of the output grid.
        tag_spacing: tag step between consecutive objects.
        background_tag: tag of the cells without a corner.
    """
    batch, slots = index.shape
    height, width = size
    slot_ids = torch.arange(slots, device=index.device).expand(batch, -1)
    # The owner of a cell is its highest object slot (-1: no corner): deterministic on collisions.
    owner = torch.full((batch, height * width), -1, dtype=torch.long, device=index.device)
    owner = owner.scatter_reduce(
        1, torch.where(mask, index, 0), torch.where(mask, slot_ids, -1), reduce="amax"
    )
    has_corner = owner >= 0
    tags = torch.where(has_corner, (owner + 1) * tag_spacing, background_tag)
    owned_offsets = offsets.gather(1, owner.clamp(min=0)[..., None].expand(-1, -1, 2))
    owned_offsets = owned_offsets * has_corner[..., None]
    return (
        tags.reshape(batch, 1, height, width).float(),
        owned_offsets.transpose(1, 2).reshape(batch, 2, height, width).float(),
    )


def oracle_outputs(targets: dict, *, tag_spacing: float = 1.0) -> CornerNetOutput:
    r"""Raw maps that decode to the ground truth of batched training targets.

    Args:
        targets: targets as :func:`cornernet_ref.targets.collate_targets` batches them:
            ``tl_heat, br_heat (B, C, H, W)``, ``tl_ind, br_ind (B, K)``, ``mask (B, K)``,
            ``tl_off, br_off (B, K, 2)``.
        tag_spacing: tag step between objects; must exceed the decoder's ``ae_threshold``.
    """
    heat = targets["tl_heat"]
    if heat.dim() != 4:
        raise ValueError(f"expected batched (B, C, H, W) targets, got {tuple(heat.shape)}")
    size = tuple(heat.shape[-2:])
    mask = targets["mask"].bool()
    tl_tag, tl_off = corner_maps(
        targets["tl_ind"], mask, targets["tl_off"], size, tag_spacing, BACKGROUND_TAG
    )
    br_tag, br_off = corner_maps(
        targets["br_ind"], mask, targets["br_off"], size, tag_spacing, -BACKGROUND_TAG
    )
    return CornerNetOutput(
        heatmap_logits(targets["tl_heat"]),
        heatmap_logits(targets["br_heat"]),
        tl_tag,
        br_tag,
        tl_off,
        br_off,
    )


def with_ground_truth(
    predicted: CornerNetOutput, oracle: CornerNetOutput, *, offsets: bool = False
) -> CornerNetOutput:
    r"""Table 6: the predicted maps with the heatmaps (and optionally offsets) of the oracle."""
    if predicted.tl_heat.shape != oracle.tl_heat.shape:
        raise ValueError(
            f"predicted heatmaps {tuple(predicted.tl_heat.shape)} and ground truth "
            f"{tuple(oracle.tl_heat.shape)} differ"
        )
    replaced = {"tl_heat": oracle.tl_heat, "br_heat": oracle.br_heat}
    if offsets:
        replaced |= {"tl_off": oracle.tl_off, "br_off": oracle.br_off}
    return predicted._replace(**replaced)


def image_boxes(coco: COCO, image_id: int) -> tuple[Tensor, Tensor]:
    r"""Non-crowd ``(N, 4)`` xyxy boxes and labels (:func:`~cornernet_ref.data.coco.category_ids`).

    Crowd regions are left out: COCO evaluation ignores detections on them anyway.
    """
    label_of_category = {category: label for label, category in enumerate(category_ids(coco))}
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    labels = torch.tensor([label_of_category[a["category_id"]] for a in annotations]).long()
    return boxes, labels


def oracle_source(
    coco: COCO, *, num_classes: int, target_config: TargetConfig = TargetConfig()
) -> OutputSource:
    r"""An output source (:data:`cornernet_ref.inference.OutputSource`) reading the annotations.

    The targets are built on the test canvas, drawn as ``target_config`` says: the
    annotation boxes scaled as the image is and shifted by the border, and for the mirrored
    canvas mirrored in it.
    """

    def outputs(record: dict, geometry: CanvasGeometry, flip: bool) -> CornerNetOutput:
        boxes, labels = image_boxes(coco, record["id"])
        top, left = geometry.border
        boxes = boxes * geometry.scale + torch.tensor([left, top, left, top], dtype=boxes.dtype)
        views = [boxes, mirror_boxes(boxes, geometry.input_size[1])] if flip else [boxes]
        targets = [
            build_targets(
                view,
                labels,
                num_classes=num_classes,
                input_size=geometry.input_size,
                output_size=geometry.output_size,
                config=target_config,
            )
            for view in views
        ]
        return oracle_outputs(collate_targets(targets))

    return outputs


def with_ground_truth_source(
    model: OutputSource, oracle: OutputSource, *, offsets: bool = False
) -> OutputSource:
    r"""An output source giving ``model``'s maps with ground-truth heatmaps (and offsets)."""

    def outputs(record: dict, geometry: CanvasGeometry, flip: bool) -> CornerNetOutput:
        return with_ground_truth(
            model(record, geometry, flip), oracle(record, geometry, flip), offsets=offsets
        )

    return outputs
