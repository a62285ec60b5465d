"""Speed of soft-NMS and decoding on the CPU, beside a compiled loop of the official algorithm.

Soft-NMS cases: 1000 candidate boxes over 80 classes, and 1000 over one class (random boxes
on a 767 x 511 image, sides 8 to 300 pixels, uniform scores; a fixed seed). Implementations,
timed in turn round after round so that a change of load affects them alike:

* ``official_loop``: an independent, straightforward C translation of the official Cython
  soft-NMS (rows of ``x1 y1 x2 y2 s``, one class at a time, a separate pass for each
  maximum), with the boxes put into per-class rows in C first; compiled here with the same
  compiler and flags as the package's loop and called through ``ctypes``. Its kept rows are
  checked against the package's result.
* ``soft_nms``: ``cornernet_ref.decode.soft_nms``, the public function (compiled loop),
  from tensors to ``(keep, new_scores)``;
* ``soft_nms_all``: the same without the final selection (the fixed-size result);
* ``torch_op``: the compiled loop called as the operator ``torch.ops.cornernet_ref.soft_nms``
  (what the dispatcher adds);
* ``vectorised``: the readable tensor form, the fallback where the loop does not build.

Decoding: ``decode`` of a flip-test batch (2 x 80 x 128 x 192 maps: a 511 x 767 canvas) with
random logits, ``scale_detections`` (decode and the boxes mapped to the image) and
``merge_detections`` of its pairs; and the 3 x 3 max-pool of ``local_maxima`` on one of its
heatmaps, in PyTorch's default layout and in channels_last (which decode uses).

Everything runs on one thread (``torch.set_num_threads(1)``), as the loops do. The machine's
load average is recorded before and after.

    python benchmarks/soft_nms.py --repeats 61
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from report import RESULTS, header, write_result

from cornernet_ref import soft_nms_op
from cornernet_ref.decode import decode, soft_nms, soft_nms_all
from cornernet_ref.inference import TestConfig, canvas_geometry, merge_detections, scale_detections
from cornernet_ref.output import CornerNetOutput

OFFICIAL_LOOP = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The official soft-NMS of one class on rows (n, 5) x1 y1 x2 y2 s, in place; returns how
   many rows are kept (the first ones). method 1: linear, 2: Gaussian. */
static int64_t official(float *rows, int64_t n, int method, float sigma, float nt, float thr) {
  for (int64_t i = 0; i < n; i++) {
    float maxscore = rows[5 * i + 4];
    int64_t maxpos = i;
    for (int64_t pos = i + 1; pos < n; pos++)
      if (maxscore < rows[5 * pos + 4]) { maxscore = rows[5 * pos + 4]; maxpos = pos; }
    float t[5];
    memcpy(t, rows + 5 * i, sizeof t);
    memcpy(rows + 5 * i, rows + 5 * maxpos, sizeof t);
    memcpy(rows + 5 * maxpos, t, sizeof t);
    float tx1 = rows[5 * i], ty1 = rows[5 * i + 1], tx2 = rows[5 * i + 2], ty2 = rows[5 * i + 3];
    for (int64_t pos = i + 1; pos < n; pos++) {
      float *r = rows + 5 * pos;
      float area = (r[2] - r[0] + 1) * (r[3] - r[1] + 1);
      float iw = (tx2 < r[2] ? tx2 : r[2]) - (tx1 > r[0] ? tx1 : r[0]) + 1;
      if (iw > 0) {
        float ih = (ty2 < r[3] ? ty2 : r[3]) - (ty1 > r[1] ? ty1 : r[1]) + 1;
        if (ih > 0) {
          float ua = (tx2 - tx1 + 1) * (ty2 - ty1 + 1) + area - iw * ih;
          float ov = iw * ih / ua;
          float weight = 1;
          if (method == 1) { if (ov > nt) weight = 1 - ov; }
          else weight = (float)exp((double)(-(ov * ov) / sigma));
          r[4] = weight * r[4];
          if (r[4] < thr) { memcpy(r, rows + 5 * (n - 1), 5 * sizeof(float)); n--; pos--; }
        }
      }
    }
  }
  return n;
}

/* Each class 0..classes-1 on its own, its boxes in input order: rows (n, 5) out, grouped by
   class; start (classes + 1) out: where each class starts; kept (classes) out. */
void official_per_class(const float *boxes, const float *scores, const int64_t *labels,
                        int64_t n, int64_t classes, float *rows, int64_t *start, int64_t *kept,
                        int method, float sigma, float nt, float thr) {
  memset(start, 0, (classes + 1) * sizeof(int64_t));
  for (int64_t b = 0; b < n; b++) start[labels[b] + 1]++;
  for (int64_t c = 0; c < classes; c++) start[c + 1] += start[c];
  memcpy(kept, start, classes * sizeof(int64_t)); /* the next free row of each class */
  for (int64_t b = 0; b < n; b++) {
    float *r = rows + 5 * kept[labels[b]]++;
    memcpy(r, boxes + 4 * b, 4 * sizeof(float));
    r[4] = scores[b];
  }
  for (int64_t c = 0; c < classes; c++)
    kept[c] = official(rows + 5 * start[c], start[c + 1] - start[c], method, sigma, nt, thr);
}
"""


