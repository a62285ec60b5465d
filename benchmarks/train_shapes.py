"""The main command, measured: ``cornernet-ref train`` on the synthetic shapes, on the CPU.

Runs the command exactly as a user types it (the ``small_shapes`` configuration: data
generation, training, evaluation on the validation split) in a fresh folder, times it, and
records the wall-clock time, the loss history and the COCO metrics, with the number of
threads torch uses and the load average of the machine at the start and the end (a time
measured on a busy machine is no figure of a quiet one). With ``--ablations`` it also reruns
the same schedule with one change at a time, the paper's ablations at a small scale:

* ``no_corner_pooling``: the corner pools replaced by a plain sum (paper §4.4, Table 1);
* ``no_penalty_reduction``: no Gaussian around the corners (§4.4, "w/o reducing penalty");
* ``exact_radius``: the exact radius of chapter 1 instead of the official formula;
* ``seed_1``, ``seed_2``: no change but the seed (initial weights and sample order), which
  shows how much AP moves from run to run anyway.

    python benchmarks/train_shapes.py                  # -> results/train_small_shapes.json
    python benchmarks/train_shapes.py --ablations      # -> results/ablations_shapes.json too
    python benchmarks/train_shapes.py --only seed_1    # rerun some, keep the others' results
    python benchmarks/train_shapes.py --only main baseline   # one run, both files

The first form (``--only main``) runs the main command once and writes only
``train_small_shapes.json``: that is the timing run. The ablation table keeps its own
``baseline`` (the main command too, measured with the other rows), so a timing run never
replaces the runs the table compares; run in the same call, ``main`` and ``baseline`` are
one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import RESULTS, header, write_result

ABLATIONS = {
    "baseline": [],
    "no_corner_pooling": ["--model.corner-pooling", "false"],
    "no_penalty_reduction": ["--targets.penalty-reduction", "false"],
    "exact_radius": ["--targets.radius-variant", "exact"],
    "seed_1": ["--seed", "1"],
    "seed_2": ["--seed", "2"],
}


def run(arguments: list[str]) -> dict:
    """Run ``cornernet-ref train ARGUMENTS`` in a fresh folder; its time, losses and metrics."""
    with tempfile.TemporaryDirectory(prefix="cornernet_shapes_") as folder:
        out = Path(folder) / "run"
        command = [sys.executable, "-m", "cornernet_ref", "train", *arguments, "--out", str(out)]
        load_at_start = os.getloadavg()
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        load_at_end = os.getloadavg()
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        config = json.loads((out / "config.json").read_text())
        return {
            "command": "cornernet-ref train " + " ".join(arguments),
            "wall_clock_s": round(seconds, 1),
            "torch_threads": torch.get_num_threads(),  # the command inherits the environment
            "load_average_start": [round(value, 2) for value in load_at_start],
            "load_average_end": [round(value, 2) for value in load_at_end],
            "config": config,
            "metrics": json.loads((out / "metrics.json").read_text()),
            "history": history,
        }


# What the ablation table keeps of a run (the main command's JSON keeps everything).
KEPT = (
    "command",
    "wall_clock_s",
    "torch_threads",
    "load_average_start",
    "load_average_end",
    "metrics",
)


def write_ablations(runs: dict[str, dict]) -> None:
    """Record the runs in results/ablations_shapes.json, keeping earlier runs not redone."""
    path = RESULTS / "ablations_shapes.json"
    earlier = json.loads(path.read_text())["runs"] if path.exists() else {}
    runs = {
        **earlier,
        **{
            name: {key: result[key] for key in KEPT if key in result}
            for name, result in runs.items()
        },
    }
    claims = ("ablation-corner-pooling", "ablation-penalty-reduction")
    summary = header("ablations_shapes", claims=claims) | {
        "note": "small scale: the small_shapes configuration on the shapes, CPU, one run each",
        "runs": {name: runs[name] for name in ABLATIONS if name in runs},
    }
    write_result(path, summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablations", action="store_true", help="also run every ablation")
    parser.add_argument("--only", nargs="+", choices=["main", *ABLATIONS], help="run these alone")
    args = parser.parse_args()
    names = args.only or (["main", *ABLATIONS] if args.ablations else ["main"])
    runs: dict[str, dict] = {}
    for name in names:
        if name == "baseline" and "main" in runs:
            runs[name] = runs["main"]  # the same command
        else:
            runs[name] = run(ABLATIONS.get(name, []))
        print(f"{name}: AP {runs[name]['metrics']['AP']:.3f} in {runs[name]['wall_clock_s']} s")
        if name == "main":
            report = header("train_small_shapes", claims=("main-command",)) | runs[name]
            write_result(RESULTS / "train_small_shapes.json", report)
        else:  # after each run: a long series stopped halfway keeps its runs
            write_ablations({name: runs[name]})


if __name__ == "__main__":
    main()
