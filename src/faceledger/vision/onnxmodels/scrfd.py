"""SCRFD face detectors (InsightFace ``det_10g``, ``det_2.5g``, ...) on ONNX Runtime.

The image is letterboxed into the network input as InsightFace does (resized to fit, aspect
kept, pasted top-left on black), normalised ``(x - 127.5) / 128`` in RGB, and each stride's
outputs are decoded: anchor centres sit on the stride grid (``anchors`` per location), box
outputs are distances to the left/top/right/bottom edges and keypoint outputs offsets from
the centre, both in stride units. Boxes scoring at least ``score_threshold`` go through
NMS at ``nms_threshold`` and are mapped back to the original image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image

from faceledger.types import BBox, Detection
from faceledger.vision.onnxmodels.graph import (
    DETECTION,
    ModelInfo,
    ModelRouterError,
    create_session,
    inspect_model,
)

DEFAULT_INPUT_SIZE = (640, 640)
INPUT_MEAN = 127.5
INPUT_STD = 128.0


# Detection carries ``kps`` (ArcFace-order keypoints) itself; the old name stays an alias.
KeypointDetection = Detection


def distance2bbox(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Anchor centres (n, 2) and (left, top, right, bottom) distances -> (n, 4) x1y1x2y2."""
    return np.concatenate([points - distance[:, 0:2], points + distance[:, 2:4]], axis=1)


def distance2kps(points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Anchor centres (n, 2) and (n, 2k) offsets -> (n, k, 2) points."""
    return points[:, None, :] + distance.reshape(len(distance), distance.shape[1] // 2, 2)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression (InsightFace's, with its +1 pixel areas)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return keep


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """Fit ``image`` into ``size`` (w, h) keeping its aspect, top-left on black.

    Returns the canvas and the x and y scale factors from the image to the canvas.
    """
    in_w, in_h = size
    h, w = image.shape[:2]
    if h / w > in_h / in_w:
        new_h = in_h
        new_w = max(1, int(new_h * w / h))
    else:
        new_w = in_w
        new_h = max(1, int(new_w * h / w))
    canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    if (new_w, new_h) == (w, h):
        canvas[:h, :w] = image
    else:
        resized = Image.fromarray(np.ascontiguousarray(image)).resize(
            (new_w, new_h), Image.Resampling.BILINEAR
        )
        canvas[:new_h, :new_w] = np.asarray(resized)
    return canvas, new_w / w, new_h / h


class ScrfdDetector:
    """A :class:`~faceledger.vision.detection.Detector` for an SCRFD ONNX graph."""

    name = "scrfd"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        threads: int | None = None,
        input_size: int | tuple[int, int] | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        min_face: int = 0,
        info: ModelInfo | None = None,
    ) -> None:
        self.info = info if info is not None else inspect_model(path)
        if self.info.task != DETECTION:
            raise ModelRouterError(
                f"{self.info.path.name} is not a detection model: {'; '.join(self.info.reasons)}"
            )
        wanted = (input_size, input_size) if isinstance(input_size, int) else input_size
        fixed = self.info.input_size
        if fixed is not None:
            if wanted is not None and tuple(wanted) != fixed:
                raise ModelRouterError(
                    f"{self.info.path.name} has a fixed {fixed[0]}x{fixed[1]} input; "
                    f"it cannot run at {wanted[0]}x{wanted[1]}"
                )
            self.input_size = fixed
        else:
            self.input_size = (
                cast("tuple[int, int]", tuple(wanted)) if wanted is not None else DEFAULT_INPUT_SIZE
            )
        top = self.info.strides[-1]
        if self.input_size[0] % top or self.input_size[1] % top:
            raise ModelRouterError(
                f"detector input size {self.input_size[0]}x{self.input_size[1]} must be a "
                f"multiple of {top}"
            )
        self.model_path = Path(path)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_face = min_face
        self.device = device
        self._session = create_session(self.model_path, device, threads)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.providers: list[str] = list(self._session.get_providers())
        self._centres: dict[tuple[int, int, int], np.ndarray] = {}

    def __repr__(self) -> str:
        w, h = self.input_size
        return f"ScrfdDetector({self.model_path.name}, {w}x{h})"

    def _anchor_centres(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._centres:
            ys, xs = np.mgrid[:height, :width]
            centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
            self._centres[key] = np.repeat(centres, self.info.num_anchors, axis=0)
        return self._centres[key]

    def raw_detect(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Scores (n,), boxes (n, 4) and keypoints (n, 5, 2) above threshold, after NMS, in
        the coordinates of the network-sized ``canvas``."""
        blob = (canvas.astype(np.float32) - INPUT_MEAN) / INPUT_STD
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        outs = self._session.run(self._outputs, {self._input: blob})
        in_h, in_w = canvas.shape[:2]
        fmc = len(self.info.strides)
        all_scores, all_boxes, all_kps = [], [], []
        for idx, stride in enumerate(self.info.strides):
            height, width = in_h // stride, in_w // stride
            centres = self._anchor_centres(height, width, stride)
            scores = np.asarray(outs[idx], dtype=np.float32).reshape(-1)
            if scores.size != len(centres):
                raise RuntimeError(
                    f"{self.model_path.name}: stride {stride} gave {scores.size} scores for a "
                    f"{in_w}x{in_h} input; expected {len(centres)}"
                )
            hit = np.nonzero(scores >= self.score_threshold)[0]
            boxes = np.asarray(outs[idx + fmc], dtype=np.float32).reshape(-1, 4)[hit] * stride
            all_scores.append(scores[hit])
            all_boxes.append(distance2bbox(centres[hit], boxes))
            if self.info.use_kps:
                kps = np.asarray(outs[idx + 2 * fmc], dtype=np.float32).reshape(-1, 10)[hit]
                all_kps.append(distance2kps(centres[hit], kps * stride))
        scores = np.concatenate(all_scores)
        boxes = np.concatenate(all_boxes)
        keep = nms(boxes, scores, self.nms_threshold) if len(scores) else []
        kps_out = np.concatenate(all_kps)[keep] if self.info.use_kps else None
        return scores[keep], boxes[keep], kps_out

    def detect(self, image: np.ndarray) -> list[Detection]:
        canvas, sx, sy = letterbox(image, self.input_size)
        scores, boxes, kpss = self.raw_detect(canvas)
        h, w = image.shape[:2]
        scale = np.array([sx, sy], dtype=np.float32)
        found: list[Detection] = []
        for i, score in enumerate(scores):
            x1, y1 = boxes[i, :2] / scale
            x2, y2 = boxes[i, 2:] / scale
            box = BBox(
                max(0, round(float(x1))),
                max(0, round(float(y1))),
                min(w, round(float(x2))),
                min(h, round(float(y2))),
            )
            if box.width <= 0 or box.height <= 0 or min(box.width, box.height) < self.min_face:
                continue
            kps = (kpss[i] / scale).astype(np.float32) if kpss is not None else None
            found.append(
                KeypointDetection(bbox=box, score=float(score), detector=self.name, kps=kps)
            )
        return found