# What a run on a GPU must confirm; this benchmark runs on the CPU only.
NOT_MEASURED = [
    "the CUDA build of csrc/soft_nms_cuda.cu (nvcc -arch=native) loads and launches",
    "tests/test_soft_nms.py -m cuda: the GPU's result equals the CPU's, and decoding with "
    "soft-NMS runs under torch.cuda.set_sync_debug_mode('error') (no host sync)",
    "the time of decode + soft-NMS per image on the GPU (gpu_check's inference step)",
]


def build_official_loop(directory: Path) -> ctypes.CDLL:
    """Compile :data:`OFFICIAL_LOOP` with the package's CPU compiler and flags."""
    compiler, flags, _ = soft_nms_op.BUILDS["cpu"]
    source, library = directory / "official.c", directory / "official.so"
    source.write_text(OFFICIAL_LOOP)
    subprocess.run(
        [compiler, "-x", "c", *(f for f in flags if f != "-std=c++17"), "-o", library, source],
        check=True,
    )
    loaded = ctypes.CDLL(str(library))
    loaded.official_per_class.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2
    loaded.official_per_class.argtypes += [ctypes.c_void_p] * 3
    loaded.official_per_class.argtypes += [ctypes.c_int] + [ctypes.c_float] * 3
    return loaded


def candidates(count: int, classes: int, seed: int = 0):
    """``count`` random boxes on a 767 x 511 image, uniform scores, uniform classes."""
    g = torch.Generator().manual_seed(seed)
    sides = 8 * (300 / 8) ** torch.rand(count, 2, generator=g)  # log-uniform, 8 to 300
    corners = torch.rand(count, 2, generator=g) * (torch.tensor([767.0, 511.0]) - sides)
    boxes = torch.cat((corners, corners + sides), dim=1)
    return boxes, torch.rand(count, generator=g), torch.randint(0, classes, (count,), generator=g)


def official_runner(library: ctypes.CDLL, boxes, scores, labels, classes: int):
    """A call of the official loop from the tensors' memory (outputs allocated in the call),
    and a function giving its kept rows per class."""
    arrays = [boxes.numpy(), scores.numpy(), labels.numpy()]
    outputs = {}

    def run() -> None:
        rows = np.empty((len(scores), 5), np.float32)
        start, kept = np.empty(classes + 1, np.int64), np.empty(classes, np.int64)
        library.official_per_class(
            *(a.ctypes.data for a in arrays), len(scores), classes,
            rows.ctypes.data, start.ctypes.data, kept.ctypes.data, 2, 0.5, 0.5, 0.001,
        )  # fmt: skip
        outputs.update(rows=rows, start=start, kept=kept)

    def kept_rows() -> list[np.ndarray]:
        rows, start, kept = outputs["rows"], outputs["start"], outputs["kept"]
        return [rows[start[c] : start[c] + kept[c]] for c in range(classes)]

    return run, kept_rows


