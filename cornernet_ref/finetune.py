r"""Starting weights for fine-tuning: ``cornernet-ref train --init-from PATH``.

Fine-tuning starts a new run, on a new dataset and often with another number of classes,
from the weights of an earlier one: usually the official model, or a run of this project.

**The rule: by name and shape.** Every tensor of the new model whose name and shape match a
tensor of the file is loaded; every other one keeps its value in the freshly built model
(built from the run's seed), so it starts exactly as in a run from scratch, the focal-loss
prior of the heatmap bias $b = -2.19$ included (:mod:`cornernet_ref.heads`). In practice:

* same architecture, same classes: everything loads, the heatmap heads too;
* another class count: the last heatmap convolution of every prediction module
  (``*.heatmap.out.weight`` of shape $C \times d_0 \times 1 \times 1$ and its $C$ biases) starts
  fresh, with the prior; the rest, the embedding and offset heads included, loads;
* another architecture: whatever differs in shape starts fresh, and tensors that the new
  model has no place for (a second stack's, say) are left out.

Only weights are taken: the optimiser, the learning-rate schedule and the iteration start
anew (continuing a run is ``--resume``). What was loaded and what was not is printed
(:meth:`InitReport.summary`).

**The file** is either an official state dict ``.pkl`` (``CornerNet_500000.pkl``), converted
by :func:`~cornernet_ref.convert.convert_official_state_dict`, the colour order of the first
convolution included, or a checkpoint of this project (a training run's ``last.pt`` or the
output of ``cornernet-ref convert``), read by
:meth:`CornerNet.from_checkpoint <cornernet_ref.model.CornerNet.from_checkpoint>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cornernet_ref.convert import read_official
from cornernet_ref.errors import InputError
from cornernet_ref.model import CornerNet

OFFICIAL_SUFFIX = ".pkl"  # the official release: a state dict saved with torch.save


@dataclass(frozen=True)
class InitReport:
    r"""What :func:`init_from` did.

    Attributes:
        source: the file the weights came from.
        loaded: names of the model's tensors loaded from the file, in the model's order.
        fresh: name -> why it was not loaded, for the model's other tensors (which keep
            their fresh initial values).
        unused: names of the file's tensors the model has no place for.
    """

    source: str
    loaded: list[str]
    fresh: dict[str, str]
    unused: list[str]

    def summary(self) -> str:
        r"""Counts, then one line per tensor not loaded and per tensor of the file not used."""
        total = len(self.loaded) + len(self.fresh)
        lines = [
            f"init from {self.source}: loaded {len(self.loaded)} of the model's {total} tensors; "
            f"{len(self.fresh)} start fresh, {len(self.unused)} of the file's are unused"
        ]
        lines += [f"  fresh  {name}: {reason}" for name, reason in self.fresh.items()]
        lines += [f"  unused {name}" for name in self.unused]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "fresh": list(self.fresh),
            "unused": self.unused,
        }


def read_weights(path: str | Path) -> dict[str, Tensor]:
    r"""This model's state dict from an official ``.pkl`` (converted) or a checkpoint.

    Raises:
        InputError: ``path`` does not exist, or is neither (the message says which).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--init-from: file not found: {path}")
    if path.suffix == OFFICIAL_SUFFIX:
        return read_official(path)[1]
    return CornerNet.from_checkpoint(path).state_dict()


def _shape(tensor: Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def load_matching(model: nn.Module, state: dict[str, Tensor], source: str = "") -> InitReport:
    r"""Load into ``model`` the tensors of ``state`` whose name and shape match; report the rest."""
    own = model.state_dict()
    loaded, fresh = [], {}
    for name, tensor in own.items():
        if name not in state:
            fresh[name] = "not in the file"
        elif state[name].shape != tensor.shape:
            fresh[name] = f"shape {_shape(state[name])} in the file, {_shape(tensor)} here"
        else:
            loaded.append(name)
    model.load_state_dict({name: state[name] for name in loaded}, strict=False)
    unused = [name for name in state if name not in own]
    return InitReport(source, loaded, fresh, unused)


def init_from(model: nn.Module, path: str | Path) -> InitReport:
    r"""Initialise ``model`` from the file ``path`` by the rule of the module docstring."""
    return load_matching(model, read_weights(path), str(path))


__all__ = ["InitReport", "init_from", "load_matching", "read_weights"]
