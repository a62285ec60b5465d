"""AP of the ground-truth oracle on the COCO sample: the ceiling of the corner representation.

The annotations of ``../shared/data/coco128`` (or ``$CORNERNET_SHARED``) go through the whole
test pipeline as if a network had predicted them (:mod:`cornernet_ref.analysis`): the padded
canvas, decoding, soft-NMS, the top 100 per image and pycocotools, without and with flip
testing. Chapter 7 explains what the missing AP is lost to.

    python benchmarks/oracle_coco128.py [--out benchmarks/results/oracle_coco128.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from report import header, write_result

from cornernet_ref.analysis import oracle_source
from cornernet_ref.data.coco import category_ids
from cornernet_ref.data.examples import coco128, load_coco_quietly
from cornernet_ref.evaluate import evaluate
from cornernet_ref.inference import TestConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/oracle_coco128.json")
    args = parser.parse_args()
    _, annotations = coco128()
    if not annotations.is_file():
        raise SystemExit(f"the COCO sample is missing: {annotations} (set CORNERNET_SHARED)")
    coco = load_coco_quietly(annotations)
    source = oracle_source(coco, num_classes=len(category_ids(coco)))
    results = {}
    for flip in (False, True):
        with contextlib.redirect_stdout(io.StringIO()):
            config = TestConfig(flip=flip)
            results["flip" if flip else "no_flip"] = evaluate(source, coco, config=config)
    report = header("oracle_coco128", claims=("oracle-ap",)) | {
        "images": len(coco.getImgIds()),
        "boxes": len(coco.getAnnIds()),
        "crowd_boxes": len(coco.getAnnIds(iscrowd=True)),
        "results": results,
    }
    write_result(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
