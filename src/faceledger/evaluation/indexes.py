"""LFW's 1:N searches through each search backend the product can use, compared with exact
search (``faceledger eval lfw --indexes``)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from faceledger.evaluation.lfw_data import (
    EmbeddingTable,
    LfwDataset,
    OneToNSplit,
    one_to_n_split,
    rank_metrics,
)
from faceledger.gallery.index import AnnParams

# -- 1:N through the product's search indexes ----------------------------------------------
#
# The same gallery searches run through each search backend the product can use: numpy brute
# force ("exact", the reference above), FaceIndex's exact scan ("flat"), a FaceIndex whose
# approximate structure is built whatever the gallery size (the kinds of
# faceledger.gallery.index.KINDS, normally only used from EXACT_MAX_FACES faces on), and a Milvus
# collection ("milvus", Milvus Lite in a temporary directory). Each is built over the gallery
# vectors alone, no gallery database, and every probe (mated and non-mated) is searched with
# k = RANK_K; the ranked lists are compared with the exact ones.

RANK_K = 10
INDEX_CHOICES = ("exact", "flat", "ivf_pqfs", "ivf_sq8", "hnsw_sq8", "milvus")
SEARCH_BATCH = 1024
# Two candidates whose float64 inner products with the probe differ by no more than this are
# a tie: float32 kernels (BLAS, FAISS, Milvus) round differently in the 7th digit, so tied or
# near-tied candidates may come out in either order. Reported separately, never hidden.
TIE_TOLERANCE = 1e-5
_ANN_OPTIONS = {f.name for f in fields(AnnParams)}
_MILVUS_OPTIONS = {
    "hnsw_m",
    "ef_construction",
    "ef_search",
    "candidate_factor",
    "candidates_min",
    "flush",
}


class SearchBackend(Protocol):
    label: str
    kind: str
    params: dict[str, Any]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, gallery positions), best first; position -1 where no candidate."""
        ...

    def close(self) -> None: ...


class ExactSearch:
    """Numpy brute force: the float32 matrix product with every gallery vector."""

    kind = "exact"

    def __init__(self, gallery: np.ndarray, label: str = "exact") -> None:
        self.label = label
        self.gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        self.params: dict[str, Any] = {}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.gallery)
        k = min(k, n)
        sims = np.atleast_2d(queries) @ self.gallery.T
        part = np.argpartition(-sims, k if k < n else k - 1, axis=1)[:, :k]
        part_s = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_s, axis=1)
        return np.take_along_axis(part_s, order, axis=1), np.take_along_axis(part, order, axis=1)

    def close(self) -> None:
        pass


def _positions(ids: np.ndarray) -> np.ndarray:
    """Backend ids (gallery position + 1) -> gallery positions, -1 kept for no candidate."""
    return np.where(ids > 0, ids - 1, -1).astype(np.int64)


class FaceIndexSearch:
    """The product's FAISS layer: a :class:`FaceIndex` over a temporary :class:`RowStore`.

    ``kind`` other than "flat" builds that approximate structure whatever the gallery size
    (:func:`faceledger.gallery.index.choose_kind` would pick the exact scan below EXACT_MAX_FACES).
    """

    def __init__(
        self, label: str, kind: str, gallery: np.ndarray, workdir: Path, params: AnnParams
    ) -> None:
        import faiss

        from faceledger.gallery.index import IVF_KINDS, FaceIndex, RowStore, auto_nprobe

        self.label, self.kind = label, kind
        n, dim = gallery.shape
        safe = "".join(c if c.isalnum() else "_" for c in label)
        rows = RowStore.create(workdir / f"{safe}.f32", dim)
        self.index = FaceIndex(rows, "flat", None, params)
        self.index.add(np.arange(1, n + 1, dtype=np.int64), gallery)
        if kind != "flat":
            self.index.build_ann(kind)
        self.params: dict[str, Any] = {}
        if kind in IVF_KINDS:
            assert self.index.ann is not None
            ivf = faiss.extract_index_ivf(self.index.ann)
            self.params = {
                "nlist": int(ivf.nlist),
                "nprobe": int(params.nprobe or auto_nprobe(ivf.nlist)),
                "candidates": min(params.candidates(RANK_K, n), n),
                "trained_on": self.index.trained_rows,
            }
        elif kind == "hnsw_sq8":
            c = min(params.candidates(RANK_K, n), n)
            self.params = {
                "M": params.hnsw_m,
                "ef_construction": params.ef_construction,
                "ef_search": max(params.ef_search, c),
                "candidates": c,
            }

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.index.search(queries, k)
        return scores, _positions(ids)

    def close(self) -> None:
        pass  # the row file goes with the temporary directory


