"""How conservative the official Gaussian radius is: official / exact over box sizes.

The official radius lets each corner move by r along both axes; the exact one lets it move
anywhere within Euclidean distance r (see ``cornernet_ref.targets.gaussian_radius``).
Measured three ways:

* over the grid of box sizes 1..128 x 1..128 cells (the 128 x 128 output grid);
* against the aspect ratio alone (the ratio does not depend on the scale);
* on the boxes of the coco128 sample, each image scaled to 511 pixels on its longer side
  and read on the 128-cell output grid (when ``../shared`` is there).

Both the real radii and the integer radii that ``build_targets`` draws are reported.

    python benchmarks/radius_ratio.py
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from report import header, write_result

from cornernet_ref.data.examples import coco128
from cornernet_ref.targets import gaussian_radius

ROOT = Path(__file__).resolve().parents[1]
ASPECTS = (1, 1.5, 2, 3, 4, 8, 16, 64)


def radii(sizes: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Official and exact radii of ``(N, 2)`` box sizes ``(height, width)``."""
    official = np.array([gaussian_radius(h, w, t) for h, w in sizes])
    exact = np.array([gaussian_radius(h, w, t, variant="exact") for h, w in sizes])
    return official, exact


def summary(sizes: np.ndarray, t: float) -> dict[str, float]:
    official, exact = radii(sizes, t)
    ratio = official / exact
    int_official, int_exact = official.astype(int), exact.astype(int)
    return {
        "boxes": len(sizes),
        "ratio_min": float(ratio.min()),
        "ratio_q25": float(np.quantile(ratio, 0.25)),
        "ratio_median": float(np.median(ratio)),
        "ratio_q75": float(np.quantile(ratio, 0.75)),
        "ratio_max": float(ratio.max()),
        "mean_int_radius_official": float(int_official.mean()),
        "mean_int_radius_exact": float(int_exact.mean()),
        "share_int_radius_larger_exact": float((int_exact > int_official).mean()),
        "share_int_radius_zero_official": float((int_official == 0).mean()),
        "share_int_radius_zero_exact": float((int_exact == 0).mean()),
    }


def coco_sizes(annotation_file: Path, long_side: int = 511, output: int = 128) -> np.ndarray:
    """Box sizes in output cells, rounded up as ``build_targets`` does."""
    data = json.loads(annotation_file.read_text())
    images = {image["id"]: image for image in data["images"]}
    sizes = []
    for annotation in data["annotations"]:
        if annotation.get("iscrowd"):
            continue
        image = images[annotation["image_id"]]
        scale = long_side / max(image["height"], image["width"]) * output / long_side
        _, _, w, h = annotation["bbox"]
        if w > 0 and h > 0:
            sizes.append((math.ceil(h * scale), math.ceil(w * scale)))
    return np.array(sizes, dtype=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/radius_ratio.json")
    args = parser.parse_args()
    side = np.arange(1, 129, dtype=float)
    grid = np.stack(np.meshgrid(side, side), -1).reshape(-1, 2)
    results: dict[str, object] = {
        "grid_1_to_128": {f"t={t}": summary(grid, t) for t in (0.3, 0.7)},
        "by_aspect_ratio": {
            f"t={t}": {
                f"1:{aspect:g}": gaussian_radius(10, 10 * aspect, t)
                / gaussian_radius(10, 10 * aspect, t, variant="exact")
                for aspect in ASPECTS
            }
            for t in (0.1, 0.3, 0.5, 0.7)
        },
    }
    _, annotations = coco128()
    if annotations.is_file():
        results["coco128_longer_side_511"] = {"t=0.3": summary(coco_sizes(annotations), 0.3)}
    report = header("radius_ratio") | {
        "numpy": np.__version__,
        "results": results,
        "note": "ratio = official radius / exact radius (real values); int = as drawn",
    }
    write_result(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
