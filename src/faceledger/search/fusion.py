"""Score fusion: one score for a probe of one or more face vectors against a subject of one or
more gallery face vectors (issue #14).

Three rules, all on unit-length embeddings compared by cosine (the inner product):

* ``max``: the best of the ``p x m`` pairwise scores between the probe's ``p`` vectors and the
  subject's ``m`` vectors;
* ``mean_topk``: the mean of the ``k`` best pairwise scores (``k = min(TOPK, p x m)``; the
  default ``TOPK`` is 2: one lucky pair is not enough, and with the probes and subjects of 2
  or 3 photos measured on LFW a larger ``k`` averages in the weakest pairs);
* ``template``: the cosine of the L2-normalised mean of the probe's vectors with the
  L2-normalised mean of the subject's vectors (each vector normalised first).

A single probe vector against a single gallery vector gives the plain cosine under every rule.
The rule measured best on LFW is :data:`DEFAULT_RULE` (``faceledger eval lfw`` reports all
three: the README's table). Scores of different rules, or of one rule on groups of different
sizes, are not on one scale: each needs its own calibration to become an estimated false
match rate.

Groups are given as padded index matrices (:class:`Groups`): row ``g`` lists the rows of a
vector array that belong to group ``g``, ``-1`` after its last member. Everything is vectorised
with NumPy and processed in blocks of probes, so memory stays bounded for large galleries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np

from faceledger.types import Face

FusionRule = Literal["max", "mean_topk", "template"]
RULES: tuple[FusionRule, ...] = get_args(FusionRule)
DEFAULT_RULE: FusionRule = "template"
TOPK = 2
# pairwise scores held at once while fusing: probes per block x subjects x pairs per cell
_BLOCK_CELLS = 8_000_000


def check_rule(rule: str) -> FusionRule:
    """``rule`` as a :data:`FusionRule`; ValueError naming the rules if it is none."""
    for r in RULES:
        if rule == r:
            return r
    raise ValueError(f"unknown fusion rule {rule!r}; choose one of {', '.join(RULES)}")


@dataclass(frozen=True)
class Groups:
    """Ragged groups of rows of a vector array, as a padded index matrix."""

    index: np.ndarray  # (groups, width) int64, -1 after each group's last row

    def __post_init__(self) -> None:
        idx = self.index
        if idx.ndim != 2 or idx.shape[1] == 0:
            raise ValueError("groups: a 2-d index matrix with at least one column")
        if idx.shape[0] and (idx[:, 0] < 0).any():
            raise ValueError("groups: every group needs at least one member")

    @classmethod
    def of(cls, members: Sequence[Sequence[int]]) -> Groups:
        """Groups from lists of row numbers (each non-empty)."""
        width = max((len(m) for m in members), default=1)
        index = np.full((len(members), max(width, 1)), -1, np.int64)
        for g, rows in enumerate(members):
            index[g, : len(rows)] = rows
        return cls(index)

    @classmethod
    def from_labels(cls, labels: np.ndarray) -> tuple[Groups, np.ndarray]:
        """One group per distinct label, in order of the sorted labels; returns the groups
        and the labels (group ``g`` is ``labels_out[g]``)."""
        labels = np.asarray(labels)
        uniq, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(uniq))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        index = np.full((len(uniq), int(counts.max(initial=1))), -1, np.int64)
        col = np.arange(len(labels)) - np.repeat(starts, counts)
        index[inverse[order], col] = order
        return cls(index), uniq

    @classmethod
    def singletons(cls, n: int) -> Groups:
        return cls(np.arange(n, dtype=np.int64)[:, None])

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def sizes(self) -> np.ndarray:
        return (self.index >= 0).sum(axis=1)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("a zero face vector cannot be compared")
    return v / norms


def templates(vectors: np.ndarray, groups: Groups) -> np.ndarray:
    """Each group's template: the L2-normalised mean of its L2-normalised vectors."""
    unit = _unit(vectors)
    idx = groups.index
    padded = unit[np.maximum(idx, 0)] * (idx >= 0)[..., None]
    return _unit(padded.sum(axis=1))


def fused_face(faces: Sequence[Face], shown: Face) -> Face:
    """One probe face for several faces of one person (a video track's best faces, the
    photos of a same-person search): ``shown`` (its box, landmarks, quality and crop: the
    face a reviewer sees) with the ``template`` of all their vectors as its embedding."""
    if not faces:
        raise ValueError("a fused probe needs at least one face")
    vectors = np.stack([np.asarray(f.embedding, np.float32) for f in faces])
    return replace(shown, embedding=templates(vectors, Groups.of([range(len(faces))]))[0])


