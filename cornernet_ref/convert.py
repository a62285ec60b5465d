r"""Official weights: map a state dict of the official implementation onto this model.

The official code (princeton-vl/CornerNet) names its modules after its builder functions
(``pre``, ``kps``, ``up1``/``low1``/``low2``/``low3``, ``tl_cnvs``...); this project names
them after what they do. The tensors are the same, one for one, so converting is renaming,
plus one reversal of colour channels (below).

**The rule table.** A key is a dotted path. :data:`RULES` lists pairs of path fragments
``(official, ours)``; ``#`` stands for a stack index, copied across. A key is rewritten
from left to right: at each position the longest fragment that matches is replaced, and a
part that no rule matches (``0``, ``weight``, ``running_mean``...) is kept. So
``kps.1.low2.low1.0.skip.0.weight`` becomes ``hourglasses.1.inner.down.0.shortcut.conv.weight``
(``kps.#``, ``low2``, ``low1``, ``skip.0``). The inverse mapping applies the same table with
the two columns swapped; the tests check that both directions are inverse to each other on
every key, which makes the mapping a bijection.

**Colour order.** The official network was trained on images read by OpenCV, in **BGR**
order, normalised with BGR constants; this project reads RGB and reverses the constants
(:mod:`cornernet_ref.data.image`), so its normalised input is the official one with the
channels reversed, $x^{\mathrm{RGB}}_c = x^{\mathrm{BGR}}_{2-c}$. Only the first
convolution sees channels, so reversing its input channels makes the two agree:

$$ \sum_{c} W^{\mathrm{off}}_{:,c} * x^{\mathrm{BGR}}_c
   = \sum_{c} W^{\mathrm{off}}_{:,2-c} * x^{\mathrm{RGB}}_c,
   \qquad W_{:,c} = W^{\mathrm{off}}_{:,2-c} $$

:func:`convert_official_state_dict` applies this to ``pre.0.conv.weight`` (this model's
:data:`FIRST_CONV`) and :func:`to_official_state_dict` undoes it. The tests feed the
re-stated official network a BGR image and the converted model the same pixels in RGB.

**Strict.** :func:`convert_official_state_dict` uses every tensor and checks every shape
against this model built with the same configuration (read off the official tensors by
:func:`infer_model_config`); the first missing key, unexpected key or wrong shape stops it
with its name. The ``module.`` prefix of a model saved through ``DataParallel`` is
dropped, and the ``num_batches_tracked`` counters, which PyTorch 0.4 did not keep, are set
to 0 when absent (they only matter for a batch norm with ``momentum=None``).

**The command.** ``cornernet-ref convert CornerNet_500000.pkl cornernet_coco.pt`` writes a
checkpoint (:mod:`cornernet_ref.checkpoint`) with the model, its configuration and the
class names, which :meth:`CornerNet.from_checkpoint <cornernet_ref.model.CornerNet.from_checkpoint>`
reads.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from cornernet_ref.checkpoint import FORMAT, save_checkpoint
from cornernet_ref.errors import InputError, first_line
from cornernet_ref.model import CornerNet, ModelConfig

# (official, ours): path fragments; "#" is a stack index.
_SHARED_RULES: tuple[tuple[str, str], ...] = (
    ("pre.0", "stem.conv7x7"),
    ("pre.1", "stem.residual"),
    ("kps.#", "hourglasses.#"),
    ("up1", "skip_branch"),  # hourglass: full-resolution branch
    ("low1", "down"),  # stride-2 blocks
    ("low2", "inner"),  # the next hourglass, or the blocks at the bottom
    ("low3", "up"),  # blocks before the upsampling
    ("conv1", "first.conv"),  # residual block
    ("bn1", "first.bn"),
    ("conv2", "second.conv"),
    ("bn2", "second.bn"),
    ("skip.0", "shortcut.conv"),
    ("skip.1", "shortcut.bn"),
    ("cnvs.#", "features.#"),  # 3x3 Conv-BN-ReLU after each hourglass
    ("inters_.#.0", "transitions.#.from_input.conv"),  # between stacks
    ("inters_.#.1", "transitions.#.from_input.bn"),
    ("cnvs_.#.0", "transitions.#.from_features.conv"),
    ("cnvs_.#.1", "transitions.#.from_features.bn"),
    ("inters.#", "transitions.#.residual"),
)
_CORNER_RULES: tuple[tuple[str, str], ...] = (
    # prediction module of corner "{c}" ("tl" / "br"), called "{m}" here
    ("{c}_cnvs.#.p1_conv1", "{m}.#.pooling.vertical"),  # into the top / bottom pool
    ("{c}_cnvs.#.p2_conv1", "{m}.#.pooling.horizontal"),  # into the left / right pool
    ("{c}_cnvs.#.p_conv1", "{m}.#.pooling.fuse.conv"),
    ("{c}_cnvs.#.p_bn1", "{m}.#.pooling.fuse.bn"),
    ("{c}_cnvs.#.conv1", "{m}.#.pooling.shortcut.conv"),
    ("{c}_cnvs.#.bn1", "{m}.#.pooling.shortcut.bn"),
    ("{c}_cnvs.#.conv2", "{m}.#.pooling.out"),
    ("{c}_heats.#.0.conv", "{m}.#.heatmap.hidden"),
    ("{c}_heats.#.1", "{m}.#.heatmap.out"),
    ("{c}_tags.#.0.conv", "{m}.#.embedding.hidden"),
    ("{c}_tags.#.1", "{m}.#.embedding.out"),
    ("{c}_regrs.#.0.conv", "{m}.#.offset.hidden"),
    ("{c}_regrs.#.1", "{m}.#.offset.out"),
)
RULES: tuple[tuple[str, str], ...] = _SHARED_RULES + tuple(
    (official.format(c=c, m=m), ours.format(c=c, m=m))
    for c, m in (("tl", "top_left"), ("br", "bottom_right"))
    for official, ours in _CORNER_RULES
)
"""``(official, ours)`` pairs of key fragments; ``#`` is a stack index, copied across."""

