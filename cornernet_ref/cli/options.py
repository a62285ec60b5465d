r"""Configuration fields as command-line options, and the value types of the other options.

Every leaf field of a (nested) configuration dataclass becomes one option named after its
path, ``_`` written ``-``: ``--lr``, ``--model.nstack``, ``--augment.flip``,
``--test.scales``, ``--test.decode.K``. Booleans are written ``true``/``false``, tuples
comma-separated (``--lr-decay-iters 100,200``). An option not given leaves the field as the
configuration has it; the help of each option gives the field's description (from the
``Attributes:`` of its class's docstring) and that value.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

from cornernet_ref.config import get_config
from cornernet_ref.errors import InputError
from cornernet_ref.printable import FieldError

DEST_PREFIX = "config__"  # the destinations of field options, told apart from the others
_DEFAULT = "(default: "


def leaves(config: Any, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    r"""``(path, value, description)`` of every leaf field of a (nested) configuration, the
    description read off its class's docstring (:func:`field_descriptions`)."""
    descriptions = field_descriptions(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{item.name}.")
        else:
            yield prefix + item.name, value, descriptions.get(item.name, "")


def flat_fields(config: Any, prefix: str = "") -> dict[str, Any]:
    r"""``{"model.nstack": value, ...}`` for every leaf field of a (nested) configuration."""
    return {path: value for path, value, _ in leaves(config, prefix)}


_ENTRY = re.compile(r"^ {4}(\w+(?:, \w+)*): (.*)")  # "    name, other: text" (Google style)
_MARKUP = (  # documentation markup -> plain text, for the help
    (re.compile(r":[a-z]+:`~?(?:[\w.]*\.)?([^`.]+)`"), r"\1"),  # :class:`~a.B` -> B
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # [text][reference] -> text
    (re.compile(r"``([^`]*)``"), r"\1"),
    (re.compile(r"\$([^$]*)\$"), lambda found: found[1].replace("\\", "")),  # $\alpha$
)


def field_descriptions(cls: type) -> dict[str, str]:
    r"""Each field's description in the ``Attributes:`` section of ``cls``'s docstring, as
    plain text (the help of its option)."""
    doc = inspect.getdoc(cls) or ""
    section = doc.split("\nAttributes:\n", 1)[1] if "\nAttributes:\n" in doc else ""
    texts: dict[str, str] = {}
    names: list[str] = []
    for line in section.splitlines():
        if line and not line.startswith(" "):
            break  # the next section
        entry = _ENTRY.match(line)
        if entry:
            names = entry[1].split(", ")
            texts |= dict.fromkeys(names, entry[2])
        elif line.strip():
            texts |= {name: f"{texts[name]} {line.strip()}" for name in names}
    for pattern, plain in _MARKUP:
        texts = {name: pattern.sub(plain, text) for name, text in texts.items()}
    return texts


def parse_bool(text: str) -> bool:
    r"""``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def value_parser(default: Any) -> Callable[[str], Any]:
    r"""A string -> value parser of the same type as ``default`` (tuples comma-separated)."""
    if isinstance(default, bool):
        return parse_bool
    if not isinstance(default, tuple):
        return type(default)
    item = type(default[0]) if default else float

    def parse_tuple(text: str) -> tuple:
        try:
            return tuple(item(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item.__name__} values, got {text!r}"
            ) from None

    return parse_tuple


def _as_typed(value: Any) -> str:
    r"""``value`` as it is typed on the command line (``true``, ``32,48``, ``'runs/x'``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def add_config_options(parser: argparse.ArgumentParser, config: Any, prefix: str = "") -> None:
    r"""One ``--PREFIX.field`` option per leaf field of ``config``, in one group per nested
    configuration, each help showing ``config``'s value.

    Args:
        parser: where the options go.
        config: a configuration dataclass, whose values the help shows.
        prefix: put before every field path (``"test."`` for a bare ``TestConfig``).
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for key, default, description in leaves(config, prefix):
        head = key.rsplit(".", 1)[0] + "." if "." in key else ""
        if head not in groups:
            title = f"--{head}* options" if head else "configuration options"
            groups[head] = parser.add_argument_group(title)
        groups[head].add_argument(
            "--" + key.replace("_", "-"),
            dest=DEST_PREFIX + key,
            type=value_parser(default),
            default=argparse.SUPPRESS,
            metavar=type(default).__name__.upper(),
            help=description.replace("%", "%%"),  # help strings are %-formatted
        )
    show_defaults(parser, config, prefix)


def show_defaults(parser: argparse.ArgumentParser, config: Any, prefix: str = "") -> None:
    r"""Make the help of each field option of ``parser`` show ``config``'s value."""
    values = flat_fields(config, prefix)
    for action in parser._actions:
        key = action.dest.removeprefix(DEST_PREFIX)
        if key not in values or action.option_strings != ["--" + key.replace("_", "-")]:
            continue  # not a field option (or another name for one, as train's --images)
        described = (action.help or "").split(_DEFAULT)[0].rstrip()
        value = _as_typed(values[key]).replace("%", "%%")  # help strings are %-formatted
        action.help = f"{described} {_DEFAULT}{value})".lstrip()


class ShowConfigDefaults(argparse.Action):
    r"""``--config NAME``: the help of the options that follow shows NAME's values."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        show_defaults(parser, get_config(values))
        setattr(namespace, self.dest, values)


def overrides_from_args(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    r"""The field options given on the command line, ``{"lr": 1e-3, "model.nstack": 1}``,
    those under ``prefix`` only and named without it."""
    start = DEST_PREFIX + prefix
    return {
        key.removeprefix(start): value for key, value in vars(args).items() if key.startswith(start)
    }


def option_name(path: str) -> str:
    r"""The option of a field path: ``"test.decode.num_dets"`` -> ``"--test.decode.num-dets"``."""
    return "--" + path.replace("_", "-")


def refused(error: FieldError, prefix: str = "") -> InputError:
    r"""A configuration's refusal as the one line of the command: the option and its value,
    then what the value must be (``--lr -1.0: must be a finite number > 0``)."""
    return InputError(
        f"{option_name(prefix + error.field)} {_as_typed(error.value)}: {error.requirement}"
    )


def available_devices() -> list[str]:
    r"""The devices this machine has: ``cpu``, then ``cuda:0``, ... and ``mps`` where present."""
    devices = ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return devices + (["mps"] if torch.backends.mps.is_available() else [])


def check_device(name: str, option: str = "--device") -> None:
    r"""Raise :class:`InputError` unless ``name`` is a device of this machine (``auto`` is)."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(
            f"{option} {name}: not a device; this machine has {', '.join(available_devices())}"
        ) from None
    index = 0 if device.index is None else device.index
    present = {
        "cpu": index == 0,
        "cuda": index < torch.cuda.device_count(),
        "mps": index == 0 and torch.backends.mps.is_available(),
    }
    if not present.get(device.type, False):
        raise InputError(
            f"{option} {name}: not on this machine, which has {', '.join(available_devices())}"
        )


def device_option(text: str) -> str:
    r"""A ``--device`` value, checked against the devices of this machine."""
    try:
        check_device(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--device ")) from None
    return text


def positive_int(text: str) -> int:
    r"""An option that counts something: ``"3"`` -> ``3``; zero or less is refused."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def unit_interval(text: str) -> float:
    r"""A score threshold: ``"0.3"`` -> ``0.3``, within ``[0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


__all__ = [
    "ShowConfigDefaults",
    "add_config_options",
    "available_devices",
    "check_device",
    "device_option",
    "field_descriptions",
    "flat_fields",
    "leaves",
    "option_name",
    "overrides_from_args",
    "parse_bool",
    "positive_int",
    "refused",
    "show_defaults",
    "unit_interval",
    "value_parser",
]
