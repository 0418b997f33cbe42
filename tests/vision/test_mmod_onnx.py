"""dlib's MMOD CNN face detector converted to ONNX (#15 item 3): the same boxes and scores as
dlib's ``cnn_face_detection_model_v1`` on LFW photos and on composed group photos, clear
errors for a damaged model file, the converted model cached, cpu/cuda providers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import need_lfw, not_here
from faceledger.types import Detection
from faceledger.vision.convert import mmod_onnx
from faceledger.vision.convert.dlib_format import DlibFormatError
from faceledger.vision.detection import (
    CnnDetector,
    FallbackDetector,
    OnnxCnnDetector,
    create_detector,
)
from faceledger.vision.detection_onnx import MmodOnnx
from faceledger.vision.embedding.onnx_backend import CPU_PROVIDER, CUDA_PROVIDER
from faceledger.vision.models import model_path

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb

MIN_IOU = 0.95
SCORE_TOLERANCE = 1e-4


def _lfw_photos(n: int, skip: int = 0) -> list[np.ndarray]:
    """The first photo of ``n`` LFW people (sorted by name, after ``skip`` people)."""
    lfw = need_lfw()
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[skip : skip + n]
    return [np.asarray(Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB")) for p in people]


def group_photo(faces: list[np.ndarray], sides: list[int], size: tuple[int, int]) -> np.ndarray:
    """A grey canvas of ``size`` (width, height) with the centre of each LFW photo (where
    its face is) pasted side by side, scaled to ``sides`` px: a photo of several people
    whose faces differ in size."""
    canvas = Image.new("RGB", size, (118, 124, 130))
    x = 10
    for face, side in zip(faces, sides, strict=True):
        crop = Image.fromarray(face).crop((50, 50, 200, 200)).resize((side, side))
        canvas.paste(crop, (x, (size[1] - side) // 2))
        x += side + 12
    return np.asarray(canvas)


def _iou(a: Detection, b: Detection) -> float:
    x0, y0 = max(a.bbox.left, b.bbox.left), max(a.bbox.top, b.bbox.top)
    x1, y1 = min(a.bbox.right, b.bbox.right), min(a.bbox.bottom, b.bbox.bottom)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = a.bbox.width * a.bbox.height + b.bbox.width * b.bbox.height - inter
    return inter / union if union else 0.0


def assert_same_faces(reference: list[Detection], converted: list[Detection]) -> None:
    """Every face dlib finds, the ONNX detector finds (IoU >= 0.95, score within 1e-4),
    and no other."""
    assert len(converted) == len(reference), (reference, converted)
    unmatched = list(converted)
    for ref in reference:
        best = max(unmatched, key=lambda d: _iou(ref, d))
        assert _iou(ref, best) >= MIN_IOU, (ref, best)
        assert abs(ref.score - best.score) <= SCORE_TOLERANCE, (ref, best)
        unmatched.remove(best)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mmod-cache")


@pytest.fixture(scope="module")
def onnx_cnn(cache: Path) -> OnnxCnnDetector:
    return OnnxCnnDetector(cache_dir=cache, threads=2)


@pytest.fixture(scope="module")
def dlib_cnn() -> CnnDetector:
    det = create_detector("cnn-dlib")
    assert isinstance(det, CnnDetector)
    return det


@pytest.fixture(scope="module")
def raw_onnx(cache: Path) -> MmodOnnx:
    return MmodOnnx(cache_dir=cache, threads=2)


def test_same_boxes_and_scores_on_lfw_photos(
    onnx_cnn: OnnxCnnDetector, dlib_cnn: CnnDetector, raw_onnx: MmodOnnx
) -> None:
    """#15 item 3: on LFW photos the ONNX detector (``cnn``, at the pipeline's work scale)
    finds the faces dlib's ``cnn_face_detection_model_v1`` finds (``cnn-dlib``), IoU >=
    0.95, scores within 1e-4; and on the photos as they are, the very same rectangles."""
    import dlib

    photos = _lfw_photos(3)
    for photo in photos:
        reference = dlib_cnn.detect(photo)
        assert reference, "dlib's CNN finds the LFW face"
        assert_same_faces(reference, onnx_cnn.detect(photo))
        assert {d.detector for d in onnx_cnn.detect(photo)} == {"cnn"}

    raw = dlib.cnn_face_detection_model_v1(str(model_path("mmod")))
    photo = photos[0]
    want = [
        ((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), d.confidence)
        for d in raw(photo, 0)
    ]
    got = [(d.rect, d.score) for d in raw_onnx(photo)]
    assert [r for r, _ in got] == [r for r, _ in want]
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=SCORE_TOLERANCE, rtol=0)


def test_same_faces_in_a_composed_group_photo(
    onnx_cnn: OnnxCnnDetector, dlib_cnn: CnnDetector
) -> None:
    """#15 item 3: four LFW faces of different sizes on one canvas: the ONNX detector finds
    each face dlib finds (IoU >= 0.95, scores within 1e-4), and at least three of the four
    placed, so the multi-face path (several windows, non-max suppression) is exercised."""
    sides = [80, 110, 150, 200]
    photo = group_photo(_lfw_photos(4, skip=10), sides, (620, 260))
    reference = dlib_cnn.detect(photo)
    found = onnx_cnn.detect(photo)
    assert_same_faces(reference, found)
    assert len(found) >= 3, found


def test_images_too_small_for_the_pyramid_have_no_faces(raw_onnx: MmodOnnx) -> None:
    """#15 item 3: dlib fails on images of a few pixels (its pyramid does not fit them); the
    ONNX detector returns no face for them and for empty ones, and checks its input."""
    for shape in ((1, 1, 3), (5, 5, 3), (200, 7, 3), (0, 40, 3), (13, 13, 3)):
        assert raw_onnx(np.full(shape, 128, dtype=np.uint8)) == []
    with pytest.raises(ValueError, match="RGB uint8"):
        raw_onnx(np.zeros((50, 50), dtype=np.uint8))


def test_damaged_or_wrong_model_file_gives_a_clear_error(tmp_path: Path) -> None:
    """#15 item 3: a truncated, altered or wrong ``.dat`` is refused with DlibFormatError
    saying what is wrong, whether parsed directly or through the cached conversion."""
    data = model_path("mmod").read_bytes()
    with pytest.raises(DlibFormatError, match="end of file"):
        mmod_onnx.parse_mmod(data[: len(data) // 2])
    with pytest.raises(DlibFormatError, match="trailing bytes"):
        mmod_onnx.parse_mmod(data + b"\x00")
    with pytest.raises(DlibFormatError, match="loss_mmod"):
        mmod_onnx.parse_mmod(model_path("resnet").read_bytes())
    with pytest.raises(DlibFormatError):
        mmod_onnx.parse_mmod(model_path("landmarks5").read_bytes())
    wrong_layer = bytearray(data)
    at = wrong_layer.index(b"con_4")
    wrong_layer[at : at + 5] = b"fc_99"
    with pytest.raises(DlibFormatError, match="con layer version"):
        mmod_onnx.parse_mmod(bytes(wrong_layer))

    damaged = tmp_path / "mmod_human_face_detector.dat"
    damaged.write_bytes(data[:1000])
    with pytest.raises(DlibFormatError):
        MmodOnnx(cache_dir=tmp_path / "cache", dat_path=damaged)
    assert not (tmp_path / "cache" / mmod_onnx.ONNX_FILENAME).exists()


def test_conversion_is_cached_and_checked(tmp_path: Path) -> None:
    """#15 item 3: the converted model is written once with a sidecar of hashes, reused,
    and converted again when the ONNX file is damaged."""
    path = mmod_onnx.cached_mmod_onnx(tmp_path)
    sidecar = json.loads((tmp_path / (path.name + ".sha256.json")).read_text())
    assert sidecar["model_id"] == mmod_onnx.MODEL_ID
    assert sidecar["converter_version"] == mmod_onnx.CONVERTER_VERSION
    stamp = path.stat().st_mtime_ns
    assert mmod_onnx.cached_mmod_onnx(tmp_path) == path
    assert path.stat().st_mtime_ns == stamp
    path.write_bytes(path.read_bytes()[:-10])
    mmod_onnx.cached_mmod_onnx(tmp_path)
    assert path.stat().st_size > 700_000

    import onnx

    model = onnx.load(str(path))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Conv") == 7 and ops.count("Relu") == 6  # affine folded into Conv
    meta = mmod_onnx.read_metadata({p.key: p.value for p in model.metadata_props})
    assert meta["feature_map"] == {"stride": [8, 8], "offset": [14, 14]}
    assert meta["input"]["pyramid_down"] == 6
    assert [(w["width"], w["height"]) for w in meta["mmod"]["detector_windows"]] == [(80, 80)]


def test_create_detector_names_and_devices(cache: Path) -> None:
    """#15 item 3: ``cnn`` is the ONNX runtime (cpu provider, or cuda when asked), dlib's own
    runtime is ``cnn-dlib``; ``hog+cnn`` falls back to the ONNX CNN; dlib's explicit
    upsampling is refused by the ONNX runtime with the way round it."""
    import onnxruntime as ort

    det = create_detector("cnn", device="cpu", threads=1)
    assert isinstance(det, OnnxCnnDetector) and det.providers == [CPU_PROVIDER]
    both = create_detector("hog+cnn")
    assert isinstance(both, FallbackDetector)
    assert [d.name for d in both.detectors] == ["hog", "cnn"]
    assert isinstance(both.detectors[1], OnnxCnnDetector)
    assert create_detector("hog+cnn-dlib").name == "hog+cnn-dlib"
    with pytest.raises(ValueError, match="cnn-dlib"):
        create_detector("cnn", upsample=1)
    with pytest.raises(ValueError, match="unknown detector"):
        create_detector("mmod")
    with pytest.raises(ValueError, match="unknown device"):
        create_detector("cnn", device="tpu")
    if CUDA_PROVIDER in ort.get_available_providers():
        cuda = create_detector("cnn", device="cuda")
        assert isinstance(cuda, OnnxCnnDetector) and cuda.providers[0] == CUDA_PROVIDER
    else:
        with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
            create_detector("cnn", device="cuda")


def test_cuda_runs_the_same_boxes(raw_onnx: MmodOnnx, cache: Path) -> None:
    """#15 item 3: where onnxruntime has CUDA, the detector on the GPU finds the same boxes
    as on the CPU, scores within 1e-4."""
    import onnxruntime as ort

    if CUDA_PROVIDER not in ort.get_available_providers():
        not_here("this onnxruntime has no CUDAExecutionProvider")
    gpu = MmodOnnx(cache_dir=cache, device="cuda")
    photo = group_photo(_lfw_photos(4, skip=10), [80, 110, 150, 200], (620, 260))
    want, got = raw_onnx(photo), gpu(photo)
    assert [d.rect for d in got] == [d.rect for d in want]
    assert max(abs(a.score - b.score) for a, b in zip(got, want, strict=True)) <= 1e-4


@pytest.mark.slow
def test_same_boxes_and_scores_on_100_lfw_photos(
    onnx_cnn: OnnxCnnDetector, dlib_cnn: CnnDetector
) -> None:
    """#15 item 3: on 100 LFW photos at the pipeline's work scale, every face dlib's CNN
    finds, the ONNX CNN finds (IoU >= 0.95, scores within 1e-4), and no other."""
    worst = 0.0
    for photo in _lfw_photos(100, skip=20):
        reference, converted = dlib_cnn.detect(photo), onnx_cnn.detect(photo)
        assert_same_faces(reference, converted)
        pairs = zip(reference, converted, strict=True)
        worst = max([worst, *(abs(a.score - b.score) for a, b in pairs)])
    print(f"\nworst |score dlib - onnx| over 100 LFW photos: {worst:.3g}")
