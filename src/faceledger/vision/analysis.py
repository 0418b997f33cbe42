"""One image in, every face out: detect, landmark, align, embed, assess, crop.

:class:`FaceAnalyzer` ties a :class:`~faceledger.vision.detection.Detector`, the landmarker and an
:class:`~faceledger.vision.embedding.Embedder` together; ingest workers, search and evaluation all
go through it, so a face is processed the same way wherever it comes from.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from faceledger.timing import span, timed
from faceledger.types import BBox, Detection, Face
from faceledger.vision.detection import Detector, Landmarker, create_detector
from faceledger.vision.embedding import Embedder
from faceledger.vision.quality import assess
from faceledger.vision.routing import create_embedder

HAND = "hand"  # Detection.detector of a face marked by hand
CROP_SIDE = 160
CROP_MARGIN = 0.3


def face_crop_jpeg(image: np.ndarray, detection: Detection, side: int = CROP_SIDE) -> bytes:
    """A JPEG thumbnail of the face box with a margin, for reviewers."""
    h, w = image.shape[:2]
    b = detection.bbox
    mx, my = round(b.width * CROP_MARGIN), round(b.height * CROP_MARGIN)
    box = (max(0, b.left - mx), max(0, b.top - my), min(w, b.right + mx), min(h, b.bottom + my))
    crop = Image.fromarray(image).crop(box)
    crop.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


class FaceAnalyzer:
    def __init__(
        self,
        detector: Detector | None = None,
        embedder: Embedder | None = None,
        with_crops: bool = True,
    ) -> None:
        self.detector = detector or create_detector("hog")
        self.embedder = embedder or create_embedder("dlib")
        self.landmarker = Landmarker()
        self.with_crops = with_crops

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @timed("embed")
    def faces_from_detections(self, image: np.ndarray, detections: list[Detection]) -> list[Face]:
        if not detections:
            return []
        for det in detections:
            self.landmarker(image, det)
        chips = np.stack([self.embedder.align(image, d) for d in detections])
        vectors = self.embedder.embed_chips(chips)
        faces = []
        for det, chip, vec in zip(detections, chips, vectors, strict=True):
            q = assess(det, chip)
            faces.append(
                Face(
                    detection=det,
                    embedding=vec,
                    model_id=self.embedder.model_id,
                    quality=q.score,
                    size=q.size,
                    sharpness=q.sharpness,
                    yaw=q.yaw,
                    crop_jpeg=face_crop_jpeg(image, det) if self.with_crops else b"",
                )
            )
        return faces

    def face_in_box(self, image: np.ndarray, box: list[int]) -> Face:
        """The face a person marked by hand with ``box`` (left, top, right, bottom), where no
        detector found one: the box is the detection (``detector="hand"``); the 5 landmarks
        are fitted inside it (dlib's shape predictor takes any rectangle), then the face is
        aligned, embedded and assessed like a detected one."""
        left, top, right, bottom = box
        det = Detection(bbox=BBox(left, top, right, bottom), score=0.0, detector=HAND)
        return self.faces_from_detections(image, [det])[0]

    def analyze(self, image: np.ndarray) -> list[Face]:
        with span("detect"):
            found = self.detector.detect(image)
        return self.faces_from_detections(image, found)
