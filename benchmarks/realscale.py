"""Benchmark: the approximate index on REAL face embeddings, at scale.

The LFW 1:N protocol of :func:`faceledger.evaluation.lfw.identification` (gallery: one image of
each enrolled person; mated probes: their other images; non-mated probes: every image of the
people not enrolled) run on a gallery grown with N synthetic distractor faces from the
LFW-fitted generator of :mod:`faceledger.evaluation.bench` (``generate``: identities of
1 + Geometric faces, mean 4, exactly as ``faceledger bench search`` draws them). Every probe
(mated and non-mated, k = 10) is searched by

* exact brute force: a ``FaceIndex`` of kind "flat" over the same rows (FAISS' float32
  inner-product kernel, batched, all threads) — the reference;
* the approximate index :func:`faceledger.gallery.index.choose_kind` picks at that size, with its
  default parameters (``AnnParams()``), and optionally others (``--kinds``);

and the script reports rank-1/rank-10 of the mated probes, FNIR at FPIR = 0.003 (threshold
from each backend's own non-mated top scores, as evaluation.py does), how the approximate
ranked lists differ from the exact ones (rank-1 ids, top-10 lists, beyond ties of 1e-5),
mates the exact search finds in the top-10 that the approximate one loses, single-query p50/
p99 latency (one search thread), build time and parameters, and why neighbours were missed:
their IVF list was not among the ``nprobe`` probed ("unprobed_list") or it was but the coarse
PQ scores left them outside the re-ranked candidates ("candidate_cut"). ``list_spread``
gives, per probe, how many lists (nearest centroids first) must be probed to reach its exact
neighbours, for the real probes and for synthetic probes (fresh faces of distractor
identities, as ``bench search`` draws them) in the same index; ``sweep`` re-runs the search
over a grid of nprobe x candidates on the same build.

Alignment of the distractors (``--align``). The generator reproduces LFW's score statistics
around its OWN random mean direction, which is nearly orthogonal to the real embeddings'
mean: raw synthetic faces score about -0.07 against LFW faces (real impostors: 0.84), never
enter a real probe's top-10 and leave the real faces a few IVF lists of their own — no test
of anything. ``pca`` (default) rotates the synthetic faces (an orthogonal map, so their own
scores are unchanged) so that their mean direction and principal axes (by decreasing
variance) land on those of the real embeddings, fitted on the LFW calibration-split people
(excluded from the 1:N protocol); ``mean`` only maps the mean direction; ``none`` keeps the
raw faces. ``distractor_realism`` compares real-probe-to-distractor scores with real
impostor scores.

    python benchmarks/realscale.py                              # 1M distractors
    python benchmarks/realscale.py --distractors 100000
    python benchmarks/realscale.py --kinds auto --sweep-nprobe 80,160,320 \\
        --sweep-candidates 1000,2000
    python benchmarks/realscale.py --kinds ivf_pqfs,hnsw_sq8 --nprobe 480 \\
        --sweep-nprobe 480,576 --sweep-candidates 1000 --candidates-min 1000 \\
        --hnsw-m 32 --ef-construction 80,200 --sweep-ef 64,128,256,512,1000,2000

``--nprobe``/``--candidates-min``/``--ef-search`` fix the main rows' search settings (the
product's defaults otherwise); ``--hnsw-m``/``--ef-construction`` take comma lists, one
hnsw_sq8 build per pair (rows keyed ``hnsw_sq8_M<m>_efc<efc>`` when there are several);
``--sweep-ef`` re-searches each hnsw_sq8 build at efSearch ``ef`` re-ranking ``ef`` (or
``ef:c``: ``c``) candidates. ``--lfw-placement spread`` puts the LFW gallery faces at
random rows among the distractors instead of first (HNSW inserts in row order).

``--index milvus://HOST:PORT`` (or ``--milvus-server``: start the bundled Milvus 2.3.5 server
for the run) also loads the same rows, with the same ids, into a Milvus collection
(faceledger's HNSW parameters, flushed and indexed) and searches it with the same probes:
``milvus`` in the output holds its figures and ``milvus_vs_faiss`` the ratios against the
first FAISS kind (p50, recall@10) measured in the same run.

Prints JSON (and writes it to ``--json-out``); progress goes to stderr.

Measured (2-core dev VM, shared; dlib_resnet_v1+flip LFW table ``..._mf48.npz``; 3,678 LFW
gallery faces, 3,020 mated + 3,217 non-mated probes; ``--align pca``; p50 = single-query,
one thread; "lost" = mates in the exact top-10 missing from the approximate top-10; "r1" =
rank-1 ids differing beyond ties). Every miss at the default is an unprobed IVF list; the
PQ candidate cut never lost a mate. Synthetic probes in the SAME index: recall@10 0.998+.

    distractors  exact rank-1  p50    nprobe/nlist  rank-1  lost  r1   recall@10  p50 ms
    100,000      0.9258        1.68   48/256 (def)  0.9185    27  136  0.965      0.25
                                      96/256        0.9255     2   15  0.996      0.32
                                     144/256        0.9258     0    1  0.999      0.36
    1,000,000    0.9079        18.5   80/1024 (def) 0.8732   124  341  0.940      0.67
                                     240/1024       0.9036    13   34  0.994      1.30
                                     320/1024       0.9066     4   13  0.997      1.56-1.85
                                     480/1024       0.9079     0    2  0.999      2.45-2.58
                                     560/1024       0.9079     0    0  0.999      2.71

(candidates 1000 throughout; 2000 removes ~30 tail-of-top-10 swaps at 1M for +0.2-0.4 ms.)
HNSW (hnsw_sq8, M 32) at 1M, same runs as IVF nprobe 480/576 (0 lost, p50 2.2-2.8 ms); a
search re-ranks max(efSearch, candidates) = efSearch candidates; the product's default
(ef_search 256, candidates 1000) runs efSearch 1000. 400 B/face of graph + codes (IVF: 41).

    build (s)            efSearch  rank-1  lost  r1    recall@10  p50 ms
    efC 80     133          512    0.6579   841  1507  0.839      2.0
                           1000    0.7656   501   882  0.904      3.6
                           2000    0.8351   266   445  0.950      6.6
    efC 200    330          512    0.8503   218   421  0.947      2.0
                           1000    0.8874    85   169  0.977      3.9
                           2000    0.8993    38    67  0.991      7.3
    efC 200, spread 354    1000    0.8139   327   543  0.940      4.2
                           2000    0.8613   167   285  0.968      7.9

Synthetic probes in the same graphs: recall@10 0.988-0.997 at efSearch 1000-2000. At 100k
(efC 200, efSearch 1000) hnsw lost 0 mates at 2.0 ms, IVF (nprobe 144/256) 0 at 0.36 ms.
LFW alone (IVF trained on real faces only, nlist 32): nprobe 8 -> 155 rank-1 changes, 16 ->
9, 32 -> 0; a synthetic gallery of the same shape: 1, 0, 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from faceledger.evaluation.bench import default_face_model, generate
from faceledger.evaluation.indexes import RANK_K, TIE_TOLERANCE, compare_rankings
from faceledger.evaluation.lfw_data import (
    FPIR_TARGET,
    EmbeddingTable,
    LfwDataset,
    OneToNSplit,
    in_calibration_split,
    one_to_n_split,
    rank_metrics,
)
from faceledger.evaluation.milvus_bench import drop, milvus_index, milvus_target
from faceledger.gallery.index import (
    DEFAULT_ANN_KIND,
    EXACT_MAX_FACES,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    IVF_KINDS,
    KINDS,
    AnnParams,
    FaceIndex,
    RowStore,
    auto_nprobe,
    choose_kind,
)

DEFAULT_CACHE = Path("/tmp/evaldata/eval/lfw_dlib_resnet_v1-flip_onnx_hog-cnn_mf48.npz")
BATCH = 512  # probes per batched search
ALIGN_SAMPLE = 50_000  # synthetic faces the alignment frame is fitted on
PERCENTILES = (50, 90, 95, 99, 99.9, 100)


def say(msg: str) -> None:
    print(f"[realscale] {msg}", file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------
def load_table(cache: Path, lfw_dir: Path | None) -> tuple[LfwDataset, EmbeddingTable]:
    """The cached LFW embeddings (read only) and the dataset they were computed from.

    Without ``lfw_dir`` the person list is rebuilt from the cache's paths, which
    ``evaluation.embed_lfw`` wrote in ``LfwDataset.all_images()`` order.
    """
    with np.load(cache, allow_pickle=False) as z:
        paths = [str(p) for p in z["paths"]]
        table = EmbeddingTable(paths, np.asarray(z["vectors"], np.float32), z["detected"])
    if lfw_dir is not None:
        ds = LfwDataset.load(lfw_dir)
        if ds.all_images() != paths:
            sys.exit(f"{cache} was not computed from {lfw_dir}")
        return ds, table
    people: dict[str, list[str]] = {}
    for p in paths:
        people.setdefault(p.split("/", 1)[0], []).append(p)
    ds = LfwDataset(Path("."), people)
    if ds.all_images() != paths:
        sys.exit(f"{cache}: paths are not in LFW order")
    return ds, table


def _frame(vectors: np.ndarray) -> np.ndarray:
    """Orthonormal columns: the mean direction, then the principal axes orthogonal to it."""
    v = np.asarray(vectors, np.float64)
    d = v.mean(axis=0)
    d /= np.linalg.norm(d)
    proj = np.eye(len(d)) - np.outer(d, d)
    c = proj @ np.cov(v.T) @ proj
    w, e = np.linalg.eigh(c)
    axes = e[:, np.argsort(w)[::-1][: len(d) - 1]]
    q, r = np.linalg.qr(np.column_stack([d, axes]))
    return np.asarray(q * np.sign(np.diag(r)))


def alignment(mode: str, real: np.ndarray, synthetic: np.ndarray) -> np.ndarray:
    """Rotation R (rows map as ``v @ R.T``) taking the synthetic frame onto the real one."""
    dim = real.shape[1]
    if mode == "none":
        return np.eye(dim, dtype=np.float32)
    a_real, a_syn = _frame(real), _frame(synthetic)
    if mode == "pca":
        return (a_real @ a_syn.T).astype(np.float32)
    if mode == "mean":  # the rotation in the plane of the two mean directions only
        s, t = a_syn[:, 0], a_real[:, 0]
        c = float(s @ t)
        w = t - c * s
        nw = np.linalg.norm(w)
        if nw < 1e-12:
            return np.eye(dim, dtype=np.float32)
        w /= nw
        sn = float(np.sqrt(max(0.0, 1 - c * c)))
        rot = np.eye(dim)
        rot += (c - 1) * (np.outer(s, s) + np.outer(w, w)) + sn * (np.outer(w, s) - np.outer(s, w))
        return rot.astype(np.float32)
    raise ValueError(f"unknown alignment {mode!r}")


def score_stats(scores: np.ndarray) -> dict[str, float]:
    s = np.asarray(scores, np.float64).ravel()
    z = (s - s.mean()) / s.std()
    return {
        "mean": float(s.mean()),
        "std": float(s.std()),
        "skew": float((z**3).mean()),
        "q999": float(np.quantile(s, 0.999)),
        "max": float(s.max()),
    }


# --- searching -------------------------------------------------------------------------
def batched(index: FaceIndex, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, gallery positions) of every query; the index's ids are position + 1."""
    s_parts, p_parts = [], []
    for s in range(0, len(q), BATCH):
        sc, ids = index.search(q[s : s + BATCH], k)
        s_parts.append(sc)
        p_parts.append(np.where(ids > 0, ids - 1, -1))
    return np.concatenate(s_parts), np.concatenate(p_parts).astype(np.int64)


