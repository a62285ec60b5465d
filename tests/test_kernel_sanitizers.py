"""The CPU build of the corner pooling kernel under ThreadSanitizer and UndefinedBehaviorSanitizer.

The threads of an emulated block really run at the same time (``kernel_emulation.py``), so a
missing ``__syncthreads()`` is a data race that ThreadSanitizer reports, whether or not the
result happens to come out right. UndefinedBehaviorSanitizer reports signed overflows,
out-of-range shifts and indices into fixed-size arrays. Each sanitizer runs the program
``cuda/emulation/sanitize.cpp`` on a few shapes (several strips and chunks, the column
carry, partial tiles), and must report nothing; a copy of the kernel altered on purpose
checks that each of them does report.

Without the sanitizer's runtime library the tests skip, except under ``CI``, where they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import kernel_emulation
import pytest

# planes x height x width: partial tiles on both sides, several strips and chunks (the column
# carry), one row, one column.
SHAPES = ["2x33x65", "1x70x40", "1x1x40", "1x40x1"]
OPTIONS = {
    "thread": {"TSAN_OPTIONS": "halt_on_error=1 exitcode=66"},
    "undefined": {"UBSAN_OPTIONS": "halt_on_error=1 print_stacktrace=1"},
}
REPORTS = {"thread": "WARNING: ThreadSanitizer", "undefined": "runtime error"}


def sanitized_program(variant: str, source_dir: Path = kernel_emulation.SOURCE_DIR) -> Path:
    missing = kernel_emulation.sanitizer_missing(variant)
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the sanitizer: {missing}")
        pytest.skip(missing)
    return kernel_emulation.build(variant, source_dir)


def run(program: Path, variant: str, shapes: list[str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, **OPTIONS[variant]}
    return subprocess.run(
        [str(program), *shapes], capture_output=True, text=True, env=environment, timeout=600
    )


def altered_copy(tmp_path: Path, pattern: str, replacement: str) -> Path:
    """A copy of the kernel sources with the one line matching ``pattern`` replaced."""
    copy = kernel_emulation.copy_sources(tmp_path)
    kernel = copy / "corner_pool.cu"
    source = kernel.read_text()
    altered, count = re.subn(pattern, replacement, source, flags=re.MULTILINE)
    assert count == 1, f"expected one line matching {pattern!r} in corner_pool.cu, got {count}"
    kernel.write_text(altered)
    return copy


@pytest.mark.parametrize("variant", ["thread", "undefined"])
def test_sanitizer_reports_nothing(variant):
    result = run(sanitized_program(variant), variant, SHAPES)
    assert REPORTS[variant] not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]


def test_thread_sanitizer_catches_a_missing_syncthreads(tmp_path):
    """Without the barrier between the scans and the store of the forward, threads read
    the shared tiles while others still write them: a race, reported."""
    source = altered_copy(tmp_path, r"^\s*__syncthreads\(\);\s*// both scans are done$", "")
    result = run(sanitized_program("thread", source), "thread", SHAPES[:1])
    assert REPORTS["thread"] in result.stderr and result.returncode != 0


def test_undefined_behaviour_sanitizer_catches_an_index_past_a_tile(tmp_path):
    """One step too many in the forward's column scan reads row 32 of a 32-row shared tile:
    an index past the array, reported."""
    source = altered_copy(
        tmp_path,
        r"(for \(int r = 0; r )<( tile\.rows; \+\+r\) \{\n\s*const Acc value = a_tile\[r\]\[c\];)",
        r"\1<=\2",
    )
    result = run(sanitized_program("undefined", source), "undefined", SHAPES[:1])
    assert REPORTS["undefined"] in result.stderr and result.returncode != 0
