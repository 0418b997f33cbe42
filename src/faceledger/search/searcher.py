"""Search the gallery with a probe photo: every face in it, ranked candidates for each.

Results are investigative leads for human review, never identifications. Every candidate
carries its cosine score, the calibrated estimated false match rate (``est_fmr``) and the
number of false candidates expected at or above that score in a gallery of this size
(``expected_false_candidates = N x FMR``), so a reviewer can see when a score means little.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from faceledger.db.store import ModelMismatchError, Store
from faceledger.gallery.index import IndexManager
from faceledger.gallery.subjects import subject_count
from faceledger.search import calibration
from faceledger.search.subjects import SubjectCalibration, load_subject_calibration
from faceledger.timing import span
from faceledger.types import Face
from faceledger.vision.analysis import FaceAnalyzer
from faceledger.vision.decode import DEFAULT_MAX_PIXELS, decode_image

LEADS_NOTICE = (
    "Investigative leads only: candidates are not identifications and must be reviewed by a "
    "trained person before any action."
)


@dataclass
class Candidate:
    rank: int
    face_id: int
    score: float
    est_fmr: float | None
    est_fmr_extrapolated: bool | None
    expected_false_candidates: float | None
    quality: float
    bbox: list[int]
    crop_path: str
    image_sha256: str
    image_path: str
    provenance: list[dict[str, Any]]


@dataclass
class ProbeFace:
    face_index: int
    bbox: list[int]
    landmarks: list[list[float]]
    quality: float
    size: int
    sharpness: float
    yaw: float
    candidates: list[Candidate] = field(default_factory=list)


@dataclass
class SearchResult:
    probe_sha256: str
    gallery_faces: int
    model_id: str
    faces: list[ProbeFace]
    notice: str = LEADS_NOTICE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class NoFaceError(Exception):
    """The probe has no detectable face."""


class Searcher:
    def __init__(self, store: Store, analyzer: FaceAnalyzer) -> None:
        gallery_model = store.model_id()
        if gallery_model is not None and gallery_model != analyzer.model_id:
            raise ModelMismatchError(
                f"gallery vectors come from {gallery_model!r} but the embedder is "
                f"{analyzer.model_id!r}; search with the gallery's model"
            )
        self.store = store
        self.analyzer = analyzer
        self.indexes = IndexManager(store)
        self.calibration = calibration.load(analyzer.model_id)

    def warm_up(self) -> None:
        """Load what the first search would otherwise wait for: the vector index (read or
        rebuilt from the database) and the gallery's subject count. Shows nothing."""
        self.indexes.sync()
        subject_count(self.store)

    def calibration_for(self, fused: int) -> calibration.Calibration | SubjectCalibration | None:
        """The calibration behind a probe's est. FMR: the model's own for one face, and for
        a probe fused from ``fused`` faces (the ``template`` of a video track or of several
        photos) the subject calibration, whose probe fit for that size
        (:meth:`~faceledger.search.subjects.SubjectCalibration.for_probe`) gives the est.
        FMR: a fused score is not distributed like a single one. None without one."""
        if fused <= 1:
            return self.calibration
        return load_subject_calibration(self.analyzer.model_id)

    def probe_fit(self, fused: int) -> calibration.Calibration | None:
        """The fit that turns the score of a probe of ``fused`` faces into an est. FMR (in
        :meth:`calibration_for`); None without one."""
        if fused <= 1:
            return self.calibration
        subjects = load_subject_calibration(self.analyzer.model_id)
        return None if subjects is None else subjects.for_probe(fused)

    def search_faces(
        self, faces: list[Face], top_k: int = 10, fused: Sequence[int] | None = None
    ) -> list[ProbeFace]:
        """Each face's ``top_k`` candidates; ``fused[i]`` is how many faces ``faces[i]``
        fuses (1, the default: a single face), which picks its calibration."""
        out: list[ProbeFace] = []
        vecs = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, 1))
        with span("index"):
            index = self.indexes.sync()
            n = len(index)
            scores, ids = index.search(vecs, top_k) if faces and n else (None, None)
        wanted = [] if ids is None else [int(i) for i in ids.ravel() if i >= 0]
        with span("db"):
            records = self.store.candidates(wanted)
        for fi, face in enumerate(faces):
            fit = self.probe_fit(1 if fused is None else fused[fi])
            det = face.detection
            pf = ProbeFace(
                face_index=fi,
                bbox=det.bbox.as_list(),
                landmarks=[] if det.landmarks is None else det.landmarks.tolist(),
                quality=face.quality,
                size=face.size,
                sharpness=round(face.sharpness, 2),
                yaw=round(face.yaw, 3),
            )
            if ids is not None and scores is not None:
                for rank, (score, fid) in enumerate(zip(scores[fi], ids[fi], strict=True), 1):
                    rec = records.get(int(fid))
                    if rec is None:
                        continue  # erased between index and database read
                    est = fit.estimate(float(score)) if fit else None
                    pf.candidates.append(
                        Candidate(
                            rank=rank,
                            face_id=rec.face_id,
                            score=round(float(score), 5),
                            est_fmr=None if est is None else est.fmr,
                            est_fmr_extrapolated=None if est is None else est.extrapolated,
                            expected_false_candidates=None if est is None else n * est.fmr,
                            quality=rec.quality,
                            bbox=rec.bbox,
                            crop_path=str(self.store.data_dir / rec.crop_path),
                            image_sha256=rec.image_sha,
                            image_path=str(self.store.data_dir / rec.stored_path),
                            provenance=rec.provenance,
                        )
                    )
            out.append(pf)
        return out

    def search_bytes(
        self, data: bytes, top_k: int = 10, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> SearchResult:
        import hashlib

        img = decode_image(data, max_pixels=max_pixels)
        faces = self.analyzer.analyze(img.pixels)
        if not faces:
            raise NoFaceError("no face found in the probe photo")
        return SearchResult(
            probe_sha256=hashlib.sha256(data).hexdigest(),
            gallery_faces=len(self.indexes.sync()),
            model_id=self.analyzer.model_id,
            faces=self.search_faces(faces, top_k),
        )