SEARCH_THREADS = 1  # threads one query may use while timed (--threads)


def timed(index: FaceIndex, q: np.ndarray, k: int, budget_s: float | None = None) -> list[int]:
    """Single-query latencies (ns), SEARCH_THREADS search threads, after a short warm-up."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(SEARCH_THREADS)
    try:
        for i in range(min(20, len(q))):
            index.search(q[i : i + 1], k)
        ns: list[int] = []
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        for i in range(len(q)):
            t = time.perf_counter_ns()
            index.search(q[i : i + 1], k)
            ns.append(time.perf_counter_ns() - t)
            if deadline is not None and i >= 19 and time.perf_counter() > deadline:
                break
        return ns
    finally:
        faiss.omp_set_num_threads(threads)


def pct_ms(ns: list[int], q: float) -> float:
    return round(float(np.percentile(np.asarray(ns, np.float64), q) / 1e6), 4)


def recall_at_k(ref: np.ndarray, got: np.ndarray) -> float:
    """Share of the reference top-k positions found in the other top-k (any order)."""
    hit = (ref[:, :, None] == got[:, None, :]).any(axis=2) & (ref >= 0)
    return float(hit.sum() / max((ref >= 0).sum(), 1))


class ListRanks:
    """For an IVF build: the list of gallery rows and each query's order of lists."""

    def __init__(self, index: FaceIndex) -> None:
        assert index.ann is not None
        self.ivf = faiss.extract_index_ivf(index.ann)
        self.nlist = int(self.ivf.nlist)
        self.quantizer = faiss.downcast_index(self.ivf.quantizer)
        self.vectors = index.rows.vectors

    def centroid_gap(self, x: np.ndarray, nprobe: int) -> dict[str, float]:
        """Medians of the squared L2 distance to the nearest centroid and of how much
        farther the ``nprobe``-th nearest is (small gap: many lists about as near)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        d, _ = self.quantizer.search(x, min(nprobe, self.nlist))
        return {
            "nearest_sqdist_p50": float(np.median(d[:, 0])),
            f"gap_to_list_{d.shape[1]}_p50": float(np.median(d[:, -1] - d[:, 0])),
        }

    def list_of(self, rows: np.ndarray) -> np.ndarray:
        flat = rows.ravel()
        out = np.full(flat.shape, -1, np.int64)
        ok = flat >= 0
        if ok.any():
            x = np.ascontiguousarray(self.vectors[flat[ok]], dtype=np.float32)
            _, lab = self.quantizer.search(x, 1)
            out[ok] = lab[:, 0]
        return out.reshape(rows.shape)

    def rank_of(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """0-based rank (nearest centroid first) of each row's list among the query's lists;
        the row is reached by probing rank + 1 lists. -1 where the row is -1."""
        lists = self.list_of(rows)
        out = np.full(rows.shape, -1, np.int64)
        for s in range(0, len(q), BATCH):
            x = np.ascontiguousarray(q[s : s + BATCH], dtype=np.float32)
            _, order = self.quantizer.search(x, self.nlist)
            inv = np.empty_like(order)
            inv[np.arange(len(order))[:, None], order] = np.arange(self.nlist)[None, :]
            blk = lists[s : s + BATCH]
            out[s : s + BATCH] = np.where(
                blk >= 0, np.take_along_axis(inv, np.maximum(blk, 0), axis=1), -1
            )
        return out


def spread(needed: np.ndarray, nprobe: int, nlist: int) -> dict[str, Any]:
    """Distribution of "lists to probe" (rank + 1) and the share reached at ``nprobe``."""
    needed = needed[needed > 0]
    if len(needed) == 0:
        return {"count": 0}
    pct = {f"p{p:g}": float(np.percentile(needed, p)) for p in PERCENTILES}
    return {
        "count": len(needed),
        **pct,
        "share_of_lists_p99": float(np.percentile(needed, 99)) / nlist,
        f"reached_at_nprobe_{nprobe}": float(np.mean(needed <= nprobe)),
    }


# --- one configuration -----------------------------------------------------------------
class Context:
    """Everything the per-configuration measurement needs."""

    def __init__(
        self,
        split: OneToNSplit,
        probes: np.ndarray,
        n_mated: int,
        mate_pos: np.ndarray,
        syn_probes: np.ndarray,
        g64: np.ndarray,
        timed_idx: np.ndarray,
    ) -> None:
        self.split = split
        self.probes = probes
        self.n_mated = n_mated
        self.mate_pos = mate_pos
        self.syn_probes = syn_probes
        self.g64 = g64
        self.timed_idx = timed_idx
        self.ref_s = np.zeros(0)
        self.ref_p = np.zeros(0, np.int64)
        self.syn_ref = np.zeros(0, np.int64)


def mate_flags(ctx: Context, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mate in top-10, mate at rank 1) per mated probe."""
    m = pos[: ctx.n_mated]
    in10 = (m == ctx.mate_pos[:, None]).any(axis=1)
    return in10, m[:, 0] == ctx.mate_pos


