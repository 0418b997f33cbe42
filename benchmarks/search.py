"""Benchmark: face search at several gallery sizes, against exact brute force.

Runs ``faceledger bench search`` (synthetic LFW-calibrated faces, see
faceledger.evaluation.bench) once per gallery size and index variant, each in its own
process so memory figures do not mix, and prints recall, single-query latency, the ratio to
brute force and memory per face.

    python benchmarks/search.py                                # 10k, 100k, 1M, kind auto
    python benchmarks/search.py --sizes 1000000 --variant ivf_sq8 --variant "hnsw_sq8"
    python benchmarks/search.py --sizes 1000000 --variant "ivf_sq8:--nprobe 128"
    python benchmarks/search.py --threshold                   # where approximate pays off
    python benchmarks/search.py --sizes 10000000 --queries 500 --json-out 10m.json

``--threshold`` runs the approximate kind at 10k..200k faces (each run also times exact
search) and reports the smallest size at which it is at least 2x faster than exact at p50
with recall@10 >= 0.995 — the rule behind ``faceledger.gallery.index.EXACT_MAX_FACES``.

Measured on the 2-core AMD EPYC (AVX-512) development VM, shared with other work at the
time (so p99 has outliers), one search thread, k=10, 128-d, LFW-calibrated faces, seed 0;
ratio = exact p50 / index p50; RAM = heap bytes per face (codes, ids, centroids), plus 512
B/face of float32 vectors in the memory-mapped file:

    --threshold --sizes 25000,50000,100000,200000,500000 --queries 500
         faces  kind      nlist nprobe  R@1    R@10    p50 ms  exact p50  ratio
        25,000  ivf_pqfs    128     48  1.000  1.0000  0.202    0.17      0.8x
        50,000  ivf_pqfs    256     48  1.000  1.0000  0.252    0.73      2.9x
       100,000  ivf_pqfs    256     48  1.000  0.9998  0.255    1.58      6.2x
       200,000  ivf_pqfs    512     48  1.000  0.9980  0.326    3.72     11.4x
       500,000  ivf_pqfs    512     48  1.000  0.9984  0.524    9.74     18.6x

    --sizes 1000000 (--queries 1000; the other kinds --queries 500 --candidates 200)
         faces  kind      params                 R@1    R@10    p50   p99  exact ratio build RAM
     1,000,000  ivf_pqfs  nlist 1024, nprobe 80  1.000  0.9981  0.754 1.79 21.2  28.1x  5.5s  50
     1,000,000  ivf_sq8   nlist 1024, nprobe 80  1.000  0.9992  2.011 4.59 17.8   8.8x   17s 146
     1,000,000  hnsw_sq8  M 32, efSearch 500     0.944  0.9778  2.134 3.06 18.4   8.6x  305s 409

    faceledger.cli bench search --faces 10000000 --queries 500 --sweep-nprobe 160,240
    10,000,000  ivf_pqfs  nlist 4096, nprobe 320 1.000  0.9932  3.656 7.73 183.9 50.3x  442s  49
                          (nprobe 160: R@10 0.9828, p50 2.26 ms; nprobe 240: 0.9920, 3.08 ms)
                process RSS 5.75 GiB: 0.95 GiB heap + 4.80 GiB of mapped vector file (all of
                it touched by the brute-force ground truth; search alone touches candidates)
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(faces: int, variant: str, args: argparse.Namespace) -> dict:
    kind, _, extra = variant.partition(":")
    cmd = [sys.executable, "-m", "faceledger.cli", "bench", "search", "--faces", str(faces)]
    cmd += ["--dim", str(args.dim), "--queries", str(args.queries), "--kind", kind, "--json"]
    cmd += ["--threads", str(args.threads), "--exact-seconds", str(args.exact_seconds)]
    if args.calibrate_from:
        cmd += ["--calibrate-from", str(args.calibrate_from)]
    if args.workdir:
        cmd += ["--workdir", str(args.workdir)]
    cmd += shlex.split(extra)
    print("$ " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        sys.exit(f"benchmark failed ({out.returncode}):\n{out.stderr[-4000:]}")
    doc = json.loads(out.stdout)
    doc["variant"] = variant
    return doc


def fmt_row(d: dict) -> str:
    p = d.get("params", {})
    knobs = ",".join(f"{k}={v}" for k, v in p.items())
    return (
        f"{d['faces']:>10,} {d['kind']:>9} {knobs:<34} {d['recall_at_1']:>6.4f} "
        f"{d['recall_at_10']:>6.4f} {d['p50_ms']:>8.3f} {d['p99_ms']:>8.3f} "
        f"{d['exact_p50_ms']:>9.3f} {d['speedup']:>7.1f}x {d['build_seconds']:>8.1f} "
        f"{d['ram_bytes_per_face']:>6.0f}+{d['mapped_bytes_per_face']:<4.0f} "
        f"{d['rss_bytes'] / 2**30:>6.2f}"
    )


HEADER = (
    f"{'faces':>10} {'kind':>9} {'params':<34} {'R@1':>6} {'R@10':>6} {'p50 ms':>8} "
    f"{'p99 ms':>8} {'exact p50':>9} {'vs exact':>8} {'build s':>8} {'B/face ram+map':>15} "
    f"{'RSS GiB':>7}"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="comma-separated gallery sizes")
    ap.add_argument("--variant", action="append", help="kind[:extra bench args]; repeatable")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exact-seconds", type=float, default=10.0)
    ap.add_argument("--calibrate-from", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--threshold", action="store_true", help="measure the exact/approx switch")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()

    if args.threshold:
        from faceledger.gallery.index import DEFAULT_ANN_KIND

        sizes = args.sizes or "10000,25000,50000,100000,200000"
        variants = args.variant or [DEFAULT_ANN_KIND]
    else:
        sizes = args.sizes or "10000,100000,1000000"
        variants = args.variant or ["auto"]
    results = []
    print(HEADER)
    for n in (int(s) for s in sizes.split(",")):
        for v in variants:
            d = run(n, v, args)
            results.append(d)
            print(fmt_row(d), flush=True)
    if args.threshold:
        ok = [
            d["faces"]
            for d in results
            if d["speedup"] >= 2.0 and d["recall_at_10"] >= 0.995 and d["kind"] != "flat"
        ]
        print(
            "approximate index >= 2x faster than exact with recall@10 >= 0.995 from "
            + (f"{min(ok):,} faces" if ok else "none of the measured sizes")
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
