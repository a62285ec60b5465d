r"""The backbone: Hourglass-104 (paper §3.5, after Newell et al., 2016).

Built from two units, [ConvBN][cornernet_ref.hourglass.ConvBN] and the residual block
[Residual][cornernet_ref.hourglass.Residual]. A [Stem][cornernet_ref.hourglass.Stem]
brings a ``511 x 511`` image down to ``128 x 128``; an
[Hourglass][cornernet_ref.hourglass.Hourglass] (the recursion is stated there) then maps
a feature map to one of the same size, looking at it at every scale in between. CornerNet
changes Newell's hourglass in two ways (§3.5): it halves the resolution with a stride-2
convolution instead of max-pooling, and it uses more blocks at the bottom (4). With
$n = 5$, widths ``(256, 256, 384, 384, 384, 512)`` and blocks ``(2, 2, 2, 2, 2, 4)`` this
is the hourglass of Hourglass-104.
[receptive_field_bound][cornernet_ref.hourglass.receptive_field_bound] and
[receptive_field][cornernet_ref.hourglass.receptive_field] say how far an output cell
sees.

Module names here are this project's own; :mod:`cornernet_ref.convert` maps them onto the
names of the official implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBN(nn.Module):
    r"""``k x k`` convolution (no bias) + batch norm, followed by a ReLU if ``relu``.

    Padding ``(k - 1) // 2`` keeps the size at stride 1 and halves it (rounding up) at 2.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return F.relu(y, inplace=True) if self.relu else y


