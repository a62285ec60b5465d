r"""CornerNet: the stem, stacked hourglasses and the prediction modules (paper §3.5, Fig. 4).

```text
image (3, 511, 511)
  -> stem                                   (dims[0], 128, 128)
  -> hourglass 1 -> 3x3 CBR -> features f_1 -> prediction modules (tl, br) -> maps of stack 1
  -> transition(x, f_1)
  -> hourglass 2 -> 3x3 CBR -> features f_2 -> prediction modules (tl, br) -> maps of stack 2
```

**Stacking.** Hourglass-104 is two hourglasses in a row. The input of each stack after the
first combines the input and the features of the one before
([StackTransition][cornernet_ref.model.StackTransition]); the predictions of a stack are
*not* fed back.

**Intermediate supervision.** In training every stack has its own prediction modules and
its maps are returned (the loss averages over stacks). At test time only the last stack's
prediction modules run and one set of maps comes back, as in the official test path.

**Sizes.** The stem divides the input by 4 (rounding up twice); the hourglass then halves
$n$ times and doubles back, so the stem's output side must be divisible by $2^n$. The
official test canvas of side ``s | 127`` ($128k - 1$) always qualifies: 511 -> 128,
767 -> 192, 1023 -> 256.

**Initialisation.** Convolutions keep PyTorch's default; the heatmap bias starts at
$-2.19$ (:mod:`cornernet_ref.heads`). Batch-norm scales start from $\mathcal{U}(0, 1)$, as
in the official training (``batchnorm_init="uniform"``, the default; chapter 4 tells why),
or at today's $\gamma = 1$ (``"ones"``).

**Configuration.** Every constructor field sits in one frozen
[ModelConfig][cornernet_ref.model.ModelConfig], which checks itself, travels in checkpoints
as a dict (``to_dict`` / ``from_dict``, as every configuration: :mod:`cornernet_ref.printable`)
and is nested in the training configuration as ``model``.

Hourglass-104 with 80 classes has 201,035,212 parameters, laid out as the official
checkpoint (:mod:`cornernet_ref.convert` maps the names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from cornernet_ref.checkpoint import CheckpointError, load_checkpoint
from cornernet_ref.corner_pool import CORNERS
from cornernet_ref.errors import first_line
from cornernet_ref.heads import PredictionModule
from cornernet_ref.hourglass import ConvBN, Hourglass, Residual, Stem, stem_output_size
from cornernet_ref.output import CornerNetOutput
from cornernet_ref.printable import FieldError, PrintableConfig

BATCHNORM_INITS = ("uniform", "ones")


class StackTransition(nn.Module):
    r"""Input of the next stack, from the input and the features of this one.

    The input $x_{s+1}$ of stack $s + 1$ combines the input $x_s$ of stack $s$ and its
    features $f_s$ (after the hourglass and a $3 \times 3$ Conv-BN-ReLU to ``cnv_dim``
    channels):

    $$ x_{s+1} = R\big(\mathrm{ReLU}(\mathrm{BN}(W_x * x_s) + \mathrm{BN}(W_f * f_s))\big) $$

    with $1 \times 1$ convolutions $W_x$, $W_f$ and a residual block $R$. The predictions of
    stack $s$ are not fed back: only $f_s$ is.
    """

    def __init__(self, channels: int, feature_channels: int) -> None:
        super().__init__()
        self.from_input = ConvBN(channels, channels, 1, relu=False)
        self.from_features = ConvBN(feature_channels, channels, 1, relu=False)
        self.residual = Residual(channels, channels)

    def forward(self, x: Tensor, features: Tensor) -> Tensor:
        merged = F.relu(self.from_input(x) + self.from_features(features), inplace=True)
        return self.residual(merged)


@dataclass(frozen=True)
class ModelConfig(PrintableConfig):
    r"""Everything :class:`CornerNet` is built from; the defaults are Hourglass-104, 80 classes.

    Attributes:
        num_classes: object classes $C$ (heatmap channels). In training the data sets it
            (:mod:`cornernet_ref.train`).
        n: depth of each hourglass (number of halvings).
        nstack: number of stacked hourglasses.
        dims: channel widths of the hourglass levels, ``n + 1`` entries.
        modules: residual blocks per hourglass level, ``n + 1`` entries.
        cnv_dim: channels of the features after each hourglass.
        pre_dim: channels of the stem's 7x7 convolution.
        pool_dim: channels of the two branches of the corner pooling module.
        corner_pooling: ``False`` replaces corner pooling by the plain sum of the two
            branches (the paper's ablation, Table 1).
        batchnorm_init: ``"uniform"`` (batch-norm scales from U(0, 1), as PyTorch 0.4.0 did
            for the official training) or ``"ones"``.

    ``dims`` and ``modules`` may be given as lists; they are kept as tuples. A configuration
    that builds no network raises ``ValueError`` naming the field.
    """

    num_classes: int = 80
    n: int = 5
    nstack: int = 2
    dims: tuple[int, ...] = (256, 256, 384, 384, 384, 512)
    modules: tuple[int, ...] = (2, 2, 2, 2, 2, 4)
    cnv_dim: int = 256
    pre_dim: int = 128
    pool_dim: int = 128
    corner_pooling: bool = True
    batchnorm_init: str = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))  # frozen: set once, here
        object.__setattr__(self, "modules", tuple(self.modules))
        if self.n < 1:
            raise FieldError("n", self.n, "(hourglass depth) must be >= 1")
        for name in ("dims", "modules"):
            values = getattr(self, name)
            if len(values) != self.n + 1:
                raise FieldError(name, values, f"needs n + 1 = {self.n + 1} entries")
            if any(not isinstance(v, int) or v < 1 for v in values):
                raise FieldError(name, values, "must be positive integers")
        for name in ("num_classes", "nstack", "cnv_dim", "pre_dim", "pool_dim"):
            if getattr(self, name) < 1:
                raise FieldError(name, getattr(self, name), "must be >= 1")
        if self.batchnorm_init not in BATCHNORM_INITS:
            raise FieldError(
                "batchnorm_init", self.batchnorm_init, f"must be one of {BATCHNORM_INITS}"
            )

    def check_input_size(self, height: int, width: int) -> None:
        r"""Raise ``ValueError`` unless the hourglass can halve the stem's output ``n`` times."""
        for name, side in (("height", height), ("width", width)):
            out = stem_output_size(side)
            if out % 2**self.n:
                raise ValueError(
                    f"input {name} {side} gives {out} cells after the stem, not a multiple of "
                    f"2**n = {2**self.n}; use sides of the form {4 * 2**self.n}k - 1 "
                    f"(e.g. {side | (4 * 2**self.n - 1)})"
                )


class CornerNet(nn.Module):
    r"""CornerNet with a stacked-hourglass backbone, built from a :class:`ModelConfig`.

    The default configuration builds Hourglass-104 with 80 classes; the model keeps its
    configuration as ``model.config``.

    Calling the model on ``(B, 3, H, W)`` images returns a list of
    :class:`~cornernet_ref.output.CornerNetOutput` with raw maps of side ``H/4, W/4``: one
    per stack in training mode, the last stack's only in eval mode.
    """

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"CornerNet takes a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.class_names: list[str] | None = None  # set by from_checkpoint when known
        width = config.dims[0]
        self.stem = Stem(width, config.pre_dim)
        self.hourglasses = nn.ModuleList(
            Hourglass(config.dims, config.modules) for _ in range(config.nstack)
        )
        self.features = nn.ModuleList(ConvBN(width, config.cnv_dim) for _ in range(config.nstack))
        self.top_left, self.bottom_right = (
            nn.ModuleList(
                PredictionModule(
                    corner,
                    config.num_classes,
                    config.cnv_dim,
                    width,
                    config.pool_dim,
                    config.corner_pooling,
                )
                for _ in range(config.nstack)
            )
            for corner in CORNERS
        )
        self.transitions = nn.ModuleList(
            StackTransition(width, config.cnv_dim) for _ in range(config.nstack - 1)
        )
        if config.batchnorm_init == "uniform":
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    nn.init.uniform_(module.weight)

    def check_input_size(self, height: int, width: int) -> None:
        r"""Raise ``ValueError`` unless the hourglass can halve the stem's output ``n`` times
        (:meth:`ModelConfig.check_input_size`)."""
        self.config.check_input_size(height, width)

    def forward(self, images: Tensor) -> list[CornerNetOutput]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        self.check_input_size(images.shape[2], images.shape[3])
        x = self.stem(images)
        last = self.config.nstack - 1
        outputs = []
        for stack, hourglass in enumerate(self.hourglasses):
            features = self.features[stack](hourglass(x))
            if self.training or stack == last:
                tl_heat, tl_tag, tl_off = self.top_left[stack](features)
                br_heat, br_tag, br_off = self.bottom_right[stack](features)
                outputs.append(CornerNetOutput(tl_heat, br_heat, tl_tag, br_tag, tl_off, br_off))
            if stack < last:
                x = self.transitions[stack](x, features)  # predictions are not fed back
        return outputs

    def checkpoint_state(self) -> dict[str, Any]:
        r"""The model's half of a checkpoint (:mod:`cornernet_ref.checkpoint`), which
        :meth:`from_checkpoint` reads back: the state dict (``model``), the configuration
        (``model_config``, :meth:`ModelConfig.to_dict`) and the ``class_names``."""
        return {
            "model": self.state_dict(),
            "model_config": self.config.to_dict(),
            "class_names": self.class_names,
        }

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: Any = "cpu") -> CornerNet:
        r"""A model from a checkpoint (:mod:`cornernet_ref.checkpoint`): trained or converted.

        The model is built from the checkpoint's ``model_config``
        (:meth:`ModelConfig.from_dict`), loaded with its state dict and given its
        ``class_names`` (None when absent).

        Raises:
            CheckpointError: the file is missing, damaged, not a checkpoint, or its weights
                do not fit its model configuration.
        """
        state = load_checkpoint(path)
        try:
            model = cls(ModelConfig.from_dict(state["model_config"]))
            model.load_state_dict(state["model"])
        except (TypeError, ValueError, RuntimeError) as error:
            reason = first_line(error)
            raise CheckpointError(f"checkpoint {path} does not build a model: {reason}") from error
        model.class_names = state.get("class_names")
        return model.to(map_location)


__all__ = ["BATCHNORM_INITS", "CornerNet", "ModelConfig", "StackTransition"]
