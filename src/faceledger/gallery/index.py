"""Vector index behind a small interface, derived from the gallery database.

Two layers, one machine:

* :class:`RowStore` keeps every face's float32 vector in a file that is memory-mapped (the
  page cache holds it, not the heap), plus the face id and a live/erased flag per row.
  It is both the exact index for small galleries and the source of exact scores for the
  re-rank of large ones.
* :class:`FaceIndex` searches a ``RowStore``. Below :data:`EXACT_MAX_FACES` faces it scans
  all vectors exactly (``kind="flat"``). From there on an approximate FAISS index proposes
  a generous candidate set (:data:`CANDIDATES_MIN` rows) which is re-ranked exactly against
  the float32 vectors, so the top-k shown is the exact top-k, with exact scores, whenever
  the true neighbours were among the candidates. The default approximate kind is
  ``"ivf_pqfs"``: an inverted file (``nlist`` ~ sqrt(n) k-means lists, 7.8% of them probed)
  over 4-bit fast-scan product-quantisation codes; ``"ivf_sq8"`` (8-bit scalar codes) and
  ``"hnsw_sq8"`` (HNSW graph) can be asked for. See the constants below for how each
  parameter was measured.

Memory per 128-d face: 512 B of float32 vector in the mapped file (on disk; the page cache
holds what search touches: the candidates' rows), 9 B of id + live flag in RAM, and for
``ivf_pqfs`` 32 B of code + 8 B of list id in RAM (plus the centroids), measured 50 B of RAM
per face at 1M. 10M faces: ~0.5 GB of heap and 5.1 GB of file (``ivf_sq8``: 136 B/face of
codes; ``hnsw_sq8``: ~400 B/face of codes and graph).

The index is a cache of the ``faces`` table. :class:`IndexManager` saves it (small files with
:func:`faceledger.gallery.store.atomic_write`, the large ones by the same write-to-temp + fsync +
rename pattern, the metadata file last), catches up incrementally: new faces (id > max id) are
appended; erased faces (``Store.tombstones_after``) are dropped at once — their vectors are
zeroed in the file, their codes removed from the IVF lists (or masked out of the HNSW graph)
and a live-row mask filters them from every search — and compacted away later, when erased
rows pass :data:`COMPACT_DEAD_FRACTION` or on :meth:`IndexManager.rebuild`. It rebuilds from
the database when the files are missing, fail their checksums, or belong to another model.

``IndexManager(store, uri=...)`` (or ``$FACELEDGER_INDEX``) selects a Milvus backend instead
(``milvus://host:port`` or a Milvus Lite ``*.db`` path), see :mod:`faceledger.gallery.index_milvus`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import faiss
import numpy as np

from faceledger.gallery.store import Store, atomic_write, process_alive

if TYPE_CHECKING:
    # numpy's stubs give ndarray ``__buffer__`` only on Python >= 3.12, so on 3.11 an array
    # is not a ``Buffer`` to the type checker though it supports the buffer protocol.
    from typing_extensions import Buffer

# faiss' bundled stubs are incomplete: index_factory / downcast_index results are typed as
# the base ``faiss.Index`` (no hnsw, nlist, storage, codes, ...), the Python wrappers'
# conveniences (remove_ids with an id array, keyword SearchParameters) are missing, as are
# SearchParametersHNSW, BlockInvertedLists and knn_inner_products_by_idx. Those uses carry
# a ``# type: ignore[<code>]``.

# --- measured defaults -------------------------------------------------------------------
# All measured on synthetic LFW-calibrated faces (faceledger.evaluation.bench), 128-d, k=10,
# one search thread, on the 2-core development VM; commands and full tables in benchmarks/search.py.
#
# Exact scan below this many live faces, approximate + exact re-rank from there on: the
# smallest measured size at which the approximate index is >= 2x faster than exact search at
# p50 with recall@10 >= 0.995 (``benchmarks/search.py --threshold``): 25k: 0.8x; 50k: 2.9x
# (0.25 vs 0.73 ms, recall 1.0); 100k: 6.2x; 200k: 11.4x; 500k: 18.6x. Below it an exact
# scan costs under ~0.7 ms, so recall stays exactly 1 where approximation buys little.
# Re-measured with 9/16 of the lists probed: 50k 2.1x (0.29 vs 0.62 ms, recall@10 1.0),
# 100k 4.4x (0.36 vs 1.61 ms, 0.9998), so the threshold stands.
EXACT_MAX_FACES = 50_000

# The approximate kind above the threshold. Face galleries are hard for graphs: on REAL
# embeddings (benchmarks/realscale.py, 1M faces) HNSW (M=32, SQ8, efConstruction 200) lost
# 38 of 2,893 true mates even at efSearch 2000 (7.3 ms), where IVF-PQ probing 9/16 of its
# lists lost none at 2.2-2.8 ms. On synthetic faces HNSW (efSearch 500) found the true
# top-1 for only 94.4% of probes at 2.1 ms and took 305 s to build; an IVF
# finds them all, its recall following the share of lists probed, and 4-bit fast-scan PQ
# codes scan that share ~2.7x faster than SQ8 codes (1M, nlist 1024, nprobe 80: 0.75 ms,
# recall@10 0.998 vs 2.0 ms, 0.999) with a third of the RAM (50 vs 146 B/face).
DEFAULT_ANN_KIND = "ivf_pqfs"

# Candidates re-ranked exactly per query: max(k * CANDIDATE_FACTOR, CANDIDATES_MIN). 4-bit PQ
# scores are coarse: at 1M, nprobe 80, 500 candidates kept 99.4% of the true top-10, 1000
# kept 99.8% (all the probed lists held), 2000 added 0.06% for 0.23 ms more.
CANDIDATE_FACTOR = 50
CANDIDATES_MIN = 1000
# ...and at least this share of the gallery: with 10M faces the PQ scores of 1,000
# candidates held 99.3% of the true top-10 (synthetic, 2304 of 4096 lists, p50 17.5 ms),
# 3,000 held 99.93% (19.0 ms).
CANDIDATES_PER_FACE = 3e-4

# IVF lists: nlist = the power of two nearest NLIST_PER_SQRT_N * sqrt(n) (1M: 1024, 10M:
# 4096). Recall tracks the share of lists probed rather than nlist, so nprobe =
# PROBE_FRACTION of the lists, at least NPROBE_MIN. The share is set on REAL embeddings
# (benchmarks/realscale.py: LFW's 1:N probes in a gallery grown with distractors), which
# spread over 2-4x more lists than the synthetic faces: at 1M, 80 of 1024 lists (5/64, the
# share the synthetic bench suggested: recall@10 0.998 there) lost 124 of 2,893 mates that
# exact search ranks in the top-10 (rank-1 0.873 vs 0.908); 320 lost 4; 480 and 560 none
# (p50 2.5-2.7 ms vs exact 18.5 ms). 100k: 48 of 256 lost 27, 144 none (0.36 vs 1.7 ms).
NLIST_PER_SQRT_N = 1.0
PROBE_FRACTION = 9 / 16
NPROBE_MIN = 48
PQ_DIMS_PER_CODE = 2  # ivf_pqfs: one 4-bit code per 2 dimensions (32 B per 128-d face)
# HNSW graph degree and beam widths.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256

# Compaction: rewrite when erased rows exceed this share of all rows (ANN kinds), or this
# many rows (exact kind, where a rewrite is cheap).
COMPACT_DEAD_FRACTION = 0.10
COMPACT_DEAD_ROWS_FLAT = 1024
# IVF lists were sized for the gallery it was trained on; retrain when it grew this much.
IVF_RETRAIN_GROWTH = 4.0
# Training sample per IVF list (faiss warns below 39).
IVF_TRAIN_PER_LIST = 64

KINDS = ("flat", "ivf_pqfs", "ivf_sq8", "hnsw_sq8")
IVF_KINDS = ("ivf_pqfs", "ivf_sq8")
BLOCK_ROWS = 1 << 16  # rows per checksum block of the vector file
FORMAT_VERSION = 2


class VectorIndex(Protocol):
    kind: str
    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k'); k' = min(k, len); missing slots have id -1."""
        ...


