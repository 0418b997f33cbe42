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

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from faceledger import config
from faceledger.evaluation.fusion import fusion_evaluation
from faceledger.evaluation.indexes import (
    INDEX_CHOICES,
    RANK_K,
    ExactSearch,
    compare_rankings,
    identification_by_index,
    parse_index_list,
    parse_index_spec,
)
from faceledger.evaluation.lfw_data import (
    EmbeddingTable,
    LfwDataset,
    calibration_names,
    embed_lfw,
    embed_subject,
    in_calibration_split,
    one_to_n_split,
    parse_pairs,
    rank_metrics,
)
from faceledger.gallery.ingest import PipelineSettings
from faceledger.search import calibration
from faceledger.vision.analysis import FaceAnalyzer
from faceledger.vision.detection import DEFAULT_MIN_FACE
from faceledger.vision.embedding import DEFAULT_EMBEDDER
from faceledger.vision.routing import create_embedder

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
    plots: Path | None = None,
) -> dict[str, Any]:
    """Verification, 1:N identification and the fused 1:N protocols (subject galleries,
    multi-photo probes: :mod:`faceledger.evaluation.fusion`) on LFW; with ``indexes`` (specs,
    see :func:`parse_index_spec`) the 1:N searches also run through each of those indexes;
    with ``plots`` (a folder) the pictures of :mod:`faceledger.evaluation.plots` are written
    there. ``metric`` applies to verification only; 1:N always searches by cosine, as the
    product does."""
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
    calib = calibration.load(model_id)
    result.update(identification(ds, table, calib))
    fused = fusion_evaluation(ds, table, model_id, calib)
    result.update(fused.metrics)
    if plots is not None:
        from faceledger.evaluation.plots import write_plots

        pair_scores = np.concatenate(_fold_scores(table, folds))
        pair_same = np.array([same for fold in folds for _, _, same in fold])
        paths = write_plots(
            plots,
            pair_scores,
            pair_same,
            result["verification_accuracy"],
            fused.det_runs(),
            fused.calibration_runs(),
        )
        result["plots"] = [str(p) for p in paths]
    if indexes:
        result.update(identification_by_index(ds, table, indexes))
    result["seconds"] = time.perf_counter() - t0
    return result


# The LFW evaluation's public names, wherever they live (lfw_data, indexes): callers import
# this module only.
__all__ = [
    "INDEX_CHOICES",
    "METRICS",
    "EmbeddingTable",
    "LfwDataset",
    "best_threshold",
    "calibration_names",
    "compare_rankings",
    "embed_lfw",
    "embed_subject",
    "identification",
    "identification_by_index",
    "impostor_scores",
    "in_calibration_split",
    "lfw_setup",
    "one_to_n_split",
    "parse_index_list",
    "parse_index_spec",
    "parse_pairs",
    "run_lfw",
    "verification",
]


EVAL_MIN_FACE = DEFAULT_MIN_FACE  # evaluate the pipeline a gallery is built with


def _analyzer_nocrop(
    detector: str, embedder: str, model_dir: str | None, device: str, flip: bool = True
) -> FaceAnalyzer:
    a = PipelineSettings(
        detector=detector,
        embedder=embedder,
        min_face=EVAL_MIN_FACE,
        model_dir=model_dir,
        device=device,
        flip=flip,
    ).analyzer()
    a.with_crops = False
    return a


def lfw_setup(
    detector: str,
    embedder: str,
    data_dir: Path | None,
    model_dir: str | None,
    device: str,
    flip: bool = True,
) -> tuple[Callable[[], FaceAnalyzer], str, Path]:
    """The analyzer factory, model id and embedding cache file of an LFW run (the cache is
    named for everything that changes the vectors, so runs never share a wrong one).
    ValueError for an unknown embedder or an unusable model folder."""
    embedder = DEFAULT_EMBEDDER if embedder == "default" else embedder
    model_id = create_embedder(
        embedder, threads=1, model_dir=model_dir, device=device, flip=flip
    ).model_id
    factory = partial(_analyzer_nocrop, detector, embedder, model_dir, device, flip)
    tag = f"{model_id}_{embedder}_{detector}_mf{EVAL_MIN_FACE}"
    for c in "+:/\\":
        tag = tag.replace(c, "-")
    return factory, model_id, config.data_dir(data_dir) / "eval" / f"lfw_{tag}.npz"
