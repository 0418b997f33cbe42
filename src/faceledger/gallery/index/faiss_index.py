"""FAISS search over a RowStore: an exact scan, or an approximate index whose candidates are
re-ranked exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import faiss
import numpy as np

from faceledger.gallery.index.params import (
    COMPACT_DEAD_FRACTION,
    COMPACT_DEAD_ROWS_FLAT,
    IVF_KINDS,
    IVF_TRAIN_PER_LIST,
    KINDS,
    AnnParams,
    auto_nlist,
    auto_nprobe,
)
from faceledger.gallery.index.rowstore import RowStore

if TYPE_CHECKING:
    # numpy's stubs give ndarray ``__buffer__`` only on Python >= 3.12, so on 3.11 an array
    # is not a ``Buffer`` to the type checker though it supports the buffer protocol.
    pass


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


def _new_ann(kind: str, dim: int, n: int, params: AnnParams) -> faiss.Index:
    if kind == "ivf_pqfs":
        nlist = params.nlist or auto_nlist(n)
        if params.pq_dims < 1 or dim % params.pq_dims:
            raise ValueError(f"pq_dims {params.pq_dims} does not divide the dimension {dim}")
        m = dim // params.pq_dims
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
            if self.kind == "ivf_pqfs":
                _fast_scan_split(self.ann, len(q))
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


# FAISS' fast-scan IVF search for few queries: implementation 15 splits one query's probed
# lists over the OpenMP threads (a reservoir keeps its many candidates); the default (12/13)
# runs a query on one thread. Measured at 1M faces, nprobe 576 of 1024, 1,000 candidates, 2
# cores: 1.39 ms vs 2.05 ms p50, the same candidates but for ties (99.7% shared), and with one
# thread it is slower (2.3 vs 2.1 ms), so it is used only where there are threads to split over.
FAST_SCAN_SPLIT = 15
FAST_SCAN_DEFAULT = 0


def _fast_scan_split(ann: faiss.Index, n_queries: int) -> None:
    threads = faiss.omp_get_max_threads()
    split = threads > 1 and n_queries < threads
    fast_scan: Any = faiss.downcast_index(ann)
    fast_scan.implem = FAST_SCAN_SPLIT if split else FAST_SCAN_DEFAULT


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
