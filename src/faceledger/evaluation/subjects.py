"""Subjects on LFW (#14 items 1 and 4): the subject calibration by size, how well it holds on
people it never saw, how often the over-fetched face search misses the best subject, and
duplicate identities found at the default threshold.

* **Calibration** (:func:`fit_lfw`; with the probe fits ``2x1``, ``3+x1`` for fused probes,
  :func:`faceledger.evaluation.fusion.fit_fused`): on the calibration split (people with
  ``sha256(name) % 4 == 0``, as ``calibrate lfw``), each person's photos in LFW's order cut
  into consecutive disjoint groups of 1, 2 and 3 (an incomplete last group dropped); each
  group's template; for each pair of size classes (``1x2`` ... ``3+x3+``) the scores of every
  pair of groups of two different people (:func:`faceledger.search.subjects
  .fit_subject_calibration`).
* **Check** (:func:`check_by_size`): the same groups of the people outside the calibration
  split; for each fit, at the thresholds it puts at FMR 1e-3 ... 1e-6, the FMR measured on
  those impostor pairs, and predicted / measured.
* **Search** (:func:`search_check`): the subject protocol of
  :func:`faceledger.evaluation.fusion.subject_protocol` (each enrolled person a subject of
  their first 3 photos, or fewer; probes: their later photos and every photo of the
  non-enrolled people). Exact: every subject's template scored; over-fetched: the
  ``OVERFETCH x top_k`` best gallery faces, their subjects' templates scored (as the product
  searches). Reported: how often the two disagree on the best subject, rank-1 of each, and the
  predicted / measured FPIR with each subject's est. FMR from the fit for its size.
* **Duplicates** (:func:`duplicates_check`): a gallery of every LFW person with 2+ photos
  (``people="all"``, or only those outside the calibration split, ``"evaluation"``), either
  each photo a subject of one (``photos``), or each person's photos split into two labels,
  the first half and the rest (``halves``: one person enrolled twice); precision and recall
  of the reported pairs as "same person" at the default threshold (expected false pairs in
  the gallery <= 0.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from faceledger.evaluation.fusion import PROBE_SIZES, fit_fused, subject_protocol
from faceledger.evaluation.lfw_data import EmbeddingTable, LfwDataset, in_calibration_split
from faceledger.gallery.subjects import Membership
from faceledger.search import fusion
from faceledger.search.calibration import Calibration
from faceledger.search.fusion import Groups
from faceledger.search.subjects import (
    DEFAULT_MAX_EXPECTED_FALSE,
    FITTED_PAIRS,
    OVERFETCH,
    SIZE_CLASSES,
    SubjectCalibration,
    class_size,
    duplicate_pairs,
    fit_subject_calibration,
    impostor_template_scores,
    size_class,
)

CHECK_FMRS = (1e-3, 1e-4, 1e-5, 1e-6)


def _people(ds: LfwDataset, calibration_split: bool) -> list[tuple[str, list[str]]]:
    return [
        (n, imgs) for n, imgs in ds.people.items() if in_calibration_split(n) is calibration_split
    ]


def class_templates(
    table: EmbeddingTable, people: list[tuple[str, list[str]]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per size class: templates of each person's consecutive disjoint groups, and owners."""
    at = table.lookup()
    out = {}
    for cls in SIZE_CLASSES:
        size = class_size(cls)
        groups, owners = [], []
        for pid, (_, imgs) in enumerate(people):
            rows = [at[i] for i in imgs]
            for start in range(0, len(rows) - size + 1, size):
                groups.append(rows[start : start + size])
                owners.append(pid)
        out[cls] = (fusion.templates(table.vectors, Groups.of(groups)), np.array(owners))
    return out


