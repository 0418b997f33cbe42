"""Operator-supplied ONNX models: routing by graph signature, SCRFD decoding, ArcFace alignment.

No weights are downloaded: the tests build tiny graphs with ``onnx.helper`` that have the
signatures of InsightFace's models and run them in ONNX Runtime.

- ``build_arcface``: input ``input.1`` [N, 3, 112, 112] -> strided Conv -> Relu ->
  GlobalAveragePool -> Gemm -> [N, 512], random fixed weights.
- ``build_scrfd``: det_10g's layout (scores, boxes, keypoints for strides 8/16/32, two anchors
  per location). Each stride's score is a strided Conv that averages a colour-difference
  over one cell: stride 8 fires on cells that are pure red, 16 on pure green, 32 on pure
  blue. Box and keypoint outputs are bias-only 1x1 Convs, i.e. the same planted distances at
  every location. A test paints coloured squares into an image and knows exactly where the
  decoded boxes and keypoints must land in the original image.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from faceledger.types import BBox, Detection
from faceledger.vision.onnxmodels import (
    ARCFACE_TEMPLATE,
    DLIB5_TARGETS,
    ArcFaceEmbedder,
    KeypointDetection,
    ModelRouterError,
    ScrfdDetector,
    align_arcface,
    describe,
    estimate_similarity,
    inspect_model,
    load_detector,
    load_embedder,
    load_model_dir,
    warp_affine,
)
from faceledger.vision.onnxmodels.align import apply_transform
from faceledger.vision.onnxmodels.scrfd import letterbox, nms

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb


STRIDES = (8, 16, 32)
# Planted box distances (left, top, right, bottom) and keypoint offsets, in stride units, for
# anchor 0; anchor 1 scores 0.9x and has a slightly larger box, so NMS must drop it.
BOX = np.array([2.0, 2.5, 2.0, 3.0], dtype=np.float32)
BOX_ANCHOR1 = BOX * 1.1
KPS = np.array(
    [[-0.8, -0.6], [0.8, -0.6], [0.0, 0.4], [-0.6, 1.5], [0.6, 1.5]], dtype=np.float32
).reshape(-1)


# ---------------------------------------------------------------------------- graph builders


def _save(path: Path, nodes, inputs, outputs, inits) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="faceledger-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def arcface_weights(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conv_w = rng.standard_normal((16, 3, 8, 8)).astype(np.float32) * 0.05
    conv_b = rng.standard_normal(16).astype(np.float32) * 0.1
    fc = rng.standard_normal((16, 512)).astype(np.float32)
    return conv_w, conv_b, fc


def build_arcface(
    path: Path, seed: int = 0, batch: int | None = None, mxnet_norm: bool = False
) -> Path:
    """A tiny 'ArcFace-like' recogniser: [N,3,112,112] 'input.1' -> [N,512]."""
    conv_w, conv_b, fc = arcface_weights(seed)
    n = batch if batch is not None else "N"
    nodes = []
    inits = [_init("conv_w", conv_w), _init("conv_b", conv_b), _init("fc_w", fc)]
    x = "input.1"
    if mxnet_norm:  # MXNet exports normalise inside the graph: Sub then Mul first
        inits += [_init("mean", np.float32(127.5)), _init("scale", np.float32(1 / 127.5))]
        nodes += [
            helper.make_node("Sub", [x, "mean"], ["centred"], name="_minus0"),
            helper.make_node("Mul", ["centred", "scale"], ["normed"], name="_mul0"),
        ]
        x = "normed"
    nodes += [
        helper.make_node(
            "Conv",
            [x, "conv_w", "conv_b"],
            ["c"],
            name="conv0",
            kernel_shape=[8, 8],
            strides=[8, 8],
        ),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool0"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten0"),
        helper.make_node("Gemm", ["f", "fc_w"], ["fc1"], name="fc1"),
    ]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [n, 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [n, 512])]
    return _save(path, nodes, inputs, outputs, inits)


def arcface_reference(chips: np.ndarray, seed: int = 0) -> np.ndarray:
    """The tiny recogniser in numpy, on RGB chips normalised (x - 127.5) / 127.5."""
    conv_w, conv_b, fc = arcface_weights(seed)
    x = (chips.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5
    patches = x.reshape(len(x), 3, 14, 8, 14, 8)
    conv = np.einsum("ncyixj,kcij->nkyx", patches, conv_w) + conv_b[None, :, None, None]
    pooled = np.maximum(conv, 0).mean(axis=(2, 3))
    out = pooled @ fc
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def build_classifier(path: Path, side: int = 224, classes: int = 1000) -> Path:
    """An unrelated image classifier: [1,3,side,side] -> [1,classes]."""
    rng = np.random.default_rng(5)
    inits = [
        _init("w", rng.standard_normal((8, 3, 16, 16)).astype(np.float32)),
        _init("fc", rng.standard_normal((8, classes)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[16, 16], strides=[16, 16]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])]
    return _save(path, nodes, inputs, outputs, inits)


def build_scrfd(
    path: Path,
    size: int | None = None,
    colour: bool = True,
    planes: dict[int, tuple[int, float]] | None = None,
    box: np.ndarray = BOX,
    kps: np.ndarray = KPS,
) -> Path:
    """A tiny 'SCRFD-like' detector with det_10g's 9-output layout.

    ``size``: fixed square input (else dynamic H, W like det_10g). ``colour``: stride 8/16/32
    scores fire on pure red/green/blue cells. ``planes``: {stride: (anchor index, score)}
    adds a constant score at one anchor (needs a fixed ``size``).
    """
    h = w = size if size is not None else None
    dims = [1, 3, h if h is not None else "H", w if w is not None else "W"]
    nodes, inits = [], [_init("to_rows_1", np.array([-1, 1], dtype=np.int64))]
    inits += [
        _init("to_rows_4", np.array([-1, 4], dtype=np.int64)),
        _init("to_rows_10", np.array([-1, 10], dtype=np.int64)),
    ]
    outs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    for stride, channel in zip(STRIDES, (0, 1, 2), strict=True):
        k = (size // stride) ** 2 * 2 if size is not None else f"K{stride}"
        weights = np.zeros((2, 3, stride, stride), dtype=np.float32)
        if colour:
            for anchor, gain in enumerate((1.0, 0.9)):
                weights[anchor, :] = -gain / (4 * stride * stride)
                weights[anchor, channel] = gain / (2 * stride * stride)
        inits += [
            _init(f"score_w{stride}", weights),
            _init(f"score_b{stride}", np.zeros(2, np.float32)),
            _init(f"bbox_w{stride}", np.zeros((8, 3, 1, 1), np.float32)),
            _init(f"bbox_b{stride}", np.concatenate([box, box * 1.1]).astype(np.float32)),
            _init(f"kps_w{stride}", np.zeros((20, 3, 1, 1), np.float32)),
            _init(f"kps_b{stride}", np.concatenate([kps, kps]).astype(np.float32)),
        ]
        for kind, kernel, width in (("score", stride, 1), ("bbox", 1, 4), ("kps", 1, 10)):
            name = f"{kind}_{stride}"
            nodes += [
                helper.make_node(
                    "Conv",
                    ["input.1", f"{kind}_w{stride}", f"{kind}_b{stride}"],
                    [f"{name}_map"],
                    kernel_shape=[kernel, kernel],
                    strides=[stride, stride],
                ),
                helper.make_node("Transpose", [f"{name}_map"], [f"{name}_t"], perm=[0, 2, 3, 1]),
            ]
            plane = (planes or {}).get(stride) if kind == "score" else None
            rows = f"{name}_rows" if plane is not None else name
            nodes.append(helper.make_node("Reshape", [f"{name}_t", f"to_rows_{width}"], [rows]))
            if plane is not None:
                assert size is not None, "a constant score plane needs a fixed input size"
                const = np.zeros((int(k), 1), dtype=np.float32)
                const[plane[0], 0] = plane[1]
                inits.append(_init(f"{name}_plane", const))
                nodes.append(helper.make_node("Add", [rows, f"{name}_plane"], [name]))
            outs[kind].append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [k, width]))
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, dims)]
    outputs = outs["score"] + outs["bbox"] + outs["kps"]
    return _save(path, nodes, inputs, outputs, inits)


def build_landmark(path: Path) -> Path:
    """Shaped like InsightFace's 2d106det: [1,3,192,192] -> [1,212]."""
    return build_classifier(path, side=192, classes=212)


