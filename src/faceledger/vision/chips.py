"""Aligned face chips for a reviewer: the chip the embedder itself compares, and where the
five landmarks lie on it.

A side-by-side comparison shows two faces the way the model saw them: each cut and aligned
by the embedder's own :meth:`~faceledger.vision.embedding.Embedder.align` from its five
landmarks, so both chips have the same size, pose and scale. Where a landmark lies on the
chip is *measured*, not re-derived per backend: the same ``align`` call on an image whose
pixels encode their own coordinates tells where every chip pixel came from, and a
least-squares fit of those gives the chip-to-image mapping (dlib's chip extractor and the
ArcFace similarity warp are both affine). Whatever an embedder's alignment does, the
landmarks drawn on its chip are where its chip put them.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from faceledger.types import BBox, Detection

Align = Callable[[np.ndarray, Detection], np.ndarray]

# The coordinate image spans this many face-box sides around the face: wider than any chip
# (dlib's padding 0.25 and ArcFace's template both stay within about twice the box).
_RAMP_SPAN = 5.0
_MIN_FIT_PIXELS = 100


class ChipError(ValueError):
    """An aligned chip could not be cut (no landmarks, or a face outside the image)."""


@dataclass(frozen=True)
class AlignedChip:
    """A face as the embedder aligns it, with its landmarks in chip pixels."""

    pixels: np.ndarray  # (size, size, 3) uint8 RGB
    landmarks: list[list[float]]  # five (x, y) points on the chip, the detection's order
    to_chip: np.ndarray  # 2x3 affine: image pixel (x, y, 1) -> chip pixel

    @property
    def size(self) -> int:
        return int(self.pixels.shape[1])

    def png(self) -> bytes:
        return encode_png(self.pixels)


def detection_for(
    bbox: Sequence[float], landmarks: Sequence[Sequence[float]] | None = None
) -> Detection:
    """A :class:`Detection` from a stored box and its five landmarks (dlib's order), or
    without landmarks for the landmarker to fit."""
    left, top, right, bottom = (round(float(v)) for v in bbox)
    det = Detection(BBox(left, top, right, bottom), 1.0, "stored")
    if landmarks is not None:
        points = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
        if len(points) != 5:
            raise ChipError(f"need five landmarks to align a face, got {len(points)}")
        det.landmarks = points
    return det


def _coordinate_image(
    shape: tuple[int, ...], box: BBox, descending: bool
) -> tuple[np.ndarray, float, float, float]:
    """An image of ``shape`` whose red channel is a ramp in x and green a ramp in y over a
    square of side ``span`` around ``box`` (0..255, or 255..0 when ``descending``), blue 255
    everywhere (outside the image, aligners fill black): (image, x0, y0, span)."""
    h, w = shape[0], shape[1]
    side = max(box.width, box.height, 1)
    span = _RAMP_SPAN * side
    x0 = (box.left + box.right) / 2 - span / 2
    y0 = (box.top + box.bottom) / 2 - span / 2
    xs = np.clip(np.rint((np.arange(w) - x0) / span * 255), 0, 255).astype(np.uint8)
    ys = np.clip(np.rint((np.arange(h) - y0) / span * 255), 0, 255).astype(np.uint8)
    if descending:
        xs, ys = 255 - xs, 255 - ys
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:, :, 0] = xs[None, :]
    img[:, :, 1] = ys[:, None]
    img[:, :, 2] = 255
    return img, x0, y0, span


def _usable(ramp: np.ndarray) -> np.ndarray:
    """Chip pixels that sampled the ramp alone: no black border blended in, not where the
    ramp was clipped, and one pixel in from any pixel that did."""
    r, g = ramp[:, :, 0], ramp[:, :, 1]
    inside = (ramp[:, :, 2] >= 254) & (r > 0) & (r < 255) & (g > 0) & (g < 255)
    keep = inside.copy()
    keep[1:, :] &= inside[:-1, :]
    keep[:-1, :] &= inside[1:, :]
    keep[:, 1:] &= inside[:, :-1]
    keep[:, :-1] &= inside[:, 1:]
    return keep


def chip_to_image(align: Align, shape: tuple[int, ...], detection: Detection) -> np.ndarray:
    """The 2x3 affine mapping chip pixel (u, v, 1) to image pixel (x, y) of the chip that
    ``align`` cuts for ``detection`` from an image of ``shape``, measured (see the module).

    The ramps run once up and once down and the two readings are averaged, so an aligner
    that rounds interpolated values one way (Pillow truncates) biases neither."""
    up_img, x0, y0, span = _coordinate_image(shape, detection.bbox, descending=False)
    down_img = _coordinate_image(shape, detection.bbox, descending=True)[0]
    up = np.asarray(align(up_img, detection))
    down = np.asarray(align(down_img, detection))
    keep = _usable(up) & _usable(down)
    vs, us = np.nonzero(keep)
    if len(us) < _MIN_FIT_PIXELS:
        raise ChipError("the face lies (almost) outside the image; no chip to show")
    level = span / 255
    xs = (up[:, :, 0][keep].astype(np.float64) + 255 - down[:, :, 0][keep]) / 2
    ys = (up[:, :, 1][keep].astype(np.float64) + 255 - down[:, :, 1][keep]) / 2
    design = np.column_stack([us, vs, np.ones(len(us))]).astype(np.float64)
    target = np.column_stack([x0 + xs * level, y0 + ys * level])
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return np.asarray(solution.T, dtype=np.float64)  # (2, 3)


def invert_affine(m: np.ndarray) -> np.ndarray:
    inv = np.empty((2, 3))
    inv[:, :2] = np.linalg.inv(m[:, :2])
    inv[:, 2] = -inv[:, :2] @ m[:, 2]
    return inv


def map_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 2) points through a 2x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.asarray(pts @ m[:, :2].T + m[:, 2])


def aligned_chip(align: Align, image: np.ndarray, detection: Detection) -> AlignedChip:
    """The chip ``align`` (an embedder's own alignment) cuts for ``detection``, which must
    carry its five landmarks, and those landmarks on the chip."""
    if detection.landmarks is None:
        raise ChipError("the face has no landmarks; run the landmarker first")
    pixels = np.asarray(align(image, detection), dtype=np.uint8)
    to_chip = invert_affine(chip_to_image(align, image.shape, detection))
    on_chip = map_points(to_chip, detection.landmarks)
    return AlignedChip(
        pixels=pixels,
        landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in on_chip],
        to_chip=to_chip,
    )


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return buf.getvalue()


def with_landmarks(chip: AlignedChip, scale: int = 2) -> np.ndarray:
    """The chip scaled up ``scale`` times with its landmarks drawn as small rings."""
    from PIL import ImageDraw

    img = Image.fromarray(chip.pixels).resize(
        (chip.size * scale, chip.size * scale), Image.Resampling.LANCZOS
    )
    draw = ImageDraw.Draw(img)
    r = max(2, scale * 2)
    for x, y in chip.landmarks:
        cx, cy = (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(255, 214, 0), width=2)
    return np.asarray(img, dtype=np.uint8)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> np.ndarray:
    """Two images of the same height next to each other on a white ground."""
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] + gap :] = right
    return out


def side_by_side_png(
    chips: Sequence[tuple[bytes, Sequence[Sequence[float]]]], scale: int = 2
) -> bytes:
    """Two chips (PNG bytes and their landmarks), scaled up ``scale`` times with the
    landmarks drawn, next to each other: one PNG."""
    drawn = []
    for png, landmarks in chips:
        with Image.open(io.BytesIO(png)) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        chip = AlignedChip(pixels, [list(map(float, p)) for p in landmarks], np.eye(2, 3))
        drawn.append(with_landmarks(chip, scale))
    left, right = drawn
    return encode_png(side_by_side(left, right))