def fit_lfw(
    ds: LfwDataset, table: EmbeddingTable, model_id: str, single: Calibration | None
) -> SubjectCalibration:
    people = _people(ds, True)
    info = {
        "dataset": "LFW deep-funneled",
        "split": "people with sha256(name) % 4 == 0",
        "people": len(people),
        "groups": "each person's photos in LFW's order, consecutive disjoint groups of 1, 2, 3",
    }
    calib = fit_subject_calibration(class_templates(table, people), model_id, info, single)
    for p in PROBE_SIZES:  # fused probes of 2 and 3+ faces against one gallery face
        key = f"{size_class(p)}x1"
        calib.probe_fits[key] = fit_fused(
            ds,
            table,
            "template",
            f"multi_probe_{p}",
            f"{model_id}:template:probe:{key}",
            info
            | {
                "rule": "template",
                "sizes": key,
                "pairs": f"each group of {p} consecutive photos of a person against every "
                "photo of every other person",
                "weights": "each gallery person counted once (1 / their photos)",
            },
        )
    return calib


def check_by_size(
    ds: LfwDataset, table: EmbeddingTable, calib: SubjectCalibration
) -> dict[str, Any]:
    """Predicted / measured FMR of each fit on the people outside the calibration split."""
    tmpl = class_templates(table, _people(ds, False))
    out: dict[str, Any] = {}
    for key in ("1x1", *FITTED_PAIRS):
        a, b = key.split("x")
        fit = calib.fit_for(class_size(a), class_size(b))
        if fit is None:
            continue
        scores = impostor_template_scores(*tmpl[a], *tmpl[b], a == b)
        rows = []
        for fmr in CHECK_FMRS:
            t = fit.threshold_for(fmr)
            predicted = fit.estimate(t).fmr
            above = int((scores >= t).sum())
            measured = above / len(scores)
            rows.append(
                {
                    "fmr": fmr,
                    "threshold": round(t, 5),
                    "predicted": predicted,
                    "measured": measured,
                    "pairs_above": above,
                    "ratio": predicted / measured if above else None,
                }
            )
        out[key] = {"impostor_pairs": len(scores), "points": rows}
    return out


def search_check(
    ds: LfwDataset,
    table: EmbeddingTable,
    calib: SubjectCalibration,
    top_k: int = 10,
    overfetch: int = OVERFETCH,
) -> dict[str, Any]:
    """Over-fetched vs exact subject search on the subject protocol (module docstring)."""
    proto = subject_protocol(ds, table)
    v = table.vectors
    gal = proto.gallery
    tmpl = fusion.templates(v, gal)
    sizes = gal.sizes
    face_rows = gal.index[gal.index >= 0]
    face_subject = np.repeat(np.arange(len(gal)), sizes)
    face_vecs = v[face_rows]
    probes = np.concatenate([proto.mated.index[:, 0], proto.nonmated.index[:, 0]])
    n_mated = len(proto.mated)
    owner = np.concatenate([proto.mated_owner, np.array([""] * len(proto.nonmated))])
    exact_best = np.empty(len(probes), np.int64)
    exact_top = np.empty(len(probes), np.float32)
    over_best = np.empty(len(probes), np.int64)
    over_top = np.empty(len(probes), np.float32)
    k = top_k * overfetch
    for start in range(0, len(probes), 1024):
        pv = v[probes[start : start + 1024]]
        s = pv @ tmpl.T
        exact_best[start : start + len(pv)] = s.argmax(axis=1)
        exact_top[start : start + len(pv)] = s.max(axis=1)
        fs = pv @ face_vecs.T
        top_faces = np.argpartition(-fs, k - 1, axis=1)[:, :k]
        for r in range(len(pv)):
            cand = np.unique(face_subject[top_faces[r]])
            best = cand[np.argmax(s[r, cand])]
            over_best[start + r] = best
            over_top[start + r] = s[r, best]
    differ = exact_best != over_best
    out: dict[str, Any] = {
        "gallery_subjects": len(gal),
        "gallery_faces": len(face_rows),
        "subject_sizes": {str(n): int((sizes == n).sum()) for n in np.unique(sizes)},
        "top_k": top_k,
        "overfetch": overfetch,
        "probes": len(probes),
        "best_subject_missed": int(differ.sum()),
        "best_subject_missed_rate": float(differ.mean()),
        "best_subject_missed_mated": int(differ[:n_mated].sum()),
        "best_subject_missed_nonmated": int(differ[n_mated:].sum()),
        "rank1_exact": float(np.mean(proto.owners[exact_best[:n_mated]] == owner[:n_mated])),
        "rank1_overfetch": float(np.mean(proto.owners[over_best[:n_mated]] == owner[:n_mated])),
    }
    nm_top = np.sort(over_top[n_mated:])
    for name, fpir in (("0_003", 0.003), ("0_01", 0.01)):
        kk = int(np.floor(fpir * len(nm_top)))
        t = float(nm_top[len(nm_top) - kk])
        measured = float(np.mean(nm_top >= t))
        survive = 1.0
        for n in np.unique(sizes):
            est = calib.estimate(t, 1, int(n))
            if est is None:
                survive = float("nan")
                break
            survive *= (1 - est.fmr) ** int((sizes == n).sum())
        predicted = 1 - survive
        out[f"fpir_{name}"] = {
            "threshold": t,
            "measured_fpir": measured,
            "predicted_fpir": predicted,
            "ratio": predicted / measured if measured > 0 else None,
        }
    return out


