"""Subjects in search results, and duplicate identities in the gallery (#14 items 1 and 4).

A subject (:mod:`faceledger.gallery.subjects`: the faces of one labelled person, or a face of
its own) is compared by its **template**, the L2-normalised mean of its faces' stored vectors
(:func:`faceledger.search.fusion.templates`, the rule measured best on LFW).

**Search.** Candidate subjects come from an over-fetched face search: the index's
``OVERFETCH x top_k`` best faces (so the index stays the fast path), grouped by subject; each
candidate subject's template is built from *all* its faces, read from the database by id,
and scored against the probe face; the ``top_k`` best subjects are shown. A subject none of
whose faces is among those faces is missed even if its template would score higher:
``benchmarks/subjects_lfw.py`` measures how often on LFW (``search``: 10 of 5,249
probes, all non-mated; no mated probe's best subject missed).

**Calibration by size.** A template's score against a different person's face is not
distributed like a single face's, and depends on how many faces it averages, so each pair of
group sizes has its own fit (:class:`SubjectCalibration`): size classes ``1``, ``2`` and
``3+``; a probe face against a subject is ``1xN``, two subjects ``NxM``. ``1x1`` is the model's
own calibration; the others are fitted on LFW's calibration split as ``faceledger calibrate
lfw`` fits single scores (``faceledger calibrate lfw-subjects``: every pair of disjoint
groups of consecutive photos of two different calibration people), and ship as
``calibration/<model_id>.subjects.json``. The expected false subjects at a score is the
gallery's number of subjects x est. FMR.

**Duplicates.** Every pair of subjects whose templates score at or above the calibrated
threshold at which the whole gallery is expected to hold at most ``max_expected_false``
false pairs (``FMR <= max_expected_false / (S (S - 1) / 2)``, S subjects). Exact: all pairs,
in blocks (S^2/2 products of 128-d vectors: about a minute per 10^10 on one core).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from faceledger.db.store import Store
from faceledger.gallery import subjects as gsubjects
from faceledger.gallery.subjects import Membership, SubjectKey, subject_name
from faceledger.search import calibration, fusion
from faceledger.search.calibration import Calibration, Estimate
from faceledger.search.fusion import Groups
from faceledger.timing import span

SIZE_CLASSES = ("1", "2", "3+")
FITTED_PAIRS = ("1x2", "1x3+", "2x2", "2x3+", "3+x3+")  # 1x1 is the model's calibration
OVERFETCH = 4
SUBJECTS_SUFFIX = ".subjects.json"
DEFAULT_MAX_EXPECTED_FALSE = 0.1
_BLOCK = 2048


def size_class(n: int) -> str:
    return "1" if n <= 1 else "2" if n == 2 else "3+"


def pair_key(a: int, b: int) -> str:
    """The fit for groups of ``a`` and ``b`` faces: ``1x1``, ``1x2``, ... ``3+x3+``."""
    ca, cb = sorted((size_class(a), size_class(b)), key=SIZE_CLASSES.index)
    return f"{ca}x{cb}"


def class_size(cls: str) -> int:
    """The group size a class's fit is made with (``3+``: groups of 3)."""
    return 3 if cls == "3+" else int(cls)