# -------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "arcface": build_arcface(d / "w600k_tiny.onnx", seed=0),
        "arcface_b": build_arcface(d / "w600k_tiny_b.onnx", seed=1),
        "arcface_b1": build_arcface(d / "fixed_batch.onnx", seed=0, batch=1),
        "arcface_mx": build_arcface(d / "mxnet_style.onnx", seed=0, mxnet_norm=True),
        "scrfd": build_scrfd(d / "det_tiny.onnx"),
        "scrfd_static": build_scrfd(d / "det_static.onnx", size=320),
        "classifier": build_classifier(d / "resnet_cls.onnx"),
        "landmark": build_landmark(d / "2d106det.onnx"),
    }


def planted_image(w: int, h: int, cells: list[tuple[int, int, int]], input_side: int = 640):
    """A black ``w``x``h`` image with coloured squares that, once letterboxed into the detector
    input, cover exactly the grid cells ``(stride, column, row)`` (plus a thin margin).

    Returns the image and, per square, the planted box and keypoints in original pixels.
    """
    img = np.zeros((h, w, 3), dtype=np.uint8)
    s = input_side / max(w, h)
    new_w, new_h = (
        (input_side, int(input_side * h / w)) if w >= h else (int(input_side * w / h), input_side)
    )
    sx, sy = new_w / w, new_h / h
    expected = []
    for stride, col, row in cells:
        channel = STRIDES.index(stride)
        margin = 0.2 * stride  # in letterboxed pixels: neighbours stay far below threshold
        x0, y0 = col * stride, row * stride
        left, right = (x0 - margin) / sx, (x0 + stride + margin) / sx
        top, bottom = (y0 - margin) / sy, (y0 + stride + margin) / sy
        img[round(top) : round(bottom), round(left) : round(right), channel] = 255
        cx, cy = x0, y0  # SCRFD anchor centres sit on the grid corners
        d = BOX * stride
        box = np.array([(cx - d[0]) / sx, (cy - d[1]) / sy, (cx + d[2]) / sx, (cy + d[3]) / sy])
        pts = (np.array([cx, cy]) + KPS.reshape(5, 2) * stride) / np.array([sx, sy])
        expected.append((box, pts))
    assert abs(s - sx) < 0.01
    return img, expected


