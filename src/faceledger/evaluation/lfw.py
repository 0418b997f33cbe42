"""LFW evaluation in the field's own terms.

* **Verification (1:1)**: the standard LFW View-2 protocol: the 6,000 pairs of
  ``pairs.txt`` in 10 folds; for each fold the threshold is chosen on the other 9 and the
  accuracy measured on it; mean and standard deviation over the folds.
* **Identification (1:N)**, NIST FRVT style, on the people *outside* the calibration split:
  gallery = one image (the first) of every single-image person and of a deterministic half
  of the people with two or more images; mated probes = the other images of those gallery
  people with two or more; non-mated probes = every image of the other half (not enrolled).
  Reported: rank-1 and rank-10 hit rates of mated probes, and FNIR at FPIR = 0.003: the
  threshold T is set so that 0.3 % of non-mated searches return a top candidate scoring
  >= T, and FNIR is the share of mated searches whose mate is not returned at rank 1 with a
  score >= T. The calibrated FPIR predicted at T (1 - (1 - FMR(T))^N) is reported beside it.
* **Calibration split**: the people whose SHA-256(name) is 0 mod 4 (about a quarter).
  All cross-person pairs among their images give the impostor scores the shipped
  calibration is fitted on; they are excluded from the 1:N protocol.

One face per image: the detected face whose centre is nearest the image centre (LFW's
subject is centred). Where no detector finds a face, a centred box is embedded so that the
pair still counts, and the image is reported as undetected (``detection_rate``).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from faceledger.gallery.index import AnnParams
from faceledger.gallery.parallel import ordered_map
from faceledger.search import calibration
from faceledger.vision.analysis import FaceAnalyzer
from faceledger.vision.decode import decode_image
from faceledger.vision.detection import centred_box

FPIR_TARGET = 0.003


@dataclass
class LfwDataset:
    root: Path
    people: dict[str, list[str]]  # name -> relative image paths, sorted

    @classmethod
    def load(cls, root: Path) -> LfwDataset:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"{root}: LFW not found; get it with `faceledger datasets fetch lfw`"
            )
        people: dict[str, list[str]] = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            imgs = sorted(f"{d.name}/{f.name}" for f in d.iterdir() if f.suffix == ".jpg")
            if imgs:
                people[d.name] = imgs
        if not people:
            raise FileNotFoundError(f"{root}: no LFW person folders found")
        return cls(root, people)

    def image(self, name: str, number: int) -> str:
        return f"{name}/{name}_{number:04d}.jpg"

    def all_images(self) -> list[str]:
        return [img for imgs in self.people.values() for img in imgs]


def parse_pairs(path: Path) -> list[list[tuple[str, str, bool]]]:
    """View-2 ``pairs.txt`` -> folds of (image_a, image_b, same_person)."""
    lines = Path(path).read_text().split("\n")
    n_folds, n_per = (int(x) for x in lines[0].split())
    rows = [ln.split("\t") for ln in lines[1:] if ln.strip()]
    if len(rows) != n_folds * 2 * n_per:
        raise ValueError(f"{path}: expected {n_folds * 2 * n_per} pairs, found {len(rows)}")
    folds = []
    for f in range(n_folds):
        fold = []
        for r in rows[f * 2 * n_per : (f + 1) * 2 * n_per]:
            if len(r) == 3:
                a = f"{r[0]}/{r[0]}_{int(r[1]):04d}.jpg"
                b = f"{r[0]}/{r[0]}_{int(r[2]):04d}.jpg"
                fold.append((a, b, True))
            elif len(r) == 4:
                a = f"{r[0]}/{r[0]}_{int(r[1]):04d}.jpg"
                b = f"{r[2]}/{r[2]}_{int(r[3]):04d}.jpg"
                fold.append((a, b, False))
            else:
                raise ValueError(f"{path}: bad pair line {r!r}")
        folds.append(fold)
    return folds


def in_calibration_split(name: str) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 4 == 0


def in_gallery_half(name: str) -> bool:
    return int(hashlib.sha256(f"gallery:{name}".encode()).hexdigest(), 16) % 2 == 0


# -- embedding every image, cached ----------------------------------------------------------

_eval_analyzer: FaceAnalyzer | None = None


def _init_eval(factory: Callable[[], FaceAnalyzer]) -> None:
    global _eval_analyzer
    _eval_analyzer = factory()


def embed_subject(analyzer: FaceAnalyzer, img: np.ndarray) -> tuple[np.ndarray, int, str]:
    """Embed the LFW subject: the detected face nearest the centre, else a centred box.

    Returns (embedding, number of faces detected, detector of the embedded face).
    """
    dets = analyzer.detector.detect(img)
    if dets:
        cx, cy = img.shape[1] / 2, img.shape[0] / 2
        chosen = min(
            dets,
            key=lambda d: np.hypot(
                (d.bbox.left + d.bbox.right) / 2 - cx, (d.bbox.top + d.bbox.bottom) / 2 - cy
            ),
        )
    else:
        chosen = centred_box(img)
    face = analyzer.faces_from_detections(img, [chosen])[0]
    return face.embedding, len(dets), chosen.detector


def _embed_path(path: str) -> tuple[np.ndarray, int, str]:
    assert _eval_analyzer is not None
    return embed_subject(_eval_analyzer, decode_image(Path(path).read_bytes()).pixels)


@dataclass
class EmbeddingTable:
    paths: list[str]
    vectors: np.ndarray  # (n, dim)
    detected: np.ndarray  # bool

    def lookup(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def embed_lfw(
    ds: LfwDataset,
    analyzer_factory: Callable[[], FaceAnalyzer],
    cache: Path | None,
    workers: int = 1,
    advance: Callable[[int], None] = lambda n: None,
) -> EmbeddingTable:
    paths = ds.all_images()
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if list(z["paths"]) == paths:
            advance(len(paths))
            return EmbeddingTable(paths, z["vectors"], z["detected"])
    vectors: list[np.ndarray] = []
    detected: list[bool] = []
    work = ((p, str(ds.root / p)) for p in paths)
    for _, (vec, n, _det) in ordered_map(
        _embed_path, work, workers, _init_eval, (analyzer_factory,)
    ):
        vectors.append(vec)
        detected.append(n > 0)
        advance(1)
    table = EmbeddingTable(paths, np.stack(vectors).astype(np.float32), np.array(detected))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, paths=np.array(paths), vectors=table.vectors, detected=table.detected)
        tmp.replace(cache)
    return table


# -- protocols ---------------------------------------------------------------------------


METRICS = ("cosine", "centred")


def _fold_scores(
    table: EmbeddingTable,
    folds: list[list[tuple[str, str, bool]]],
    shift: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Each fold's pair scores: cosine of the vectors, after subtracting ``shift`` if given."""
    at = table.lookup()
    v = table.vectors.astype(np.float64)
    if shift is not None:
        v = v - shift
        v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [
        np.sum(v[[at[x] for x, _, _ in fold]] * v[[at[y] for _, y, _ in fold]], axis=1)
        for fold in folds
    ]


