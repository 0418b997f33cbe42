"""dlib's ResNet descriptor converted to ONNX: equivalence with dlib, cache, providers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import need, need_lfw, not_here
from faceledger.vision.convert import dlib_onnx
from faceledger.vision.convert.dlib_onnx import cached_resnet_onnx
from faceledger.vision.embedding.onnx_backend import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxDlibResnetEmbedder,
    select_providers,
)

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb

TOLERANCE = 1e-4


def _lfw_chips(n: int) -> np.ndarray:
    """``n`` aligned 150x150 chips from LFW: first image of each person, largest HOG face."""
    import dlib
    from PIL import Image

    from faceledger.types import BBox, Detection
    from faceledger.vision.embedding.dlib_backend import dlib_chip
    from faceledger.vision.models import model_path

    lfw = need_lfw()
    detector = dlib.get_frontal_face_detector()
    landmarker = dlib.shape_predictor(str(model_path("landmarks5")))
    chips: list[np.ndarray] = []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        images = sorted(person.glob("*.jpg"))
        if not images:
            continue
        image = np.asarray(Image.open(images[0]).convert("RGB"))
        rects = detector(image, 0)
        if len(rects) == 0:
            continue
        rect = max(rects, key=lambda r: r.area())
        shape = landmarker(image, rect)
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        box = BBox(rect.left(), rect.top(), rect.right(), rect.bottom())
        chips.append(dlib_chip(image, Detection(box, 1.0, "hog", landmarks)))
        if len(chips) == n:
            break
    need(len(chips) >= n, f"only {len(chips)} LFW faces found in {lfw}, need {n}")
    return np.stack(chips)


@pytest.fixture(scope="module")
def onnx_embedder(tmp_path_factory: pytest.TempPathFactory) -> OnnxDlibResnetEmbedder:
    return OnnxDlibResnetEmbedder(cache_dir=tmp_path_factory.mktemp("onnx-cache"))


def _check_equivalence(embedder: OnnxDlibResnetEmbedder, n: int) -> None:
    from faceledger.vision.embedding.dlib_backend import DlibResnetEmbedder

    chips = _lfw_chips(n)
    reference = DlibResnetEmbedder().embed_chips(chips)
    converted = embedder.embed_chips(chips)
    assert converted.shape == (n, 128)
    assert converted.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(converted, axis=1), 1.0, atol=1e-5)
    worst = float(np.abs(reference - converted).max())
    print(f"\nmax |dlib - onnx| over {n} LFW faces x 128 components: {worst:.3g}")
    assert worst <= TOLERANCE


def test_equivalence_100_lfw_faces(onnx_embedder: OnnxDlibResnetEmbedder) -> None:
    _check_equivalence(onnx_embedder, 100)


@pytest.mark.slow
def test_equivalence_500_lfw_faces(onnx_embedder: OnnxDlibResnetEmbedder) -> None:
    _check_equivalence(onnx_embedder, 500)


def test_random_chips_match_dlib(onnx_embedder: OnnxDlibResnetEmbedder) -> None:
    """Off-distribution inputs (noise, flat colours) exercise every channel of the input."""
    from faceledger.vision.embedding.dlib_backend import DlibResnetEmbedder

    rng = np.random.default_rng(7)
    chips = rng.integers(0, 256, size=(6, 150, 150, 3), dtype=np.uint8)
    chips[4] = 0
    chips[5] = 255
    reference = DlibResnetEmbedder().embed_chips(chips)
    assert np.abs(reference - onnx_embedder.embed_chips(chips)).max() <= TOLERANCE


def test_embedder_interface(onnx_embedder: OnnxDlibResnetEmbedder) -> None:
    from faceledger.vision.embedding.dlib_backend import DlibResnetEmbedder

    assert onnx_embedder.model_id == DlibResnetEmbedder.model_id == "dlib_resnet_v1"
    assert onnx_embedder.dim == 128
    assert onnx_embedder.backend == "onnx"
    empty = onnx_embedder.embed_chips(np.zeros((0, 150, 150, 3), dtype=np.uint8))
    assert empty.shape == (0, 128) and empty.dtype == np.float32
    with pytest.raises(ValueError):
        onnx_embedder.embed_chips(np.zeros((1, 112, 112, 3), dtype=np.uint8))
    # Batching must not change the result.
    rng = np.random.default_rng(3)
    chips = rng.integers(0, 256, size=(5, 150, 150, 3), dtype=np.uint8)
    whole = onnx_embedder.embed_chips(chips)
    single = np.concatenate([onnx_embedder.embed_chips(chips[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(whole, single, atol=1e-6)


def test_graph_structure_and_flops(onnx_embedder: OnnxDlibResnetEmbedder) -> None:
    import onnx

    model = onnx.load(str(onnx_embedder.model_path))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Conv") == 29
    assert ops.count("Add") == 14  # one per residual block
    assert ops.count("Gemm") == 1
    flops = dlib_onnx.network_flops(model)
    assert 5.0e8 < flops["total"] < 6.0e8  # ~0.54 GFLOP per 150x150 chip


# ---- cache --------------------------------------------------------------------------


class _CountingConvert:
    def __init__(self) -> None:
        self.calls = 0
        self._real = dlib_onnx.convert_resnet

    def __call__(self, dat_path: Path, onnx_path: Path) -> Path:
        self.calls += 1
        return self._real(dat_path, onnx_path)


def test_cache_converts_once_and_detects_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _CountingConvert()
    monkeypatch.setattr(dlib_onnx, "convert_resnet", counter)

    path = cached_resnet_onnx(tmp_path)
    assert counter.calls == 1
    assert path.is_file()
    sidecar = json.loads((tmp_path / (path.name + dlib_onnx.SIDECAR_SUFFIX)).read_text())
    assert sidecar["onnx_sha256"] == dlib_onnx._sha256_file(path)
    good = path.read_bytes()
    mtime = path.stat().st_mtime_ns

    assert cached_resnet_onnx(tmp_path) == path
    assert counter.calls == 1  # second call: no reconversion
    assert path.stat().st_mtime_ns == mtime

    # Flip one byte in the middle of the weights: detected, reconverted, repaired.
    corrupted = bytearray(good)
    corrupted[len(corrupted) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    assert cached_resnet_onnx(tmp_path) == path
    assert counter.calls == 2
    assert path.read_bytes() == good

    # Truncated file, and a missing sidecar, are also reconverted.
    path.write_bytes(good[:1000])
    cached_resnet_onnx(tmp_path)
    assert counter.calls == 3
    assert path.read_bytes() == good
    (tmp_path / (path.name + dlib_onnx.SIDECAR_SUFFIX)).unlink()
    cached_resnet_onnx(tmp_path)
    assert counter.calls == 4

    # No temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, path.name + dlib_onnx.SIDECAR_SUFFIX]
    )


def test_cache_reconverts_when_source_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faceledger.vision.models import model_path

    counter = _CountingConvert()
    monkeypatch.setattr(dlib_onnx, "convert_resnet", counter)
    source = tmp_path / "resnet.dat"
    source.write_bytes(model_path("resnet").read_bytes())
    cache = tmp_path / "cache"

    cached_resnet_onnx(cache, source)
    cached_resnet_onnx(cache, source)
    assert counter.calls == 1

    # Same network, different bytes (an extra trailing byte is rejected by the parser, so
    # change the stored loss margin instead): the source hash changes -> reconvert.
    data = bytearray(source.read_bytes())
    data[0x14] ^= 0x01  # a mantissa byte of loss_metric's margin
    source.write_bytes(bytes(data))
    cached_resnet_onnx(cache, source)
    assert counter.calls == 2


def test_parser_rejects_other_files(tmp_path: Path) -> None:
    from faceledger.vision.models import model_path

    with pytest.raises(dlib_onnx.DlibFormatError):
        dlib_onnx.parse_dlib_network(model_path("landmarks5").read_bytes())
    data = model_path("resnet").read_bytes()
    with pytest.raises(dlib_onnx.DlibFormatError):
        dlib_onnx.parse_dlib_network(data[: len(data) // 2])
    with pytest.raises(dlib_onnx.DlibFormatError):
        dlib_onnx.parse_dlib_network(data + b"\x00")


# ---- providers ----------------------------------------------------------------------


def test_select_providers_cpu() -> None:
    assert select_providers("cpu", [CPU_PROVIDER]) == [CPU_PROVIDER]
    assert select_providers("cpu", [CUDA_PROVIDER, CPU_PROVIDER]) == [CPU_PROVIDER]


def test_select_providers_cuda_available() -> None:
    available = ["TensorrtExecutionProvider", CUDA_PROVIDER, CPU_PROVIDER]
    assert select_providers("cuda", available) == [CUDA_PROVIDER, CPU_PROVIDER]


def test_select_providers_cuda_missing() -> None:
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        select_providers("cuda", ["AzureExecutionProvider", CPU_PROVIDER])


def test_select_providers_unknown_device() -> None:
    with pytest.raises(ValueError, match="unknown device"):
        select_providers("tpu", [CPU_PROVIDER])


def test_embedder_cuda_without_provider_fails_clearly(tmp_path: Path) -> None:
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers():
        not_here("this onnxruntime has CUDA: the no-CUDA refusal cannot happen")
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        OnnxDlibResnetEmbedder(cache_dir=tmp_path, device="cuda")


def test_unfolded_graph_matches_folded(onnx_embedder: OnnxDlibResnetEmbedder) -> None:
    """Folding the affine layers into the convolutions does not change the network."""
    import onnxruntime as ort

    from faceledger.vision.models import model_path

    net = dlib_onnx.parse_dlib_network(model_path("resnet").read_bytes())
    model = dlib_onnx.build_onnx(net, fold_affine=False)
    assert sum(node.op_type == "Mul" for node in model.graph.node) == 1 + 29  # input + affine
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU_PROVIDER])
    rng = np.random.default_rng(11)
    chips = rng.integers(0, 256, size=(3, 150, 150, 3), dtype=np.uint8)
    (raw,) = session.run([dlib_onnx.OUTPUT_NAME], {dlib_onnx.INPUT_NAME: chips})
    unfolded = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.abs(unfolded - onnx_embedder.embed_chips(chips)).max() <= 1e-5
