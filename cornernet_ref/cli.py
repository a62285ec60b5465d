r"""The ``cornernet-ref`` command.

Each subcommand lives beside the code it runs: a module listed in ``SUBCOMMAND_MODULES``
defines ``add_subcommand(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning an exit status).

Bad input (a missing or damaged file, an option out of range) ends the command with one
line, ``cornernet-ref: error: ...``, and exit status 2, whether argparse or the command
finds it (:class:`~cornernet_ref.errors.InputError`); anything else is a bug and keeps its
traceback. Ctrl-C ends it with one line too, and status 130 (:data:`INTERRUPTED`); the
checkpoint on disk is the last one completed, since checkpoints are written atomically.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import NoReturn

from cornernet_ref.errors import InputError, print_error

INTERRUPTED = 130  # 128 + SIGINT: the status a shell reports for a command ended by Ctrl-C

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "cornernet_ref.train",
    "cornernet_ref.evaluate",
    "cornernet_ref.predict",
    "cornernet_ref.convert",
    "cornernet_ref.export",
)


class _Parser(argparse.ArgumentParser):
    r"""An argument parser whose errors are one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cornernet-ref",
        description="CornerNet (Law & Deng, ECCV 2018): train, evaluate, predict, convert, export.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    r"""Run ``cornernet-ref ARGV``; the exit status: 0, 2 (bad input) or 130 (Ctrl-C)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        # Files are written whole or not at all (atomic writes), so what is on disk is usable.
        print_error(
            "interrupted (Ctrl-C); the files written so far are complete, and a training run "
            "continues with --resume OUT/checkpoints/last.pt"
        )
        return INTERRUPTED


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as error:
        print_error(str(error))
        return 2
