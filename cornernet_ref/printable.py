r"""Configurations as JSON: the training, model and test settings print and load one way."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, fields
from typing import Any


class PrintableConfig:
    r"""Base of the configuration dataclasses: ``to_dict`` (nested) and ``str`` as JSON."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def config_from_dict(values: dict[str, Any], cls: type) -> Any:
    r"""Rebuild the (nested) configuration dataclass ``cls`` from its ``to_dict`` output.

    Missing fields take the defaults and JSON lists become tuples.

    Raises:
        ValueError: a key that is no field, named with the fields there are.
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
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