def measure(
    ctx: Context,
    index: FaceIndex,
    ranks: ListRanks | None,
    nprobe: int | None,
    lat_queries: np.ndarray,
) -> dict[str, Any]:
    """Search every probe through ``index``; figures against the exact reference."""
    t0 = time.perf_counter()
    scores, pos = batched(index, ctx.probes, RANK_K)
    t_search = time.perf_counter() - t0
    row: dict[str, Any] = rank_metrics(
        ctx.split, scores[: ctx.n_mated], pos[: ctx.n_mated], scores[ctx.n_mated :, 0]
    )
    cmp = compare_rankings(ctx.g64, ctx.probes, ctx.ref_p, pos, scores)
    row.update(cmp)
    ex10, ex1 = mate_flags(ctx, ctx.ref_p)
    ap10, ap1 = mate_flags(ctx, pos)
    row["mates_in_exact_top10_lost"] = int((ex10 & ~ap10).sum())
    row["mates_at_exact_rank1_lost"] = int((ex1 & ~ap1).sum())
    row["mates_gained_top10"] = int((~ex10 & ap10).sum())
    row["recall_at_10"] = recall_at_k(ctx.ref_p, pos)
    row["recall_at_1"] = float(np.mean(pos[:, 0] == ctx.ref_p[:, 0]))
    if len(ctx.syn_probes):
        _, syn_pos = batched(index, ctx.syn_probes, RANK_K)
        row["synthetic_recall_at_10"] = recall_at_k(ctx.syn_ref, syn_pos)
        row["synthetic_recall_at_1"] = float(np.mean(syn_pos[:, 0] == ctx.syn_ref[:, 0]))
    if ranks is not None and nprobe is not None:
        # why each exact top-10 neighbour missing from the approximate top-10 was missed
        missing = (ctx.ref_p[:, :, None] != pos[:, None, :]).all(axis=2) & (ctx.ref_p >= 0)
        # only misses that are not a tie swap at the tail of the list
        worst = np.where(pos >= 0, scores, -np.inf).min(axis=1)
        ref_true = np.einsum(
            "qd,qkd->qk", ctx.probes.astype(np.float64), ctx.g64[np.maximum(ctx.ref_p, 0)]
        )
        beyond = missing & (ref_true > worst[:, None] + TIE_TOLERANCE)
        lr = ranks.rank_of(ctx.probes, ctx.ref_p)
        cand = np.concatenate(
            [
                index.candidate_rows(ctx.probes[s : s + BATCH], RANK_K)
                for s in range(0, len(ctx.probes), BATCH)
            ]
        )
        in_cand = (ctx.ref_p[:, :, None] == cand[:, None, :]).any(axis=2)
        unprobed = beyond & (lr >= nprobe)
        cut = beyond & (lr < nprobe) & ~in_cand
        other = beyond & ~unprobed & ~cut
        mate_lost = np.zeros(len(ctx.probes), bool)
        mate_lost[: ctx.n_mated] = ex10 & ~ap10
        mate_col = np.zeros_like(missing)
        mate_col[: ctx.n_mated] = ctx.ref_p[: ctx.n_mated] == ctx.mate_pos[:, None]
        row["missed_neighbours"] = {
            "beyond_ties": int(beyond.sum()),
            "unprobed_list": int(unprobed.sum()),
            "candidate_cut": int(cut.sum()),
            "other": int(other.sum()),
            "lost_mates_unprobed_list": int((unprobed & mate_col).sum()),
            "lost_mates_candidate_cut": int((cut & mate_col).sum()),
            "candidate_recall_at_10": float(in_cand[ctx.ref_p >= 0].mean()),
        }
    ns = timed(index, lat_queries, RANK_K)
    row["p50_ms"] = pct_ms(ns, 50)
    row["p99_ms"] = pct_ms(ns, 99)
    row["timed_queries"] = len(ns)
    row["batch_search_seconds"] = round(t_search, 2)
    return row


