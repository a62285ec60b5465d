r"""The one pattern of every configuration: a frozen dataclass that checks, prints and loads.

Each configuration of the package (:class:`~cornernet_ref.config.TrainConfig` and the parts
nested in it: :class:`~cornernet_ref.model.ModelConfig`,
:class:`~cornernet_ref.data.augment.AugmentConfig`,
:class:`~cornernet_ref.targets.TargetConfig`, :class:`~cornernet_ref.losses.LossConfig`,
:class:`~cornernet_ref.inference.TestConfig`, :class:`~cornernet_ref.decode.DecodeConfig`)
is a frozen dataclass deriving from :class:`PrintableConfig`:

* it checks its fields when it is built (``__post_init__``), raising :class:`FieldError` (a
  ``ValueError``) naming the field out of range and its value;
* ``to_dict`` gives its fields as JSON values (nested, tuples as lists): what checkpoints
  store and ``str`` prints, as JSON;
* ``from_dict`` rebuilds it from that dict (:func:`config_from_dict`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from typing import Any, TypeVar

Config = TypeVar("Config", bound="PrintableConfig")


class FieldError(ValueError):
    r"""A configuration field out of its range: ``"lr must be > 0, got -1.0"``.

    Args:
        field: the field's name; a nesting configuration passes the error on with its path
            (:meth:`within`: ``"decode.K"``, then ``"test.decode.K"``), which the command
            line turns into the option (``--test.decode.K``).
        value: the value refused.
        requirement: what the value must be, said after the name (``"must be > 0"``).
    """

    def __init__(self, field: str, value: Any, requirement: str) -> None:
        super().__init__(f"{field} {requirement}, got {value!r}")
        self.field, self.value, self.requirement = field, value, requirement

    def within(self, prefix: str) -> FieldError:
        r"""The same error, its field named from a configuration above (``prefix`` ``"test."``)."""
        return FieldError(prefix + self.field, self.value, self.requirement)


class PrintableConfig:
    r"""Base of the configuration dataclasses: ``to_dict``/``from_dict`` and ``str`` as JSON."""

    def to_dict(self) -> dict[str, Any]:
        r"""The fields as JSON values: nested configurations as dicts, tuples as lists."""
        return {
            item.name: _json_value(getattr(self, item.name))
            for item in fields(self)  # type: ignore[arg-type]  # subclasses are dataclasses
        }

    @classmethod
    def from_dict(cls: type[Config], values: dict[str, Any]) -> Config:
        r"""The configuration of :meth:`to_dict`'s output; missing fields take the defaults.

        Raises:
            ValueError: a key that is no field (named), or a value the fields refuse.
        """
        return config_from_dict(dict(values), cls)

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _json_value(value: Any) -> Any:
    if isinstance(value, PrintableConfig):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


def config_from_dict(values: dict[str, Any], cls: type) -> Any:
    r"""Rebuild the (nested) configuration dataclass ``cls`` from its ``to_dict`` output.

    Missing fields take the defaults and JSON lists become tuples.

    Raises:
        ValueError: a key that is no field, named with the fields there are.
        FieldError: a value of another type than the field's default (a string for a
            number), before the configuration's own range checks compare it.
    """
    names = [item.name for item in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; the fields are {names}")
    kwargs = {}
    for name in names:
        if name not in values:
            continue
        value = values[name]
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            value = config_from_dict(value, type(default))
        else:
            value = tuple(value) if isinstance(value, list) else value
            _check_type(name, value, default)
        kwargs[name] = value
    return cls(**kwargs)


def _kind(default: Any) -> tuple[tuple[type, ...], str]:
    r"""The types a value of ``default``'s field may have, and their name (an int is a float)."""
    if isinstance(default, bool):
        return (bool,), "true or false"
    if isinstance(default, int):
        return (int,), "an integer"
    if isinstance(default, float):
        return (int, float), "a number"
    return (type(default),), f"a {type(default).__name__}"


def _check_type(name: str, value: Any, default: Any) -> None:
    r"""Raise :class:`FieldError` unless ``value`` (a tuple's items) has ``default``'s type."""
    if isinstance(default, tuple):
        if not isinstance(value, tuple):
            raise FieldError(name, value, "must be a list")
        if not default:
            return
        items, model, each = value, default[0], " each"
    else:
        items, model, each = (value,), default, ""
    types, said = _kind(model)
    for item in items:
        if not isinstance(item, types) or (isinstance(item, bool) and bool not in types):
            raise FieldError(name, value, f"must be {said}{each}")
