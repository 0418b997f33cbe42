"""dlib's MMOD CNN face detector with its network on ONNX Runtime.

The network (``mmod_human_face_detector.dat``, converted by
:mod:`faceledger.vision.convert.mmod_onnx`) runs on ONNX Runtime, on the CPU or CUDA; what
dlib does around it is reproduced here in numpy, rule for rule, so that the boxes and scores
are dlib's (``cnn_face_detection_model_v1``):

* ``input_rgb_image_pyramid<pyramid_down<6>>`` (dlib/dnn/input.h): each channel becomes
  ``(pixel - mean) / 256``; the image and its copies, each 5/6 the size of the one before
  (``floor(5/6 * size)``, down to 5 rows), are tiled into one zero image: a first column of
  tiles top to bottom, then the rest from the bottom right corner upwards
  (``compute_tiled_image_pyramid_details``, dlib/image_transforms/image_pyramid.h, mirrored
  in :func:`tiled_pyramid_layout`). Each tile is a bilinear resize of the one before it, of
  the already normalised floats, with dlib's ``resize_image`` sampling: output pixel
  ``(r, c)`` reads input ``(r * (in_rows - 1) / (out_rows - 1), c * (in_cols - 1) /
  (out_cols - 1))``.
* ``loss_mmod::to_label`` (dlib/dnn/loss.h): every output cell scoring above 0 is a
  detection window (80x80 here) centred on the cell's input position
  (``8 * cell + 14``, ``feature_map_geometry``); the window is mapped to the tile nearest its
  centre and up that many pyramid levels (``p * 6/5 + 0.3`` per level), rounded to whole
  pixels; the windows are taken best score first and one is dropped when it overlaps an
  already kept one by dlib's ``test_box_overlap`` (intersection over the *bounding box* of
  the two above the file's threshold, 0.338, or covering either by more than its percent).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from faceledger.vision.convert.mmod_onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    cached_mmod_onnx,
    read_metadata,
)
from faceledger.vision.embedding.onnx_backend import (
    default_cache_dir,
    open_session,
    select_providers,
)

Rect = tuple[int, int, int, int]  # dlib rectangle: left, top, right, bottom (inclusive)
_U64 = 1 << 64
_MIN_TILE_ROWS = 5  # compute_tiled_image_pyramid_details' min_height


@dataclass(frozen=True)
class MmodDetection:
    """A box in dlib's convention (right and bottom inclusive) and its score."""

    rect: Rect
    score: float


def tiled_pyramid_layout(
    rows: int, cols: int, pyramid_down: int, padding: int, outer_padding: int
) -> tuple[list[Rect], int, int]:
    """dlib's ``compute_tiled_image_pyramid_details``: the tiles (largest first) and the
    tiled image's rows and columns. dlib compares some sizes as unsigned longs; the
    wrap-around is kept (it decides where the first column ends for narrow images). Where
    dlib's layout breaks down (images of a few pixels, on which dlib's own detector fails),
    the pyramid ends early or is empty: no faces."""
    if rows * cols == 0:
        return [], 0, 0
    rate = (pyramid_down - 1.0) / pyramid_down
    sizes = [(cols, rows)]  # (width, height)
    nr, nc = rows, cols
    while True:
        nr, nc = math.floor(rate * nr), math.floor(rate * nc)
        if nr * nc == 0 or nr < _MIN_TILE_ROWS:
            break
        sizes.append((nc, nr))
    w0, h0 = sizes[0]
    total_height = sum(h + padding for _, h in sizes) - 2 * padding
    height = prev_width = 0
    for w, h in sizes:
        room = (w0 - prev_width - padding) % _U64
        if w <= room and ((height - h0) * 2) % _U64 >= (total_height - h0) % _U64:
            break
        height += h + padding
        prev_width = w
    height -= padding
    tiles: list[Rect] = []
    y = outer_padding
    while y < height + outer_padding and len(tiles) < len(sizes):
        w, h = sizes[len(tiles)]
        tiles.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
    if not tiles:
        return [], 0, 0  # too small to tile (dlib itself fails on such images)
    y -= padding
    while len(tiles) < len(sizes):
        w, h = sizes[len(tiles)]
        right, bottom = outer_padding + w0 - 1, y - 1
        tile = (right - (w - 1), bottom - (h - 1), right, bottom)
        if tile[0] < 0 or tile[1] < 0:
            break  # outside the tiled image: dlib fails here, the pyramid ends
        first = tiles[0]
        if max(first[0], tile[0]) <= min(first[2], tile[2]) and max(first[1], tile[1]) <= min(
            first[3], tile[3]
        ):
            break  # it would overlap the full-size image
        tiles.append(tile)
        y -= h + padding
    return tiles, height + 2 * outer_padding, w0 + 2 * outer_padding


