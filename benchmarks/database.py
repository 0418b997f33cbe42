"""Benchmark: the gallery database, SQLite (embedded default) vs PostgreSQL, same work.

Both sides run through faceledger's own code, in this process, on the same machine:

(a) ingest: the same N LFW photos (evenly spaced over the sorted list) into a fresh data dir
    (``Faceledger.ingest``, ``--workers`` processes): detection, embedding, files, rows.
(b) ledger appends: ``Faceledger.record`` M times (one hash-chained, serialised append each,
    what every search, login and refusal costs).
(c) candidate lookup: ``Store.candidates`` for 10 random face ids (what a search reads to
    show its candidates with provenance), K times.
(d) size after the ingest: database bytes per face (SQLite pages, WAL included;
    PostgreSQL ``pg_database_size`` minus that of an empty faceledger database; both
    include the images' and provenance rows and the ingest's ledger entries).

The PostgreSQL server is the throwaway one of ``scripts/pg-test-server.sh`` (fsync off, so
its write figures are optimistic) unless ``--pg-admin URL`` names another; a database is
created and dropped for the run. Prints JSON with both sides and their ratios.

    python benchmarks/database.py --images 300 [--appends 500] [--lookups 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from ingest import default_lfw_dir, pick_images  # noqa: E402

from faceledger.core import SYSTEM, Faceledger  # noqa: E402
from faceledger.gallery.ingest import PipelineSettings  # noqa: E402
from faceledger.gallery.sources import iter_paths  # noqa: E402


def _pg_exec(admin: str, sql: str) -> Any:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchone() if cur.description else None


def _db_bytes(fl: Faceledger, admin: str | None, empty: int) -> int:
    if admin is None:  # the database's logical size (the WAL file is a reused journal)
        with fl.store.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        return int(pages) * int(size)
    name = fl.store.url.rsplit("/", 1)[1]
    return int(_pg_exec(admin, f"SELECT pg_database_size('{name}')")[0]) - empty


def run_side(
    label: str, images: list[Path], admin: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"fl-dbbench-{label}-"))
    url = None
    empty = 0
    if admin is not None:
        name = f"flbench_{uuid.uuid4().hex[:12]}"
        _pg_exec(admin, f"CREATE DATABASE {name}")
        url = f"{admin.rsplit('/', 1)[0]}/{name}"
    try:
        fl = Faceledger(tmp / "data", db_url=url)
        if admin is not None:
            empty = int(_pg_exec(admin, f"SELECT pg_database_size('{name}')")[0])
        root = fl.init_admin("bench-admin", "bench-only-password-0123456789")
        t0 = time.perf_counter()
        summary = fl.ingest(
            root,
            iter_paths(images, "bench", "benchmark"),
            PipelineSettings(),
            workers=args.workers,
        )
        ingest_s = time.perf_counter() - t0
        size = _db_bytes(fl, admin, empty)  # the gallery's rows, before the benchmark's
        fl.store.close()
        fl = Faceledger(tmp / "data", db_url=url)

        t0 = time.perf_counter()
        for i in range(args.appends):
            fl.record(SYSTEM, "bench.append", str(i), n=i)
        append_s = time.perf_counter() - t0

        ids = np.array(
            [i for ids, _ in fl.store.iter_vectors() for i in ids.tolist()], dtype=np.int64
        )
        rng = np.random.default_rng(0)
        lat = []
        for _ in range(args.lookups):
            pick = rng.choice(ids, size=min(10, len(ids)), replace=False).tolist()
            t = time.perf_counter()
            fl.store.candidates(pick)
            lat.append((time.perf_counter() - t) * 1000)
        fl.store.close()
        return {
            "database": label,
            "photos": summary.seen,
            "faces": summary.faces,
            "ingest_photos_per_s": summary.seen / ingest_s,
            "ledger_appends_per_s": args.appends / append_s,
            "candidates_p50_ms": statistics.median(lat),
            "candidates_p99_ms": float(np.percentile(lat, 99)),
            "db_bytes_per_face": size / max(1, summary.faces),
        }
    finally:
        if admin is not None:
            _pg_exec(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--appends", type=int, default=500)
    ap.add_argument("--lookups", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    ap.add_argument("--pg-admin", help="admin URL of a PostgreSQL server (default: start one)")
    args = ap.parse_args()
    admin = (
        args.pg_admin
        or subprocess.run(
            [str(REPO / "scripts" / "pg-test-server.sh"), "start"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    images = pick_images(args.lfw_dir, args.images)
    sqlite = run_side("sqlite", images, None, args)
    pg = run_side("postgresql", images, admin, args)
    ratios = {
        k: pg[k] / sqlite[k]
        for k in (
            "ingest_photos_per_s",
            "ledger_appends_per_s",
            "candidates_p50_ms",
            "db_bytes_per_face",
        )
    }
    print(
        json.dumps({"sqlite": sqlite, "postgresql": pg, "postgresql_over_sqlite": ratios}, indent=2)
    )


if __name__ == "__main__":
    main()
