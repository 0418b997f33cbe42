from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import lfw_image
from faceledger.vision.detection import create_detector, effective_min_face, work_scale

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb


def test_work_scale_enlarges_small_and_reduces_large_images() -> None:
    assert work_scale(250, 250, 40, 2_000_000) == 2.0
    big = work_scale(3000, 4000, 40, 2_000_000)
    assert big < 1 and 3000 * 4000 * big**2 <= 2_000_001
    assert effective_min_face(250, 250, 40, 2_000_000) == 40
    assert 190 < effective_min_face(3000, 4000, 40, 2_000_000) < 200


def _canvas(face: Image.Image, size: tuple[int, int], face_side: int, at: tuple[int, int]):
    canvas = Image.new("RGB", size, (110, 120, 130))
    canvas.paste(face.resize((face_side, face_side)), at)
    return np.asarray(canvas)


def test_face_in_a_12_megapixel_photo_is_found(lfw: Path) -> None:
    """The face is found where it is; what it costs next to a 2 MP photo is measured by
    benchmarks/detect_timing.py (a benchmark, not a test: timings vary with the machine)."""
    face = Image.open(lfw_image(lfw, "Al_Gore", 1)).convert("RGB")
    big = _canvas(face, (4000, 3000), 1000, (2500, 900))  # LFW face box ~ 45% of the photo
    found_big = create_detector("hog").detect(big)
    assert len(found_big) == 1
    b = found_big[0].bbox
    assert 2500 < (b.left + b.right) / 2 < 3500 and 900 < (b.top + b.bottom) / 2 < 1900


def test_small_faces_are_found_in_small_images(lfw: Path) -> None:
    face = Image.open(lfw_image(lfw, "Al_Gore", 1)).convert("RGB")
    img = _canvas(face, (300, 300), 110, (20, 20))  # the face box is ~50 px
    found = create_detector("hog", min_face=40).detect(img)
    assert len(found) == 1 and 40 <= found[0].bbox.width <= 70
    assert create_detector("hog", min_face=80).detect(img) == []
