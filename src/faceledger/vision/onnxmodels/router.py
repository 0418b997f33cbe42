"""Load a folder of operator-supplied ONNX face models: each file is recognised by its graph
(:mod:`faceledger.vision.onnxmodels.graph`) and the detector and embedder built from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from faceledger.vision.onnxmodels.arcface import ArcFaceEmbedder
from faceledger.vision.onnxmodels.graph import (
    DETECTION,
    RECOGNITION,
    UNKNOWN,
    ModelInfo,
    ModelRouterError,
    inspect_models,
)
from faceledger.vision.onnxmodels.scrfd import ScrfdDetector


def _pick(infos: list[ModelInfo], task: str, where: Path) -> ModelInfo | None:
    found = [i for i in infos if i.task == task]
    if len(found) > 1:
        names = ", ".join(i.path.name for i in found)
        raise ModelRouterError(
            f"{where}: {len(found)} {task} models ({names}); keep one in the folder"
        )
    return found[0] if found else None


def route_model_dir(path: str | os.PathLike[str]) -> tuple[ModelInfo | None, ModelInfo | None]:
    """The (detection, recognition) models in ``path`` (a folder or one file), not loaded.

    Raises :class:`ModelRouterError` for an empty folder, an unknown graph, two models of one
    task, or a folder with neither.
    """
    where = Path(path)
    infos = inspect_models(where)
    if not infos:
        raise ModelRouterError(f"{where}: no .onnx files in this folder")
    unknown = [i for i in infos if i.task == UNKNOWN]
    if unknown:
        detail = "; ".join(f"{i.path.name}: {', '.join(i.reasons)}" for i in unknown)
        raise ModelRouterError(f"unsupported ONNX model(s) in {where}: {detail}")
    det_info, rec_info = _pick(infos, DETECTION, where), _pick(infos, RECOGNITION, where)
    if det_info is None and rec_info is None:
        found = ", ".join(f"{i.path.name} ({i.task})" for i in infos)
        raise ModelRouterError(
            f"{where}: no face detector or recogniser among the models found ({found})"
        )
    return det_info, rec_info


def _detector(info: ModelInfo, device: str, threads: int | None, **kwargs: Any) -> ScrfdDetector:
    return ScrfdDetector(info.path, device=device, threads=threads, info=info, **kwargs)


def _embedder(info: ModelInfo, device: str, threads: int | None, **kwargs: Any) -> ArcFaceEmbedder:
    return ArcFaceEmbedder(info.path, device=device, threads=threads, info=info, **kwargs)


def load_model_dir(
    path: str | os.PathLike[str],
    device: str = "cpu",
    threads: int | None = None,
    *,
    det_size: int | tuple[int, int] | None = None,
    min_face: int = 0,
    score_threshold: float = 0.5,
    nms_threshold: float = 0.4,
    batch_size: int = 32,
) -> tuple[ScrfdDetector | None, ArcFaceEmbedder | None]:
    """Build the (detector, embedder) the models in ``path`` (a folder or one file) provide.

    Either may be None when the folder lacks that kind of model, never both; see
    :func:`route_model_dir` for the errors.
    """
    det_info, rec_info = route_model_dir(path)
    detector = (
        _detector(
            det_info,
            device,
            threads,
            input_size=det_size,
            min_face=min_face,
            score_threshold=score_threshold,
            nms_threshold=nms_threshold,
        )
        if det_info is not None
        else None
    )
    embedder = (
        _embedder(rec_info, device, threads, batch_size=batch_size)
        if rec_info is not None
        else None
    )
    return detector, embedder


def load_detector(
    path: str | os.PathLike[str],
    device: str = "cpu",
    threads: int | None = None,
    **kwargs: Any,
) -> ScrfdDetector:
    """Just the SCRFD detector of ``path`` (kwargs: input_size, min_face, score_threshold,
    nms_threshold); :class:`ModelRouterError` if it has none."""
    det_info, _ = route_model_dir(path)
    if det_info is None:
        raise ModelRouterError(f"{path}: no SCRFD face detector among its models")
    return _detector(det_info, device, threads, **kwargs)


def load_embedder(
    path: str | os.PathLike[str],
    device: str = "cpu",
    threads: int | None = None,
    **kwargs: Any,
) -> ArcFaceEmbedder:
    """Just the recogniser of ``path`` (kwargs: batch_size); :class:`ModelRouterError` if it
    has none."""
    _, rec_info = route_model_dir(path)
    if rec_info is None:
        raise ModelRouterError(f"{path}: no ArcFace-style recognition model among its models")
    return _embedder(rec_info, device, threads, **kwargs)


def describe(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """JSON-ready inspection of a file or folder (for a ``models inspect`` command)."""
    return [
        {
            "file": str(i.path),
            "task": i.task,
            "used": i.used,
            "sha256": i.sha256,
            "reasons": i.reasons + i.notes,
            "inputs": [t.describe() for t in i.inputs],
            "outputs": [t.describe() for t in i.outputs],
        }
        for i in inspect_models(path)
    ]
