r"""The prediction module (paper §3.4, Fig. 7): corner pooling, then three heads.

One [PredictionModule][cornernet_ref.heads.PredictionModule] per corner type (top-left,
bottom-right) and per hourglass stack reads the ``cnv_dim``-channel features $f$ of the
stack. Its [CornerPoolingModule][cornernet_ref.heads.CornerPoolingModule] is a residual
block whose first convolution is replaced by the corner pool of
:mod:`cornernet_ref.corner_pool` (the equation is stated there); three
[Head][cornernet_ref.heads.Head]s then read the heatmap ($C$ channels, one per class), the
embedding (1 channel) and the offset (2 channels).

**Without corner pooling** (``corner_pooling=False``, the ablation of paper Table 1) the pool
is replaced by the plain sum of the two branches ([BranchSum][cornernet_ref.heads.BranchSum]):
the same parameters, no pooling.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cornernet_ref.corner_pool import CORNERS, CornerPool
from cornernet_ref.hourglass import ConvBN

HEATMAP_BIAS = -2.19  # official initial bias of the last heatmap convolution: sigmoid ~ 0.1


class BranchSum(nn.Module):
    r"""``a + b``: what the corner pool is replaced by in the ablation without it."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class CornerPoolingModule(nn.Module):
    r"""Corner pooling module: two branches, corner pool, residual merge, Conv-BN-ReLU.

    Two $3 \times 3$ Conv-BN-ReLU branches with ``pool_channels`` channels each feed one
    direction of the corner pool (for the top-left corner, the maximum below and the
    maximum to the right). The pooled map $p$ goes through a $3 \times 3$ convolution and
    batch norm, is added to a $1 \times 1$ Conv-BN shortcut of the features $f$, and after
    a ReLU a $3 \times 3$ Conv-BN-ReLU gives the module's output $g$:

    $$ g = \mathrm{CBR}\big(\mathrm{ReLU}(\mathrm{BN}(W_p * p) + \mathrm{BN}(W_s * f))\big),
    \qquad p = \mathrm{pool}(\mathrm{CBR}_v(f), \mathrm{CBR}_h(f)) $$

    Args:
        corner: ``"tl"`` (pools the maxima below and to the right) or ``"br"`` (above and to
            the left).
        channels: input and output channels (``cnv_dim``).
        pool_channels: channels of the two pooled branches (``pool_dim``).
        corner_pooling: ``False`` replaces the pool by the sum of the branches.
    """

    def __init__(
        self, corner: str, channels: int, pool_channels: int, corner_pooling: bool = True
    ) -> None:
        super().__init__()
        if corner not in CORNERS:
            raise ValueError(f"corner must be one of {tuple(CORNERS)}, got {corner!r}")
        self.vertical = ConvBN(channels, pool_channels)  # pooled along columns (top / bottom)
        self.horizontal = ConvBN(channels, pool_channels)  # pooled along rows (left / right)
        self.pool: nn.Module = CornerPool(corner) if corner_pooling else BranchSum()
        self.fuse = ConvBN(pool_channels, channels, 3, relu=False)
        self.shortcut = ConvBN(channels, channels, 1, relu=False)
        self.out = ConvBN(channels, channels, 3)

    def forward(self, features: Tensor) -> Tensor:
        pooled = self.pool(self.vertical(features), self.horizontal(features))
        # g = CBR(ReLU(BN(W_p * p) + BN(W_s * f)))
        return self.out(F.relu(self.fuse(pooled) + self.shortcut(features), inplace=True))


class Head(nn.Module):
    r"""3x3 convolution (with bias, no batch norm) - ReLU - 1x1 convolution."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.out = nn.Conv2d(hidden_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.relu(self.hidden(x), inplace=True))


class PredictionModule(nn.Module):
    r"""The corner pooling module and the heatmap, embedding and offset heads of one corner.

    The heads' hidden width is the hourglass width ``dims[0]`` (256), as in the official
    code. **Heatmap prior.** The last bias of the heatmap head starts at $-2.19$, so that
    every cell begins with probability $\sigma(-2.19) \approx 0.1$: the prior of RetinaNet,
    $b = -\log((1 - \pi) / \pi)$ with $\pi \approx 0.1$ (chapter 4 tells why).

    Args:
        corner: ``"tl"`` or ``"br"``.
        num_classes: heatmap channels $C$.
        channels: input channels (``cnv_dim``).
        head_channels: hidden width of the heads (``dims[0]``).
        pool_channels: channels of the pooled branches (``pool_dim``).
        corner_pooling: ``False`` replaces the pool by the sum of the branches.
    """

    def __init__(
        self,
        corner: str,
        num_classes: int,
        channels: int,
        head_channels: int,
        pool_channels: int,
        corner_pooling: bool = True,
    ) -> None:
        super().__init__()
        self.pooling = CornerPoolingModule(corner, channels, pool_channels, corner_pooling)
        self.heatmap = Head(channels, head_channels, num_classes)
        self.embedding = Head(channels, head_channels, 1)
        self.offset = Head(channels, head_channels, 2)
        nn.init.constant_(self.heatmap.out.bias, HEATMAP_BIAS)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(heatmap logits (B, C, H, W), embeddings (B, 1, H, W), offsets (B, 2, H, W))``."""
        pooled = self.pooling(features)
        return self.heatmap(pooled), self.embedding(pooled), self.offset(pooled)


__all__ = [
    "HEATMAP_BIAS",
    "BranchSum",
    "CornerPoolingModule",
    "Head",
    "PredictionModule",
]
