"""Face detectors and the 5-point landmarker.

Detectors implement :class:`Detector`; ``create_detector`` picks one by name. dlib's HOG
frontal detector is the default, dlib's MMOD CNN is the accurate option: ``cnn`` runs its
network on ONNX Runtime (CPU or CUDA, :mod:`faceledger.vision.detection_onnx`), ``cnn-dlib``
in dlib itself (the same boxes, about ten times slower on a CPU).
Each image is resized once before detection so that faces of ``min_face`` pixels reach the
detector's 80-pixel window, within a budget of working pixels (2 MP for HOG, 1 MP for the CNN):
small images are enlarged, large ones reduced, and the boxes mapped back. A 12-megapixel photo
therefore costs no more than a 2-megapixel one; in it, faces from
:func:`effective_min_face` px up are found (about 200 px for 4000x3000).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import dlib
import numpy as np
from PIL import Image

from faceledger.types import BBox, Detection
from faceledger.vision.models import model_path


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces in an RGB uint8 image, boxes in that image's pixel coordinates."""
        ...


WINDOW = 80  # px: the smallest face dlib's HOG and MMOD detectors find at scale 1
# Default smallest face kept (box side, px; eyes about 19 px apart). On 400 LFW photos HOG
# found the same faces at 40 and 48 px, and 48 px costs 16 ms per photo instead of 24.
DEFAULT_MIN_FACE = 48


def work_scale(height: int, width: int, min_face: int, max_work_pixels: int) -> float:
    """The factor to resize an image by before detection.

    Faces of ``min_face`` px must reach the detector's 80 px window (scale 80/min_face), but
    the resized image may not exceed ``max_work_pixels``: a 12-megapixel photo is detected
    at the same cost as a ``max_work_pixels`` one, and then keeps faces of at least
    :func:`effective_min_face` px.
    """
    wanted = WINDOW / max(min_face, 1)
    budget = math.sqrt(max_work_pixels / max(height * width, 1))
    return min(wanted, budget)


def effective_min_face(height: int, width: int, min_face: int, max_work_pixels: int) -> int:
    """The smallest face (box side, px) detected in an image of this size."""
    return max(min_face, math.ceil(WINDOW / work_scale(height, width, min_face, max_work_pixels)))


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-3:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


class _DlibDetector:
    name = "base"
    default_work_pixels = 2_000_000

    def __init__(
        self,
        min_face: int = DEFAULT_MIN_FACE,
        upsample: int | None = None,
        max_work_pixels: int | None = None,
    ) -> None:
        self.min_face = min_face
        self.upsample = upsample  # explicit dlib upsampling: overrides the min_face scale
        self.max_work_pixels = max_work_pixels or self.default_work_pixels

    def _run(self, image: np.ndarray, upsample: int) -> list[tuple[dlib.rectangle, float]]:
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        if self.upsample is not None:
            scale, work, upsample = 1.0, image, self.upsample
        else:
            scale = work_scale(h, w, self.min_face, self.max_work_pixels)
            work, upsample = _resize(image, scale), 0
            scale = work.shape[1] / w  # the exact factor after rounding
        found: list[Detection] = []
        for rect, score in self._run(np.ascontiguousarray(work), upsample):
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
    """dlib's MMOD CNN detector run by dlib (``cnn-dlib``): finds more faces (profile-ish,
    small, blurred); slow on a CPU, so it works on at most 1 MP."""

    name = "cnn-dlib"
    default_work_pixels = 1_000_000

    def __init__(self, **kwargs: int | None) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._det = dlib.cnn_face_detection_model_v1(str(model_path("mmod")))

    def _run(self, image: np.ndarray, upsample: int) -> list[tuple[dlib.rectangle, float]]:
        return [(d.rect, d.confidence) for d in self._det(image, upsample)]


class OnnxCnnDetector(_DlibDetector):
    """dlib's MMOD CNN detector (``cnn``) with its network on ONNX Runtime: the same model
    file, boxes and scores as :class:`CnnDetector`, at the same work scale, on ``device``
    ``"cpu"`` or ``"cuda"``. dlib's explicit ``upsample`` is not offered: ``min_face`` sets
    the scale."""

    name = "cnn"
    default_work_pixels = 1_000_000

    def __init__(
        self,
        min_face: int = DEFAULT_MIN_FACE,
        upsample: int | None = None,
        max_work_pixels: int | None = None,
        *,
        device: str = "cpu",
        threads: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if upsample:
            raise ValueError(
                "the ONNX CNN detector has no explicit upsampling: set min_face (the image is "
                "scaled so that faces of min_face px are found), or use 'cnn-dlib'"
            )
        super().__init__(min_face=min_face, upsample=upsample, max_work_pixels=max_work_pixels)
        from faceledger.vision.detection_onnx import MmodOnnx

        self.mmod = MmodOnnx(cache_dir=cache_dir, device=device, threads=threads)
        self.device = device
        self.providers = self.mmod.providers

    def _run(self, image: np.ndarray, upsample: int) -> list[tuple[dlib.rectangle, float]]:
        return [(dlib.rectangle(*d.rect), d.score) for d in self.mmod(image)]


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
    min_face: int = DEFAULT_MIN_FACE,
    upsample: int | None = None,
    max_work_pixels: int | None = None,
    *,
    model_dir: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> Detector:
    """``hog``, ``cnn`` or ``hog+cnn`` (HOG first, CNN only where HOG found nothing); or the
    SCRFD detector in an operator's ``model_dir`` (see :mod:`faceledger.vision.onnxmodels`).

    ``cnn`` runs on ONNX Runtime on ``device`` with ``threads``; ``cnn-dlib`` (also in
    ``hog+cnn-dlib``) is the same detector run by dlib, for comparison."""
    if model_dir:
        from faceledger.vision.onnxmodels import load_detector

        return load_detector(model_dir, device=device, threads=threads, min_face=min_face)
    kwargs = {"min_face": min_face, "upsample": upsample, "max_work_pixels": max_work_pixels}
    makers: dict[str, Callable[[], Detector]] = {
        "hog": lambda: HogDetector(**kwargs),
        "cnn": lambda: OnnxCnnDetector(
            min_face, upsample, max_work_pixels, device=device, threads=threads
        ),
        "cnn-dlib": lambda: CnnDetector(**kwargs),
    }
    parts = name.split("+")
    if not parts or any(p not in makers for p in parts):
        raise ValueError(
            f"unknown detector {name!r}; choose hog, cnn or hog+cnn (cnn-dlib: dlib's runtime)"
        )
    dets: list[Detector] = [makers[p]() for p in parts]
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
