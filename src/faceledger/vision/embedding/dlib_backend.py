"""dlib's ResNet face descriptor (128-d), run by dlib itself: the reference backend."""

from __future__ import annotations

import dlib
import numpy as np

from faceledger.types import Detection
from faceledger.vision.embedding import l2_normalise
from faceledger.vision.models import model_path

MODEL_ID = "dlib_resnet_v1"
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def full_object_detection(detection: Detection) -> dlib.full_object_detection:
    """Rebuild dlib's landmark object from a :class:`Detection`."""
    if detection.landmarks is None:
        raise ValueError("detection has no landmarks; run the landmarker first")
    b = detection.bbox
    rect = dlib.rectangle(int(b.left), int(b.top), int(b.right), int(b.bottom))
    points = dlib.points()
    for x, y in detection.landmarks:
        points.append(dlib.point(round(float(x)), round(float(y))))
    return dlib.full_object_detection(rect, points)


def dlib_chip(image: np.ndarray, detection: Detection) -> np.ndarray:
    """The 150x150 chip dlib's ResNet was trained on (5-point alignment, padding 0.25)."""
    shape = full_object_detection(detection)
    chip = dlib.get_face_chip(np.ascontiguousarray(image), shape, CHIP_SIZE, CHIP_PADDING)
    return np.asarray(chip, dtype=np.uint8)


class DlibResnetEmbedder:
    """dlib's own runtime for ``dlib_face_recognition_resnet_model_v1``."""

    model_id = MODEL_ID
    dim = 128
    backend = "dlib"

    def __init__(self) -> None:
        self._net = dlib.face_recognition_model_v1(str(model_path("resnet")))

    def align(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        return dlib_chip(image, detection)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = [np.ascontiguousarray(c) for c in chips]
        vectors = self._net.compute_face_descriptor(batch)
        return l2_normalise(np.array([np.asarray(v) for v in vectors]))