def _match(dets: list[Detection], box: np.ndarray) -> KeypointDetection:
    centre = (box[:2] + box[2:]) / 2
    best = min(
        dets,
        key=lambda d: np.hypot(
            (d.bbox.left + d.bbox.right) / 2 - centre[0],
            (d.bbox.top + d.bbox.bottom) / 2 - centre[1],
        ),
    )
    assert isinstance(best, KeypointDetection)
    return best


# ---------------------------------------------------------------------------------- router


def test_router_classifies_recogniser(models):
    info = inspect_model(models["arcface"])
    assert info.task == "recognition", info.reasons
    assert info.dim == 512 and info.input_size == (112, 112)
    assert (info.input_mean, info.input_std) == (127.5, 127.5)
    assert any("112x112" in r for r in info.reasons)
    mx = inspect_model(models["arcface_mx"])
    assert mx.task == "recognition" and (mx.input_mean, mx.input_std) == (0.0, 1.0)


def test_router_classifies_scrfd(models):
    for key, size in (("scrfd", None), ("scrfd_static", (320, 320))):
        info = inspect_model(models[key])
        assert info.task == "detection", info.reasons
        assert info.strides == (8, 16, 32) and info.num_anchors == 2 and info.use_kps
        assert info.input_size == size
    assert inspect_model(models["landmark"]).task == "landmark"


def test_router_rejects_unrelated_graphs(models, tmp_path):
    info = inspect_model(models["classifier"])
    assert info.task == "unknown"
    text = " ".join(info.reasons)
    assert "224x224" in text and "1 outputs" in text

    # two inputs: not a face model at all
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4])
    adder = _save(
        tmp_path / "adder.onnx", [helper.make_node("Add", ["a", "b"], ["c"])], [a, b], [c], []
    )
    assert "2 inputs" in " ".join(inspect_model(adder).reasons)

    # a file that is not ONNX at all
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model\xff" * 10)
    with pytest.raises(ModelRouterError, match=r"junk\.onnx is not a readable ONNX model"):
        inspect_model(junk)

    # an unknown graph in a model folder is refused with its reasons
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "resnet_cls.onnx").write_bytes(models["classifier"].read_bytes())
    (folder / "w600k.onnx").write_bytes(models["arcface"].read_bytes())
    with pytest.raises(ModelRouterError, match=r"resnet_cls\.onnx: .*224x224"):
        load_model_dir(folder)