def _lerp_indices(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dlib's ``resize_image`` sampling along one axis: lower index, upper index, fraction."""
    scale = (n_in - 1) / max(n_out - 1, 1)
    pos = np.arange(n_out, dtype=np.float64) * scale
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (pos - low).astype(np.float32)


def resize_bilinear(
    src: np.ndarray, rows: int, cols: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Bilinear resize of a (channels, rows, cols) float32 array the way dlib's
    ``resize_image`` does it (corners on corners), into ``out`` when given."""
    r0, r1, fr = _lerp_indices(src.shape[1], rows)
    c0, c1, fc = _lerp_indices(src.shape[2], cols)
    top = src[:, r0, :]
    mixed = src[:, r1, :]
    mixed -= top
    mixed *= fr[None, :, None]
    mixed += top
    left = np.take(mixed, c0, axis=2)
    right = np.take(mixed, c1, axis=2)
    right -= left
    right *= fc
    result: np.ndarray = np.add(left, right, out=out)
    return result


def tiled_pyramid(
    image: np.ndarray,
    mean_rgb: tuple[float, float, float],
    pyramid_down: int,
    padding: int,
    outer_padding: int,
) -> tuple[np.ndarray, list[Rect]]:
    """``input_rgb_image_pyramid::to_tensor`` for one RGB uint8 image: the (1, 3, R, C)
    float32 tensor and its tiles."""
    rows, cols = image.shape[:2]
    tiles, nr, nc = tiled_pyramid_layout(rows, cols, pyramid_down, padding, outer_padding)
    out = np.zeros((1, 3, nr, nc), dtype=np.float32)
    if not tiles:
        return out, tiles
    planes = out[0]
    mean = np.asarray(mean_rgb, dtype=np.float32).reshape(3, 1, 1)
    left, top, right, bottom = tiles[0]
    first = planes[:, top : bottom + 1, left : right + 1]
    np.subtract(np.moveaxis(image, 2, 0), mean, out=first)
    first *= np.float32(1.0 / 256.0)  # exact: a power of two
    for prev, tile in itertools.pairwise(tiles):
        src = planes[:, prev[1] : prev[3] + 1, prev[0] : prev[2] + 1]
        dst = planes[:, tile[1] : tile[3] + 1, tile[0] : tile[2] + 1]
        resize_bilinear(src, dst.shape[1], dst.shape[2], out=dst)
    return out, tiles


def _nearest_tile(tiles: list[Rect], x: int, y: int) -> int:
    """dlib's ``nearest_rect``: the first tile holding the point, else the closest one."""
    best, best_dist = 0, math.inf
    for i, (left, top, right, bottom) in enumerate(tiles):
        if left <= x <= right and top <= y <= bottom:
            return i
        dx = x - min(max(x, left), right)
        dy = y - min(max(y, top), bottom)
        dist = math.sqrt(dx * dx + dy * dy)
        if dist < best_dist:
            best, best_dist = i, dist
    return best


def _round(v: float) -> int:
    """dlib's conversion of a coordinate to a whole pixel: ``floor(v + 0.5)``."""
    return math.floor(v + 0.5)


def window_to_image(
    tiles: list[Rect], pyramid_down: int, cx: float, cy: float, width: int, height: int
) -> Rect:
    """A detection window centred at (cx, cy) of the tiled pyramid, in the image:
    ``centered_drect``, then ``tiled_pyramid_to_image``, then dlib's rounding."""
    half_w, half_h = (width - 1) / 2, (height - 1) / 2
    box = [cx - half_w, cy - half_h, cx + half_w, cy + half_h]
    level = _nearest_tile(tiles, _round((box[0] + box[2]) / 2), _round((box[1] + box[3]) / 2))
    ox, oy = tiles[level][0], tiles[level][1]
    box = [box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy]
    ratio = pyramid_down / (pyramid_down - 1.0)
    for _ in range(level):
        box = [v * ratio + 0.3 for v in box]
    left, top, right, bottom = (_round(v) for v in box)
    return left, top, right, bottom


def _area(r: Rect) -> int:
    w, h = r[2] - r[0] + 1, r[3] - r[1] + 1
    return w * h if w > 0 and h > 0 else 0


def boxes_overlap(a: Rect, b: Rect, iou_thresh: float, covered_thresh: float) -> bool:
    """dlib's ``test_box_overlap`` (dlib/image_processing/box_overlap_testing.h)."""
    inner = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    if inner == 0:
        return False
    outer = _area((min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])))
    return bool(
        inner / outer > iou_thresh
        or inner / _area(a) > covered_thresh
        or inner / _area(b) > covered_thresh
    )