def duplicates_check(
    ds: LfwDataset,
    table: EmbeddingTable,
    calib: SubjectCalibration,
    layout: str = "halves",
    people: str = "all",
    max_expected_false: float = DEFAULT_MAX_EXPECTED_FALSE,
) -> dict[str, Any]:
    """Precision and recall of the duplicate pairs found (module docstring)."""
    at = table.lookup()
    chosen = [
        (n, imgs)
        for n, imgs in ds.people.items()
        if len(imgs) >= 2 and (people == "all" or not in_calibration_split(n))
    ]
    face_ids: list[int] = []
    subject: list[int] = []
    keys: list[str | int] = []
    person_of: dict[str | int, str] = {}
    for name, imgs in chosen:
        rows = [at[i] for i in imgs]
        if layout == "photos":
            for r in rows:
                keys.append(r)
                person_of[r] = name
                face_ids.append(r)
                subject.append(len(keys) - 1)
        elif layout == "halves":
            half = len(rows) // 2
            for part, label in ((rows[:half], f"{name}#1"), (rows[half:], f"{name}#2")):
                keys.append(label)
                person_of[label] = name
                for r in part:
                    face_ids.append(r)
                    subject.append(len(keys) - 1)
        else:
            raise ValueError(f"unknown layout {layout!r}")
    order = np.argsort(face_ids)
    ids = np.array(face_ids, np.int64)[order]
    m = Membership(ids, np.array(subject, np.int64)[order], keys)
    dup = duplicate_pairs(ids, table.vectors[ids], m, calib, max_expected_false)
    found = len(dup.pairs)
    true_found = sum(person_of[p.a] == person_of[p.b] for p in dup.pairs)
    if layout == "photos":
        positives = sum(len(imgs) * (len(imgs) - 1) // 2 for _, imgs in chosen)
    else:
        positives = len(chosen)
    false_pairs = [
        [str(p.a), str(p.b), p.score] for p in dup.pairs if person_of[p.a] != person_of[p.b]
    ]
    return {
        "layout": layout,
        "people": len(chosen),
        "people_from": people,
        "subjects": dup.subjects,
        "faces": dup.faces,
        "max_expected_false": max_expected_false,
        "fmr_limit": dup.fmr_limit,
        "thresholds": dup.thresholds,
        "pairs_found": found,
        "same_person_found": true_found,
        "same_person_pairs": positives,
        "precision": true_found / found if found else None,
        "recall": true_found / positives if positives else None,
        "false_pairs": false_pairs[:20],
    }
