"""Benchmark: ``Faceledger.migrate_database``, a SQLite gallery moved into PostgreSQL (#16
item 4).

Builds a SQLite data dir with ``--faces`` synthetic faces (one image, one provenance row and
one face each, written through the store's bulk path :meth:`Store.add_images`) and
``--entries`` extra ledger entries, then moves it into a new database on the PostgreSQL
server ``--admin-url`` (created and dropped by the run) and reports the migration's wall
time: the copy, the sequences, the ledger's guard, the chain and records verified in the
copy's transaction, the move in both ledgers, the switch, and the chain verified again
through the switched data dir.

The baseline, measured in the same run: one read of every row of every table from SQLite
(the floor any copy must pay). The ratio of the two is what the copy adds.

    python benchmarks/migrate.py --admin-url postgresql://postgres@127.0.0.1:55441/postgres
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from sqlalchemy import select

from faceledger.core import Faceledger
from faceledger.db.schema import metadata
from faceledger.db.store import NewImage
from faceledger.ledger import audit
from faceledger.types import BBox, Detection, Face, Provenance

PW = "benchmark password"


def build(data: Path, n_faces: int, n_entries: int, seed: int) -> Faceledger:
    os.environ.pop("FACELEDGER_DB", None)  # the gallery to move is SQLite's
    fl = Faceledger(data)
    fl.init_admin("root", PW)
    fl.store.bind_model("synthetic", 128)
    rng = np.random.default_rng(seed)
    det = Detection(BBox(0, 0, 100, 100), 1.0, "hog")
    for start in range(0, n_faces, 5000):
        batch = []
        vecs = rng.standard_normal((min(n_faces, start + 5000) - start, 128)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        for i, v in enumerate(vecs, start):
            sha = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
            prov = Provenance("synthetic", "benchmark", f"{i}.jpg")
            face = Face(det, v, "synthetic", 1.0, 100, 100.0, 0.0)
            batch.append(NewImage(sha, 250, 250, "JPEG", 0, f"s/{sha}.jpg", prov, [(face, "")]))
        fl.store.add_images(batch, None)
    with fl.store.writer.begin() as conn:
        for i in range(n_entries):
            audit.append(conn, "system", "benchmark", str(i), {"i": i})
    return fl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--admin-url", required=True, help="PostgreSQL server (CREATE DATABASE)")
    ap.add_argument("--faces", type=int, default=200_000)
    ap.add_argument("--entries", type=int, default=20_000, help="extra ledger entries")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="faceledger-migrate-bench-"))
    name = f"flbench_{os.getpid()}"
    try:
        t0 = time.perf_counter()
        fl = build(work / "data", args.faces, args.entries, args.seed)
        took = time.perf_counter() - t0
        print(f"built: {args.faces} faces, {args.entries} extra entries in {took:.1f}s")
        t0 = time.perf_counter()
        rows = 0
        with fl.store.engine.connect() as conn:
            for table in metadata.sorted_tables:
                result = conn.execution_options(yield_per=2000).execute(select(table))
                rows += sum(len(part) for part in result.partitions(2000))
        t_read = time.perf_counter() - t0
        with psycopg.connect(args.admin_url, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        t0 = time.perf_counter()
        res = fl.migrate_database(
            fl.login("root", PW), f"{args.admin_url.rsplit('/', 1)[0]}/{name}"
        )
        t_move = time.perf_counter() - t0
        fl.close()
        print(
            f"rows: {rows}; read every row from SQLite (baseline): {t_read:.2f}s; "
            f"migrate: {t_move:.2f}s ({t_move / t_read:.1f}x the baseline, "
            f"{rows / t_move:,.0f} rows/s); verified there: {res.entries_verified} entries"
        )
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