class MmodOnnx:
    """``mmod_human_face_detector`` with its network on ONNX Runtime: call it on an RGB
    uint8 image for dlib's detections (``cnn_face_detection_model_v1(image, 0)``)."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        device: str = "cpu",
        threads: int | None = None,
        dat_path: Path | None = None,
    ) -> None:
        providers = select_providers(device, ort.get_available_providers())
        self.device = device
        self.model_path = cached_mmod_onnx(
            Path(cache_dir) if cache_dir is not None else default_cache_dir(), dat_path
        )
        self._session = open_session(self.model_path, providers, threads)
        self.providers: list[str] = list(self._session.get_providers())
        meta: dict[str, Any] = read_metadata(self._session.get_modelmeta().custom_metadata_map)
        pyr = meta["input"]
        self.mean_rgb: tuple[float, float, float] = tuple(pyr["mean_rgb"])  # type: ignore[assignment]
        self.pyramid_down = int(pyr["pyramid_down"])
        self.padding = int(pyr["padding"])
        self.outer_padding = int(pyr["outer_padding"])
        mmod = meta["mmod"]
        self.windows: list[tuple[int, int]] = [
            (int(w["width"]), int(w["height"])) for w in mmod["detector_windows"]
        ]
        self.nms = (float(mmod["nms_iou_thresh"]), float(mmod["nms_percent_covered_thresh"]))
        geometry = meta["feature_map"]
        self.stride: tuple[int, int] = tuple(geometry["stride"])  # type: ignore[assignment]
        self.offset: tuple[int, int] = tuple(geometry["offset"])  # type: ignore[assignment]
        self._convolutions = [
            [(c["size"][axis], c["stride"][axis], c["padding"][axis]) for c in meta["convolutions"]]
            for axis in (0, 1)
        ]

    def pyramid(self, image: np.ndarray) -> tuple[np.ndarray, list[Rect]]:
        """The network's input for ``image`` and the pyramid's tiles."""
        return tiled_pyramid(
            image, self.mean_rgb, self.pyramid_down, self.padding, self.outer_padding
        )

    def scores(self, tensor: np.ndarray) -> np.ndarray:
        """The network's (1, K, h, w) score maps for a pyramid tensor (empty when the
        tensor is too small for the network to leave any output)."""
        rows, cols = tensor.shape[2:]
        if self._output_size(rows, 0) < 1 or self._output_size(cols, 1) < 1:
            return np.zeros((1, len(self.windows), 0, 0), dtype=np.float32)
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: tensor})
        result: np.ndarray = out
        return result

    def _output_size(self, n: int, axis: int) -> int:
        for size, stride, padding in self._convolutions[axis]:
            n = (n + 2 * padding - size) // stride + 1
        return n

    def __call__(self, image: np.ndarray, adjust_threshold: float = 0.0) -> list[MmodDetection]:
        """dlib's detections in an RGB uint8 (rows, cols, 3) image, best first."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image, got {image.shape} {image.dtype}")
        tensor, tiles = self.pyramid(np.ascontiguousarray(image))
        if not tiles:
            return []
        return self.detections(self.scores(tensor)[0], tiles, adjust_threshold)

    def detections(
        self, scores: np.ndarray, tiles: list[Rect], adjust_threshold: float = 0.0
    ) -> list[MmodDetection]:
        """``loss_mmod::to_label`` for one (K, h, w) score map of a pyramid with ``tiles``."""
        found: list[tuple[float, Rect]] = []
        for k, (width, height) in enumerate(self.windows):
            rows, cols = np.nonzero(scores[k] > adjust_threshold)
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                cy = float(r * self.stride[0] + self.offset[0])
                cx = float(c * self.stride[1] + self.offset[1])
                rect = window_to_image(tiles, self.pyramid_down, cx, cy, width, height)
                found.append((float(scores[k, r, c]), rect))
        found.sort(key=lambda d: d[0], reverse=True)
        kept: list[MmodDetection] = []
        for score, rect in found:
            if any(boxes_overlap(d.rect, rect, *self.nms) for d in kept):
                continue
            kept.append(MmodDetection(rect, score))
        return kept