def time_in_turn(runs: dict[str, Callable[[], object]], repeats: int, inner: int) -> dict:
    """Median and best of ``repeats`` rounds, each timing every run ``inner`` times, in an
    order shuffled from round to round (so that a burst of load on the shared machine does
    not fall on the same run every time)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm up: builds, allocations
    order, shuffle = list(runs), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            start = time.perf_counter()
            for _ in range(inner):
                runs[name]()
            times[name].append((time.perf_counter() - start) / inner * 1e3)
    return {
        name: {"median_ms": round(statistics.median(t), 4), "best_ms": round(min(t), 4)}
        for name, t in times.items()
    }


def soft_nms_case(library, count: int, classes: int, repeats: int) -> dict:
    boxes, scores, labels = candidates(count, classes)
    official, official_rows = official_runner(library, boxes, scores, labels, classes)
    runs = {
        "official_loop": official,
        "soft_nms": lambda: soft_nms(boxes, scores, labels),
        "soft_nms_all": lambda: soft_nms_all(boxes, scores, labels, compiled=True),
        "torch_op": lambda: torch.ops.cornernet_ref.soft_nms(
            boxes, scores, labels, 2, 0.5, 0.5, 0.001
        ),
    }
    inner = 10 if classes > 1 else 1
    timings = time_in_turn(runs, repeats, inner)
    # The slow fallback on its own, fewer times: its allocations would disturb the others.
    vectorised = {"vectorised": lambda: soft_nms_all(boxes, scores, labels, compiled=False)}
    timings |= time_in_turn(vectorised, max(3, repeats // 10), 1)
    # The same kept boxes and scores, class by class, in the same order.
    keep, new_scores = soft_nms(boxes, scores, labels)
    rows = torch.cat((boxes[keep], new_scores[:, None]), dim=1).numpy()
    expected = np.concatenate(official_rows())
    equal = rows.shape == expected.shape and bool(np.abs(rows - expected).max() <= 1e-6)
    ratios = {
        statistic: round(timings["soft_nms"][statistic] / timings["official_loop"][statistic], 3)
        for statistic in ("median_ms", "best_ms")
    }
    return {
        "boxes": count,
        "classes": classes,
        "kept": len(keep),
        "same_kept_boxes_and_scores_as_official_loop": equal,
        "timings": timings,
        "soft_nms_over_official_loop": ratios,
    }


def decode_case(repeats: int) -> dict:
    """decode and merge_detections of a flip-test batch on a 511 x 767 canvas."""
    geometry = canvas_geometry(511, 767)
    (height, width), classes = geometry.output_size, 80
    g = torch.Generator().manual_seed(0)

    def maps(channels: int, scale: float, shift: float) -> torch.Tensor:
        return torch.randn(2, channels, height, width, generator=g) * scale + shift

    out = CornerNetOutput(
        maps(classes, 2, -6), maps(classes, 2, -6), maps(1, 0.3, 0), maps(1, 0.3, 0),
        torch.rand(2, 2, height, width, generator=g), torch.rand(2, 2, height, width, generator=g),
    )  # fmt: skip
    config = TestConfig()
    part = scale_detections(out, geometry, config)
    heat = out.tl_heat.sigmoid()
    runs = {
        # The 3 x 3 max-pool of local_maxima in PyTorch's default layout and in the one it uses.
        "max_pool_nchw": lambda: F.max_pool2d(heat, 3, stride=1, padding=1),
        "max_pool_channels_last": lambda: F.max_pool2d(
            heat.contiguous(memory_format=torch.channels_last), 3, stride=1, padding=1
        ).contiguous(),
        "decode": lambda: decode(out, config.decode),
        "scale_detections": lambda: scale_detections(out, geometry, config),
        "merge_detections": lambda: merge_detections([part], config),
    }
    return {
        "maps": [2, classes, height, width],
        "valid_pairs": int((part.scores > -1).sum()),
        "final_boxes": len(merge_detections([part], config).scores),
        "timings": time_in_turn(runs, max(3, repeats // 5), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=61)
    parser.add_argument("--out", type=Path, default=RESULTS / "soft_nms_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        library = build_official_loop(Path(scratch))
        soft_nms_op.load("cpu")
        result = header("soft_nms", "cpu") | {
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "compiler": " ".join((soft_nms_op.BUILDS["cpu"][0], *soft_nms_op.BUILDS["cpu"][1])),
            "load_average_1_5_15_min_before": [round(x, 2) for x in load_before],
        }
        result["soft_nms"] = [
            soft_nms_case(library, 1000, classes, args.repeats) for classes in (80, 1)
        ]
    result["decode"] = decode_case(args.repeats)
    result["not_measured_here"] = NOT_MEASURED
    result["load_average_1_5_15_min_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, result)
    print(json_summary(result))


def json_summary(result: dict) -> str:
    lines = []
    for case in result["soft_nms"]:
        t = case["timings"]
        lines.append(
            f"{case['boxes']} boxes, {case['classes']} classes: "
            + ", ".join(f"{name} {v['median_ms']} ms" for name, v in t.items())
            + f"; ratio {case['soft_nms_over_official_loop']}, "
            f"equal {case['same_kept_boxes_and_scores_as_official_loop']}"
        )
    lines.append("decode: " + str(result["decode"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
