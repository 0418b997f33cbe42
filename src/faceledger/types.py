"""Small value types shared by the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BBox:
    """A face box in pixel coordinates of the (orientation-corrected) image."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def as_list(self) -> list[int]:
        return [self.left, self.top, self.right, self.bottom]


@dataclass
class Detection:
    """One face found by a detector, with five landmarks once a landmarker has run.

    ``landmarks`` are five (x, y) points in dlib's 5-point order: outer and inner corner of
    the eye on the image's right (the subject's left eye), outer and inner corner of the
    other eye, nose base. ``kps`` are the five points detectors such as SCRFD give, in
    ArcFace order (image-left eye, image-right eye, nose tip, image-left and image-right
    mouth corner); aligners for ArcFace-family models prefer them.
    """

    bbox: BBox
    score: float
    detector: str
    landmarks: np.ndarray | None = None  # (5, 2) float32, dlib order
    kps: np.ndarray | None = None  # (5, 2) float32, ArcFace order, from the detector
    fallback: bool = False  # True when no detector found a face and a centred box was used


@dataclass
class Face:
    """A detected, aligned and embedded face, ready to store or to search with."""

    detection: Detection
    embedding: np.ndarray  # (dim,) float32, L2-normalised
    model_id: str
    quality: float
    size: int
    sharpness: float
    yaw: float
    crop_jpeg: bytes = b""
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
    """Where a gallery photo came from and on what legal basis it is held."""

    source: str
    legal_basis: str
    original_path: str
    source_url: str | None = None
    captured_at: str | None = None  # ISO 8601 date or datetime
    subject_label: str | None = None
    expires_at: str | None = None
