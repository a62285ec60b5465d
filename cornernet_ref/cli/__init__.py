r"""The ``cornernet-ref`` command: every parser of the package, and nothing else.

The subcommands (:mod:`cornernet_ref.cli.commands`) read their options here and call the
procedures of the package (:func:`cornernet_ref.train.train`,
:func:`cornernet_ref.evaluate.evaluate`, :func:`cornernet_ref.predict.detect`,
:func:`cornernet_ref.convert.convert_file`, :func:`cornernet_ref.export.export_onnx`),
which take configurations and paths, not parsed arguments. The configuration fields become
options in :mod:`cornernet_ref.cli.options`: ``train`` takes every field of its
:class:`~cornernet_ref.config.TrainConfig`, and ``train``, ``evaluate`` and ``predict`` the
same ``--test.*`` options, those of :class:`~cornernet_ref.inference.TestConfig`.

Bad input (a missing or damaged file, an option out of range) ends the command with one
line, ``cornernet-ref: error: ...``, and exit status 2, whether argparse or the command
finds it (:class:`~cornernet_ref.errors.InputError`); anything else is a bug and keeps its
traceback. Ctrl-C ends it with one line too, and status 130 (:data:`INTERRUPTED`); the
checkpoint on disk is the last one completed, since checkpoints are written atomically.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from cornernet_ref.cli.commands import COMMANDS
from cornernet_ref.errors import InputError, print_error

INTERRUPTED = 130  # 128 + SIGINT: the status a shell reports for a command ended by Ctrl-C


class _Parser(argparse.ArgumentParser):
    r"""An argument parser whose errors are one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split()[0]  # "cornernet-ref", as every other error begins
        self.exit(2, f"{command}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    r"""The parser of ``cornernet-ref`` and its subcommands; ``func`` runs the one given."""
    parser = _Parser(
        prog="cornernet-ref",
        description="CornerNet (Law & Deng, ECCV 2018): train, evaluate, predict, convert, export.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    r"""Run ``cornernet-ref ARGV``; the exit status: 0, 2 (bad input) or 130 (Ctrl-C)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        pass
    except Exception as error:
        if not _raised_by_ctrl_c(error):
            raise  # a bug: its traceback
    # Files are written whole or not at all (atomic writes), so what is on disk is usable.
    print_error(
        "interrupted (Ctrl-C); the files written so far are complete, and a training run "
        "continues with --resume OUT/checkpoints/last.pt"
    )
    return INTERRUPTED


def _raised_by_ctrl_c(error: BaseException) -> bool:
    r"""Whether ``error`` came of a Ctrl-C: a library that catches exceptions broadly can
    turn the KeyboardInterrupt into an error of its own (``torch.onnx.export`` interrupted
    inside an import: the half-imported module then lacks an attribute, and the exporter
    wraps that ``AttributeError`` in a ``TorchExportError``). The KeyboardInterrupt stays in
    the chain of causes and contexts."""
    link: BaseException | None = error
    seen: set[int] = set()
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as error:
        print_error(str(error))
        return 2


__all__ = ["INTERRUPTED", "build_parser", "main"]