@dataclass
class SubjectCalibration:
    """Template score -> est. FMR for each pair of group sizes (see the module docstring)."""

    model_id: str
    single: Calibration | None
    fits: dict[str, Calibration]
    info: dict[str, Any] = field(default_factory=dict)
    # a fused probe (a video track's faces, several photos of one person) against one gallery
    # face, with every gallery person counted once: "2x1", "3+x1" (see :meth:`for_probe`)
    probe_fits: dict[str, Calibration] = field(default_factory=dict)

    def fit_for(self, a: int, b: int) -> Calibration | None:
        key = pair_key(a, b)
        return self.single if key == "1x1" else self.fits.get(key)

    def for_probe(self, fused: int) -> Calibration | None:
        """The fit behind the est. FMR of a probe of ``fused`` faces against one gallery
        face: the model's own for one face; for more, the probe fit of its size class
        (fitted with each gallery person counted once, as a gallery holds each person's
        photos: :func:`faceledger.evaluation.fusion.fused_impostor_pairs`), else the
        symmetric template fit of the two sizes."""
        if fused <= 1:
            return self.single
        return self.probe_fits.get(f"{size_class(fused)}x1") or self.fit_for(fused, 1)

    def estimate(self, score: float, a: int, b: int) -> Estimate | None:
        fit = self.fit_for(a, b)
        return None if fit is None else fit.estimate(score)

    def threshold_for(self, fmr: float, a: int, b: int) -> float | None:
        fit = self.fit_for(a, b)
        return None if fit is None else fit.threshold_for(fmr)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "rule": "template",
            "fits": {k: v.to_json() for k, v in self.fits.items()},
            **(
                {"probe_fits": {k: v.to_json() for k, v in self.probe_fits.items()}}
                if self.probe_fits
                else {}
            ),
            "info": self.info,
        }

    @property
    def version(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON, the single fit's
        version included."""
        doc = self.to_json() | {"single": self.single.version if self.single else None}
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, doc: dict[str, Any], single: Calibration | None) -> SubjectCalibration:
        fits = {k: Calibration.from_json(v) for k, v in doc["fits"].items()}
        probe = {k: Calibration.from_json(v) for k, v in doc.get("probe_fits", {}).items()}
        return cls(doc["model_id"], single, fits, doc.get("info", {}), probe)


@lru_cache(maxsize=8)
def load_subject_calibration(model_id: str) -> SubjectCalibration | None:
    """The packaged subject calibration of ``model_id`` (its ``1x1`` the model's own), or
    None when the model has no calibration at all."""
    single = calibration.load(model_id)
    try:
        text = (
            resources.files("faceledger.search.calibration")
            .joinpath(f"{model_id}{SUBJECTS_SUFFIX}")
            .read_text()
        )
    except (FileNotFoundError, OSError):
        return None if single is None else SubjectCalibration(model_id, single, {})
    return SubjectCalibration.from_json(json.loads(text), single)


def fit_subject_calibration(
    templates_by_class: dict[str, tuple[np.ndarray, np.ndarray]],
    model_id: str,
    info: dict[str, Any],
    single: Calibration | None,
) -> SubjectCalibration:
    """Fit :data:`FITTED_PAIRS` from templates of each size class (``class -> (templates,
    owner of each)``): the scores of every pair of templates of different owners."""
    fits = {}
    for key in FITTED_PAIRS:
        a, b = key.split("x")
        scores = impostor_template_scores(*templates_by_class[a], *templates_by_class[b], a == b)
        fits[key] = calibration.fit(
            scores, f"{model_id}:template:{key}", info | {"rule": "template", "sizes": key}
        )
    return SubjectCalibration(model_id, single, fits, info)


def impostor_template_scores(
    ta: np.ndarray, oa: np.ndarray, tb: np.ndarray, ob: np.ndarray, same: bool
) -> np.ndarray:
    """Scores of every pair of rows of ``ta`` and ``tb`` with different owners (each
    unordered pair once when ``same``: the two are one set)."""
    out = []
    for start in range(0, len(ta), _BLOCK):
        block = ta[start : start + _BLOCK] @ tb.T
        mask = oa[start : start + _BLOCK, None] != ob[None, :]
        if same:
            rows = np.arange(start, min(start + _BLOCK, len(ta)))
            mask &= np.arange(len(tb))[None, :] > rows[:, None]
        out.append(block[mask])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# -- search ------------------------------------------------------------------------------
@dataclass
class SubjectHit:
    rank: int
    subject: str  # the label, or face:<id> for a subject of one
    label: str | None
    face_ids: list[int]
    size: int
    score: float
    est_fmr: float | None
    est_fmr_extrapolated: bool | None
    expected_false_subjects: float | None
    chance_level: bool = False


def rank_subjects(
    store: Store,
    index: Any,
    probe_vectors: np.ndarray,
    top_k: int,
    calib: SubjectCalibration | None,
    gallery_subjects: int,
    overfetch: int = OVERFETCH,
    fused: list[int] | None = None,
) -> list[list[SubjectHit]]:
    """The ``top_k`` best subjects for each probe vector (see the module docstring);
    ``fused[i]`` is how many faces probe vector ``i`` fuses (1 by default), which picks the
    size-class fit behind its est. FMR."""
    probe_vectors = np.atleast_2d(np.asarray(probe_vectors, np.float32))
    if len(probe_vectors) == 0 or len(index) == 0:
        return [[] for _ in probe_vectors]
    with span("index"):
        _, ids = index.search(probe_vectors, max(1, top_k * overfetch))
    fetched = [[int(i) for i in row if i >= 0] for row in ids]
    with span("db"):
        rel = gsubjects.relabels(store)
        face_subject = gsubjects.face_subjects(store, {f for row in fetched for f in row}, rel)
        labels = {k for k in face_subject.values() if isinstance(k, str)}
        member_ids = gsubjects.members(store, labels, rel)

    def faces_of(key: SubjectKey) -> list[int]:
        return [key] if isinstance(key, int) else member_ids.get(key, [])

    with span("db"):
        vectors = gsubjects.vectors_of(
            store, {f for k in set(face_subject.values()) for f in faces_of(k)}
        )
    out: list[list[SubjectHit]] = []
    sizes = fused or [1] * len(probe_vectors)
    for vec, row, size in zip(probe_vectors, fetched, sizes, strict=True):
        keys = list(dict.fromkeys(face_subject[f] for f in row if f in face_subject))
        groups = [[f for f in faces_of(k) if f in vectors] for k in keys]
        keep = [i for i, g in enumerate(groups) if g]
        keys, groups = [keys[i] for i in keep], [groups[i] for i in keep]
        if not keys:
            out.append([])
            continue
        flat = [f for g in groups for f in g]
        at = {f: i for i, f in enumerate(flat)}
        table = np.stack([vectors[f] for f in flat])
        scores = fusion.fused_scores(
            vec[None, :],
            Groups.singletons(1),
            table,
            Groups.of([[at[f] for f in g] for g in groups]),
            "template",
        )[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        hits = []
        for rank, i in enumerate(order, 1):
            key, g, s = keys[i], groups[i], float(scores[i])
            est = None if calib is None else calib.estimate(s, size, len(g))
            hits.append(
                SubjectHit(
                    rank=rank,
                    subject=subject_name(key),
                    label=key if isinstance(key, str) else None,
                    face_ids=g,
                    size=len(g),
                    score=round(s, 5),
                    est_fmr=None if est is None else est.fmr,
                    est_fmr_extrapolated=None if est is None else est.extrapolated,
                    expected_false_subjects=None if est is None else gallery_subjects * est.fmr,
                )
            )
        out.append(hits)
    return out


def attach_subjects(
    searcher: Any,
    faces: list[Any],
    probe_faces: list[dict[str, Any]],
    top_k: int,
    lead_max_expected_false: float,
    fused: list[int] | None = None,
) -> dict[str, Any]:
    """Give each searched probe face (``probe_faces[i]``, the doc of ``faces[i]``; those
    ``below_min_quality`` get an empty list) its ``subjects``, ranked by template score,
    each marked ``chance_level`` as candidates are; ``fused[i]``: how many faces
    ``faces[i]`` fuses (1 by default). Returns what the record keeps beside: the gallery's
    number of subjects and the subject calibration's version."""
    store = searcher.store
    calib = load_subject_calibration(searcher.analyzer.model_id)
    with span("db"):
        n_subjects = gsubjects.subject_count(store)
    wanted = [i for i, doc in enumerate(probe_faces) if not doc.get("below_min_quality")]
    with span("index"):
        index = searcher.indexes.sync()
    lists = rank_subjects(
        store,
        index,
        np.stack([faces[i].embedding for i in wanted]) if wanted else np.zeros((0, 1)),
        top_k,
        calib,
        n_subjects,
        fused=None if fused is None else [fused[i] for i in wanted],
    )
    for doc in probe_faces:
        doc["subjects"] = []
    for i, hits in zip(wanted, lists, strict=True):
        for h in hits:
            e = h.expected_false_subjects
            h.chance_level = e is not None and e >= lead_max_expected_false
        probe_faces[i]["subjects"] = [asdict(h) for h in hits]
    return {
        "gallery_subjects": n_subjects,
        "subject_calibration": None if calib is None else calib.version,
    }


# -- duplicates --------------------------------------------------------------------------
@dataclass
class DuplicatePair:
    a: SubjectKey
    b: SubjectKey
    a_faces: list[int]
    b_faces: list[int]
    score: float
    est_fmr: float
    est_fmr_extrapolated: bool


@dataclass
class Duplicates:
    subjects: int
    faces: int
    fmr_limit: float  # FMR at which the gallery expects max_expected_false false pairs
    thresholds: dict[str, float]  # score threshold per pair of size classes
    pairs: list[DuplicatePair]


def subject_templates(vectors: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    return fusion.templates(vectors, Groups.of(groups)) if groups else np.zeros((0, 1))


def duplicate_pairs(
    face_ids: np.ndarray,
    vectors: np.ndarray,
    members: Membership,
    calib: SubjectCalibration,
    max_expected_false: float = DEFAULT_MAX_EXPECTED_FALSE,
) -> Duplicates:
    """Pairs of subjects whose templates match at the strict threshold (module docstring).
    ``face_ids``/``vectors``: the gallery's stored vectors (any faces ``members`` lacks are
    left out; subjects whose faces have no vector are skipped)."""
    row_of = {int(f): i for i, f in enumerate(face_ids.tolist())}
    groups, keys = [], []
    for key, rows in zip(members.keys, members.groups(), strict=True):
        g = [row_of[f] for f in members.face_ids[rows].tolist() if f in row_of]
        if g:
            groups.append(g)
            keys.append(key)
    s = len(keys)
    fmr_limit = max_expected_false / max(1.0, s * (s - 1) / 2)
    thresholds: dict[str, float] = {}
    for a in SIZE_CLASSES:
        for b in SIZE_CLASSES[SIZE_CLASSES.index(a) :]:
            t = calib.threshold_for(fmr_limit, class_size(a), class_size(b))
            if t is not None:
                thresholds[f"{a}x{b}"] = t
    pairs: list[DuplicatePair] = []
    if s < 2 or not thresholds:
        return Duplicates(s, len(face_ids), fmr_limit, thresholds, pairs)
    tmpl = subject_templates(vectors, groups)
    sizes = np.array([len(g) for g in groups])
    lowest = min(thresholds.values())
    for start in range(0, s, _BLOCK):
        block = tmpl[start : start + _BLOCK] @ tmpl.T
        block_rows = np.arange(start, min(start + _BLOCK, s))
        mask = (np.arange(s)[None, :] > block_rows[:, None]) & (block >= lowest)
        for bi, j in zip(*np.nonzero(mask), strict=True):
            i = int(block_rows[bi])
            score = float(block[bi, j])
            limit = thresholds.get(pair_key(int(sizes[i]), int(sizes[j])))
            if limit is None or score < limit:
                continue
            est = calib.estimate(score, int(sizes[i]), int(sizes[j]))
            assert est is not None  # a threshold came from the same fit
            pairs.append(
                DuplicatePair(
                    keys[i],
                    keys[int(j)],
                    [int(face_ids[r]) for r in groups[i]],
                    [int(face_ids[r]) for r in groups[int(j)]],
                    round(score, 5),
                    est.fmr,
                    est.extrapolated,
                )
            )
    pairs.sort(key=lambda p: -p.score)
    return Duplicates(s, len(face_ids), fmr_limit, thresholds, pairs)