def verification(
    table: EmbeddingTable, folds: list[list[tuple[str, str, bool]]], metric: str = "cosine"
) -> dict[str, Any]:
    """LFW's 10-fold protocol: each fold scored with the threshold that is best on the other
    nine. ``metric`` ``centred`` subtracts, for each test fold, the mean embedding of the
    distinct images of the nine training folds (nothing of the test fold is used)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose {' or '.join(METRICS)}")
    at = table.lookup()
    fold_labels = [np.array([same for _, _, same in fold]) for fold in folds]
    plain = _fold_scores(table, folds) if metric == "cosine" else []
    accs, thresholds = [], []
    for k in range(len(folds)):
        if metric == "cosine":
            fold_scores = plain
        else:
            train = {
                p for i, fold in enumerate(folds) if i != k for x, y, _ in fold for p in (x, y)
            }
            mean = table.vectors[sorted(at[p] for p in train)].astype(np.float64).mean(axis=0)
            fold_scores = _fold_scores(table, folds, mean)
        train_s = np.concatenate([s for i, s in enumerate(fold_scores) if i != k])
        train_l = np.concatenate([lab for i, lab in enumerate(fold_labels) if i != k])
        t = best_threshold(train_s, train_l)
        thresholds.append(t)
        accs.append(float(np.mean((fold_scores[k] >= t) == fold_labels[k])))
    return {
        "verification_metric": metric,
        "verification_accuracy": float(np.mean(accs)),
        "verification_std": float(np.std(accs)),
        "verification_fold_accuracies": accs,
        "verification_thresholds": thresholds,
    }


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising accuracy (midpoint between neighbouring sorted scores)."""
    order = np.argsort(scores)
    s, lab = scores[order], labels[order].astype(np.int64)
    # accepting everything at or above s[i]: correct = negatives below + positives at/above
    neg_below = np.concatenate([[0], np.cumsum(1 - lab)])
    pos_above = np.concatenate([np.cumsum(lab[::-1])[::-1], [0]])
    correct = neg_below + pos_above
    i = int(np.argmax(correct))
    if i == 0:
        return float(s[0] - 1e-6)
    if i == len(s):
        return float(s[-1] + 1e-6)
    return float((s[i - 1] + s[i]) / 2)


def impostor_scores(table: EmbeddingTable, names: list[str]) -> np.ndarray:
    """All cross-person pair scores among the images of ``names``."""
    at = table.lookup()
    idx, owner = [], []
    by_person: dict[str, list[int]] = {}
    for p, i in at.items():
        by_person.setdefault(p.split("/", 1)[0], []).append(i)
    for pid, name in enumerate(names):
        for i in by_person.get(name, []):
            idx.append(i)
            owner.append(pid)
    v = table.vectors[idx]
    own = np.array(owner)
    out = []
    for start in range(0, len(idx), 2048):
        block = v[start : start + 2048] @ v.T
        rows = np.arange(start, min(start + 2048, len(idx)))
        # upper triangle (j > i) and different person
        mask = (np.arange(len(idx))[None, :] > rows[:, None]) & (own[None, :] != own[rows][:, None])
        out.append(block[mask])
    return np.concatenate(out)


