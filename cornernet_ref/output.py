"""The six maps a CornerNet prediction module produces (paper §3.1, Fig. 4).

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
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class CornerNetOutput(NamedTuple):
    """Raw (pre-sigmoid) NCHW maps of one hourglass stack.

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
