"""The command-line help is plain text: no documentation markup leaks into it."""

from __future__ import annotations

import re

import pytest

from cornernet_ref.cli import build_parser
from cornernet_ref.cli.options import field_descriptions

# Sphinx roles (:mod:`x`), mkdocstrings cross-references ([x][y]), inline code (``x``), math.
MARKUP = re.compile(r":[a-z]+:`|\]\[|``|\$")


def subcommand_parsers() -> dict:
    parser = build_parser()
    (subparsers,) = [action for action in parser._actions if action.dest == "command"]
    return {"cornernet-ref": parser, **subparsers.choices}


def test_the_markup_pattern_catches_what_the_docstrings_use():
    for text in (":mod:`cornernet_ref.evaluate`", "[reference][a.b]", "``--out``", "$2.5$"):
        assert MARKUP.search(text)
    assert not MARKUP.search("train CornerNet (paper §4.1) [default: 0.3], --out PNG")


@pytest.mark.parametrize("name", list(subcommand_parsers()))
def test_help_has_no_documentation_markup(name):
    text = subcommand_parsers()[name].format_help()
    assert not MARKUP.findall(text), f"{name} --help shows markup: {MARKUP.findall(text)}"


class Documented:
    r"""A configuration documented as the package's are.

    Attributes:
        plain: a description that goes on
            over two lines.
        width, height: the ``size`` of :class:`~cornernet_ref.model.CornerNet`'s input,
            see [pad_image][cornernet_ref.inference.pad_image]; $\alpha$ times.

    Raises:
        ValueError: not a field.
    """


def test_field_descriptions_are_read_off_the_docstring_as_plain_text():
    assert field_descriptions(Documented) == {
        "plain": "a description that goes on over two lines.",
        "width": "the size of CornerNet's input, see pad_image; alpha times.",
        "height": "the size of CornerNet's input, see pad_image; alpha times.",
    }