def _padded(vectors: np.ndarray, groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    idx = groups.index
    return _unit(vectors)[np.maximum(idx, 0)], idx >= 0


def fused_scores(
    probe_vectors: np.ndarray,
    probes: Groups,
    gallery_vectors: np.ndarray,
    subjects: Groups,
    rule: FusionRule,
    k: int = TOPK,
) -> np.ndarray:
    """The fused score of every probe group against every subject: ``(len(probes),
    len(subjects))`` float32."""
    rule = check_rule(rule)
    if k < 1:
        raise ValueError("k must be at least 1")
    if probe_vectors.shape[-1] != gallery_vectors.shape[-1]:
        raise ValueError(
            f"probe vectors have {probe_vectors.shape[-1]} dimensions, gallery vectors "
            f"{gallery_vectors.shape[-1]}"
        )
    if rule == "template":
        return templates(probe_vectors, probes) @ templates(gallery_vectors, subjects).T
    pv, pmask = _padded(probe_vectors, probes)  # (Q, p, d), (Q, p)
    gv, gmask = _padded(gallery_vectors, subjects)  # (S, m, d), (S, m)
    n_q, p = pmask.shape
    n_s, m = gmask.shape
    out = np.empty((n_q, n_s), np.float32)
    step = max(1, _BLOCK_CELLS // max(1, n_s * p * m))
    g_flat = gv.reshape(n_s * m, -1)
    for start in range(0, n_q, step):
        stop = min(start + step, n_q)
        q = stop - start
        # (q*p, S*m) -> (q, S, p*m): every pair of one probe group and one subject
        pair = (pv[start:stop].reshape(q * p, -1) @ g_flat.T).reshape(q, p, n_s, m)
        valid = pmask[start:stop, :, None, None] & gmask[None, None, :, :]
        pair = np.where(valid, pair, -np.inf).transpose(0, 2, 1, 3).reshape(q, n_s, p * m)
        if rule == "max" or p * m == 1:
            out[start:stop] = pair.max(axis=2)
            continue
        kk = min(k, p * m)
        top = -np.sort(-pair, axis=2)[:, :, :kk]  # best first; padding (-inf) last
        n_valid = (pmask[start:stop].sum(axis=1)[:, None] * gmask.sum(axis=1)[None, :]).clip(max=kk)
        top = np.where(np.isfinite(top), top, 0.0)
        out[start:stop] = top.sum(axis=2) / n_valid
    return out


def top_subjects(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best subjects of each row of ``scores`` (fused scores, probes x subjects):
    (scores, subject positions), best first."""
    n = scores.shape[1]
    k = min(k, n)
    if k == 0:
        empty = np.zeros((scores.shape[0], 0))
        return empty.astype(scores.dtype), empty.astype(np.int64)
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(n), (scores.shape[0], 1))
    part_s = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_s, axis=1, kind="stable")
    return np.take_along_axis(part_s, order, axis=1), np.take_along_axis(part, order, axis=1)


def subject_scores(
    probe_vectors: np.ndarray,
    gallery_vectors: np.ndarray,
    subject_labels: np.ndarray,
    rule: FusionRule = DEFAULT_RULE,
    k: int = TOPK,
) -> tuple[np.ndarray, np.ndarray]:
    """One probe (one or more vectors of the same person) against a gallery whose faces are
    grouped by ``subject_labels`` (one label per gallery vector; a face without a subject
    gets a label of its own): (labels, fused scores), best subject first."""
    probe_vectors = np.atleast_2d(probe_vectors)
    if len(probe_vectors) == 0:
        raise ValueError("a probe needs at least one face vector")
    if len(subject_labels) != len(gallery_vectors):
        raise ValueError("one subject label per gallery vector")
    if len(gallery_vectors) == 0:
        return np.asarray(subject_labels)[:0], np.zeros(0, np.float32)
    subjects, labels = Groups.from_labels(np.asarray(subject_labels))
    scores = fused_scores(
        probe_vectors, Groups.of([range(len(probe_vectors))]), gallery_vectors, subjects, rule, k
    )[0]
    order = np.argsort(-scores, kind="stable")
    return labels[order], scores[order]