class MilvusSearch:
    """A Milvus collection (:class:`faceledger.gallery.index.milvus.MilvusIndex`) on Milvus Lite.

    With ``flush`` (the default) the inserted rows are flushed into a sealed segment, which
    Milvus Lite indexes with HNSW as a server does; unflushed rows are searched by brute
    force from Milvus Lite's memtable.
    """

    kind = "milvus"

    def __init__(
        self, label: str, gallery: np.ndarray, workdir: Path, options: dict[str, int]
    ) -> None:
        from faceledger.gallery.index.milvus import MilvusIndex

        self.label = label
        opts = dict(options)
        flush = bool(opts.pop("flush", 1))
        n, dim = gallery.shape
        self.index = MilvusIndex(
            str(workdir / "milvus" / "eval.db"), dim, "lfw_eval", "faceledger_eval", **opts
        )
        self.index.drop()  # a clean partition when one label is run twice
        self.index.add(np.arange(1, n + 1, dtype=np.int64), gallery)
        if flush:
            self.index.client.flush(self.index.collection)
        ix = self.index
        c = min(max(RANK_K * ix.candidate_factor, ix.candidates_min), n, 16_384)
        state = ix.client.describe_index(ix.collection, "vec")
        self.params: dict[str, Any] = {
            "index_type": state.get("index_type"),
            "M": ix.hnsw_m,
            "ef_construction": ix.ef_construction,
            "ef": max(ix.ef_search, c),
            "candidates": c,
            "flushed": flush,
            "indexed_rows": state.get("indexed_rows"),
        }

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self.index.search(queries, k)
        return scores, _positions(ids)

    def close(self) -> None:
        self.index.client.close()


