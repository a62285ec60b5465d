"""The ``cornernet-ref`` command.

Each subcommand lives beside the code it runs: a module listed in ``SUBCOMMAND_MODULES``
defines ``add_subcommand(subparsers)``, which adds its parser and sets ``func`` (called
with the parsed arguments, returning an exit status).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "cornernet_ref.train",
    "cornernet_ref.evaluate",
    "cornernet_ref.predict",
    "cornernet_ref.convert",
    "cornernet_ref.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cornernet-ref",
        description="CornerNet (Law & Deng, ECCV 2018): train, evaluate, predict, convert, export.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