def ivf_params(index: FaceIndex) -> dict[str, Any]:
    out: dict[str, Any] = {"candidates": index.params.candidates(RANK_K, index.rows.rows)}
    if index.kind in IVF_KINDS and index.ann is not None:
        nlist = int(faiss.extract_index_ivf(index.ann).nlist)
        out["nlist"] = nlist
        out["nprobe"] = int(index.params.nprobe or auto_nprobe(nlist))
        out["probed_share"] = out["nprobe"] / nlist
    elif index.kind == "hnsw_sq8":
        out["ef_search"] = max(index.params.ef_search, out["candidates"])
        out["hnsw_m"] = index.params.hnsw_m
        out["ef_construction"] = index.params.ef_construction
    out["trained_on"] = index.trained_rows
    return out


def bytes_per_face(index: FaceIndex) -> dict[str, float]:
    """Bytes per gallery row: heap (approximate structure + ids), the approximate structure
    alone, and the mapped float32 file."""
    mem = index.memory()
    n = max(index.rows.rows, 1)
    return {k: round(v / n, 1) for k, v in mem.items()}


def parse_ints(text: str) -> list[int]:
    out: list[int] = []
    for s in text.split(","):
        if s.strip() and int(s) not in out:
            out.append(int(s))
    return out


def parse_ef_sweep(text: str) -> list[tuple[int, int]]:
    """``ef`` or ``ef:candidates`` items; candidates default to ef."""
    out: list[tuple[int, int]] = []
    for s in text.split(","):
        s = s.strip()
        if not s:
            continue
        ef, _, c = s.partition(":")
        item = (int(ef), int(c) if c else int(ef))
        if item not in out:
            out.append(item)
    return out


