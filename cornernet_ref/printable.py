r"""Configurations that print as JSON: the training and the test settings share one format."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any


class PrintableConfig:
    r"""Base of the configuration dataclasses: ``to_dict`` (nested) and ``str`` as JSON."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
