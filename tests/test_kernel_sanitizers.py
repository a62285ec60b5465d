"""The CPU build of the corner pooling kernel under ThreadSanitizer and UndefinedBehaviorSanitizer.

The threads of an emulated block really run at the same time (``kernel_emulation.py``), so
two threads that write one value, or a missing synchronisation, is a data race that
ThreadSanitizer reports, whether or not the result happens to come out right.
UndefinedBehaviorSanitizer reports signed overflows, out-of-range shifts, misaligned accesses
(a vector load from an address that is not a multiple of its size) and indices into
fixed-size arrays. Each sanitizer runs the program
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

# planes x height x width: 33 rows (two groups of 32 lanes) and single loads (65 columns),
# vector rows of one chunk, of several (the row carry), rows of 2 packed in vectors; the
# program also cuts every plane's rows into 3 segments (the column carry).
SHAPES = ["2x33x65", "1x35x128", "1x5x260", "2x40x2"]
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


def test_thread_sanitizer_catches_two_threads_writing_one_row(tmp_path):
    """The kernels have no barrier to forget: each warp works alone, and each gradient has
    one owner. Give each line of the backward to two lanes, and both write it: a race,
    reported (the threads of an emulated block really run at once)."""
    source = altered_copy(
        tmp_path,
        r"\* WARP \+ threadIdx\.x % WARP;",
        "* WARP + threadIdx.x % WARP / 2;",
    )
    result = run(sanitized_program("thread", source), "thread", ["1x3x8"])
    assert REPORTS["thread"] in result.stderr and result.returncode != 0


def test_undefined_behaviour_sanitizer_catches_an_index_past_a_vector(tmp_path):
    """One step too many when a loaded row is widened goes past its VEC values: an index
    past the array, reported."""
    source = altered_copy(
        tmp_path,
        r"for \(int j = 0; j < N; \+\+j\) (row\[j\] = widen)",
        r"for (int j = 0; j <= N; ++j) \1",
    )
    result = run(sanitized_program("undefined", source), "undefined", ["1x3x128"])
    assert REPORTS["undefined"] in result.stderr and result.returncode != 0
