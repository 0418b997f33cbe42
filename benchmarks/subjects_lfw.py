"""Benchmark: subjects on LFW (#14 items 1 and 4), from the embedding cache of
``faceledger eval lfw`` (built if missing: 5-7 minutes on 2 cores).

Prints one JSON document (see :mod:`faceledger.evaluation.subjects` for each protocol):

* ``calibration_check``: each shipped template fit (1x1 ... 3+x3+) against the impostor pairs
  of the people outside the calibration split, predicted / measured FMR at 1e-3 ... 1e-6;
* ``search``: the over-fetched subject search (4 x top_k faces) against exact template
  ranking on the 1:N subject protocol: best subjects missed, rank-1 of each, predicted /
  measured FPIR with the size-calibrated estimates;
* ``duplicates``: precision and recall of the pairs ``faceledger subjects duplicates`` reports
  at its default (expected false pairs in the gallery <= 0.1), on a gallery of every LFW person
  with 2+ photos (``all``; ``evaluation``: only those outside the calibration split), each
  photo a subject of one (``photos``) or each person's photos under two labels (``halves``).

    PYTHONPATH=src python benchmarks/subjects_lfw.py --lfw-dir ../shared/data/lfw \
        --data-dir "$FACELEDGER_EVAL_DATA" [--no-flip]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from faceledger.evaluation.lfw import LfwDataset, embed_lfw, lfw_setup
from faceledger.evaluation.subjects import check_by_size, duplicates_check, search_check
from faceledger.search.subjects import load_subject_calibration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lfw-dir", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=None, help="where the embedding cache is")
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    factory, model_id, cache = lfw_setup(
        "hog+cnn", "default", args.data_dir, None, "cpu", not args.no_flip
    )
    ds = LfwDataset.load(args.lfw_dir)
    table = embed_lfw(ds, factory, cache, args.workers)
    calib = load_subject_calibration(model_id)
    if calib is None:
        raise SystemExit(f"no calibration ships for {model_id}")
    t0 = time.perf_counter()
    out = {
        "model_id": model_id,
        "subject_calibration": calib.version,
        "calibration_check": check_by_size(ds, table, calib),
        "search": search_check(ds, table, calib),
        "duplicates": [
            duplicates_check(ds, table, calib, layout, people)
            for layout in ("halves", "photos")
            for people in ("all", "evaluation")
        ],
    }
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