# The 80 COCO categories in the order of their ids: the classes of the official model.
COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip

_BATCHES_TRACKED = "num_batches_tracked"
FIRST_CONV = "stem.conv7x7.conv.weight"
"""The one tensor that sees colour channels: reversed (BGR <-> RGB) by the conversion."""


def _rewrite(key: str, rules: list[tuple[list[str], list[str]]]) -> str:
    r"""Rewrite ``key`` left to right, replacing the longest matching fragment at each part."""
    parts, out, i = key.split("."), [], 0
    while i < len(parts):
        for source, target in rules:  # sorted longest first
            window = parts[i : i + len(source)]
            if len(window) == len(source) and all(
                s == p or (s == "#" and p.isdigit()) for s, p in zip(source, window, strict=True)
            ):
                index = next((p for s, p in zip(source, window, strict=True) if s == "#"), "")
                out += [index if t == "#" else t for t in target]
                i += len(source)
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def _compile(pairs: tuple[tuple[str, str], ...]) -> list[tuple[list[str], list[str]]]:
    rules = [(a.split("."), b.split(".")) for a, b in pairs]
    return sorted(rules, key=lambda rule: -len(rule[0]))


_TO_OURS = _compile(RULES)
_TO_OFFICIAL = _compile(tuple((ours, official) for official, ours in RULES))


def official_to_ours(key: str) -> str:
    r"""This model's name of an official key (without the ``module.`` prefix)."""
    return _rewrite(key, _TO_OURS)


def ours_to_official(key: str) -> str:
    r"""The official name of one of this model's keys."""
    return _rewrite(key, _TO_OFFICIAL)


def strip_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    r"""Drop the ``module.`` prefix that ``DataParallel`` adds to every key."""
    return {key.removeprefix("module."): value for key, value in state.items()}


def infer_model_config(official: Mapping[str, Tensor]) -> ModelConfig:
    r"""The :class:`~cornernet_ref.model.ModelConfig` of an official state dict.

    Read off a few tensors: classes from the heatmap layer, widths and block counts by
    walking down the nested hourglass, ``cnv_dim``, ``pre_dim`` and ``pool_dim`` from the
    first convolution of the features, the stem and the pooling branch. The official model
    has corner pooling and was trained with uniform batch-norm scales, the defaults of the
    other two fields.
    """
    state = strip_official(official)

    def shape(key: str) -> torch.Size:
        if key not in state:
            raise ValueError(f"not an official CornerNet state dict: no {key!r}")
        return state[key].shape

    def count(prefix: str) -> int:  # blocks prefix.0, prefix.1, ...
        return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})

    level = "kps.0."
    dims, modules = [shape(level + "up1.0.conv1.weight")[0]], []
    while True:
        dims.append(shape(level + "low1.0.conv1.weight")[0])
        modules.append(count(level + "up1."))
        if level + "low2.up1.0.conv1.weight" not in state:
            modules.append(count(level + "low2."))
            break
        level += "low2."
    return ModelConfig(
        num_classes=shape("tl_heats.0.1.weight")[0],
        n=len(dims) - 1,
        nstack=count("kps."),
        dims=tuple(dims),
        modules=tuple(modules),
        cnv_dim=shape("cnvs.0.conv.weight")[0],
        pre_dim=shape("pre.0.conv.weight")[0],
        pool_dim=shape("tl_cnvs.0.p1_conv1.conv.weight")[0],
    )