def parse_index_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``kind[:option=value...]``, e.g. ``ivf_pqfs:nprobe=8:candidates_min=100``.

    Options are :class:`faceledger.gallery.index.AnnParams` fields for the FAISS kinds, and
    ``hnsw_m``, ``ef_construction``, ``ef_search``, ``candidate_factor``, ``candidates_min``,
    ``flush`` (0/1) for ``milvus``. ValueError when the kind or an option is unknown.
    """
    kind, *parts = spec.strip().split(":")
    if kind not in INDEX_CHOICES:
        raise ValueError(f"unknown index {kind!r}; one of {', '.join(INDEX_CHOICES)}")
    allowed = (
        _MILVUS_OPTIONS
        if kind == "milvus"
        else set()
        if kind in ("exact", "flat")
        else _ANN_OPTIONS
    )
    options: dict[str, int] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise ValueError(
                f"bad option {part!r} for index {kind!r}"
                + (f"; options: {', '.join(sorted(allowed))}" if allowed else "; it takes none")
            )
        try:
            options[key] = int(value)
        except ValueError:
            raise ValueError(f"option {key} of index {kind!r} needs an integer") from None
    return kind, options


def parse_index_list(text: str) -> list[str]:
    """Comma-separated index specs (``all``: every kind); "exact" is always the first."""
    specs: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        for spec in INDEX_CHOICES if item == "all" else [item] if item else []:
            parse_index_spec(spec)
            if spec not in specs:
                specs.append(spec)
    if not specs:
        raise ValueError("no index given")
    return ["exact"] + [s for s in specs if s != "exact"]


def open_backend(spec: str, gallery: np.ndarray, workdir: Path) -> SearchBackend:
    """Build the search backend ``spec`` names over the gallery vectors (ids = position+1)."""
    kind, options = parse_index_spec(spec)
    if kind == "exact":
        return ExactSearch(gallery, spec)
    if kind == "milvus":
        return MilvusSearch(spec, gallery, workdir, options)
    return FaceIndexSearch(spec, kind, gallery, workdir, AnnParams(**options))


def batched_search(
    backend: SearchBackend, queries: np.ndarray, k: int, batch: int = SEARCH_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    parts = [backend.search(queries[s : s + batch], k) for s in range(0, len(queries), batch)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def compare_rankings(
    gallery: np.ndarray,
    queries: np.ndarray,
    ref_pos: np.ndarray,
    pos: np.ndarray,
    scores: np.ndarray,
    tol: float = TIE_TOLERANCE,
) -> dict[str, Any]:
    """How a backend's ranked lists differ from the reference (exact) lists.

    Raw differences count any id in another place. A list is an exact top-k, differences
    being only the order of tied candidates, when the candidate it has at each rank scores
    (float64 inner product) within ``tol`` of the reference candidate at that rank; lists
    failing that are counted in ``*_beyond_ties`` (a missed neighbour, a wrong order).
    ``max_score_error``: the largest gap between a score the backend reported and the float64
    inner product of the candidate it reported it for.
    """
    g64 = np.asarray(gallery, np.float64)
    q64 = np.asarray(queries, np.float64)
    if pos.shape != ref_pos.shape:  # fewer candidates than asked: pad with "none"
        pad = np.full(ref_pos.shape, -1, np.int64)
        pad[:, : pos.shape[1]] = pos[:, : ref_pos.shape[1]]
        pos = pad

    def true_scores(p: np.ndarray) -> np.ndarray:
        s = np.einsum("qd,qkd->qk", q64, g64[np.maximum(p, 0)])
        return np.where(p >= 0, s, -np.inf)

    t_ref, t_got = true_scores(ref_pos), true_scores(pos)
    both_missing = np.isinf(t_ref) & np.isinf(t_got)
    gap = np.where(both_missing, 0.0, np.abs(np.nan_to_num(t_got - t_ref, nan=np.inf)))
    beyond = gap > tol
    differ = pos != ref_pos
    got = pos[:, : scores.shape[1]] >= 0
    err = np.abs(scores[got].astype(np.float64) - t_got[:, : scores.shape[1]][got])
    return {
        "top10_lists_differ": int(differ.any(axis=1).sum()),
        "rank1_ids_differ": int(differ[:, 0].sum()),
        "top10_lists_differ_beyond_ties": int(beyond.any(axis=1).sum()),
        "rank1_differ_beyond_ties": int(beyond[:, 0].sum()),
        "max_rank_score_gap": float(gap[np.isfinite(gap)].max(initial=0.0)),
        "missing_candidates": int((pos < 0).sum() - (ref_pos < 0).sum()),
        "max_score_error": float(err.max(initial=0.0)),
    }


def float64_top(
    gallery: np.ndarray, queries: np.ndarray, k: int, batch: int = SEARCH_BATCH
) -> np.ndarray:
    """Gallery positions of each query's top-k by float64 inner product (ties: lower first)."""
    g64 = np.asarray(gallery, np.float64)
    k = min(k, len(g64))
    out = []
    for s in range(0, len(queries), batch):
        sims = np.asarray(queries[s : s + batch], np.float64) @ g64.T
        out.append(np.argsort(-sims, axis=1, kind="stable")[:, :k])
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def search_split_by_index(
    split: OneToNSplit,
    vectors: np.ndarray,
    specs: Sequence[str],
    workdir: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the split's gallery searches through each backend of ``specs``; a table by spec.

    The first spec is the reference the others' ranked lists are compared with ("exact"
    unless told otherwise). Every probe is searched with k = RANK_K; the 1:N figures come
    from each backend's own results (FPIR threshold from its non-mated top scores). Each
    backend's lists are also compared with the float64 ranking (``*_from_float64``), which
    shows which side of a reordered near-tie the float32 arithmetic got right.
    """
    gallery = np.ascontiguousarray(vectors[split.gallery], dtype=np.float32)
    probes = np.ascontiguousarray(
        vectors[np.concatenate([split.mated, split.nonmated])], dtype=np.float32
    )
    n_mated = len(split.mated)
    truth = float64_top(gallery, probes, RANK_K)
    table: dict[str, dict[str, Any]] = {}
    ref_pos: np.ndarray | None = None
    with tempfile.TemporaryDirectory(prefix="faceledger-eval-", dir=workdir) as tmp:
        for spec in specs:
            t0 = time.perf_counter()
            backend = open_backend(spec, gallery, Path(tmp))
            t1 = time.perf_counter()
            try:
                scores, pos = batched_search(backend, probes, RANK_K)
            finally:
                t2 = time.perf_counter()
                backend.close()
            row: dict[str, Any] = {"kind": backend.kind, "params": backend.params}
            row.update(rank_metrics(split, scores[:n_mated], pos[:n_mated], scores[n_mated:, 0]))
            if ref_pos is None:
                ref_pos = pos
                row["reference"] = True
            else:
                row.update(compare_rankings(gallery, probes, ref_pos, pos, scores))
            same = pos.shape == truth.shape
            row.update(
                {
                    "top10_lists_differ_from_float64": int(
                        (pos != truth).any(axis=1).sum() if same else len(pos)
                    ),
                    "rank1_ids_differ_from_float64": int((pos[:, 0] != truth[:, 0]).sum()),
                    "build_seconds": round(t1 - t0, 3),
                    "search_seconds": round(t2 - t1, 3),
                    "searches": len(probes),
                    "ms_per_search": round(1000 * (t2 - t1) / max(len(probes), 1), 4),
                }
            )
            table[spec] = row
    return table


def identification_by_index(
    ds: LfwDataset, table: EmbeddingTable, specs: Sequence[str], workdir: Path | None = None
) -> dict[str, Any]:
    """The 1:N protocol through "exact" and the search backends ``specs`` name (see
    :func:`search_split_by_index`).

    ``identical``: every backend returned the exact ranked lists (same ids, same order) for
    every probe; ``equivalent``: every difference is a reorder of tied candidates.
    """
    split = one_to_n_split(ds, table)
    specs = ["exact", *(s for s in specs if s != "exact")]
    by_index = search_split_by_index(split, table.vectors, specs, workdir)
    others = [r for r in by_index.values() if not r.get("reference")]
    return {
        "index_k": RANK_K,
        "index_tie_tolerance": TIE_TOLERANCE,
        "indexes_identical": all(r["top10_lists_differ"] == 0 for r in others),
        "indexes_equivalent": all(r["top10_lists_differ_beyond_ties"] == 0 for r in others),
        "indexes": by_index,
    }
