"""Measured defaults of the local vector index and the parameters they give (see the
package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # numpy's stubs give ndarray ``__buffer__`` only on Python >= 3.12, so on 3.11 an array
    # is not a ``Buffer`` to the type checker though it supports the buffer protocol.
    pass


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
    pq_dims: int = PQ_DIMS_PER_CODE  # ivf_pqfs: dimensions per 4-bit code (2: 32 B a face)

    def candidates(self, k: int, n: int = 0) -> int:
        """Candidates to re-rank for ``k`` results from ``n`` indexed faces."""
        return max(k * self.candidate_factor, self.candidates_min, int(n * CANDIDATES_PER_FACE))


# AnnParams fields that only affect searching (a loaded index takes them from its manager)
SEARCH_PARAMS = ("nprobe", "ef_search", "candidate_factor", "candidates_min")


def choose_kind(n: int, exact_max: int = EXACT_MAX_FACES, ann_kind: str = DEFAULT_ANN_KIND) -> str:
    """The kind to build for a gallery of ``n`` live faces."""
    return "flat" if n < exact_max else ann_kind


# --- files -------------------------------------------------------------------------------