def expected_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    r"""Key -> shape of this model's state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = CornerNet(config)
    return {key: value.shape for key, value in model.state_dict().items()}


def convert_official_state_dict(
    official: Mapping[str, Tensor], config: ModelConfig | None = None
) -> dict[str, Tensor]:
    r"""This model's state dict from an official one, every tensor used, every shape checked.

    Args:
        official: the official state dict, with or without the ``module.`` prefix and the
            ``num_batches_tracked`` counters.
        config: the configuration to check against; read off ``official`` if omitted.

    Returns:
        The state dict, in this model's order (``load_state_dict(..., strict=True)`` works).

    Raises:
        ValueError: naming the first unexpected key, wrong shape or missing key.
    """
    state = strip_official(official)
    expected = expected_shapes(config if config is not None else infer_model_config(state))
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        name = official_to_ours(key)
        if name not in expected:
            raise ValueError(f"unexpected official key {key!r} (this model has no {name!r})")
        if value.shape != expected[name]:
            raise ValueError(
                f"official {key!r} has shape {tuple(value.shape)}, this model's {name!r} "
                f"expects {tuple(expected[name])}"
            )
        renamed[name] = value.flip(1) if name == FIRST_CONV else value  # BGR -> RGB inputs
    converted = {}
    for name in expected:
        if name in renamed:
            converted[name] = renamed[name]
        elif name.endswith(_BATCHES_TRACKED):
            converted[name] = torch.tensor(0, dtype=torch.long)
        else:
            missing = sum(n not in renamed and not n.endswith(_BATCHES_TRACKED) for n in expected)
            raise ValueError(
                f"official state dict has no {ours_to_official(name)!r} (this model's "
                f"{name!r}; {missing} tensors missing in all)"
            )
    return converted


def to_official_state_dict(
    state: Mapping[str, Tensor], prefix: str = "module."
) -> dict[str, Tensor]:
    r"""The inverse of :func:`convert_official_state_dict`: official names, BGR first convolution.

    Args:
        state: a state dict of this model.
        prefix: put before every key (``"module."``, as the official training code saves).
    """
    return {
        prefix + ours_to_official(key): value.flip(1) if key == FIRST_CONV else value
        for key, value in state.items()
    }


def load_official(path: str | Path, *, trust: bool = False) -> dict[str, Tensor]:
    r"""Read an official ``.pkl`` (a ``torch.save``'d state dict) as tensors only.

    With ``trust`` it is unpickled in full, which runs whatever code the file names: only
    for files you trust, if the safe loader refuses one.
    """
    if not Path(path).is_file():
        raise InputError(f"official weights not found: {path}")
    try:
        Path(path).open("rb").close()  # a file that cannot be opened: as the system says
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from error
    if _is_checkpoint(path):  # its random states are not tensors: the safe loader refuses
        raise InputError(
            f"{path} is a cornernet-ref checkpoint already: use it as it is (--checkpoint, "
            "--resume or --init-from), there is nothing to convert"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found is None:
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
            reason = reason[1] if reason else first_line(error)
            raise InputError(f"{path} is truncated or corrupt: {reason}") from error
        raise InputError(  # also reached by `train --init-from`, which has no --trust
            f"{path} holds more than tensors (it names {found[1]}); if you trust the file, "
            f"convert it with `cornernet-ref convert --trust {path} OUT.pt` and use OUT.pt"
        ) from error
    except Exception as error:  # damaged bytes make the readers raise any of many types
        raise InputError(f"{path} is truncated or corrupt: {first_line(error)}") from error
    if not isinstance(state, Mapping):
        raise InputError(f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def _is_checkpoint(path: str | Path) -> bool:
    r"""Whether ``path`` is a checkpoint of this project, told without unpickling it: its
    format marker is a string in the pickle of the ``torch.save`` archive."""
    with contextlib.suppress(OSError, zipfile.BadZipFile, StopIteration):
        with zipfile.ZipFile(path) as archive:
            pickled = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
            return FORMAT.encode() in archive.read(pickled)
    return False


def read_official(
    path: str | Path, *, trust: bool = False
) -> tuple[ModelConfig, dict[str, Tensor]]:
    r"""The configuration and this model's state dict of the official file ``path``.

    Raises:
        InputError: the file cannot be read (:func:`load_official`), or is not a complete
            official state dict: naming the file and the first tensor missing or misshapen.
    """
    official = load_official(path, trust=trust)
    not_tensors = [str(key) for key, value in official.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise InputError(
            f"{path} is not an official CornerNet state dict: {not_tensors[0]!r} is not a "
            f"tensor ({len(not_tensors)} of {len(official)} entries are not)"
        )
    try:
        config = infer_model_config(official)
        return config, convert_official_state_dict(official, config)
    except ValueError as error:
        raise InputError(f"{path}: {error}") from error


def convert_file(source: str | Path, target: str | Path, *, trust: bool = False) -> ModelConfig:
    r"""Convert an official checkpoint file into one that ``CornerNet.from_checkpoint`` loads.

    Returns:
        The model configuration read off the file.
    """
    config, converted = read_official(source, trust=trust)
    with torch.device("meta"):  # no memory: the converted tensors take the parameters' place
        model = CornerNet(config)
    model.load_state_dict(converted, assign=True)
    model.class_names = (
        list(COCO_CLASS_NAMES)
        if config.num_classes == len(COCO_CLASS_NAMES)
        else [str(i) for i in range(config.num_classes)]
    )
    save_checkpoint(target, model.checkpoint_state() | {"converted_from": Path(source).name})
    return config


__all__ = [
    "COCO_CLASS_NAMES",
    "FIRST_CONV",
    "RULES",
    "convert_file",
    "convert_official_state_dict",
    "expected_shapes",
    "infer_model_config",
    "load_official",
    "official_to_ours",
    "ours_to_official",
    "read_official",
    "to_official_state_dict",
]