class FlatIndex:
    """Exact cosine search held in RAM (``IndexFlatIP`` keyed by face id).

    Kept for callers that want a self-contained in-memory exact index; the manager's exact
    kind is :class:`FaceIndex` with ``kind="flat"``, which scans the memory-mapped rows.
    """

    kind = "flat"

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids: np.ndarray) -> int:
        id_arr = np.asarray(ids, dtype=np.int64)
        # faiss' Python wrapper accepts an id array; the stub of Index.remove_ids does not
        return int(self._index.remove_ids(id_arr))  # type: ignore[arg-type]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(self) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = max(1, min(k, len(self)))
        scores, ids = self._index.search(q, k)
        return scores, ids

    def max_id(self) -> int:
        if len(self) == 0:
            return 0
        id_map = self._index.id_map  # type: ignore[attr-defined]  # an IndexIDMap2 at runtime
        return int(faiss.vector_to_array(id_map).max())

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> FlatIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index.d, index)


# --- parameters --------------------------------------------------------------------------
def auto_nlist(n: int) -> int:
    """IVF list count for ``n`` vectors: a power of two near NLIST_PER_SQRT_N * sqrt(n),
    no more than leaves IVF_TRAIN_PER_LIST training vectors per list."""
    target = max(1.0, NLIST_PER_SQRT_N * math.sqrt(max(n, 1)))
    nlist = 2 ** round(math.log2(target))
    cap = 2 ** int(math.log2(max(n // IVF_TRAIN_PER_LIST, 1)))
    return int(max(1, min(nlist, cap, 1 << 16)))


def auto_nprobe(nlist: int) -> int:
    return int(min(nlist, max(NPROBE_MIN, round(nlist * PROBE_FRACTION))))


@dataclass
class AnnParams:
    """Build and search settings of the approximate kinds; None means the measured default."""

    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = HNSW_M
    ef_construction: int = HNSW_EF_CONSTRUCTION
    ef_search: int = HNSW_EF_SEARCH
    candidate_factor: int = CANDIDATE_FACTOR
    candidates_min: int = CANDIDATES_MIN

    def candidates(self, k: int, n: int = 0) -> int:
        """Candidates to re-rank for ``k`` results from ``n`` indexed faces."""
        return max(k * self.candidate_factor, self.candidates_min, int(n * CANDIDATES_PER_FACE))


# AnnParams fields that only affect searching (a loaded index takes them from its manager)
SEARCH_PARAMS = ("nprobe", "ef_search", "candidate_factor", "candidates_min")


def choose_kind(n: int, exact_max: int = EXACT_MAX_FACES, ann_kind: str = DEFAULT_ANN_KIND) -> str:
    """The kind to build for a gallery of ``n`` live faces."""
    return "flat" if n < exact_max else ann_kind


# --- files -------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temp path to write a large file to; fsynced and renamed over ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o600)  # vectors are biometric data: the owner's only
        _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _file_crc(path: Path, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


class RowStore:
    """Float32 vectors in a memory-mapped file, row by row, with face ids and live flags.

    Rows are appended in increasing face-id order (ids of new faces only grow), so an id's row
    is found by binary search. Erasing a face zeroes its vector in the file and clears its
    live flag; the row stays until compaction rewrites the file.
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self.rows = 0
        self._ids = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self.n_dead = 0
        self.crcs: list[int] = []
        self.vectors: np.ndarray = np.zeros((0, dim), np.float32)

    # construction
    @classmethod
    def create(cls, path: Path, dim: int) -> RowStore:
        store = cls(path, dim)
        store.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(store.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.chmod(store.path, 0o600)  # an existing file keeps its mode through O_TRUNC
        return store

    @classmethod
    def open(
        cls, path: Path, dim: int, ids: np.ndarray, alive: np.ndarray, crcs: list[int]
    ) -> RowStore:
        """Map an existing vector file; ValueError when it does not match ``crcs``."""
        store = cls(path, dim)
        rows = len(ids)
        need = rows * dim * 4
        size = store.path.stat().st_size
        if size < need:
            raise ValueError(f"vector file holds {size} bytes, expected {need}")
        if size > need:  # rows appended by a writer that died before saving its metadata
            os.truncate(store.path, need)
        store.rows = rows
        store._ids = np.array(ids, np.int64)
        store._alive = np.array(alive, bool)
        store.n_dead = int(rows - store._alive.sum())
        store._remap()
        if store._block_crcs(0) != list(crcs):
            raise ValueError("vector file checksum mismatch")
        store.crcs = list(crcs)
        return store

    def _remap(self) -> None:
        if self.rows == 0:
            self.vectors = np.zeros((0, self.dim), np.float32)
        else:
            self.vectors = np.memmap(
                self.path, dtype=np.float32, mode="r+", shape=(self.rows, self.dim)
            )

    def _block_crcs(self, first_block: int) -> list[int]:
        out = []
        for start in range(first_block * BLOCK_ROWS, self.rows, BLOCK_ROWS):
            block = np.ascontiguousarray(self.vectors[start : start + BLOCK_ROWS])
            out.append(zlib.crc32(cast("Buffer", block)))
        return out

    # views
    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.rows]

    @property
    def alive(self) -> np.ndarray:
        return self._alive[: self.rows]

    @property
    def n_alive(self) -> int:
        return self.rows - self.n_dead

    def max_id(self) -> int:
        return int(self._ids[self.rows - 1]) if self.rows else 0

    def alive_bitmap(self) -> np.ndarray:
        return np.packbits(self.alive, bitorder="little")

    # mutation
    def append(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Append rows (ids increasing and above every stored id); their row numbers out."""
        ids = np.asarray(ids, np.int64)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if len(ids) == 0:
            return np.zeros(0, np.int64)
        if np.any(np.diff(ids) <= 0) or (self.rows and ids[0] <= self.max_id()):
            raise ValueError("ids must be increasing and above the stored ones")
        start = self.rows
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view = memoryview(cast("Buffer", vecs)).cast("B")
            off, pos = start * self.dim * 4, 0
            while pos < len(view):
                pos += os.pwrite(fd, view[pos : pos + (1 << 26)], off + pos)
        finally:
            os.close(fd)
        end = start + len(ids)
        if end > len(self._ids):
            cap = max(end, 2 * len(self._ids), 1024)
            self._ids = np.concatenate(
                [self._ids[: self.rows], np.zeros(cap - self.rows, np.int64)]
            )
            self._alive = np.concatenate(
                [self._alive[: self.rows], np.zeros(cap - self.rows, bool)]
            )
        self._ids[start:end] = ids
        self._alive[start:end] = True
        self.rows = end
        self._remap()
        first = start // BLOCK_ROWS
        self.crcs = self.crcs[:first] + self._block_crcs(first)
        return np.arange(start, end, dtype=np.int64)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of those ``ids`` that are stored (erased or not)."""
        ids = np.asarray(ids, np.int64)
        if self.rows == 0 or len(ids) == 0:
            return np.zeros(0, np.int64)
        return _matching(self.ids, ids)

    def kill(self, ids: np.ndarray) -> np.ndarray:
        """Erase the live rows of ``ids``: zero their vectors, clear their flags; rows out."""
        rows = self.rows_of(ids)
        rows = rows[self._alive[rows]]
        if len(rows) == 0:
            return rows
        self.vectors[rows] = 0.0
        self._alive[rows] = False
        self.n_dead += len(rows)
        for b in np.unique(rows // BLOCK_ROWS):
            start = int(b) * BLOCK_ROWS
            block = np.ascontiguousarray(self.vectors[start : start + BLOCK_ROWS])
            self.crcs[b] = zlib.crc32(cast("Buffer", block))
        return rows

    def flush(self) -> None:
        if isinstance(self.vectors, np.memmap):
            self.vectors.flush()
        _fsync_path(self.path)

    def compacted(self, path: Path, chunk: int = 1 << 18) -> RowStore:
        """A new store at ``path`` holding only the live rows."""
        out = RowStore.create(path, self.dim)
        for start in range(0, self.rows, chunk):
            keep = self.alive[start : start + chunk]
            if keep.any():
                out.append(
                    self.ids[start : start + chunk][keep], self.vectors[start : start + chunk][keep]
                )
        return out

    def ids_bytes(self) -> bytes:
        return self.ids.astype("<i8").tobytes() + self.alive.astype(np.uint8).tobytes()

    @staticmethod
    def parse_ids(data: bytes, rows: int) -> tuple[np.ndarray, np.ndarray]:
        if len(data) != rows * 9:
            raise ValueError("id file has the wrong size")
        ids = np.frombuffer(data, dtype="<i8", count=rows).astype(np.int64)
        alive = np.frombuffer(data, dtype=np.uint8, offset=rows * 8).astype(bool)
        return ids, alive


def _matching(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_ids, ids)
    ok = pos < len(sorted_ids)
    pos = pos[ok]
    return pos[sorted_ids[pos] == ids[ok]].astype(np.int64)


# --- the index -----------------------------------------------------------------------------
def _new_ann(kind: str, dim: int, n: int, params: AnnParams) -> faiss.Index:
    if kind == "ivf_pqfs":
        nlist = params.nlist or auto_nlist(n)
        m = dim // PQ_DIMS_PER_CODE
        return faiss.index_factory(dim, f"IVF{nlist},PQ{m}x4fs", faiss.METRIC_L2)
    if kind == "ivf_sq8":
        nlist = params.nlist or auto_nlist(n)
        return faiss.index_factory(dim, f"IVF{nlist},SQ8", faiss.METRIC_L2)
    if kind == "hnsw_sq8":
        ann = faiss.index_factory(dim, f"HNSW{params.hnsw_m}_SQ8", faiss.METRIC_L2)
        ann.hnsw.efConstruction = params.ef_construction  # type: ignore[attr-defined]
        return ann
    raise ValueError(f"unknown approximate index kind {kind!r}")


class FaceIndex:
    """Exact or approximate-with-exact-re-rank search over a :class:`RowStore`.

    Approximate kinds index rows by row number over unit vectors with L2 distance (same
    ranking as cosine on unit vectors) and return candidates; every score handed out is the
    exact float32 inner product.
    """

    def __init__(
        self,
        rows: RowStore,
        kind: str = "flat",
        ann: faiss.Index | None = None,
        params: AnnParams | None = None,
        trained_rows: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; one of {KINDS}")
        self.rows = rows
        self.dim = rows.dim
        self.kind = kind
        self.ann = ann
        self.params = params or AnnParams()
        self.trained_rows = trained_rows
        self._bitmap: np.ndarray | None = None  # live rows, for faiss selectors
        self._selector: Any = None

    def __len__(self) -> int:
        return self.rows.n_alive

    def max_id(self) -> int:
        return self.rows.max_id()

    # building
    def build_ann(self, kind: str, chunk: int = 1 << 18) -> None:
        """(Re)build the approximate structure of ``kind`` over the rows (no erased rows)."""
        if kind == "flat":
            self.kind, self.ann, self.trained_rows = "flat", None, 0
            return
        if self.rows.n_dead:
            raise ValueError("compact the rows before building an approximate index")
        n = self.rows.rows
        ann = _new_ann(kind, self.dim, n, self.params)
        nlist = ann.nlist if kind in IVF_KINDS else 1  # type: ignore[attr-defined]
        per_list = IVF_TRAIN_PER_LIST * nlist
        n_train = min(n, max(per_list, 100_000))
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else None
        train = self.rows.vectors[sample] if sample is not None else self.rows.vectors[:]
        ann.train(np.ascontiguousarray(train, dtype=np.float32))
        del train
        for start in range(0, n, chunk):
            self._ann_add(ann, kind, np.arange(start, min(n, start + chunk)))
        self.kind, self.ann, self.trained_rows = kind, ann, n
        self._selector = self._bitmap = None

    def _ann_add(self, ann: faiss.Index, kind: str, rows: np.ndarray) -> None:
        vecs = np.ascontiguousarray(self.rows.vectors[rows[0] : rows[-1] + 1], dtype=np.float32)
        if kind in IVF_KINDS:
            ann.add_with_ids(vecs, rows.astype(np.int64))
        else:  # HNSW labels are insertion order, which is the row order
            if ann.ntotal != rows[0]:
                raise RuntimeError("HNSW index out of step with the rows")
            ann.add(vecs)

    # updates
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        rows = self.rows.append(ids, vectors)
        if self.ann is not None:
            self._ann_add(self.ann, self.kind, rows)
        self._selector = self._bitmap = None

    def remove(self, ids: np.ndarray) -> int:
        """Drop faces from every later search at once; the rows are compacted later."""
        rows = self.rows.kill(ids)
        if len(rows) == 0:
            return 0
        if self.kind in IVF_KINDS and self.ann is not None:
            self.ann.remove_ids(faiss.IDSelectorBatch(rows.astype(np.int64)))
        elif self.kind == "hnsw_sq8" and self.ann is not None:
            # The graph keeps the node for navigation; wipe its quantised vector too.
            storage: Any = faiss.downcast_index(self.ann.storage)  # type: ignore[attr-defined]
            codes = faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size())
            codes.reshape(-1, storage.code_size)[rows] = 0
        self._selector = self._bitmap = None
        return len(rows)

    def needs_compaction(self) -> bool:
        dead = self.rows.n_dead
        if self.kind == "flat":
            return dead > COMPACT_DEAD_ROWS_FLAT
        return dead > COMPACT_DEAD_FRACTION * max(self.rows.rows, 1)

    # search
    def _live_selector(self) -> Any:
        if self.rows.n_dead == 0:
            return None
        if self._selector is None:
            self._bitmap = self.rows.alive_bitmap()
            self._selector = faiss.IDSelectorBitmap(len(self._bitmap), faiss.swig_ptr(self._bitmap))
        return self._selector

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(self)
        if n == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, n)
        if self.kind == "flat" or self.ann is None:
            scores, rows = self.exact_rows(q, k)
        else:
            scores, rows = self._rerank(q, self.candidate_rows(q, k), k)
        ids = np.where(rows >= 0, self.rows.ids[np.maximum(rows, 0)], -1)
        return scores, ids

    def exact_rows(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over all live rows (FAISS' brute-force inner-product kernel)."""
        nq, n = len(q), self.rows.rows
        scores = np.empty((nq, k), np.float32)
        rows = np.empty((nq, k), np.int64)
        xb = self.rows.vectors
        faiss.knn_inner_product(
            faiss.swig_ptr(q),
            faiss.swig_ptr(xb),
            self.dim,
            nq,
            n,
            k,
            faiss.swig_ptr(scores),
            faiss.swig_ptr(rows),
            self._live_selector(),
        )
        return scores, rows

    def candidate_rows(self, q: np.ndarray, k: int) -> np.ndarray:
        """Candidate rows (n_queries, c) from the approximate index; -1 pads."""
        assert self.ann is not None
        c = min(self.params.candidates(k, self.rows.rows), self.rows.rows)
        if self.kind in IVF_KINDS:
            ivf = faiss.extract_index_ivf(self.ann)
            nprobe = self.params.nprobe or auto_nprobe(ivf.nlist)
            sp: Any = faiss.SearchParametersIVF(nprobe=nprobe)  # type: ignore[call-arg]
        else:
            ef = max(self.params.ef_search, c)
            sel = self._live_selector()
            sp = (
                faiss.SearchParametersHNSW(efSearch=ef)  # type: ignore[attr-defined]
                if sel is None
                else faiss.SearchParametersHNSW(efSearch=ef, sel=sel)  # type: ignore[attr-defined]
            )
        _, rows = self.ann.search(q, c, params=sp)
        return rows

    def _rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of the candidate rows: float32 inner products read from the mapping."""
        ok = cand >= 0
        ok &= self.rows.alive[np.where(ok, cand, 0)]
        # live candidates first, -1 after them (faiss stops at the first -1 of a row)
        order = np.argsort(~ok, axis=1, kind="stable")
        subset = np.ascontiguousarray(np.take_along_axis(np.where(ok, cand, -1), order, axis=1))
        nq, c = subset.shape
        scores = np.empty((nq, k), np.float32)
        rows = np.empty((nq, k), np.int64)
        faiss.knn_inner_products_by_idx(  # type: ignore[attr-defined]
            faiss.swig_ptr(q),
            faiss.swig_ptr(self.rows.vectors),
            faiss.swig_ptr(subset),
            self.dim,
            nq,
            self.rows.rows,
            c,
            k,
            faiss.swig_ptr(scores),
            faiss.swig_ptr(rows),
            c,  # row stride of ``subset``
        )
        missing = rows < 0
        scores[missing] = -1.0
        return scores, rows

    # memory
    def memory(self) -> dict[str, int]:
        """Bytes held: ``ram`` (heap: codes, graph, ids) and ``mapped`` (float32 file)."""
        ann = 0 if self.ann is None else _ann_bytes(self.ann, self.kind)
        ids = self.rows.rows * 9
        return {"ram": ann + ids, "ann": ann, "ids": ids, "mapped": self.rows.rows * self.dim * 4}


def _ann_bytes(ann: faiss.Index, kind: str) -> int:
    """Heap bytes of the data structures of an approximate index (codes, ids, graph)."""
    if kind in IVF_KINDS:
        ivf = faiss.extract_index_ivf(ann)
        invl = faiss.downcast_InvertedLists(ivf.invlists)  # type: ignore[arg-type]
        sizes = [invl.list_size(i) for i in range(ivf.nlist)]
        if isinstance(invl, faiss.BlockInvertedLists):  # type: ignore[attr-defined]
            # fast-scan: codes in blocks of 32
            per = invl.n_per_block
            codes = sum((s + per - 1) // per for s in sizes) * invl.block_size
        else:
            codes = sum(sizes) * invl.code_size
        return int(codes + sum(sizes) * 8 + ivf.nlist * ivf.d * 4)
    hnsw = ann.hnsw  # type: ignore[attr-defined]
    storage: Any = faiss.downcast_index(ann.storage)  # type: ignore[attr-defined]
    return int(
        hnsw.neighbors.size() * 4
        + hnsw.levels.size() * 4
        + hnsw.offsets.size() * 8
        + storage.codes.size()
    )


# --- the manager ---------------------------------------------------------------------------
@dataclass
class _Meta:
    kind: str
    dim: int
    rows: int
    n_dead: int
    generation: int
    delete_generation: int
    max_id: int
    model_id: str | None
    trained_rows: int
    params: dict[str, Any]
    crcs: list[int]
    ids_crc: int
    ann_crc: int | None
    token: str
    format: int = FORMAT_VERSION
    count: int = 0


class _Tracked(Protocol):
    store: Store
    generation: int
    delete_generation: int
    max_id: int


def catch_up(state: _Tracked, index: Any) -> bool:
    """Apply the database's changes since ``state``'s generations to ``index``.

    Erased faces (tombstones) are removed, faces with ids above ``max_id`` added, and the
    generations and ``max_id`` on ``state`` advanced. True if anything changed.
    """
    gen, dgen = state.store.generations()
    changed = False
    if dgen != state.delete_generation:
        index.remove(state.store.tombstones_after(state.delete_generation))
        state.delete_generation = dgen
        changed = True
    if gen != state.generation:
        for ids, vecs in state.store.iter_vectors(min_id=state.max_id):
            index.add(ids, vecs)
            state.max_id = int(ids[-1])
        state.generation = gen
        changed = True
    return changed


class IndexManager:
    """Keeps the index in step with the database and on disk.

    ``kind="auto"`` picks exact or approximate by gallery size (``exact_max``, default
    :data:`EXACT_MAX_FACES`); ``uri`` (or ``$FACELEDGER_INDEX``) — ``milvus://host:port`` or
    a Milvus Lite ``*.db`` path — delegates to a Milvus collection instead.
    """

    def __init__(
        self,
        store: Store,
        uri: str | None = None,
        *,
        kind: str = "auto",
        exact_max: int | None = None,
        ann_kind: str = DEFAULT_ANN_KIND,
        params: AnnParams | None = None,
    ) -> None:
        self.store = store
        self.dir = store.data_dir / "index"
        self.path = self.dir / "faces.faiss"  # approximate structure (absent for flat)
        self.vectors_path = self.dir / "faces.f32"
        self.ids_path = self.dir / "faces.ids"
        self.meta_path = self.dir / "faces.json"
        self.lock_path = self.dir / ".lock"
        uri = uri if uri is not None else os.environ.get("FACELEDGER_INDEX")
        self.uri = None if uri in (None, "", "faiss", "local") else uri
        if kind != "auto" and kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}")
        self.kind = kind
        self.exact_max = EXACT_MAX_FACES if exact_max is None else exact_max
        self.ann_kind = ann_kind
        self.params = params or AnnParams()
        self._params_given = params is not None
        self.index: Any = None
        self.generation = -1
        self.delete_generation = -1
        self.max_id = 0
        self.token: str | None = None
        self._remote: Any = None
        if self.uri:
            from faceledger.gallery.index_milvus import MilvusIndexManager, is_milvus_uri

            if not is_milvus_uri(self.uri):
                raise ValueError(
                    f"unknown index URI {self.uri!r}: use milvus://host:port, a Milvus Lite "
                    "*.db path, or 'faiss' for the local index"
                )
            self._remote = MilvusIndexManager(store, self.uri)

    # helpers
    def _dim(self) -> int:
        dim = self.store.get_meta("dim")
        return int(dim) if dim else 128

    def _target_kind(self, n: int) -> str:
        return choose_kind(n, self.exact_max, self.ann_kind) if self.kind == "auto" else self.kind

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_meta(self) -> _Meta | None:
        try:
            raw = json.loads(self.meta_path.read_text())
            return _Meta(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def _load(self) -> bool:
        meta = self._read_meta()
        if meta is None or meta.format != FORMAT_VERSION:
            return False
        if meta.model_id != self.store.model_id() or meta.dim != self._dim():
            return False
        try:
            data = self.ids_path.read_bytes()
            if zlib.crc32(data) != meta.ids_crc:
                return False
            ids, alive = RowStore.parse_ids(data, meta.rows)
            rows = RowStore.open(self.vectors_path, meta.dim, ids, alive, meta.crcs)
            ann = None
            if meta.kind != "flat":
                if meta.ann_crc is None or _file_crc(self.path) != meta.ann_crc:
                    return False
                ann = faiss.read_index(str(self.path))
        except (OSError, ValueError, RuntimeError):
            return False
        params = replace(AnnParams(), **meta.params)
        if self._params_given:  # search-time settings asked of this manager win
            params = replace(params, **{f: getattr(self.params, f) for f in SEARCH_PARAMS})
        index = FaceIndex(rows, meta.kind, ann, params, meta.trained_rows)
        if len(index) != meta.count:
            return False
        self.index = index
        self.generation = meta.generation
        self.delete_generation = meta.delete_generation
        self.max_id = meta.max_id
        self.token = meta.token
        return True

    def _fresh_rows_path(self) -> Path:
        return self.dir / f".faces.f32.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"

    def _cleanup_tmp(self) -> None:
        for p in self.dir.glob(".faces.f32.*.tmp"):
            try:
                pid = int(p.name.split(".")[3])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not process_alive(pid):
                p.unlink(missing_ok=True)

    # public API
    def rebuild(self) -> Any:
        """Rebuild from the database (the source of truth), compacting erased faces away."""
        if self._remote is not None:
            return self._remote.rebuild()
        with self._locked():
            return self._rebuild_locked()

    def _rebuild_locked(self) -> FaceIndex:
        self._cleanup_tmp()
        gen, dgen = self.store.generations()
        rows = RowStore.create(self._fresh_rows_path(), self._dim())
        for ids, vecs in self.store.iter_vectors():
            rows.append(ids, vecs)
        index = FaceIndex(rows, "flat", None, replace(self.params))
        index.build_ann(self._target_kind(len(index)))
        self.index, self.generation, self.delete_generation = index, gen, dgen
        self.max_id = rows.max_id()
        self.token = None  # not saved yet
        return index

    def _compact_locked(self) -> None:
        """Drop erased rows and rebuild the approximate structure (no database read)."""
        assert self.index is not None
        old: FaceIndex = self.index
        rows = old.rows.compacted(self._fresh_rows_path())
        index = FaceIndex(rows, "flat", None, old.params)
        index.build_ann(self._target_kind(len(index)))
        self.index = index
        self.token = None

    def sync(self) -> Any:
        """Bring the index up to the database's generation, loading or rebuilding as needed."""
        if self._remote is not None:
            return self._remote.sync()
        with self._locked():
            meta = self._read_meta()
            disk_token = meta.token if meta else None
            # reload when another process saved since (an unsaved rebuild of ours is kept)
            stale = self.index is None or (self.token is not None and disk_token != self.token)
            if stale and not self._load():
                self._rebuild_locked()
                self._save_locked()
                return self.index
            index: FaceIndex = self.index
            changed = catch_up(self, index)
            if changed or self.token is None:
                target = self._target_kind(len(index))
                grown = (
                    index.kind in IVF_KINDS
                    and index.rows.rows > IVF_RETRAIN_GROWTH * max(index.trained_rows, 1)
                    and self.params.nlist is None
                )
                # switch kinds with hysteresis: back to exact only below half the threshold
                switch = target != index.kind and not (
                    target == "flat" and self.kind == "auto" and len(index) >= self.exact_max // 2
                )
                if index.needs_compaction() or switch or grown:
                    self._compact_locked()
                self._save_locked()
            return self.index

    def save(self) -> None:
        if self._remote is not None:
            self._remote.save()
            return
        with self._locked():
            self._save_locked()

    def _save_locked(self) -> None:
        index: FaceIndex | None = self.index
        if index is None:
            return
        rows = index.rows
        rows.flush()
        if rows.path != self.vectors_path:  # a freshly built or compacted file
            os.replace(rows.path, self.vectors_path)
            rows.path = self.vectors_path
        ids_data = rows.ids_bytes()
        atomic_write(self.ids_path, ids_data)
        ann_crc = None
        if index.ann is not None:
            with _atomic_path(self.path) as tmp:
                faiss.write_index(index.ann, str(tmp))
                ann_crc = _file_crc(tmp)
        else:
            self.path.unlink(missing_ok=True)
        self.token = uuid.uuid4().hex
        meta = _Meta(
            kind=index.kind,
            dim=index.dim,
            rows=rows.rows,
            n_dead=rows.n_dead,
            generation=self.generation,
            delete_generation=self.delete_generation,
            max_id=self.max_id,
            model_id=self.store.model_id(),
            trained_rows=index.trained_rows,
            params=asdict(index.params),
            crcs=rows.crcs,
            ids_crc=zlib.crc32(ids_data),
            ann_crc=ann_crc,
            token=self.token,
            count=len(index),
        )
        atomic_write(self.meta_path, json.dumps(asdict(meta)).encode())