SWEEP_KEYS = (
    "rank1",
    "rank10",
    "fnir_at_fpir_0_003",
    "rank1_ids_differ",
    "rank1_differ_beyond_ties",
    "top10_lists_differ_beyond_ties",
    "mates_in_exact_top10_lost",
    "mates_at_exact_rank1_lost",
    "recall_at_10",
    "synthetic_recall_at_10",
    "missed_neighbours",
    "p50_ms",
    "p99_ms",
)


def milvus_row(
    ctx: Context, rows: RowStore, uri: str, lat_q: np.ndarray, candidates: list[int]
) -> dict[str, Any]:
    """The gallery's rows in a Milvus collection, measured like the FAISS kinds at the
    product's settings; its p50 also at Strong and Bounded consistency, and the search again
    with each of ``candidates`` (HNSW ef follows)."""
    index, row = milvus_index(uri, rows, say)
    default = (index.consistency, index.candidates_min)
    try:
        row.update(measure(ctx, index, None, None, lat_q))
        for level in ("Strong", "Bounded"):
            index.consistency = level
            ns = timed(index, lat_q[:100] if level == "Strong" else lat_q, RANK_K)
            row[f"p50_ms_{level.lower()}"] = pct_ms(ns, 50)
        index.consistency = default[0]
        sweep = {}
        for c in candidates:
            if c == default[1]:
                continue
            index.candidates_min = c
            r = measure(ctx, index, None, None, lat_q)
            sweep[c] = {k: r[k] for k in SWEEP_KEYS if k in r}
            say(
                f"milvus candidates {c}: lost {r['mates_in_exact_top10_lost']}, "
                f"recall@10 {r['recall_at_10']:.4f}, p50 {r['p50_ms']} ms"
            )
        index.candidates_min = default[1]
        row["candidates_sweep"] = sweep
    finally:
        drop(index)
    say(
        "milvus: "
        + json.dumps({k: row[k] for k in ("rank1", "mates_in_exact_top10_lost", "recall_at_10")})
        + f" p50 {row['p50_ms']} ms at {default[0]} (Strong {row['p50_ms_strong']},"
        + f" Bounded {row['p50_ms_bounded']} ms)"
    )
    return row


def ratios(milvus: dict[str, Any], faiss_row: dict[str, Any] | None, exact: dict[str, Any]):
    """Milvus over FAISS (same run, same probes): p50 and recall@10; p50 over exact."""
    out: dict[str, Any] = {"p50_over_exact": milvus["p50_ms"] / exact["p50_ms"]}
    if faiss_row is not None:
        out["faiss_kind"] = faiss_row["kind"]
        out["p50_over_faiss"] = milvus["p50_ms"] / faiss_row["p50_ms"]
        out["p50_strong_over_faiss"] = milvus["p50_ms_strong"] / faiss_row["p50_ms"]
        out["recall_at_10_over_faiss"] = milvus["recall_at_10"] / faiss_row["recall_at_10"]
        out["mates_lost"] = {
            "milvus": milvus["mates_in_exact_top10_lost"],
            "faiss": faiss_row["mates_in_exact_top10_lost"],
        }
    return out


