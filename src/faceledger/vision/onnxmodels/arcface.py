"""ArcFace-family recognisers (InsightFace ``w600k_r50`` and the like) on ONNX Runtime."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from faceledger.types import Detection
from faceledger.vision.embedding import l2_normalise
from faceledger.vision.onnxmodels.align import align_arcface
from faceledger.vision.onnxmodels.graph import (
    RECOGNITION,
    ModelInfo,
    ModelRouterError,
    create_session,
    inspect_model,
)

DEFAULT_BATCH_SIZE = 32


def model_id_for(info: ModelInfo) -> str:
    """``onnx:<file stem>:<first 8 hex of the file's SHA-256>``: names these exact weights."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", info.path.stem) or "model"
    return f"onnx:{stem}:{info.sha256[:8]}"


class ArcFaceEmbedder:
    """An :class:`~faceledger.vision.embedding.Embedder` for an ArcFace-style ONNX graph.

    Chips are cut by the ArcFace 5-point similarity alignment (SCRFD keypoints when the
    detection has them, dlib's five landmarks otherwise), fed as RGB NCHW float32 with the
    normalisation the router read from the graph, in batches.
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        info: ModelInfo | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.info = info if info is not None else inspect_model(path)
        if self.info.task != RECOGNITION:
            raise ModelRouterError(
                f"{self.info.path.name} is not a recognition model: {'; '.join(self.info.reasons)}"
            )
        assert self.info.input_size is not None and self.info.dim is not None
        self.model_path = Path(path)
        self.model_id = model_id_for(self.info)
        self.dim: int = self.info.dim
        self.chip_size = self.info.input_size[0]
        self.input_mean = self.info.input_mean
        self.input_std = self.info.input_std
        self.device = device
        self._session = create_session(self.model_path, device, threads)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        fixed = self.info.inputs[0].shape[0] if self.info.inputs[0].shape else None
        self.fixed_batch: int | None = fixed
        self.batch_size = fixed if fixed is not None else batch_size
        self.providers: list[str] = list(self._session.get_providers())

    def __repr__(self) -> str:
        return f"ArcFaceEmbedder({self.model_id}, dim={self.dim}, chip={self.chip_size})"

    def align(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        return align_arcface(image, detection, self.chip_size)

    def blob(self, chips: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB chips -> the graph's (n, 3, H, W) float32 input."""
        x = np.asarray(chips, dtype=np.float32).transpose(0, 3, 1, 2)
        return np.ascontiguousarray((x - self.input_mean) / self.input_std, dtype=np.float32)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        chips = np.asarray(chips)
        if len(chips) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        side = self.chip_size
        if chips.dtype != np.uint8 or chips.shape[1:] != (side, side, 3):
            raise ValueError(
                f"expected (n, {side}, {side}, 3) uint8 chips, got {chips.shape} {chips.dtype}"
            )
        out = np.empty((len(chips), self.dim), dtype=np.float32)
        for start in range(0, len(chips), self.batch_size):
            part = chips[start : start + self.batch_size]
            n = len(part)
            if self.fixed_batch is not None and n < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - n, side, side, 3), dtype=np.uint8)
                part = np.concatenate([part, pad])
            (vectors,) = self._session.run([self._output], {self._input: self.blob(part)})
            out[start : start + n] = np.asarray(vectors, dtype=np.float32).reshape(len(part), -1)[
                :n
            ]
        return l2_normalise(out)