class Residual(nn.Module):
    r"""Residual block (He et al., 2016) with stride $s$: 3x3 conv-BN-ReLU, 3x3 conv-BN,
    plus the shortcut, then ReLU:

    $$ R(x) = \mathrm{ReLU}\big(\mathrm{BN}(W_2 * \mathrm{ReLU}(\mathrm{BN}(W_1 *_s x)))
    + \mathrm{shortcut}(x)\big) $$

    with $3 \times 3$ kernels $W_1$, $W_2$ and the shortcut the identity, or a $1 \times 1$
    stride-$s$ convolution and batch norm when the stride or the width changes.
    Convolutions followed by batch norm have no bias (the norm's shift replaces it).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.first = ConvBN(in_channels, out_channels, 3, stride)
        self.second = ConvBN(out_channels, out_channels, 3, relu=False)
        self.shortcut: nn.Module = (
            ConvBN(in_channels, out_channels, 1, stride, relu=False)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        # R(x) = ReLU(BN(W2 * ReLU(BN(W1 *_s x))) + shortcut(x))
        return F.relu(self.second(self.first(x)) + self.shortcut(x), inplace=True)


def residuals(
    count: int, in_channels: int, out_channels: int, *, stride: int = 1, change_last: bool = False
) -> nn.Sequential:
    r"""``count`` residual blocks from ``in_channels`` to ``out_channels``.

    The first block changes the width and applies the stride (going down), or, with
    ``change_last``, the last block changes the width (coming back up).
    """
    if change_last:
        widths = [in_channels] * count + [out_channels]
    else:
        widths = [in_channels] + [out_channels] * count
    strides = [stride] + [1] * (count - 1)
    blocks = zip(widths[:-1], widths[1:], strides, strict=True)
    return nn.Sequential(*(Residual(a, b, s) for a, b, s in blocks))


class Stem(nn.Module):
    r"""4x downsampling before the hourglasses: 7x7 stride-2 conv-BN-ReLU, stride-2 residual."""

    def __init__(self, out_channels: int, mid_channels: int = 128) -> None:
        super().__init__()
        self.conv7x7 = ConvBN(3, mid_channels, 7, stride=2)
        self.residual = Residual(mid_channels, out_channels, stride=2)

    def forward(self, images: Tensor) -> Tensor:
        return self.residual(self.conv7x7(images))


class Hourglass(nn.Module):
    r"""An hourglass of depth $n$ = ``len(dims) - 1``, defined recursively.

    For widths $d_0, \dots, d_n$ and block counts $m_0, \dots, m_n$:

    $$ \mathrm{HG}_n(x) = \underbrace{R^{m_0}_{d_0 \to d_0}(x)}_{\text{skip}}
    \;+\; \mathrm{Up}_2\Big(\underbrace{R^{m_0}_{d_1 \to d_0}}_{\text{up}}\big(
    \underbrace{\mathrm{HG}_{n-1}}_{\text{inner}}(\underbrace{R^{m_0}_{d_0 \to d_1,\,
    \downarrow 2}(x)}_{\text{down}})\big)\Big), \qquad \mathrm{HG}_0 = R^{m_n}_{d_n \to d_n} $$

    where $R^m_{a \to b}$ is a chain of $m$ residual blocks from $a$ to $b$ channels
    ([residuals][cornernet_ref.hourglass.residuals]: the first block of *down* changes the
    width and has stride 2, the last block of *up* changes it back) and $\mathrm{Up}_2$ is
    nearest-neighbour upsampling.

    Args:
        dims: channel widths $d_0, \dots, d_n$, from the outer level to the bottom.
        modules: residual blocks per branch $m_0, \dots, m_n$; $m_k$ is used by every branch
            of level $k$, and $m_n$ by the chain at the bottom.
    """

    def __init__(self, dims: Sequence[int], modules: Sequence[int]) -> None:
        super().__init__()
        if len(dims) < 2 or len(dims) != len(modules):
            raise ValueError(
                f"dims and modules need the same length >= 2, got {list(dims)} and {list(modules)}"
            )
        outer, lower = dims[0], dims[1]
        blocks = modules[0]
        self.skip_branch = residuals(blocks, outer, outer)
        self.down = residuals(blocks, outer, lower, stride=2)
        self.inner: nn.Module = (
            Hourglass(dims[1:], modules[1:])
            if len(dims) > 2
            else residuals(modules[1], lower, lower)
        )
        self.up = residuals(blocks, lower, outer, change_last=True)

    def forward(self, x: Tensor) -> Tensor:
        # HG_n(x) = skip(x) + Up_2(up(HG_{n-1}(down(x))))
        low = self.up(self.inner(self.down(x)))
        return self.skip_branch(x) + F.interpolate(low, scale_factor=2, mode="nearest")


def stem_output_size(side: int) -> int:
    r"""Output side of the stem for an input side: two stride-2 steps, each rounding up.

    ``511 -> 256 -> 128``; ``767 -> 384 -> 192``; ``1023 -> 512 -> 256``.
    """
    for _ in range(2):
        side = (side - 1) // 2 + 1  # a k x k conv with stride 2 and padding (k - 1) // 2
    return side


def receptive_field_bound(modules: Sequence[int]) -> int:
    r"""Receptive field of stem + hourglass by the textbook rule, along the longest path.

    A layer with kernel $k$ reading cells $j$ input pixels apart widens the field by
    $(k - 1)\,j$; a stride $s$ multiplies $j$ by $s$; nearest-neighbour upsampling divides
    it by 2 and adds nothing. A residual block with stride $s$ adds $2j + 2sj$ (two 3x3
    convolutions, the first with stride $s$); the longest path runs through every *down*
    and *up* chain and the bottom, the skip branches and 1x1 shortcuts being shorter. The
    rule assumes evenly spaced cells, which upsampling breaks: :func:`receptive_field`
    measures the real fields.

    Args:
        modules: residual blocks per hourglass level, $m_0, \dots, m_n$.
    """
    field, jump = 1 + 6, 2  # 7x7 stride-2 convolution
    field, jump = field + 2 * jump + 2 * 2 * jump, 2 * jump  # stride-2 residual block
    for blocks in modules[:-1]:  # down: a stride-2 block, then m_k - 1 blocks
        field, jump = field + 2 * jump + 2 * 2 * jump, 2 * jump
        field += 4 * jump * (blocks - 1)
    field += 4 * jump * modules[-1]  # the bottom
    for blocks in reversed(modules[:-1]):  # up: m_k blocks, then upsampling
        field += 4 * jump * blocks
        jump //= 2
    return field


def receptive_field(modules: Sequence[int]) -> tuple[int, int]:
    r"""Theoretical receptive field (input pixels, one axis) of the cells after stem + hourglass.

    Measured: a copy of the stem and the hourglass with one channel everywhere and positive
    (averaging) weights is linear and cancels nothing, so the gradient of an output cell is
    nonzero exactly on the input pixels the cell can see. The widths of a real model do not
    change this set; kernels, strides and block counts do. Only the middle row of each
    kernel is kept: it sees the same columns, and the products of weights along the longest
    path stay far from the float32 underflow.

    The field depends on the cell: nearest-neighbour upsampling gives two neighbouring cells
    the same source, so the fields are not evenly spaced and their widths differ. The
    pattern repeats every $2^n$ cells; all of them are measured.

    Args:
        modules: residual blocks per hourglass level, $m_0, \dots, m_n$.

    Returns:
        ``(smallest, largest)`` field width over the output cells.
    """
    n = len(modules) - 1
    period = 2**n  # the hourglass repeats itself every 2**n output cells
    net = nn.Sequential(Stem(1, 1), Hourglass((1,) * (n + 1), modules)).eval()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):  # average along the middle row of the kernel
            weight = module.weight.detach().zero_()
            weight[:, :, weight.shape[2] // 2] = 1.0 / (weight.shape[1] * weight.shape[3])
    step = 4 * period  # input sides of the form step * k - 1 fit the hourglass
    width = step * (receptive_field_bound(modules) // step + 4) - 1
    while True:  # widened until no measured field reaches the border
        images = torch.ones(1, 3, step - 1, width, requires_grad=True)
        row = net(images)[0, 0, period // 2]
        fields = []
        for cell in range(len(row) // 2, len(row) // 2 + period):
            (grad,) = torch.autograd.grad(row[cell], images, retain_graph=True)
            seen = grad[0].sum((0, 1)).nonzero()
            fields.append((int(seen.min()), int(seen.max())))
        if all(0 < low and high < width - 1 for low, high in fields):
            sizes = [high - low + 1 for low, high in fields]
            return min(sizes), max(sizes)
        width += 2 * step


__all__ = [
    "ConvBN",
    "Hourglass",
    "Residual",
    "Stem",
    "receptive_field",
    "receptive_field_bound",
    "residuals",
    "stem_output_size",
]
