r"""The six maps a CornerNet prediction module produces (paper §3.1, Fig. 4).

For every hourglass stack and every corner type (top-left, bottom-right) the network
predicts three maps over the ``H x W`` output grid (4x smaller than the input):

* a **heatmap** with one channel per class: the logit that a corner of that class
  sits in the cell (paper §3.2);
* an **embedding** with one channel: a scalar tag; the two corners of one object
  should get similar tags and corners of different objects dissimilar ones (§3.3);
* an **offset** with two channels ``(dx, dy)``: the fraction of a cell lost when
  input coordinates are floored onto the output grid (§3.2, Eq. 2).

All maps are raw network outputs: no sigmoid has been applied to the heatmaps.
Both the losses and the decoder apply it themselves.

Both also read the maps at a list of cells (the ground-truth corners, the top-K
detected corners), each cell given by its flat index ``y * W + x``: :func:`gather_at`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class CornerNetOutput(NamedTuple):
    r"""Raw (pre-sigmoid) NCHW maps of one hourglass stack.

    Attributes:
        tl_heat: top-left corner heatmap logits, ``(B, C, H, W)``.
        br_heat: bottom-right corner heatmap logits, ``(B, C, H, W)``.
        tl_tag: top-left embeddings, ``(B, 1, H, W)``.
        br_tag: bottom-right embeddings, ``(B, 1, H, W)``.
        tl_off: top-left sub-cell offsets ``(dx, dy)``, ``(B, 2, H, W)``.
        br_off: bottom-right sub-cell offsets ``(dx, dy)``, ``(B, 2, H, W)``.
    """

    tl_heat: Tensor
    br_heat: Tensor
    tl_tag: Tensor
    br_tag: Tensor
    tl_off: Tensor
    br_off: Tensor


def gather_at(maps: Tensor, index: Tensor) -> Tensor:
    r"""Read ``(B, C, H, W)`` maps at flat cell indices ``(B, K)`` -> ``(B, K, C)``.

    ``out[b, k, c] = maps[b, c, index[b, k] // W, index[b, k] % W]``.
    """
    if maps.dim() != 4 or index.dim() != 2 or index.shape[0] != maps.shape[0]:
        raise ValueError(
            f"expected maps (B, C, H, W) and index (B, K), got {tuple(maps.shape)} "
            f"and {tuple(index.shape)}"
        )
    batch, channels = maps.shape[:2]
    flat = maps.reshape(batch, channels, -1)  # (B, C, H*W)
    picked = torch.gather(flat, 2, index.unsqueeze(1).expand(-1, channels, -1))  # (B, C, K)
    return picked.transpose(1, 2)
