"""Probe-side face handling that every interface shares: which face, which region, how good.

These used to live in the HTTP layer; the core (:mod:`faceledger.core`) calls them so that
the CLI, the API and the web UI pick faces, cut regions and warn about quality the same way.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

# A face box larger than this (pixels, any side) is no photo this server decodes.
MAX_BOX_COORD = 1_000_000
# The smallest face box (pixels a side) a face is searched in: below it a face has too few
# pixels for landmarks and a recognisable vector (the quality model rates such faces 0).
MIN_BOX_SIDE = 20


class BadBoxError(ValueError):
    """A face box that is not four finite, ordered, non-negative pixel coordinates."""

    def __init__(self, field_name: str, message: str | None = None) -> None:
        super().__init__(message or f"{field_name} must be 'left,top,right,bottom' in pixels")
        self.field_name = field_name


def parse_box(text: str | None, field_name: str = "face_box") -> list[int] | None:
    """'left,top,right,bottom' in pixels of the (orientation-corrected) photo; None if empty.

    Non-numbers, non-finite values (inf, nan), reversed or empty boxes and coordinates past
    :data:`MAX_BOX_COORD` are refused with :class:`BadBoxError`."""
    if text is None or not text.strip():
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise BadBoxError(field_name) from exc
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise BadBoxError(field_name)
    if max(abs(v) for v in values) > MAX_BOX_COORD:
        raise BadBoxError(field_name, f"{field_name} lies outside any photo this server accepts")
    box = [round(v) for v in values]
    if box[2] <= box[0] or box[3] <= box[1] or min(box) < 0:
        raise BadBoxError(field_name)
    return box


def box_problem(box: Sequence[int], width: int, height: int) -> str | None:
    """Why ``box`` (left, top, right, bottom) cannot be a face in a ``width`` x ``height``
    photo, or None: it must be four ordered coordinates inside the photo, at least
    :data:`MIN_BOX_SIDE` pixels a side."""
    if len(box) != 4:
        return "a face box is four numbers: left,top,right,bottom"
    left, top, right, bottom = box
    if right <= left or bottom <= top:
        return "a face box needs right > left and bottom > top"
    if min(box) < 0 or right > width or bottom > height:
        return f"the face box lies outside the photo ({width}x{height} pixels)"
    if min(right - left, bottom - top) < MIN_BOX_SIDE:
        return (
            f"the face box is {right - left}x{bottom - top} pixels: a face needs at least "
            f"{MIN_BOX_SIDE} pixels a side"
        )
    return None


def contains_centre(outer: Sequence[int], inner: Sequence[int]) -> bool:
    """Whether the centre of box ``inner`` lies inside box ``outer``."""
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def iou(a: Sequence[int], b: Sequence[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def region_around(box: list[int], width: int, height: int, margin: float = 1.0) -> list[int]:
    """The face box grown by ``margin`` box sizes on every side, inside the photo."""
    w, h = box[2] - box[0], box[3] - box[1]
    m = round(max(w, h) * margin)
    return [max(0, box[0] - m), max(0, box[1] - m), min(width, box[2] + m), min(height, box[3] + m)]


def masked_region(
    pixels: np.ndarray, region: list[int], masks: Sequence[list[int]] = ()
) -> np.ndarray:
    """A copy of the region, with the ``masks`` boxes (other people's faces) painted grey."""
    x0, y0, x1, y1 = region
    out = np.array(pixels[y0:y1, x0:x1], copy=True)
    for left, top, right, bottom in masks:
        m = round(0.15 * max(right - left, bottom - top))  # hair and chin too
        ml, mt = max(0, left - m - x0), max(0, top - m - y0)
        mr, mb = min(x1, right + m) - x0, min(y1, bottom + m) - y0
        if mr > ml and mb > mt:
            out[mt:mb, ml:mr] = 128
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_thumbnail(pixels: np.ndarray, size: int) -> bytes:
    """``pixels`` as a JPEG no larger than ``size`` pixels a side."""
    from PIL import Image

    img = Image.fromarray(pixels)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


QUALITY_HINTS = {
    "small": "the face is small: fewer details to compare",
    "blurred": "the face is blurred",
    "turned": "the face is turned away from the camera",
}

WARN_BELOW = 0.6  # a quality factor (0..1, see faceledger.vision.quality) below this is flagged


def quality_warnings(size: int, sharpness: float, yaw: float) -> list[str]:
    """Which of the quality factors (size, sharpness, pose) are low enough to warn about."""
    from faceledger.vision import quality as q

    warnings = []
    if size < q.MIN_SIZE + WARN_BELOW * (q.GOOD_SIZE - q.MIN_SIZE):
        warnings.append("small")
    if sharpness < WARN_BELOW * q.GOOD_SHARPNESS:
        warnings.append("blurred")
    if abs(yaw) > (1 - WARN_BELOW) * q.MAX_YAW:
        warnings.append("turned")
    return warnings
