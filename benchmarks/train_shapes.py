"""The main command, measured: ``cornernet-ref train`` on the synthetic shapes, on the CPU.

Runs the command exactly as a user types it (the ``small_shapes`` configuration: data
generation, training, evaluation on the validation split) in a fresh folder, times it, and
records the wall-clock time, the loss history and the COCO metrics. With ``--ablations`` it
also reruns the same schedule with one change at a time, the paper's ablations at a small
scale:

* ``no_corner_pooling``: the corner pools replaced by a plain sum (paper §4.4, Table 1);
* ``no_penalty_reduction``: no Gaussian around the corners (§4.4, "w/o reducing penalty");
* ``exact_radius``: the exact radius of chapter 1 instead of the official formula;
* ``seed_1``, ``seed_2``: no change but the seed (initial weights and sample order), which
  shows how much AP moves from run to run anyway.

    python benchmarks/train_shapes.py                 # -> results/train_small_shapes.json
    python benchmarks/train_shapes.py --ablations     # -> results/ablations_shapes.json too
    python benchmarks/train_shapes.py --only seed_1   # rerun some, keep the others' results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import RESULTS, header, write_result

ABLATIONS = {
    "no_corner_pooling": ["--model.corner-pooling", "false"],
    "no_penalty_reduction": ["--penalty-reduction", "false"],
    "exact_radius": ["--radius-variant", "exact"],
    "seed_1": ["--seed", "1"],
    "seed_2": ["--seed", "2"],
}


def run(arguments: list[str]) -> dict:
    """Run ``cornernet-ref train ARGUMENTS`` in a fresh folder; its time, losses and metrics."""
    with tempfile.TemporaryDirectory(prefix="cornernet_shapes_") as folder:
        out = Path(folder) / "run"
        command = [sys.executable, "-m", "cornernet_ref", "train", *arguments, "--out", str(out)]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        config = json.loads((out / "checkpoints" / "config.json").read_text())
        return {
            "command": "cornernet-ref train " + " ".join(arguments),
            "wall_clock_s": round(seconds, 1),
            "config": config,
            "metrics": json.loads((out / "metrics.json").read_text()),
            "history": history,
        }


def write_ablations(runs: dict[str, dict]) -> None:
    """Record the runs in results/ablations_shapes.json, keeping earlier runs not redone."""
    path = RESULTS / "ablations_shapes.json"
    earlier = json.loads(path.read_text())["runs"] if path.exists() else {}
    runs = {
        **earlier,
        **{
            name: {key: result[key] for key in ("command", "wall_clock_s", "metrics")}
            for name, result in runs.items()
        },
    }
    claims = ("ablation-corner-pooling", "ablation-penalty-reduction")
    summary = header("ablations_shapes", claims=claims) | {
        "note": "small scale: the small_shapes configuration on the shapes, CPU, one run each",
        "runs": {name: runs[name] for name in ["baseline", *ABLATIONS] if name in runs},
    }
    write_result(path, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablations", action="store_true", help="also run every ablation")
    parser.add_argument("--only", nargs="+", choices=sorted(ABLATIONS), help="run these alone")
    args = parser.parse_args()
    runs = {}
    if not args.only:
        runs["baseline"] = baseline = run([])
        report = header("train_small_shapes", claims=("main-command",)) | baseline
        write_result(RESULTS / "train_small_shapes.json", report)
        print(f"main command: AP {baseline['metrics']['AP']:.3f} in {baseline['wall_clock_s']} s")
    names = args.only or (list(ABLATIONS) if args.ablations else [])
    for name in names:
        runs[name] = run(ABLATIONS[name])
        print(f"{name}: AP {runs[name]['metrics']['AP']:.3f}")
    if names:
        write_ablations(runs)


if __name__ == "__main__":
    main()