@dataclass
class OneToNSplit:
    """The 1:N protocol's rows of the embedding table (see the module docstring)."""

    gallery: np.ndarray  # table rows enrolled, one per gallery person
    owners: np.ndarray  # person of each gallery row
    mated: np.ndarray  # table rows of mated probes
    mated_owner: np.ndarray  # person of each mated probe
    nonmated: np.ndarray  # table rows of non-mated probes


def one_to_n_split(ds: LfwDataset, table: EmbeddingTable) -> OneToNSplit:
    at = table.lookup()
    gallery_idx: list[int] = []
    gallery_owner: list[str] = []
    mated: list[int] = []
    mated_owner: list[str] = []
    nonmated: list[int] = []
    for name, imgs in ds.people.items():
        if in_calibration_split(name):
            continue
        if len(imgs) == 1 or in_gallery_half(name):
            gallery_idx.append(at[imgs[0]])
            gallery_owner.append(name)
            for img in imgs[1:]:
                mated.append(at[img])
                mated_owner.append(name)
        else:
            nonmated.extend(at[img] for img in imgs)
    return OneToNSplit(
        np.array(gallery_idx, np.int64),
        np.array(gallery_owner),
        np.array(mated, np.int64),
        np.array(mated_owner),
        np.array(nonmated, np.int64),
    )


def rank_metrics(
    split: OneToNSplit, m_scores: np.ndarray, m_pos: np.ndarray, nm_top1: np.ndarray
) -> dict[str, Any]:
    """Rank-1/10 and FNIR at FPIR = 0.003 from the gallery searches' results.

    ``m_scores``/``m_pos``: the mated probes' ranked scores and gallery positions (-1: no
    candidate); ``nm_top1``: each non-mated probe's top score.
    """
    hits = (m_pos >= 0) & (split.owners[np.maximum(m_pos, 0)] == split.mated_owner[:, None])
    nm_top = np.sort(nm_top1)
    # threshold: FPIR(T) = share of non-mated top scores >= T equals the target
    k = int(np.floor(FPIR_TARGET * len(nm_top)))
    t = float(nm_top[len(nm_top) - k]) if k > 0 else float(nm_top[-1] + 1e-6)
    fpir = float(np.mean(nm_top >= t))
    rank1_hit = hits[:, 0] & (m_scores[:, 0] >= t)
    return {
        "rank1": float(np.mean(hits[:, 0])),
        "rank10": float(np.mean(hits.any(axis=1))),
        "fpir_threshold": t,
        "measured_fpir": fpir,
        "fnir_at_fpir_0_003": float(1.0 - np.mean(rank1_hit)),
    }


def identification(
    ds: LfwDataset, table: EmbeddingTable, calib: calibration.Calibration | None
) -> dict[str, Any]:
    split = one_to_n_split(ds, table)
    exact = ExactSearch(table.vectors[split.gallery])
    m_scores, m_pos = exact.search(table.vectors[split.mated], RANK_K)
    n_scores, _ = exact.search(table.vectors[split.nonmated], 1)
    n_gallery = len(split.gallery)
    out: dict[str, Any] = {
        "gallery_size": n_gallery,
        "mated_probes": len(split.mated),
        "nonmated_probes": len(split.nonmated),
    }
    out.update(rank_metrics(split, m_scores, m_pos, n_scores[:, 0]))
    if calib is not None:
        t = out["fpir_threshold"]
        est = calib.estimate(t)
        out["calibrated_fmr_at_threshold"] = est.fmr
        out["calibrated_fpir_at_threshold"] = float(1 - (1 - est.fmr) ** n_gallery)
        out["calibration_extrapolated"] = est.extrapolated
    return out


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


def calibration_names(ds: LfwDataset) -> list[str]:
    return [n for n in ds.people if in_calibration_split(n)]


def run_lfw(
    lfw_dir: Path,
    analyzer_factory: Callable[[], FaceAnalyzer],
    model_id: str,
    cache: Path | None,
    workers: int,
    advance: Callable[[int], None] = lambda n: None,
    set_total: Callable[[int], None] = lambda n: None,
    indexes: Sequence[str] | None = None,
    metric: str = "cosine",
) -> dict[str, Any]:
    """Verification and 1:N identification on LFW; with ``indexes`` (specs, see
    :func:`parse_index_spec`) the 1:N searches also run through each of those indexes.
    ``metric`` applies to verification only; 1:N always searches by cosine, as the product
    does."""
    t0 = time.perf_counter()
    ds = LfwDataset.load(lfw_dir)
    folds = parse_pairs(ds.root / "pairs.txt")
    set_total(len(ds.all_images()))
    table = embed_lfw(ds, analyzer_factory, cache, workers, advance)
    result: dict[str, Any] = {
        "model_id": model_id,
        "images": len(table.paths),
        "detection_rate": float(np.mean(table.detected)),
        "undetected_images": int((~table.detected).sum()),
    }
    result.update(verification(table, folds, metric))
    result.update(identification(ds, table, calibration.load(model_id)))
    if indexes:
        result.update(identification_by_index(ds, table, indexes))
    result["seconds"] = time.perf_counter() - t0
    return result
