"""The one-line reasons that user errors quote."""

from __future__ import annotations

import pytest

from cornernet_ref.errors import first_line


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ValueError("bad size\nsecond line"), "bad size"),
        (RuntimeError("\n  \nafter blank lines  \nmore"), "after blank lines"),
        (EOFError(), "EOFError"),
        (OSError("   "), "OSError"),
    ],
)
def test_first_line_is_the_first_non_blank_line_or_the_type(error, line):
    assert first_line(error) == line