# --- main ------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="LFW embedding table")
    ap.add_argument("--lfw-dir", type=Path, default=None, help="check the table against LFW")
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--align", choices=("pca", "mean", "none"), default="pca")
    ap.add_argument("--seed", type=int, default=0, help="generator seed (as bench search)")
    ap.add_argument(
        "--lfw-placement",
        choices=("first", "spread"),
        default="first",
        help="rows of the LFW gallery faces: the first ones (enrolled before every distractor) "
        "or random rows among the distractors (matters for HNSW, built in row order)",
    )
    ap.add_argument(
        "--kinds",
        default="auto,ivf_sq8",
        help="approximate kinds to build ('auto': choose_kind's pick at the gallery size)",
    )
    ap.add_argument(
        "--sweep-nprobe",
        default="x1,x1.5,x2,x3,x4,x6",
        help="nprobe values for the first kind's sweep (xF: F times the default nprobe)",
    )
    ap.add_argument("--sweep-candidates", default="1000,2000,4000", help="candidates_min values")
    ap.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help="nprobe of the IVF kinds' main row (default: the product's auto_nprobe)",
    )
    ap.add_argument(
        "--candidates-min",
        type=int,
        default=None,
        help="candidates_min of every kind's main row (default: the product's)",
    )
    ap.add_argument(
        "--hnsw-m",
        default=str(HNSW_M),
        help="hnsw_sq8 graph degree(s), comma-separated: one build per M x efConstruction",
    )
    ap.add_argument(
        "--ef-construction",
        default=str(HNSW_EF_CONSTRUCTION),
        help="hnsw_sq8 efConstruction value(s), comma-separated",
    )
    ap.add_argument(
        "--ef-search",
        type=int,
        default=None,
        help="hnsw_sq8 ef_search of the main row (default: the product's; the search runs "
        "efSearch = max(ef_search, candidates))",
    )
    ap.add_argument(
        "--sweep-ef",
        default="",
        help="hnsw_sq8 sweep on each build: 'ef' (candidates = ef) or 'ef:candidates' items; "
        "the search runs efSearch = max(ef, candidates) and re-ranks the candidates exactly",
    )
    ap.add_argument(
        "--pq-dims",
        default=None,
        help="ivf_pqfs dimensions per 4-bit code, comma-separated: one build each "
        "(default: the product's; 2 = 32 B a face, 4 = 16 B)",
    )
    ap.add_argument("--threads", type=int, default=1, help="threads one query may use while timed")
    ap.add_argument("--synthetic-probes", type=int, default=1000)
    ap.add_argument("--timed-queries", type=int, default=1000, help="probes timed one by one")
    ap.add_argument("--exact-seconds", type=float, default=10.0, help="budget, exact timing")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument(
        "--index",
        default=None,
        help="also search the same vectors in this Milvus server (milvus://host:port)",
    )
    ap.add_argument(
        "--milvus-candidates",
        default="200",
        help="Milvus: also search with these candidate counts (the default is measured first)",
    )
    ap.add_argument(
        "--milvus-server",
        action="store_true",
        help="without --index: start the bundled Milvus server for the run and compare it",
    )
    args = ap.parse_args()
    global SEARCH_THREADS
    SEARCH_THREADS = max(1, args.threads)
    t_start = time.perf_counter()

    ds, table = load_table(args.cache, args.lfw_dir)
    split = one_to_n_split(ds, table)
    lfw_gallery = np.ascontiguousarray(table.vectors[split.gallery], np.float32)
    n_lfw = len(lfw_gallery)
    probes = np.ascontiguousarray(
        table.vectors[np.concatenate([split.mated, split.nonmated])], np.float32
    )
    n_mated = len(split.mated)
    n_total = n_lfw + args.distractors
    # gallery rows (= positions; ids are position + 1) of the LFW gallery faces
    is_lfw = np.zeros(n_total, bool)
    if args.lfw_placement == "spread":
        is_lfw[np.random.default_rng(args.seed + 4242).choice(n_total, n_lfw, replace=False)] = True
    else:
        is_lfw[:n_lfw] = True
    lfw_rows = np.flatnonzero(is_lfw)
    distractor_rows = np.flatnonzero(~is_lfw)
    owner_pos = {name: int(lfw_rows[i]) for i, name in enumerate(split.owners)}
    mate_pos = np.array([owner_pos[n] for n in split.mated_owner], np.int64)

    model = default_face_model(table.vectors.shape[1])
    calib_rows = [i for i, p in enumerate(table.paths) if in_calibration_split(p.split("/")[0])]
    sample = next(generate(model, ALIGN_SAMPLE, 0, seed=args.seed + 7777, chunk_faces=ALIGN_SAMPLE))
    rot = alignment(args.align, table.vectors[calib_rows], sample.vectors)
    del sample

    base = Path(tempfile.mkdtemp(prefix="faceledger-realscale-", dir=args.workdir))
    try:
        # gallery: LFW gallery faces at rows ``lfw_rows`` (--lfw-placement first: 0..n_lfw-1),
        # distractors in the other rows, in generation order; ids are row + 1
        rows = RowStore.create(base / "faces.f32", lfw_gallery.shape[1])
        lfw_of_row = np.cumsum(is_lfw) - 1  # index into lfw_gallery of an LFW row
        syn_probes: list[np.ndarray] = []
        t0 = time.perf_counter()
        n_distr = 0

        def put(end: int, distr: np.ndarray) -> None:
            """Append rows up to ``end``: LFW faces at their rows, ``distr`` in the rest."""
            start = rows.rows
            buf = np.empty((end - start, lfw_gallery.shape[1]), np.float32)
            lfw_here = is_lfw[start:end]
            buf[lfw_here] = lfw_gallery[lfw_of_row[start:end][lfw_here]]
            buf[~lfw_here] = distr
            rows.append(np.arange(start + 1, end + 1, dtype=np.int64), buf)

        if args.distractors:
            for chunk in generate(model, args.distractors, args.synthetic_probes, seed=args.seed):
                vecs = chunk.vectors @ rot.T
                n_distr += len(vecs)
                put(int(distractor_rows[n_distr - 1]) + 1, vecs)
                syn_probes.append(chunk.probes @ rot.T)
        if rows.rows < n_total:  # LFW faces after the last distractor
            put(n_total, np.zeros((0, lfw_gallery.shape[1]), np.float32))
        syn_q = (
            np.ascontiguousarray(np.concatenate(syn_probes), np.float32)
            if syn_probes
            else np.zeros((0, lfw_gallery.shape[1]), np.float32)
        )
        t_gen = time.perf_counter() - t0
        say(f"gallery: {n_lfw} LFW + {args.distractors} distractors in {t_gen:.1f}s")
        owners = np.full(n_total, "", split.owners.dtype)
        owners[lfw_rows] = split.owners
        d_sample_rows = distractor_rows[: min(20_000, args.distractors)]
        gsplit = replace(split, owners=owners)

        # distractor realism: real probes vs distractors, and vs real non-mated gallery faces
        realism: dict[str, Any] = {"align": args.align}
        if args.distractors:
            d_sample = np.asarray(rows.vectors[d_sample_rows])
            realism["real_probe_vs_distractor"] = score_stats(probes[n_mated:][:2000] @ d_sample.T)
            realism["synthetic_probe_vs_distractor"] = score_stats(syn_q[:2000] @ d_sample.T)
        realism["real_nonmated_probe_vs_lfw_gallery"] = score_stats(
            probes[n_mated:] @ lfw_gallery.T
        )

        # exact reference
        exact = FaceIndex(rows, "flat")
        t0 = time.perf_counter()
        ref_s, ref_p = batched(exact, probes, RANK_K)
        syn_ref = batched(exact, syn_q, RANK_K)[1] if len(syn_q) else np.zeros((0, RANK_K), int)
        t_exact = time.perf_counter() - t0
        say(f"exact search of {len(probes) + len(syn_q)} probes in {t_exact:.1f}s")
        rng = np.random.default_rng(12345)
        n_timed = min(args.timed_queries, len(probes))
        lat_q = np.ascontiguousarray(probes[np.sort(rng.choice(len(probes), n_timed, False))])
        ex_ns = timed(exact, lat_q, RANK_K, budget_s=args.exact_seconds)
        # distractor at each exact position (-1, no neighbour: False)
        is_distr = np.append(~is_lfw, False)
        ex_row: dict[str, Any] = rank_metrics(
            gsplit, ref_s[:n_mated], ref_p[:n_mated], ref_s[n_mated:, 0]
        )
        ex10 = (ref_p[:n_mated] == mate_pos[:, None]).any(axis=1)
        ex_row.update(
            {
                "kind": "flat",
                "mates_in_top10": int(ex10.sum()),
                "mated_top1_is_distractor": int(is_distr[ref_p[:n_mated, 0]].sum()),
                "nonmated_top1_is_distractor": int(is_distr[ref_p[n_mated:, 0]].sum()),
                "p50_ms": pct_ms(ex_ns, 50),
                "p99_ms": pct_ms(ex_ns, 99),
                "bytes_per_face": bytes_per_face(exact),
                "timed_queries": len(ex_ns),
                "batch_search_seconds": round(t_exact, 2),
            }
        )
        realism["exact_top10_distractor_share"] = float(is_distr[ref_p].mean())

        ctx = Context(gsplit, probes, n_mated, mate_pos, syn_q, np.zeros(0), lat_q)
        ctx.ref_s, ctx.ref_p, ctx.syn_ref = ref_s, ref_p, syn_ref
        ctx.g64 = np.asarray(rows.vectors, np.float64)  # scores for the tie rule

        out: dict[str, Any] = {
            "cache": str(args.cache),
            "distractors": args.distractors,
            "gallery_size": n_total,
            "lfw_gallery": n_lfw,
            "lfw_placement": args.lfw_placement,
            "mated_probes": n_mated,
            "nonmated_probes": len(split.nonmated),
            "synthetic_probes": len(syn_q),
            "k": RANK_K,
            "tie_tolerance": TIE_TOLERANCE,
            "fpir_target": FPIR_TARGET,
            "seed": args.seed,
            "threads_batch": faiss.omp_get_max_threads(),
            "threads_timed": SEARCH_THREADS,
            "choose_kind": choose_kind(n_total),
            "exact_max_faces": EXACT_MAX_FACES,
            "gallery_seconds": round(t_gen, 1),
            "distractor_realism": realism,
            "exact": ex_row,
            "indexes": {},
        }

        kinds = []
        for k in args.kinds.split(","):
            k = k.strip()
            if not k:
                continue
            kk = choose_kind(n_total) if k == "auto" else k
            if kk == "flat":
                kk = DEFAULT_ANN_KIND
            if kk not in KINDS:
                sys.exit(f"unknown kind {k!r}")
            if kk not in kinds:
                kinds.append(kk)
        base_params = AnnParams()
        if args.candidates_min is not None:
            base_params = replace(base_params, candidates_min=args.candidates_min)
        builds: list[tuple[str, AnnParams]] = []
        for kind in kinds:
            if kind == "hnsw_sq8":
                for m in parse_ints(args.hnsw_m):
                    for efc in parse_ints(args.ef_construction):
                        bp = replace(base_params, hnsw_m=m, ef_construction=efc)
                        if args.ef_search is not None:
                            bp = replace(bp, ef_search=args.ef_search)
                        builds.append((kind, bp))
            elif kind == "ivf_pqfs" and args.pq_dims:
                for pq in parse_ints(args.pq_dims):
                    builds.append((kind, replace(base_params, nprobe=args.nprobe, pq_dims=pq)))
            else:
                builds.append((kind, replace(base_params, nprobe=args.nprobe)))
        n_of_kind = {k: sum(b[0] == k for b in builds) for k in kinds}
        for i, (kind, build_params) in enumerate(builds):
            label = kind
            if n_of_kind[kind] > 1 and kind == "hnsw_sq8":
                label = f"{kind}_M{build_params.hnsw_m}_efc{build_params.ef_construction}"
            elif n_of_kind[kind] > 1:
                label = f"{kind}_pq{build_params.pq_dims}"
            index = FaceIndex(rows, "flat", None, build_params)
            t0 = time.perf_counter()
            index.build_ann(kind)
            t_build = time.perf_counter() - t0
            say(f"built {label} in {t_build:.1f}s")
            params = ivf_params(index)
            ranks = ListRanks(index) if kind in IVF_KINDS else None
            nprobe = params.get("nprobe")
            row: dict[str, Any] = {
                "kind": kind,
                "params": params,
                "build_seconds": round(t_build, 1),
                "bytes_per_face": bytes_per_face(index),
            }
            row.update(measure(ctx, index, ranks, nprobe, lat_q))
            say(
                f"{label} main: "
                + json.dumps(
                    {
                        k: row[k]
                        for k in ("rank1", "mates_in_exact_top10_lost", "recall_at_10", "p50_ms")
                    }
                )
            )
            if ranks is not None and nprobe is not None:
                lr = ranks.rank_of(probes, ref_p) + 1
                mates = np.where(ref_p[:n_mated] == mate_pos[:, None], lr[:n_mated], 0).max(1)
                ls: dict[str, Any] = {
                    "nlist": ranks.nlist,
                    "real_mate": spread(mates, nprobe, ranks.nlist),
                    "real_top1": spread(lr[:, 0], nprobe, ranks.nlist),
                    "real_top10_all": spread(lr.max(axis=1), nprobe, ranks.nlist),
                    "centroids_real_probes": ranks.centroid_gap(probes, nprobe),
                    "centroids_lfw_gallery": ranks.centroid_gap(lfw_gallery, nprobe),
                }
                if args.distractors:
                    d_rows = np.asarray(rows.vectors[d_sample_rows])
                    ls["centroids_distractors"] = ranks.centroid_gap(d_rows, nprobe)
                    ls["centroids_synthetic_probes"] = ranks.centroid_gap(syn_q, nprobe)
                if len(syn_q):
                    slr = ranks.rank_of(syn_q, syn_ref) + 1
                    ls["synthetic_top1"] = spread(slr[:, 0], nprobe, ranks.nlist)
                    ls["synthetic_top10_all"] = spread(slr.max(axis=1), nprobe, ranks.nlist)
                row["list_spread"] = ls
            swept = i == 0 or (args.pq_dims and kind == "ivf_pqfs")
            if swept and ranks is not None and nprobe is not None:
                sweep = []
                nps: list[int] = []
                for s in args.sweep_nprobe.split(","):
                    s = s.strip()
                    v = round(float(s[1:]) * nprobe) if s.startswith("x") else int(s)
                    v = min(max(1, v), ranks.nlist)
                    if v not in nps:
                        nps.append(v)
                cands = [int(c) for c in args.sweep_candidates.split(",") if c.strip()]
                for npv in nps:
                    for c in cands:
                        index.params = replace(build_params, nprobe=npv, candidates_min=c)
                        r = measure(ctx, index, ranks, npv, lat_q)
                        entry = {
                            "nprobe": npv,
                            "candidates": index.params.candidates(RANK_K, index.rows.rows),
                        }
                        entry.update({k: r[k] for k in SWEEP_KEYS if k in r})
                        sweep.append(entry)
                        say(
                            f"sweep nprobe {npv} cand {entry['candidates']}: "
                            f"lost {r['mates_in_exact_top10_lost']}, "
                            f"r1diff {r['rank1_differ_beyond_ties']}, p50 {r['p50_ms']} ms"
                        )
                index.params = build_params
                row["sweep"] = sweep
            if kind == "hnsw_sq8" and args.sweep_ef:
                sweep = []
                for ef, c in parse_ef_sweep(args.sweep_ef):
                    # candidates(k) = max(k * factor, candidates_min): factor 1 makes it c
                    index.params = replace(
                        build_params, ef_search=ef, candidate_factor=1, candidates_min=c
                    )
                    cands = index.params.candidates(RANK_K, index.rows.rows)
                    r = measure(ctx, index, None, None, lat_q)
                    entry = {
                        "ef_search": ef,
                        "candidates": cands,
                        "ef_search_effective": max(ef, cands),
                    }
                    entry.update({k: r[k] for k in SWEEP_KEYS if k in r})
                    sweep.append(entry)
                    say(
                        f"{label} sweep ef {ef} cand {cands}: "
                        f"lost {r['mates_in_exact_top10_lost']}, "
                        f"r1diff {r['rank1_differ_beyond_ties']}, "
                        f"recall@10 {r['recall_at_10']:.4f}, p50 {r['p50_ms']} ms"
                    )
                index.params = build_params
                row["sweep_ef"] = sweep
            out["indexes"][label] = row
            del index
        with milvus_target(args.index, args.milvus_server, args.workdir, say) as uri:
            if uri:
                cands = parse_ints(args.milvus_candidates)
                out["milvus"] = milvus_row(ctx, rows, uri, lat_q, cands)
                first = out["indexes"][next(iter(out["indexes"]))] if out["indexes"] else None
                out["milvus_vs_faiss"] = ratios(out["milvus"], first, ex_row)
        out["seconds"] = round(time.perf_counter() - t_start, 1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = json.dumps(out, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
