"""The same gallery in a Milvus server, for the benchmarks that compare it with FAISS (#16).

:func:`milvus_index` loads the rows of a :class:`~faceledger.gallery.index.RowStore` (the
vectors the FAISS side searched, with the same ids) into a fresh collection of a Milvus
server through :class:`~faceledger.gallery.index.milvus.MilvusIndex` (faceledger's HNSW
parameters and re-rank), flushes it and waits for the server's index build; the caller then
searches it with the same probes as the FAISS index. :func:`milvus_target` gives the URI:
the one asked for, or a bundled server (``milvus`` package) started for the run.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from faceledger.gallery.index import RowStore
from faceledger.gallery.index.milvus import MilvusIndex, is_milvus_uri

LOAD_CHUNK = 50_000


@contextlib.contextmanager
def milvus_target(
    uri: str | None, start_server: bool, workdir: Path | None = None, log: Any = None
) -> Iterator[str | None]:
    """``uri`` (checked), or with ``start_server`` and no URI the URI of a bundled Milvus
    server started in a temporary directory and removed afterwards, or None."""
    say: Callable[[str], None] = log or (lambda msg: None)
    if uri:
        if not is_milvus_uri(uri):
            raise ValueError(f"not a Milvus URI (milvus://host:port): {uri!r}")
        yield uri
        return
    if not start_server:
        yield None
        return
    from faceledger.gallery.index.milvus_server import LocalMilvus

    base = Path(tempfile.mkdtemp(prefix="faceledger-milvus-", dir=workdir))
    server = LocalMilvus(base)
    t0 = time.perf_counter()
    try:
        server.start()
        say(f"bundled Milvus server at {server.uri} up in {time.perf_counter() - t0:.1f}s")
        yield server.uri
    finally:
        server.remove()


def milvus_index(
    uri: str, rows: RowStore, log: Any = None, consistency: str | None = None
) -> tuple[MilvusIndex, dict[str, Any]]:
    """A new collection on ``uri`` holding ``rows`` (its live rows and ids), indexed; the
    index and what loading it took. Drop it with :func:`drop`."""
    say: Callable[[str], None] = log or (lambda msg: None)
    collection = f"faceledger_bench_{uuid.uuid4().hex[:12]}"
    index = MilvusIndex(uri, rows.dim, "bench", collection=collection)
    index.consistency = consistency or index.consistency
    t0 = time.perf_counter()
    n = rows.rows
    for s in range(0, n, LOAD_CHUNK):
        e = min(s + LOAD_CHUNK, n)
        ids = np.asarray(rows.ids[s:e], np.int64)
        vecs = np.asarray(rows.vectors[s:e], np.float32)
        index.add(ids, vecs)
    t_insert = time.perf_counter() - t0
    say(f"milvus: inserted {n} rows in {t_insert:.1f}s")
    t1 = time.perf_counter()
    info = index.flush(wait_index=True)
    t_index = time.perf_counter() - t1
    say(f"milvus: flushed and indexed in {t_index:.1f}s ({info.get('indexed_rows')} rows)")
    stats = {
        "uri": uri,
        "collection": collection,
        "rows": int(index.count()),
        "insert_seconds": round(t_insert, 1),
        "flush_index_seconds": round(t_index, 1),
        "index": {k: info.get(k) for k in ("index_type", "metric_type", "M", "efConstruction")},
        "indexed_rows": info.get("indexed_rows"),
        "ef_search": index.ef_search,
        "candidates_min": index.candidates_min,
        "consistency": index.consistency,
    }
    return index, stats


def drop(index: MilvusIndex) -> None:
    """Remove the benchmark's collection from the server."""
    with contextlib.suppress(Exception):
        index.client.drop_collection(index.collection)
