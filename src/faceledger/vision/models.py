"""Where the packaged model files live.

Only the CC0/public-domain files of ``face_recognition_models`` are used: the 5-point
landmarker, the ResNet face descriptor and the MMOD CNN detector. The 68-point model's
licence is non-commercial and faceledger never loads it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_FILES = {
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
    "mmod": "mmod_human_face_detector.dat",
}


def model_path(name: str) -> Path:
    """Path of a packaged dlib model file, located without importing pkg_resources."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the face_recognition_models package is not installed; run `make install`"
        )
    base = Path(next(iter(spec.submodule_search_locations))) / "models"
    path = base / _FILES[name]
    if not path.is_file():
        raise RuntimeError(f"model file missing: {path}")
    return path
