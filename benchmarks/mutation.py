"""Mutation testing of the core modules: how many small, plausible bugs the tests catch.

Each mutant changes one node of one module's syntax tree (see ``OPERATORS``; in the CUDA
kernel, one token of one line, see ``CUDA_TOKENS``), is written into a temporary copy of the
checkout (the worktree is never touched; ``--jobs N`` runs N mutants at once, each on a copy
of its own) and is run against the test files that cover that module (``MODULES``), with
``-x`` and the bounded hypothesis profile (``CI=true``, without shrinking). A mutant is
*killed* when the tests fail, *killed by timeout* when they run longer than ``--timeout``
(reported apart), and *survives* when they pass. Every survivor is either killed by a new
test or listed in ``EQUIVALENT`` with the reason it cannot change behaviour; the result
lists both.

To save the ``import torch`` of every run, one parent process imports torch, pytest and
hypothesis, then forks a child per mutant; the child imports the mutated package from the
temporary copy. The run is niced (``nice -n 15``) and writes its JSON after every mutant, so
it can be stopped and resumed::

    nice -n 15 python benchmarks/mutation.py                     # all modules (hours on 2 cores)
    nice -n 15 python benchmarks/mutation.py --module decode     # one module
    nice -n 15 python benchmarks/mutation.py --resume            # go on where it stopped
    nice -n 15 python benchmarks/mutation.py --resume --jobs 2   # two at once, on 2 cores
    nice -n 15 python benchmarks/mutation.py --resume --rerun survived  # after adding tests
    nice -n 15 python benchmarks/mutation.py --resume --rerun timeout --timeout 300
    python benchmarks/mutation.py --list --module decode         # print the mutants only

The result is ``benchmarks/results/mutation.json``: top-level ``killed`` and ``total``,
per module the counts of the first run and of the current one, and the survivors.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ["CI"] = "true"  # the bounded, derandomised hypothesis profile of tests/conftest.py
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per run on a shared machine
os.environ.setdefault("MPLBACKEND", "Agg")

import hypothesis  # noqa: E402  (imported once here, inherited by every forked run)
import numpy  # noqa: E402
import pytest  # noqa: E402
from report import header  # noqa: E402  (imports torch once, for every forked run)

ROOT = Path(__file__).resolve().parents[1]


def _register_profile_without_shrinking(name, parent=None, **kwargs):
    """Hypothesis profiles as tests/conftest.py registers them, without the shrink phase:
    the first failing example kills the mutant; shrinking it would only cost time."""
    phases = [
        p for p in hypothesis.Phase if p not in (hypothesis.Phase.shrink, hypothesis.Phase.explain)
    ]
    kwargs.setdefault("phases", phases)
    return _register_profile(name, parent, **kwargs)


_register_profile = hypothesis.settings.register_profile
# settings refuses attribute assignment; this run only (the forked children inherit it).
type.__setattr__(
    hypothesis.settings, "register_profile", staticmethod(_register_profile_without_shrinking)
)
RESULT = ROOT / "benchmarks" / "results" / "mutation.json"

# Module -> (source file, the test files that cover it, the fastest and most direct first).
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "targets": ("cornernet_ref/targets.py", ("tests/test_targets.py", "tests/test_losses.py")),
    "losses": ("cornernet_ref/losses.py", ("tests/test_losses.py", "tests/test_config.py")),
    "corner_pool.reference": (
        "cornernet_ref/corner_pool/reference.py",
        (
            "tests/test_corner_pool_reference.py",
            "tests/test_corner_pool.py",
            "tests/test_corner_pool_op.py",  # the operator's CPU kernels are the reference's
        ),
    ),
    "decode": ("cornernet_ref/decode.py", ("tests/test_decode.py", "tests/test_soft_nms.py")),
    "convert": (
        "cornernet_ref/convert.py",
        ("tests/test_convert.py", "tests/test_convert_checks.py"),
    ),
    "data.augment": (
        "cornernet_ref/data/augment.py",
        ("tests/test_data_augment.py", "tests/test_data_loader.py", "tests/test_config.py"),
    ),
    # The kernel's source, run by the tests through its CPU build (tests/kernel_emulation.py),
    # which each mutant rebuilds (about 17 s on 2 cores).
    "corner_pool.kernel": (
        "cornernet_ref/corner_pool/cuda/corner_pool.cu",
        ("tests/test_corner_pool_kernel.py", "tests/test_corner_pool.py"),
    ),
}

# The forked child runs pytest in a process that imported hypothesis already (for the profile
# above), so pytest warns that it cannot rewrite hypothesis' asserts; the project makes
# warnings errors, and this one says nothing about the code under test.
PYTEST_ARGS = (
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
    "-W",
    "ignore::pytest.PytestAssertRewriteWarning",
)

COMPARE_SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}  # fmt: skip
BINOP_SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
}  # fmt: skip
NAME_SWAPS = {
    "min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum",
    "amin": "amax", "amax": "amin", "argmin": "argmax", "argmax": "argmin",
    "floor": "ceil", "ceil": "floor", "cummax": "cummin", "cummin": "cummax",
}  # fmt: skip
# The CUDA kernel's mutations, the operators above that C++ shares: (pattern, replacement,
# description). A binary operator is matched with the spaces the source puts around it, so
# that template brackets (VEC<T>), shifts and -> are left alone.
CUDA_TOKENS = (
    (r" < ", " <= ", "`<` -> `<=`"), (r" <= ", " < ", "`<=` -> `<`"),
    (r" > ", " >= ", "`>` -> `>=`"), (r" >= ", " > ", "`>=` -> `>`"),
    (r" == ", " != ", "`==` -> `!=`"), (r" != ", " == ", "`!=` -> `==`"),
    (r" \+ ", " - ", "`+` -> `-`"), (r" - ", " + ", "`-` -> `+`"),
    (r" \* ", " / ", "`*` -> `/`"), (r" / ", " * ", "`/` -> `*`"),
    (r" && ", " || ", "`&&` -> `||`"), (r" \|\| ", " && ", "`||` -> `&&`"),
    (r" & ", " | ", "`&` -> `|`"),
    (r"!(?=[\w(])", "", "`!` removed"),
    (r"\btrue\b", "false", "`true` -> `false`"), (r"\bfalse\b", "true", "`false` -> `true`"),
    (r"\bmin\(", "max(", "`min` -> `max`"), (r"\bmax\(", "min(", "`max` -> `min`"),
)  # fmt: skip
CUDA_INTEGER = r"(?<![\w.])\d+(?![\w.])"  # a decimal constant: +1 and -1

OPERATORS = (
    "comparison flip: < <=, > >=, == !=, is / is not, in / not in",
    "arithmetic: + -, * /, // %, ** -> *, & |",
    "boolean: and <-> or, `not` removed, True <-> False",
    "integer constant +1 and -1 (so index 0 -> -1), unary minus removed",
    "function or method swap: min/max, minimum/maximum, amin/amax, argmin/argmax, "
    "floor/ceil, cummax/cummin",
)

# Lines left out, each with its reason: (module, text the line contains, reason).
EXCLUDED: tuple[tuple[str, str, str], ...] = (
    ("corner_pool.kernel", "CORNER_POOL_ACCESS(",
     "a note for the access proxy's trace, empty on a GPU: it computes nothing"),
)  # fmt: skip

# Survivors that cannot change behaviour: (module, text the line contains, mutation, reason).
EQUIVALENT: tuple[tuple[str, str, str, str], ...] = (
    ("decode", "if kernel < 1 or kernel % 2 == 0:", "`1` -> `0`",
     "kernel 0 is even, so `kernel % 2 == 0` still rejects it"),
    ("decode", "k = min(config.K, heat[0].numel())", "`0` -> `-1`",
     "the images of a batch share one (C, H, W) map: the first and the last have one size"),
    ("decode", "padding=(kernel - 1) // 2", "`1` -> `0`",
     "the kernel is odd (checked just above), so kernel // 2 == (kernel - 1) // 2"),
    ("decode", "pick)[..., 0]", "`0` -> `-1`",
     "gather_at of a one-channel map gives (B, D, 1): index 0 is index -1"),
    ("decode", "x1, y1, x2, y2 = boxes.unbind(-1)", "unary `-` removed",
     "boxes are (N, 4) (checked by soft_nms): dimension 1 is dimension -1"),
    ("decode", "inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)", "`0` -> `-1`",
     "the clamp changes only pairs with no common pixel row or column, which are not "
     "touching, and whose IoU torch.where sets to 0 on the next line"),
    ("losses", "torch.where(y < 1, neg_terms, 0)", "`<` -> `<=`",
     "at y = 1 the negative term has the factor (1 - y)^beta = 0 (log(1 - p) is finite, p "
     "being clamped), so adding it changes nothing"),
    ("losses", "torch.where(y < 1, neg_terms, 0)", "`1` -> `2`",
     "targets lie in [0, 1] (documented); y = 1 adds a zero term, as for `<=`"),
    ("losses", "pairs &= count >= (1 if single_object_push else 2)", "`1` -> `0`",
     "an image with no object has no occupied slot, hence no pair in `pairs` already"),
    ("corner_pool.reference", "sum_block < 0 or", "`0` -> `-1`",
     "-1, the one integer it lets through, fails the next test (not a multiple of 16): the "
     "same error"),
    ("corner_pool.reference", "if step > 0:", "`>` -> `>=`",
     "at step 0 the loop ends: the run total it would update is never read"),
    ("corner_pool.reference", "if step > 0:", "`0` -> `-1`",
     "at step 0 the loop ends: the run total it would update is never read"),
    ("corner_pool.reference", "return bool(x.max().isnan())", "`.max` -> `.min`",
     "min propagates NaN as max does: either reduction is NaN exactly when the map holds one"),
    ("corner_pool.reference", "for _ in range(2)]", "`2` -> `3`",
     "the passes alternate between the first two maps (passes % 2); a third is never used"),
    ("corner_pool.reference", "step, passes = 1, 0", "`0` -> `-1`",
     "the passes alternate between the two maps; which of them the first one writes is "
     "immaterial"),
    ("corner_pool.reference", "step, passes = 1, 0", "`0` -> `1`",
     "the passes alternate between the two maps; which of them the first one writes is "
     "immaterial"),
    ("corner_pool.reference", "target, passes = maps[passes % 2], passes + 1", "`+` -> `-`",
     "passes - 1 alternates in parity as passes + 1 does: the same two maps by turns"),
    ("corner_pool.reference", "while step < length:", "`<` -> `<=`",
     "the extra pass, when the length is a power of two, updates no position (slices of "
     "length 0) and copies the whole map as its border: the same values"),
    ("convert", "for s, p in zip(source, window, strict=True)", "`True` -> `False`",
     "the window is checked to have the rule's length first: the zip cannot be uneven"),
    ("convert", "return sorted(rules, key=lambda rule: -len(rule[0]))", "unary `-` removed",
     "no fragment of RULES is a prefix of another (wildcards included), so at most one rule "
     "matches at a position and their order never matters"),
    ("convert", "return sorted(rules, key=lambda rule: -len(rule[0]))", "`0` -> `-1`",
     "no fragment of RULES is a prefix of another, so the order of the rules never matters"),
    ("convert", "return sorted(rules, key=lambda rule: -len(rule[0]))", "`0` -> `1`",
     "no fragment of RULES is a prefix of another, so the order of the rules never matters"),
    ("convert", 'dims, modules = [shape(level + "up1.0.conv1.weight")[0]], []', "`0` -> `1`",
     "the first block of the outer hourglass keeps its width: the weight is (d0, d0, 3, 3)"),
    ("data.augment", "if config.flip and rng.uniform() > 0.5:", "`>` -> `>=`",
     "differs only when the uniform draw is exactly 0.5, a chance of 2^-53 per image"),
    ("decode", "if boxes.dim() != 2 or boxes.shape[-1] != 4", "unary `-` removed",
     "checked after boxes.dim() != 2 (the `or` stops there otherwise): shape[1] is shape[-1]"),
    ("decode", "torch.where(valid, labels.long(), -1)", "`1` -> `2`",
     "any negative key leaves a box out: the loops and the table test `key >= 0`"),
    ("decode", "width = max(sizes.tolist(), default=0)", "`0` -> `1`",
     "the default serves only an input with no box, whose table has no row either way"),
    ("decode", "starts = sizes.cumsum(0) - sizes", "`0` -> `-1`",
     "sizes is one-dimensional: dimension 0 is dimension -1"),
    ("decode", "clamp(max=max(total - 1, 0))", "`0` -> `-1`",
     "differs only when there is no box (total = 0): an empty table either way"),
    ("decode", "clamp(max=max(total - 1, 0))", "`0` -> `1`",
     "differs only when total <= 1: then every class has at most one box, the table one "
     "column, and no padded position to clamp"),
    ("decode", "count = torch.where(class_keys >= 0, sizes, 0)", "`0` -> `-1`",
     "a count of -1 or 0 for the left-out boxes keeps none of them: `column < count` is false"),
    ("decode", "spare = values.new_zeros(total + 1)", "`1` -> `2`",
     "one more spare slot, cut off by `[:total]` with the first"),
    ("decode", "return spare.scatter(0, slot, values.flatten())[:total]", "`0` -> `-1`",
     "spare is one-dimensional: dimension 0 is dimension -1"),
    ("decode", "by_rank = torch.zeros(len(s), spare + 1", "`1` -> `2`",
     "one more column past the spare one, which no rank reaches"),
    # targets, official radius: min(shift, shrink, grow) is always the shrink root (chapter 1
    # §3.2; test_shrinking_root_is_the_smallest_over_the_whole_domain), so a mutant that only
    # raises the grow or shift root cannot change it. Each was also compared with the original
    # on 2e5 random inputs (t in (1e-6, 1 - 1e-6), aspect ratios 1e-4 to 1e4, sizes 1e-3 to
    # 1e3): no change, except the two noted, whose changes are rounding.
    ("targets", "return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)", "unary `-` removed",
     "larger_root serves only grow, whose b = 2t(w + h) > 0: (b + sqrt D) / 2a > grow, "
     "and grow never binds"),
    ("targets", "return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)", "`4` -> `5`",
     "larger_root serves only grow, whose c = (t - 1)wh < 0: b^2 - 5ac > b^2 - 4ac raises "
     "the root, and grow never binds"),
    ("targets", "return (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)", "`2` -> `1`",
     "larger_root serves only grow: dividing by a, not 2a, doubles the positive root, and "
     "grow never binds"),
    ("targets", "shift = smaller_root(1.0, -(h + w), w * h * (1 - t) / (1 + t))", "`/` -> `*`",
     "c = (1 - t)(1 + t)wh > (1 - t)wh / (1 + t) raises the smaller root (D stays >= 0), and "
     "shift never binds; in floats unchanged for t in [1e-3, 1 - 1e-3] and aspect ratios to "
     "1e3, beyond (t within 1e-6 of 1, thinner boxes) a change <= 5e-7 relative, the size of "
     "the cancellation error of the original's own roots there"),
    ("targets", "grow = larger_root(4 * t, 2 * t * (h + w), (t - 1) * w * h)", "`4` -> `3`",
     "3t r^2 < 4t r^2 for r > 0 raises the positive root, and grow never binds; in floats "
     "unchanged for t in [1e-3, 1 - 1e-3] and aspect ratios to 1e3, beyond a change <= 2e-7 "
     "relative, within the original's cancellation error there"),
    ("targets", "grow = larger_root(4 * t, 2 * t * (h + w), (t - 1) * w * h)", "`4` -> `5`",
     "the root drops but stays >= the shrink root r: with (1 - t)wh = 2r(w + h) - 4r^2 the "
     "quadratic at r is r((4 + 5t)r - 2(1 - t)(w + h)) <= 0 (asserted in "
     "test_shrinking_root_is_the_smallest_over_the_whole_domain)"),
    ("targets", "grow = larger_root(4 * t, 2 * t * (h + w), (t - 1) * w * h)", "`2` -> `1`",
     "b = t(w + h) < 2t(w + h) with c < 0 raises the positive root, and grow never binds"),
    ("targets", "grow = larger_root(4 * t, 2 * t * (h + w), (t - 1) * w * h)", "`+` -> `-`",
     "b = 2t(h - w) < 2t(h + w) with c < 0 raises the positive root, and grow never binds"),
    ("targets", "grow = larger_root(4 * t, 2 * t * (h + w), (t - 1) * w * h)", "`1` -> `2`",
     "c = (t - 2)wh < (t - 1)wh raises the positive root, and grow never binds"),
    ("targets", "if t >= 0.25 else math.sqrt(1 - 2 * t)", "`>=` -> `>`",
     "at t = 0.25 both branches give sqrt(1/2) bit for bit, 0.5 * fl(sqrt 2) being "
     "fl(sqrt 0.5) (test_exact_radius_of_a_square_agrees_on_both_sides_of_one_quarter)"),
    ("targets", "low, high = (middle, high) if x * y < t * rho else (low, middle)", "`<` -> `<=`",
     "differs only where the float XY equals t rho exactly; either branch keeps a float root "
     "and ends in its rounding plateau: <= 7e-13 relative for t <= 0.999, 7e-10 at t within "
     "1e-6 of 1"),
    *[
        ("targets", f"{side} = max(1, math.ceil(", "`1` -> `2`",
         "changes only a side measured as 1 cell into 2; both give the radius 0 once "
         "truncated, as every radius is below half the shorter side "
         "(test_radius_is_below_half_the_shorter_side)")
        for side in ("box_h", "box_w")
    ],
    ("targets", "boxes = boxes.reshape(0, 4)", "`0` -> `-1`",
     "the array is empty (checked just above): reshape(-1, 4) gives (0, 4) as well"),
    ("targets", "enumerate(zip(boxes, labels, strict=True))", "`True` -> `False`",
     "labels are checked to have one entry per box and filtered by the same mask: the zip "
     "cannot be uneven"),
    *[
        ("corner_pool.kernel", code, "`0` -> `1`",
         "Lines and Walker serve the backward, whose packed rows are 2 or 4 wide (a column "
         "is walked as a row): Packed is never 1")
        for code in (
            "static constexpr int ROW = Packed > 0 ? Packed : N;",
            "return Reverse && (Along || Packed > 0) ? N - 1 - t : t;",
            "const int vectors = Packed > 0 ? 1 : static_cast<int>(ceil_div(width, N));",
            "walker.lines = Packed > 0 ? Packed : min(N, width - at);",
            "} else if (Packed > 0) {",
        )
    ],
    *[
        ("corner_pool.kernel", code, mutation,
         "with one block (count 1), block is 0 and the block's length is the line's: "
         "start 0 and end the length either way")
        for code, mutation in (
            ("const int start = count > 1 ? block * blocks.length : 0;", "`>` -> `>=`"),
            ("const int start = count > 1 ? block * blocks.length : 0;", "`1` -> `0`"),
            ("const int end = count > 1 ? min(start + blocks.length, length) : length;",
             "`>` -> `>=`"),
            ("const int end = count > 1 ? min(start + blocks.length, length) : length;",
             "`1` -> `0`"),
        )
    ],
    ("corner_pool.kernel", "walker.row_end = 0;", "`0` -> `1`",
     "a column walker never reads row_end (only a row walker's border and counts do)"),
    *[
        ("corner_pool.kernel",
         "* lines_per_plane + index * ROWS;",
         mutation,
         "the slot of a row walker of packed rows is never read: packed rows are never cut "
         "into blocks")
        for mutation in ("`*` -> `/`", "`+` -> `-`")
    ],
    ("corner_pool.kernel", "return Reverse && (Along || Packed > 0) ? N - 1 - t : t;",
     "`>` -> `>=`",
     "then a column walker of rows as they are takes its vector's numbers backwards too: "
     "each is a column of its own, a line apart, so their order changes nothing"),
    ("corner_pool.kernel", "ROWS = Lines<T, Reverse, false, Packed>::ROWS;", "`false` -> `true`",
     "Lines' ROWS, the rows of a vector, does not depend on the kind of line"),
    ("corner_pool.kernel", "for (int distance = 1; distance < WARP; distance *= 2) {",
     "`<` -> `<=`",
     "one more shuffle step, 32 lanes apart: no lane of a warp (or of a group of at most 32) "
     "has a lane that far before it, so each gets its own value back, which first_max leaves "
     "as it is (and prefix_kernel's `lane >= distance` holds for none)"),
    ("corner_pool.kernel", "return {neutral<Acc>(), first, -Acc(0), -Acc(0)};", "`0` -> `1`",
     "(the last field, `head`) a run that starts at a border has a position from the start, "
     "so nothing sets its head; it is written only for a line's first block, whose head no "
     "join reads (a join adds the heads of the blocks after a tail's)"),
    ("corner_pool.kernel", "return {maximum, -1, -Acc(0), -Acc(0)};", "`1` -> `2`",
     "only the sign of `at` is ever tested (`at >= 0`, `at < 0`, `tail_at >= 0`): -2 says "
     "\"no position\" as -1 does"),
    *[
        ("corner_pool.kernel", "return first + (step < steps ? step : 0) * stride;", mutation,
         "it changes only the offsets of steps past the end, which nothing reads: their count "
         "is 0, so no load or store uses them (nor the access trace), the backward's visits "
         "stop at the end, and block_maxima_kernel's visit ignores the offset")
        for mutation in ("`<` -> `<=`", "`0` -> `1`")
    ],
    ("corner_pool.kernel",
     "for (int first_step = 0; first_step < walker.steps; first_step += Ahead) {",
     "`<` -> `<=`",
     "one more batch when the steps are a multiple of Ahead, all of whose steps lie past the "
     "end: their count is 0, so it loads nothing, and its visits stop at once (the walkers) "
     "or fold -inf, which moves no maximum (block_maxima_kernel)"),
    ("corner_pool.kernel", "walker.lines = 1;", "`1` -> `2`",
     "a row walker of rows as they are has one line (its Lines' COUNT is 1), and `lines` is "
     "only ever compared with k < COUNT, so k = 0 only: any count of at least 1 reads the "
     "same"),
    ("corner_pool.kernel", "if (blocks.count == 1) return blocks;", "`1` -> `0`",
     "a count is never 0: without the early return, lines of one block get a block length "
     "and arrays as if cut, and scratch moves by blocked_bytes(lines, 1) = 0; nothing reads "
     "them, since only lines of several blocks launch the walkers of blocks, their maxima, "
     "prefix and join (`blocked = blocks.count > 1`)"),
    *[
        ("corner_pool.kernel", "head = moved && at < 0 ? sum : head;", mutation,
         "then at == 0 counts as entered too: the run's maximum is the plane's first number, "
         "the first position of its line in scan order (scanning backwards, the last, after "
         "which nothing moves), so only a line's first block has it, and no join reads that "
         "block's head")
        for mutation in ("`<` -> `<=`", "`0` -> `1`")
    ],
    ("corner_pool.kernel", "return {maximum, -1, -Acc(0), -Acc(0)};", "`0` -> `1`",
     "(the last field, `head`) an entered run's head is set when a new maximum completes the "
     "run, and when none does its sum is written in its place: the first value is never read"),
    ("corner_pool.kernel",
     "if (count > 0) loaded = *reinterpret_cast<const Words*>(src + offset);", "`0` -> `1`",
     "(load, a vector at once) the count of a vectorized load is VEC, at least 2, or none: "
     "count > 1 is count > 0"),
    ("corner_pool.kernel", "if (!Maxima && a != nullptr && count > 0 && segment > 0) {",
     "`>` -> `>=`",
     "then a lane whose count is 0 enters too, and its loop over `j < count` reads nothing"),
    ("corner_pool.kernel", "for (int j = 0; j < VEC<T>; ++j) {", "`<` -> `<=`",
     "(load, number by number) one more number, j = VEC, whose `j < count` is false since a "
     "count is at most VEC: it is neither read nor noted by the access trace"),
    ("corner_pool.kernel", "for (int r = 0; r < R; ++r) before[r] = neutral<Acc>();",
     "`0` -> `1`",
     "(the forward) the first row's carry is then not set before the chunks, but nothing "
     "reads it before a batch sets it: at a column segment's first chunk every row's is read "
     "from row_carry or set to -inf, and a later chunk keeps the one the chunk before left"),
)  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    id: str  # "L<line>C<col> <mutation>", unique within the module
    line: int
    mutation: str
    code: str  # the source line, stripped
    source: str  # the whole mutated module

    def anchor(self, lines: list[str]) -> str:
        """The mutant's name that survives edits elsewhere in the file (``lines``: the
        module's lines, stripped): its line's code, which of the lines with that code it is,
        and the rest of its id. A resumed run keeps the outcome of a mutant whose anchor it
        finds again, and runs the others."""
        code = lines[self.line - 1]
        occurrence = lines[: self.line - 1].count(code)
        return f"{code} #{occurrence} {self.id.removeprefix(f'L{self.line}')}"


def skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, argument defaults, raise
    statements (the error, not its condition) and f-strings."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            mark(node)  # docstrings
        elif isinstance(node, ast.arg | ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
            for default in node.args.defaults + node.args.kw_defaults:
                mark(default)  # configuration values, not logic
        elif isinstance(node, ast.Raise | ast.JoinedStr):
            mark(node)  # the error itself, not the condition that raises it
    return skip


def parents(tree: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    """id(child) -> (parent, field, index in the field's list or None)."""
    found = {}
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        found[id(child)] = (parent, field, i)
            elif isinstance(value, ast.AST):
                found[id(value)] = (parent, field, None)
    return found


def replace(tree: ast.AST, node: ast.AST, new: ast.AST) -> None:
    parent, field, index = parents(tree)[id(node)]
    if index is None:
        setattr(parent, field, new)
    else:
        getattr(parent, field)[index] = new


def node_mutations(node: ast.AST) -> Iterator[tuple[str, object]]:
    """(description, edit) pairs for one node; ``edit(tree, node)`` applies it to a copy."""
    sym = lambda op: ast.unparse(ast.BinOp(ast.Name("a"), op(), ast.Name("b")))[2:-2]  # noqa: E731

    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                new = COMPARE_SWAPS[type(op)]
                text = lambda o: ast.unparse(ast.Compare(ast.Name("a"), [o()], [ast.Name("b")]))  # noqa: E731
                desc = f"`{text(type(op))[2:-2]}` -> `{text(new)[2:-2]}`"
                yield desc, lambda t, n, i=i, new=new: n.ops.__setitem__(i, new())
    elif isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in BINOP_SWAPS:
        new = BINOP_SWAPS[type(node.op)]
        desc = f"`{sym(type(node.op))}` -> `{sym(new)}`"
        yield desc, lambda t, n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        desc = "`and` -> `or`" if new is ast.Or else "`or` -> `and`"
        yield desc, lambda t, n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        desc = "`not` removed" if isinstance(node.op, ast.Not) else "unary `-` removed"
        yield desc, lambda t, n: replace(t, n, n.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        yield f"`{node.value}` -> `{not node.value}`", lambda t, n: setattr(n, "value", not n.value)
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        for step in (1, -1):
            desc = f"`{node.value}` -> `{node.value + step}`"
            yield desc, lambda t, n, step=step: setattr(n, "value", n.value + step)
    elif isinstance(node, ast.Name) and node.id in NAME_SWAPS:
        yield (
            f"`{node.id}` -> `{NAME_SWAPS[node.id]}`",
            lambda t, n: setattr(n, "id", NAME_SWAPS[n.id]),
        )
    elif isinstance(node, ast.Attribute) and node.attr in NAME_SWAPS:
        yield (
            f"`.{node.attr}` -> `.{NAME_SWAPS[node.attr]}`",
            lambda t, n: setattr(n, "attr", NAME_SWAPS[n.attr]),
        )


def cuda_code(line: str) -> str:
    """The code of one line of CUDA source, its comment cut off and its string literals
    blanked (a message is not logic); "" for a comment line, a preprocessor line or the head
    of a template (whose `<` and `>` are brackets)."""
    code = re.sub(r'"[^"]*"', lambda found: '"' + " " * (len(found.group()) - 2) + '"', line)
    code = code.split("//")[0]
    stripped = code.strip()
    if stripped.startswith(("#", "template <", "*")) or not stripped:
        return ""
    return code


def cuda_mutants(source: str, excluded: set[int]) -> list[Mutant]:
    """Every mutant of a CUDA source: each ``CUDA_TOKENS`` match and each integer constant
    (+1, -1) in the code of each line, one at a time."""
    lines = source.splitlines(keepends=True)
    found = []
    for number, line in enumerate(lines, 1):
        code = cuda_code(line)
        if not code or number in excluded:
            continue
        edits = [
            (match, replacement, desc)
            for pattern, replacement, desc in CUDA_TOKENS
            for match in re.finditer(pattern, code)
        ]
        for match in re.finditer(CUDA_INTEGER, code):
            value = int(match.group())
            edits += [(match, str(value + step), f"`{value}` -> `{value + step}`")
                      for step in (1, -1) if value + step >= 0]  # fmt: skip
        for match, replacement, desc in edits:
            mutated = line[: match.start()] + replacement + line[match.end() :]
            text = "".join(lines[: number - 1]) + mutated + "".join(lines[number:])
            ident = f"L{number}C{match.start()} {desc}"
            found.append(Mutant(ident, number, desc, line.strip(), text))
    return sorted(found, key=lambda m: (m.line, m.id))


def mutants(module: str) -> list[Mutant]:
    """Every mutant of ``module``, in source order (of a Python module, those that unparse
    unchanged left out)."""
    path = ROOT / MODULES[module][0]
    source = path.read_text()
    lines = source.splitlines()
    excluded = {
        number
        for name, text, _ in EXCLUDED
        if name == module
        for number, line in enumerate(lines, 1)
        if text in line
    }
    if path.suffix == ".cu":
        return cuda_mutants(source, excluded)
    tree = ast.parse(source)
    original = ast.unparse(tree)
    skip = skipped_nodes(tree)
    found, seen_ids, seen_sources = [], set(), {original}
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or getattr(node, "lineno", None) in excluded:
            continue
        for desc, edit in node_mutations(node):
            mutated = copy.deepcopy(tree)
            target = next(n for i, n in enumerate(ast.walk(mutated)) if i == index)
            edit(mutated, target)
            text = ast.unparse(ast.fix_missing_locations(mutated))
            if text in seen_sources:
                continue
            seen_sources.add(text)
            ident = f"L{node.lineno}C{node.col_offset} {desc}"
            while ident in seen_ids:
                ident += "'"
            seen_ids.add(ident)
            found.append(Mutant(ident, node.lineno, desc, lines[node.lineno - 1].strip(), text))
    return sorted(found, key=lambda m: (m.line, m.id))


class FirstFailure:
    """pytest plugin: the node id of the first failing test."""

    def __init__(self) -> None:
        self.nodeid = ""

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed and not self.nodeid:
            self.nodeid = report.nodeid


NOT_COMPILED = 98  # the child's exit status when a mutant of the kernel does not compile


@dataclass(frozen=True)
class TestRun:
    """The tests of one copy, running in a forked child (``start_tests``)."""

    pid: int
    copy_root: Path
    start: float
    timeout: float
    build_kernel: bool


def start_tests(
    copy_root: Path, tests: tuple[str, ...], timeout: float, build_kernel: bool = False
) -> TestRun:
    """Start ``tests`` in a forked child on the copy (``ended`` says when they have ended).
    ``build_kernel``: first build the kernel's CPU build from the copy, into a cache beside
    it (each copy has its own, so that runs on several copies do not share one); a mutant
    that does not compile is ``not_compiled``, neither killed nor survived (the tests would
    fail on the build, which says nothing about them)."""
    (copy_root / ".first_failure").unlink(missing_ok=True)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child: import the package from the copy, never from the worktree
        try:
            os.setpgid(0, 0)
            os.chdir(copy_root)
            os.environ["CORNERNET_EMULATION_CACHE"] = str(copy_root.parent / "kernel_emulation")
            sys.path[:] = [str(copy_root)] + [p for p in sys.path if Path(p or ".") != ROOT]
            sys.dont_write_bytecode = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            if build_kernel:
                sys.path.insert(1, str(copy_root / "tests"))
                import kernel_emulation  # from the copy: it builds the copy's kernel

                try:
                    kernel_emulation.build("library")
                except kernel_emulation.BuildError:
                    os._exit(NOT_COMPILED)
            plugin = FirstFailure()
            code = pytest.main([*tests, *PYTEST_ARGS], plugins=[plugin])
            (copy_root / ".first_failure").write_text(plugin.nodeid)
            os._exit(int(code))
        except BaseException:
            os._exit(99)
    return TestRun(pid, copy_root, start, timeout, build_kernel)


def ended(run: TestRun) -> tuple[str, str, float] | None:
    """(outcome, first failing test, seconds) of a run that has ended, or None while it
    runs; a run past its timeout is killed and ends as ``timeout``."""
    done, status = os.waitpid(run.pid, os.WNOHANG)
    seconds = time.monotonic() - run.start
    if not done:
        if seconds <= run.timeout:
            return None
        os.killpg(run.pid, signal.SIGKILL)
        os.waitpid(run.pid, 0)
        return "timeout", "", seconds
    code = os.waitstatus_to_exitcode(status)
    report = run.copy_root / ".first_failure"
    failed = report.read_text() if report.exists() else ""
    if code == 0:
        return "survived", "", seconds
    if run.build_kernel and code == NOT_COMPILED:
        return "not_compiled", "", seconds
    if code == 1:
        return "killed", failed, seconds
    # Interrupted, an internal error, a usage error or an import error at collection: the
    # mutant broke the module (an import-time crash counts as a failing suite).
    return "killed", failed or f"pytest exit code {code}", seconds


def wait(run: TestRun) -> tuple[str, str, float]:
    """The outcome of ``run`` once it has ended."""
    while (result := ended(run)) is None:
        time.sleep(0.05)
    return result


def make_copy() -> Path:
    """A temporary copy of the checkout, without git data, caches and build outputs."""
    target = Path(tempfile.mkdtemp(prefix="cornernet-mutation-")) / "repo"
    ignore = shutil.ignore_patterns(
        ".git", "__pycache__", ".hypothesis", ".pytest_cache", "site", "*.egg-info", ".ipynb*"
    )
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


def refresh(entry: dict, module: str) -> dict[str, Mutant]:
    """Make ``entry["mutants"]`` the module's mutants as the file stands, each keeping the
    outcome of its earlier run if its anchor is found again; return them by anchor."""
    lines = [line.strip() for line in (ROOT / MODULES[module][0]).read_text().splitlines()]
    fresh = {m.anchor(lines): m for m in mutants(module)}
    old = {m["anchor"]: m for m in entry["mutants"]}
    entry["mutants"] = [old.get(a, {"anchor": a, "mutation": m.mutation}) for a, m in fresh.items()]
    for m in entry["mutants"]:  # the lines may have moved since its run
        mutant = fresh[m["anchor"]]
        m.update(id=mutant.id, line=mutant.line, code=mutant.code)
    return fresh


def equivalent_reason(module: str, mutant: dict) -> str | None:
    for name, text, mutation, reason in EQUIVALENT:
        if name == module and text in mutant["code"] and mutation == mutant["mutation"]:
            return reason
    return None


def lines_run(mutants: list[dict]) -> list[str]:
    """``FIRST-LAST`` for each stretch of lines (among those with mutants) whose mutants all
    have an outcome."""
    lines = sorted({m["line"] for m in mutants})
    pending = {m["line"] for m in mutants if not m.get("outcome")}
    stretches: list[list[int]] = []
    for line, previous in zip(lines, [None, *lines], strict=False):
        if line in pending:
            continue
        if stretches and previous == stretches[-1][1]:
            stretches[-1][1] = line
        else:
            stretches.append([line, line])
    return [f"{first}-{last}" for first, last in stretches]


def summarise(result: dict) -> None:
    """Fill the counts and survivors of each module and of the whole run."""
    totals = {
        "killed": 0, "total": 0, "timeouts": 0, "first_run_killed": 0, "not_run": 0,
        "not_compiled": 0,
    }  # fmt: skip
    for module, entry in result["modules"].items():
        run = [m for m in entry["mutants"] if m.get("outcome")]
        done = [m for m in run if m["outcome"] != "not_compiled"]
        entry["generated"] = len(entry["mutants"])
        entry["total"] = len(done)  # the mutants run; a module may be stopped half-way
        entry["not_compiled"] = len(run) - len(done)  # C++ mutants the compiler rejects
        entry["not_run"] = entry["generated"] - len(run)
        entry["killed"] = sum(m["outcome"] in ("killed", "timeout") for m in done)
        entry["timeouts"] = sum(m["outcome"] == "timeout" for m in done)
        entry["first_run_killed"] = sum(m["first_outcome"] in ("killed", "timeout") for m in done)
        entry["survivors"] = []
        for m in entry["mutants"]:
            if m.get("first_outcome") == "survived" or m.get("outcome") == "survived":
                if m.get("outcome") == "survived":
                    reason = equivalent_reason(module, m)
                    note = f"equivalent: {reason}" if reason else "not explained"
                else:
                    note = f"killed by {m['killed_by']}"
                entry["survivors"].append(
                    {"at": f"{entry['file']}:{m['line']}", "code": m["code"],
                     "mutation": m["mutation"], "note": note}
                )  # fmt: skip
        entry.pop("lines_run", None)
        if entry["not_run"]:  # a partial run: the lines whose mutants have all been run
            entry["lines_run"] = lines_run(entry["mutants"])
        entry["equivalent"] = sum(s["note"].startswith("equivalent") for s in entry["survivors"])
        entry["unexplained"] = sum(s["note"] == "not explained" for s in entry["survivors"])
        for key in totals:
            totals[key] += entry[key]
    result.update(totals)
    result["equivalent"] = sum(e["equivalent"] for e in result["modules"].values())
    result["unexplained"] = sum(e["unexplained"] for e in result["modules"].values())
    result["score"] = round(result["killed"] / result["total"], 4) if result["total"] else None


def save(result: dict) -> None:
    summarise(result)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(RESULT)  # never a half-written result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="repeatable")
    parser.add_argument("--resume", action="store_true", help="skip mutants already run")
    parser.add_argument(
        "--rerun",
        action="append",
        choices=["survived", "timeout"],
        default=[],
        help="run again the mutants with this outcome (after adding tests; on a quieter machine)",
    )
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default 4x baseline)")
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument(
        "--lines",
        action="append",
        type=lambda text: tuple(map(int, text.split("-"))),
        metavar="FIRST-LAST",
        help="run only the mutants of these lines (repeatable; of each module given); the "
        "others stay not run",
    )
    parser.add_argument(
        "--summarise", action="store_true", help="recount the result (after editing EQUIVALENT)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="mutants run at once, each on a copy of its own (one core each)",
    )
    args = parser.parse_args()
    modules = args.module or list(MODULES)

    def chosen(line: int) -> bool:
        return args.lines is None or any(first <= line <= last for first, last in args.lines)

    if args.list:
        for module in modules:
            for m in mutants(module):
                if chosen(m.line):
                    print(f"{module} {m.id}  | {m.code}")
        return

    result = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    if args.summarise:
        for module, entry in result["modules"].items():
            refresh(entry, module)
        result["modules_not_run"] = {
            module: len(mutants(module)) for module in MODULES if module not in result["modules"]
        }
        save(result)
        return
    result.update(header("mutation"))
    result.update(
        numpy=numpy.__version__,
        pytest=pytest.__version__,
        hypothesis=hypothesis.__version__,
        command="nice -n 15 python benchmarks/mutation.py [--module M] [--resume]",
        test_command="CI=true pytest <tests of the module> " + " ".join(PYTEST_ARGS),
        operators=list(OPERATORS),
        excluded=[{"module": m, "line": t, "reason": r} for m, t, r in EXCLUDED],
        note="under load: a 2-core machine shared with other jobs; seconds are wall time. "
        "The modules as they stand on this checkout; `modules_not_run` lists those not run. "
        "first_run_killed counts each mutant's first run, with the tests there were when its "
        "module's run began; `outcome` is its latest run (survivors rerun after new tests).",
    )
    result.setdefault("modules", {})
    copies = [make_copy() for _ in range(max(1, args.jobs))]
    running: dict[Path, tuple[dict, TestRun]] = {}  # copy -> its mutant and the run of it
    try:
        for module in modules:
            file, tests = MODULES[module]
            pristine = (copies[0] / file).read_text()
            build_kernel = file.endswith(".cu")
            outcome, failed, baseline = wait(start_tests(copies[0], tests, 1800, build_kernel))
            if outcome != "survived":
                sys.exit(f"{module}: the tests fail without a mutant ({failed}); fix them first")
            timeout = args.timeout or max(30.0, 4 * baseline)
            entry = result["modules"].get(module)
            if entry is None or not (args.resume or args.rerun):
                entry = {"file": file, "tests": list(tests), "mutants": []}
            fresh = refresh(entry, module)
            entry.update(tests=list(tests), baseline_seconds=round(baseline, 1), timeout=timeout)
            result["modules"][module] = entry
            todo = [
                m for m in entry["mutants"]
                if (not m.get("outcome") or m["outcome"] in args.rerun) and chosen(m["line"])
            ]  # fmt: skip
            print(f"{module}: {len(fresh)} mutants, {len(todo)} to run, baseline {baseline:.1f} s,"
                  f" estimate {len(todo) * baseline / 60:.0f} min at most", flush=True)  # fmt: skip
            started, waiting, done = time.monotonic(), list(todo), 0
            while waiting or running:
                for root in copies:  # a mutant for each idle copy
                    if root not in running and waiting:
                        m = waiting.pop(0)
                        (root / file).write_text(fresh[m["anchor"]].source)
                        running[root] = m, start_tests(root, tests, timeout, build_kernel)
                for root, (m, run) in list(running.items()):
                    if (finished := ended(run)) is None:
                        continue
                    outcome, failed, seconds = finished
                    (root / file).write_text(pristine)
                    del running[root]
                    done += 1
                    m.setdefault("first_outcome", outcome)
                    m.update(outcome=outcome, killed_by=failed, seconds=round(seconds, 1))
                    print(f"  [{done}/{len(todo)}] {m['id']}: {outcome} {failed}", flush=True)
                    save(result)
                time.sleep(0.05)
            entry["last_run_seconds"] = round(time.monotonic() - started)
            save(result)
    finally:
        for _, run in running.values():  # stopped early: no run outlives its copy
            os.killpg(run.pid, signal.SIGKILL)
            os.waitpid(run.pid, 0)
        for root in copies:
            shutil.rmtree(root.parent, ignore_errors=True)
    print(f"killed {result['killed']} of {result['total']} (timeouts {result['timeouts']})")


if __name__ == "__main__":
    os.nice(15)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # still remove the copy
    main()
