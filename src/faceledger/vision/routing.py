"""Model routing: which detector and embedder a pipeline runs, by name or from an operator's
model folder (:mod:`faceledger.vision.onnxmodels`). The one place that knows every backend;
the backends know only the interfaces (:mod:`faceledger.vision.embedding`,
:mod:`faceledger.vision.detection`)."""

from __future__ import annotations

import os

from faceledger.vision.embedding import DEFAULT_EMBEDDER, FLIP_SUFFIX, Embedder, FlipAveraged


def create_embedder(
    name: str = DEFAULT_EMBEDDER,
    threads: int | None = None,
    *,
    model_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    flip: bool = True,
) -> Embedder:
    """An embedder: an operator's ONNX recogniser from ``model_dir`` (picked by its graph,
    see :mod:`faceledger.vision.onnxmodels`), else dlib's ResNet run by ``name``: ``onnx`` (the
    converted network on ONNX Runtime) or ``dlib`` (dlib's own runtime). With ``flip``
    (the default) each face is embedded with its mirror image (:class:`FlipAveraged`)."""
    embedder: Embedder
    if model_dir:
        from faceledger.vision.onnxmodels import load_embedder

        embedder = load_embedder(model_dir, device=device, threads=threads)
    elif name == "onnx":
        from faceledger.vision.embedding.onnx_backend import OnnxDlibResnetEmbedder

        embedder = OnnxDlibResnetEmbedder(device=device, threads=threads)
    elif name == "dlib":
        from faceledger.vision.embedding.dlib_backend import DlibResnetEmbedder

        embedder = DlibResnetEmbedder()
    else:
        raise ValueError(f"unknown embedder {name!r}; choose onnx or dlib (or --model-dir)")
    return FlipAveraged(embedder) if flip else embedder


def create_embedder_for_model(
    model_id: str,
    threads: int | None = None,
    *,
    model_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> Embedder:
    """An embedder producing vectors of ``model_id`` (to search a gallery built with it)."""
    if model_id.startswith("onnx:") and not model_dir:
        raise ValueError(
            f"this gallery was built with {model_id}; pass --model-dir (or set "
            "$FACELEDGER_MODEL_DIR) to the folder holding that model"
        )
    embedder = create_embedder(
        DEFAULT_EMBEDDER,
        threads=threads,
        model_dir=(model_dir if model_id.startswith("onnx:") else None),
        device=device,
        flip=model_id.endswith(FLIP_SUFFIX),
    )
    if embedder.model_id != model_id:
        raise ValueError(
            f"the gallery's vectors come from {model_id!r} but the available model is "
            f"{embedder.model_id!r}; refusing to mix models"
        )
    return embedder
