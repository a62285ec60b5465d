r"""Errors caused by what a user gave: each message names the file, record or option at fault.

The ``cornernet-ref`` command prints an :class:`InputError` as one line,
``cornernet-ref: error: <message>``, and exits with status 2 (the status of a usage error);
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys


class InputError(Exception):
    r"""Bad input: a missing or unreadable file, a malformed record, an option out of range."""


def first_line(error: BaseException) -> str:
    r"""The first non-blank line of ``error``'s message, or its type's name when it has none."""
    lines = (line.strip() for line in str(error).splitlines())
    return next((line for line in lines if line), type(error).__name__)


def print_error(message: str) -> None:
    r"""Write ``cornernet-ref: error: <message>`` to stderr, the form every command error has."""
    print(f"cornernet-ref: error: {message}", file=sys.stderr)


__all__ = ["InputError", "first_line", "print_error"]
