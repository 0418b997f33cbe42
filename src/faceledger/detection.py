"""Face detectors and the 5-point landmarker.

Detectors implement :class:`Detector`; ``create_detector`` picks one by name. dlib's HOG
frontal detector is the default, dlib's MMOD CNN is the accurate (slow on CPU) option.
Large images are downscaled before detection and the boxes mapped back, so a 12-megapixel
photo costs little more than a 1-megapixel one.
"""

from __future__ import annotations

import math
from typing import Protocol

import dlib
import numpy as np
from PIL import Image

from faceledger.models import model_path
from faceledger.types import BBox, Detection


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an RGB uint8 image, boxes in that image's pixel coordinates."""
        ...


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    side = max(h, w)
    if side <= max_side:
        return image, 1.0
    scale = max_side / side
    small = Image.fromarray(image).resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
    )
    return np.asarray(small), scale


def _auto_upsample(image: np.ndarray, min_face: int) -> int:
    """Upsample so that faces of ``min_face`` px reach the HOG window (80 px)."""
    if min_face >= 80:
        return 0
    return max(0, math.ceil(math.log2(80 / max(min_face, 1))))


class _DlibDetector:
    name = "base"

    def __init__(self, min_face: int = 40, upsample: int | None = None, max_side: int = 1600):
        self.min_face = min_face
        self.upsample = upsample
        self.max_side = max_side

    def _run(self, image: np.ndarray, upsample: int) -> list[tuple[dlib.rectangle, float]]:
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Detection]:
        small, scale = _downscale(image, self.max_side)
        min_face_small = max(1, round(self.min_face * scale))
        upsample = (
            self.upsample if self.upsample is not None else _auto_upsample(small, min_face_small)
        )
        # Never upsample into a huge image: cap the work at about 2.6 MP.
        while upsample > 0 and (small.shape[0] * small.shape[1]) * (4**upsample) > 2_600_000:
            upsample -= 1
        h, w = image.shape[:2]
        found: list[Detection] = []
        for rect, score in self._run(np.ascontiguousarray(small), upsample):
            box = BBox(
                max(0, round(rect.left() / scale)),
                max(0, round(rect.top() / scale)),
                min(w, round(rect.right() / scale)),
                min(h, round(rect.bottom() / scale)),
            )
            if min(box.width, box.height) < self.min_face:
                continue
            found.append(Detection(bbox=box, score=float(score), detector=self.name))
        return found


class HogDetector(_DlibDetector):
    name = "hog"

    def __init__(self, **kwargs: int | None) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._det = dlib.get_frontal_face_detector()

    def _run(self, image: np.ndarray, upsample: int) -> list[tuple[dlib.rectangle, float]]:
        rects, scores, _ = self._det.run(image, upsample, 0.0)
        return list(zip(rects, scores, strict=True))


class CnnDetector(_DlibDetector):
    """dlib's MMOD CNN detector: finds more faces (profile-ish, small, blurred), ~1 s/img."""

    name = "cnn"

    def __init__(self, **kwargs: int | None) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._det = dlib.cnn_face_detection_model_v1(str(model_path("mmod")))

    def _run(self, image: np.ndarray, upsample: int) -> list[tuple[dlib.rectangle, float]]:
        return [(d.rect, d.confidence) for d in self._det(image, upsample)]


class FallbackDetector:
    """Try detectors in order; the first that finds a face wins (e.g. HOG, then CNN)."""

    def __init__(self, detectors: list[Detector]) -> None:
        self.detectors = detectors
        self.name = "+".join(d.name for d in detectors)

    def detect(self, image: np.ndarray) -> list[Detection]:
        for det in self.detectors:
            found = det.detect(image)
            if found:
                return found
        return []


def create_detector(
    name: str = "hog",
    min_face: int = 40,
    upsample: int | None = None,
    max_side: int = 1600,
    *,
    model_dir: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Detector:
    """``hog``, ``cnn`` or ``hog+cnn`` (HOG first, CNN only where HOG found nothing); or the
    SCRFD detector in an operator's ``model_dir`` (see :mod:`faceledger.onnxmodels`)."""
    if model_dir:
        from faceledger.onnxmodels import load_detector

        return load_detector(model_dir, device=device, threads=threads, min_face=min_face)
    kwargs = {"min_face": min_face, "upsample": upsample, "max_side": max_side}
    makers = {"hog": HogDetector, "cnn": CnnDetector}
    parts = name.split("+")
    if not parts or any(p not in makers for p in parts):
        raise ValueError(f"unknown detector {name!r}; choose hog, cnn or hog+cnn")
    dets: list[Detector] = [makers[p](**kwargs) for p in parts]
    return dets[0] if len(dets) == 1 else FallbackDetector(dets)


class Landmarker:
    """dlib's 5-point landmark model (CC0); fills ``Detection.landmarks``."""

    def __init__(self) -> None:
        self._sp = dlib.shape_predictor(str(model_path("landmarks5")))

    def __call__(self, image: np.ndarray, detection: Detection) -> Detection:
        b = detection.bbox
        shape = self._sp(image, dlib.rectangle(b.left, b.top, b.right, b.bottom))
        detection.landmarks = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        return detection


def centred_box(image: np.ndarray, fraction: float = 0.45) -> Detection:
    """A centred square box, used only by evaluation when no detector finds a face.

    Such detections carry ``fallback=True`` and are reported as undetected.
    """
    h, w = image.shape[:2]
    side = round(min(h, w) * fraction)
    left, top = (w - side) // 2, (h - side) // 2
    return Detection(
        bbox=BBox(left, top, left + side, top + side), score=0.0, detector="centre", fallback=True
    )
