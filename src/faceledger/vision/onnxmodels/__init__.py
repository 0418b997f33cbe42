"""Operator-supplied ONNX face models (InsightFace style), recognised by their graphs.

Point :func:`load_model_dir` at a folder holding an SCRFD detector and/or an ArcFace-family
recogniser (e.g. InsightFace's ``buffalo_l``): each ``.onnx`` file's inputs and outputs say
what it is (:func:`inspect_model`), and the matching :class:`ScrfdDetector` and
:class:`ArcFaceEmbedder` are built, with ArcFace 5-point alignment.
"""

from __future__ import annotations

from faceledger.vision.onnxmodels.align import (
    ARCFACE_TEMPLATE,
    DLIB5_TARGETS,
    align_arcface,
    estimate_similarity,
    warp_affine,
)
from faceledger.vision.onnxmodels.arcface import ArcFaceEmbedder, model_id_for
from faceledger.vision.onnxmodels.graph import (
    DETECTION,
    RECOGNITION,
    ModelInfo,
    ModelRouterError,
    inspect_model,
    inspect_models,
)
from faceledger.vision.onnxmodels.router import (
    describe,
    load_detector,
    load_embedder,
    load_model_dir,
    route_model_dir,
)
from faceledger.vision.onnxmodels.scrfd import KeypointDetection, ScrfdDetector

__all__ = [
    "ARCFACE_TEMPLATE",
    "DETECTION",
    "DLIB5_TARGETS",
    "RECOGNITION",
    "ArcFaceEmbedder",
    "KeypointDetection",
    "ModelInfo",
    "ModelRouterError",
    "ScrfdDetector",
    "align_arcface",
    "describe",
    "estimate_similarity",
    "inspect_model",
    "inspect_models",
    "load_detector",
    "load_embedder",
    "load_model_dir",
    "model_id_for",
    "route_model_dir",
    "warp_affine",
]