def test_load_model_dir_errors(models, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelRouterError, match=r"no \.onnx files"):
        load_model_dir(empty)
    with pytest.raises(ModelRouterError, match="no such model file or folder"):
        load_model_dir(tmp_path / "missing")
    only_landmarks = tmp_path / "lm"
    only_landmarks.mkdir()
    (only_landmarks / "2d106det.onnx").write_bytes(models["landmark"].read_bytes())
    with pytest.raises(ModelRouterError, match="no face detector or recogniser"):
        load_model_dir(only_landmarks)
    two = tmp_path / "two"
    two.mkdir()
    for key in ("arcface", "arcface_b"):
        (two / models[key].name).write_bytes(models[key].read_bytes())
    with pytest.raises(ModelRouterError, match="2 recognition models"):
        load_model_dir(two)


def test_load_model_dir_builds_working_pair(models, tmp_path):
    folder = tmp_path / "buffalo_tiny"
    folder.mkdir()
    for key in ("scrfd", "arcface", "landmark"):  # the landmark model is skipped
        (folder / models[key].name).write_bytes(models[key].read_bytes())
    detector, embedder = load_model_dir(folder, threads=1)
    assert isinstance(detector, ScrfdDetector) and isinstance(embedder, ArcFaceEmbedder)
    assert embedder.dim == 512 and embedder.backend == "onnx"
    assert embedder.model_id.startswith("onnx:w600k_tiny:")

    img, _ = planted_image(640, 480, [(8, 30, 20)])
    dets = detector.detect(img)
    assert len(dets) == 1
    vecs = embedder.embed_chips(np.stack([embedder.align(img, d) for d in dets]))
    assert vecs.shape == (1, 512) and abs(float(np.linalg.norm(vecs[0])) - 1) < 1e-5

    # a single file works too, and gives just that half
    det_only, emb_none = load_model_dir(folder / models["scrfd"].name)
    assert det_only is not None and emb_none is None
    # one half of a folder, for create_detector / create_embedder
    assert load_embedder(folder, threads=1).model_id == embedder.model_id
    assert load_detector(folder, threads=1, min_face=10).min_face == 10
    with pytest.raises(ModelRouterError, match="no ArcFace-style recognition model"):
        load_embedder(folder / models["scrfd"].name)
    report = {row["file"].rsplit("/", 1)[-1]: row for row in describe(folder)}
    assert {k: v["task"] for k, v in report.items()} == {
        "2d106det.onnx": "landmark",
        "det_tiny.onnx": "detection",
        "w600k_tiny.onnx": "recognition",
    }
    assert not report["2d106det.onnx"]["used"] and report["det_tiny.onnx"]["used"]


# ------------------------------------------------------------------------------- SCRFD


@pytest.mark.parametrize(("w", "h"), [(1000, 700), (700, 1000), (640, 640)])
def test_scrfd_recovers_planted_faces(models, w, h):
    detector = ScrfdDetector(models["scrfd"], threads=1)
    assert detector.input_size == (640, 640)
    # one square per stride; cells chosen inside the letterboxed image area
    cells = (
        [(8, 20, 15), (16, 30, 10), (32, 5, 8)]
        if w >= h
        else [(8, 15, 20), (16, 10, 30), (32, 8, 5)]
    )
    img, expected = planted_image(w, h, cells)
    dets = detector.detect(img)
    assert len(dets) == len(cells), [d.bbox for d in dets]  # NMS dropped every anchor-1 twin
    for box, pts in expected:
        det = _match(dets, box)
        clipped = np.array([max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])])
        assert np.abs(np.array(det.bbox.as_list()) - clipped).max() <= 1.0
        assert det.kps is not None and det.kps.shape == (5, 2)
        np.testing.assert_allclose(det.kps, pts, atol=1e-3)
        assert det.score == pytest.approx(127.5 / 128, abs=0.01)  # a pure-colour cell
        assert det.detector == "scrfd" and det.landmarks is None


def test_scrfd_static_input_and_thresholds(models):
    detector = ScrfdDetector(models["scrfd_static"], threads=1)
    assert detector.input_size == (320, 320)
    with pytest.raises(ModelRouterError, match="fixed 320x320 input"):
        ScrfdDetector(models["scrfd_static"], input_size=640)
    img, expected = planted_image(400, 300, [(16, 10, 6)], input_side=320)
    (det,) = detector.detect(img)
    np.testing.assert_allclose(det.kps, expected[0][1], atol=1e-3)
    assert ScrfdDetector(models["scrfd_static"], score_threshold=0.999).detect(img) == []
    assert ScrfdDetector(models["scrfd_static"], min_face=400).detect(img) == []
    assert detector.detect(np.zeros((50, 90, 3), np.uint8)) == []


def test_letterbox_and_nms():
    canvas, sx, sy = letterbox(np.full((100, 200, 3), 200, np.uint8), (64, 64))
    assert canvas.shape == (64, 64, 3) and (sx, sy) == (64 / 200, 32 / 100)
    assert canvas[:32].min() == 200 and canvas[32:].max() == 0
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.4) == [0, 2]


# --------------------------------------------------------------------------------- align


def test_similarity_estimate_is_exact_and_never_reflects():
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.4, 1.7, np.array([12.0, -30.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = estimate_similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-7)
    mirrored = estimate_similarity(src, dst * np.array([-1.0, 1.0]))
    assert np.linalg.det(mirrored[:, :2]) > 0


def _blob_image(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroids(chip: np.ndarray, near: np.ndarray, r: int = 6) -> np.ndarray:
    grey = chip[..., 0].astype(np.float64)
    out = []
    for x, y in near:
        x0, y0 = round(x), round(y)
        win = grey[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
        ys, xs = np.mgrid[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
        out.append([(win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()])
    return np.array(out)


def test_alignment_puts_keypoints_on_the_template():
    # the template, rotated 25 degrees, scaled 2.6x and moved: a face in a 400x360 image
    angle, scale = np.deg2rad(25), 2.6
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = ARCFACE_TEMPLATE @ (scale * rot).T + np.array([150.3, 20.7])
    img = _blob_image(kps, (360, 400), sigma=2.0 * scale)
    det = KeypointDetection(
        bbox=BBox(0, 0, 400, 360), score=1.0, detector="t", kps=kps.astype(np.float32)
    )
    chip = align_arcface(img, det)
    assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
    found = _centroids(chip, ARCFACE_TEMPLATE)
    assert np.abs(found - ARCFACE_TEMPLATE).max() < 0.25  # well under 1 px: no half-pixel shift

    # without keypoints, dlib's 5 landmarks go to their derived spots on the same chip
    landmarks = DLIB5_TARGETS @ (scale * rot).T + np.array([150.3, 20.7])
    img = _blob_image(landmarks, (360, 400), sigma=2.0 * scale)
    plain = Detection(bbox=BBox(0, 0, 400, 360), score=1.0, detector="t", landmarks=landmarks)
    found = _centroids(align_arcface(img, plain), DLIB5_TARGETS)
    assert np.abs(found - DLIB5_TARGETS).max() < 0.25
    with pytest.raises(ValueError, match="neither keypoints nor landmarks"):
        align_arcface(img, Detection(bbox=BBox(0, 0, 4, 4), score=1.0, detector="t"))


def test_warp_matches_pixel_centre_convention():
    img = np.zeros((10, 10, 3), np.uint8)
    img[4, 6] = 200
    shift = np.array([[1.0, 0.0, -2.0], [0.0, 1.0, 1.0]])  # out = in + (-2, 1)
    out = warp_affine(img, shift, 10)
    assert out[5, 4, 0] == 200 and out.sum() == 600


def test_dlib_targets_sit_where_a_face_has_them():
    # eyes level and left/right as in dlib's template; nose base below the ArcFace nose tip
    assert DLIB5_TARGETS[2, 0] < DLIB5_TARGETS[3, 0] < DLIB5_TARGETS[1, 0] < DLIB5_TARGETS[0, 0]
    left_eye, right_eye = DLIB5_TARGETS[2:4].mean(axis=0), DLIB5_TARGETS[0:2].mean(axis=0)
    assert np.abs(left_eye - ARCFACE_TEMPLATE[0]).max() < 2.5
    assert np.abs(right_eye - ARCFACE_TEMPLATE[1]).max() < 2.5
    assert ARCFACE_TEMPLATE[2, 1] < DLIB5_TARGETS[4, 1] < ARCFACE_TEMPLATE[3, 1]


# ------------------------------------------------------------------------------ embedder


def test_embedder_matches_numpy_reference_and_batches(models):
    rng = np.random.default_rng(7)
    chips = rng.integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    ref = arcface_reference(chips)
    for key, batch in (("arcface", 2), ("arcface_b1", 32), ("arcface_mx", 4)):
        emb = ArcFaceEmbedder(models[key], threads=1, batch_size=batch)
        vecs = emb.embed_chips(chips)
        assert vecs.shape == (5, 512) and vecs.dtype == np.float32
        np.testing.assert_allclose(vecs, ref, atol=2e-5)
    emb = ArcFaceEmbedder(models["arcface"], threads=1)
    assert emb.embed_chips(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 512)
    with pytest.raises(ValueError, match="uint8 chips"):
        emb.embed_chips(np.zeros((1, 150, 150, 3), np.uint8))
    with pytest.raises(ModelRouterError, match="not a recognition model"):
        ArcFaceEmbedder(models["scrfd"])


def test_model_id_names_the_weights(models, tmp_path):
    a = ArcFaceEmbedder(models["arcface"], threads=1)
    b = ArcFaceEmbedder(models["arcface_b"], threads=1)
    assert a.model_id != b.model_id
    assert a.model_id.startswith("onnx:w600k_tiny:") and len(a.model_id.split(":")[2]) == 8
    copy = tmp_path / "w600k_tiny.onnx"
    copy.write_bytes(models["arcface"].read_bytes())
    assert ArcFaceEmbedder(copy, threads=1).model_id == a.model_id  # same bytes, same id


# ------------------------------------------------------------------------------ end to end


def test_face_analyzer_end_to_end_on_lfw(tmp_path, lfw: Path):
    path = lfw / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    import dlib

    from faceledger.vision.analysis import FaceAnalyzer
    from faceledger.vision.models import model_path

    image = np.asarray(Image.open(path).convert("RGB"))
    # Where the face is, from dlib; turned into ArcFace-order keypoints through the alignment
    # geometry (the inverse of the dlib-landmark alignment), and planted in the detector.
    rect = max(dlib.get_frontal_face_detector()(image, 1), key=lambda r: r.area())
    shape = dlib.shape_predictor(str(model_path("landmarks5")))(image, rect)
    dlib5 = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    to_image = estimate_similarity(DLIB5_TARGETS, dlib5)
    kps_true = apply_transform(to_image, ARCFACE_TEMPLATE)
    box_true = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)

    scale = 640 / max(image.shape[:2])  # the letterbox scale of this 250x250 image
    stride, col, row = 32, 10, 10
    centre = np.array([col, row]) * stride
    box = np.concatenate([centre - box_true[:2] * scale, box_true[2:] * scale - centre]) / stride
    kps = ((kps_true * scale - centre) / stride).reshape(-1)
    anchor = (row * (640 // stride) + col) * 2
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    build_scrfd(
        model_dir / "det.onnx",
        size=640,
        colour=False,
        planes={32: (anchor, 0.93)},
        box=box,
        kps=kps,
    )
    build_arcface(model_dir / "w600k_tiny.onnx")
    detector, embedder = load_model_dir(model_dir, threads=1)
    assert detector is not None and embedder is not None

    analyzer = FaceAnalyzer(detector=detector, embedder=embedder)
    faces = analyzer.analyze(image)
    assert len(faces) == 1
    face = faces[0]
    assert face.model_id == embedder.model_id
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-5
    assert face.detection.score == pytest.approx(0.93, abs=1e-6)
    assert np.abs(np.array(face.detection.bbox.as_list()) - box_true).max() <= 1
    np.testing.assert_allclose(face.detection.kps, kps_true, atol=1e-3)
    assert face.detection.landmarks is not None  # the dlib landmarker still ran
    assert face.crop_jpeg[:2] == b"\xff\xd8" and 0 <= face.quality <= 1
    # the chip was cut from the SCRFD keypoints, and the vector is that chip's
    chip = align_arcface(image, face.detection)
    np.testing.assert_allclose(face.embedding, embedder.embed_chips(chip[None])[0], atol=1e-6)
    # faces travel from ingest workers to the parent by pickle; the keypoints must survive
    back = pickle.loads(pickle.dumps(face))
    np.testing.assert_array_equal(back.detection.kps, face.detection.kps)
