"""Convert dlib's MMOD CNN face detector to ONNX, reading dlib's own serialisation format.

``mmod_human_face_detector.dat`` is a serialised ``net_type`` from dlib's
``examples/dnn_mmod_face_detection_ex.cpp`` (the network behind
``dlib.cnn_face_detection_model_v1``)::

    loss_mmod<con<1,9,9,1,1, rcon5<rcon5<rcon5<downsampler<
        input_rgb_image_pyramid<pyramid_down<6>>>>>>>>

a fully convolutional net: three 5x5 stride-2 convolutions (16, 32, 32 filters, no padding),
three 5x5 stride-1 ones (45 filters, padded by 2), each followed by affine and relu, then one
9x9 convolution to a single score channel. The file is parsed by
:mod:`faceledger.vision.convert.dlib_format` against :func:`mmod_architecture` slot by slot
and the layers are emitted by the ResNet converter's :func:`emit_layers`.

Only the convolutional part is in the graph: float32 ``(N, 3, H, W)`` in, the already
normalised tiled image pyramid that ``input_rgb_image_pyramid`` builds, and ``(N, K, h, w)``
scores out, one channel per detector window, with dynamic H and W. Building the pyramid and
turning the score map into boxes (threshold, the window's position through the tiles, non-max
suppression) is :mod:`faceledger.vision.detection_onnx`; what it needs from the file (input
means, pyramid rate and paddings, detector windows, the non-max suppression thresholds, and
where an output cell sits in the input) is stored in the model's metadata under
:data:`METADATA_KEY`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from faceledger.vision.convert.dlib_format import (
    ConvParams,
    DlibFormatError,
    DlibNetwork,
    PyramidInputParams,
    mmod_architecture,
    parse_dlib_network,
)
from faceledger.vision.convert.dlib_onnx import (
    ONNX_OPSET,
    GraphBuilder,
    Value,
    _atomic_write,
    cached_onnx,
    emit_layers,
)

CONVERTER_VERSION = 1
INPUT_NAME = "pyramid"
OUTPUT_NAME = "scores"
ONNX_FILENAME = "dlib_mmod_human_face_detector.onnx"
MODEL_ID = "dlib_mmod_human_face_detector"
METADATA_KEY = "faceledger_mmod"
NOMINAL_SIZE = 256  # the graph's H and W are dynamic; shapes are checked at this size


def parse_mmod(data: bytes) -> DlibNetwork:
    """Parse ``mmod_human_face_detector.dat``'s bytes, checked against
    :func:`mmod_architecture`; :class:`DlibFormatError` when they are not that network."""
    net = parse_dlib_network(data, mmod_architecture())
    if net.mmod is None or not isinstance(net.input, PyramidInputParams):
        raise DlibFormatError("not a loss_mmod network over an image pyramid")
    if net.mmod.use_bounding_box_regression:
        raise DlibFormatError("MMOD with bounding box regression is not supported")
    if not net.mmod.assume_image_pyramid:
        raise DlibFormatError("MMOD options without an image pyramid are not supported")
    top = net.layers[-1].params
    if not isinstance(top, ConvParams) or top.weights.shape[0] != len(net.mmod.detector_windows):
        raise DlibFormatError("the last layer's channels do not match the detector windows")
    return net


def feature_map_geometry(net: DlibNetwork) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where output cell (r, c) sits in the input tensor: ``(stride, offset)`` per axis,
    (y, x), so that the cell's centre is ``stride * (r, c) + offset``.

    dlib's ``output_tensor_to_input_tensor`` maps a point down through every convolution
    with ``p * stride - padding + size / 2`` (integer division), the top layer first;
    affine and relu layers keep positions.
    """
    stride, offset = [1, 1], [0, 0]
    for layer in reversed(net.layers):
        p = layer.params
        if not isinstance(p, ConvParams):
            continue
        size = p.weights.shape[2:]
        for axis in (0, 1):
            stride[axis], offset[axis] = (
                p.stride[axis] * stride[axis],
                p.stride[axis] * offset[axis] - p.padding[axis] + size[axis] // 2,
            )
    return (stride[0], stride[1]), (offset[0], offset[1])


def mmod_metadata(net: DlibNetwork) -> dict[str, Any]:
    """What the detector needs from the file besides the weights (stored as JSON)."""
    assert net.mmod is not None and isinstance(net.input, PyramidInputParams)
    stride, offset = feature_map_geometry(net)
    convolutions = [
        {"size": list(p.weights.shape[2:]), "stride": list(p.stride), "padding": list(p.padding)}
        for p in (layer.params for layer in net.layers)
        if isinstance(p, ConvParams)
    ]
    return {
        "model_id": MODEL_ID,
        "input": asdict(net.input),
        "mmod": asdict(net.mmod),
        "feature_map": {"stride": list(stride), "offset": list(offset)},
        "convolutions": convolutions,  # input side first: the output map's size
    }


def build_mmod_onnx(net: DlibNetwork, fold_affine: bool = True) -> onnx.ModelProto:
    """An ONNX model of ``net``'s convolutions: the normalised tiled pyramid
    ``(N, 3, H, W)`` float32 in, ``(N, K, h, w)`` detector-window scores out."""
    if net.mmod is None or not isinstance(net.input, PyramidInputParams):
        raise DlibFormatError("build_mmod_onnx converts a loss_mmod network (see parse_mmod)")
    g = GraphBuilder()
    x = g.node("Identity", [INPUT_NAME], "input")
    cur = emit_layers(g, net, Value(x, (3, NOMINAL_SIZE, NOMINAL_SIZE)), fold_affine)
    if cur.shape[1] < 1 or cur.shape[2] < 1:
        raise DlibFormatError(f"the network leaves no output at {NOMINAL_SIZE} px")
    g.nodes.append(helper.make_node("Identity", [cur.name], [OUTPUT_NAME], name="scores"))
    channels = cur.shape[0]
    graph = helper.make_graph(
        g.nodes,
        MODEL_ID,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", channels, "h", "w"])],
        initializer=g.finish(),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="faceledger.vision.convert.mmod_onnx",
        producer_version=str(CONVERTER_VERSION),
        doc_string=(
            "mmod_human_face_detector converted from dlib's serialisation: the tiled image "
            "pyramid, (pixel - mean) / 256 per channel, planar float32 in; one score map per "
            f"detector window out. Pre- and post-processing parameters: metadata "
            f"{METADATA_KEY!r}."
        ),
    )
    model.ir_version = 8
    helper.set_model_props(
        model, {"model_id": MODEL_ID, METADATA_KEY: json.dumps(mmod_metadata(net))}
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def with_input_size(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    """A copy of ``model`` whose input is fixed at ``(1, 3, height, width)``, so that ONNX
    shape inference (and :func:`~faceledger.vision.convert.dlib_onnx.network_flops`) can
    size every layer for one pyramid."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, height, width), strict=True):
        dim.Clear()
        dim.dim_value = value
    out_dims = fixed.graph.output[0].type.tensor_type.shape.dim
    for dim in out_dims:
        if not dim.HasField("dim_value"):
            dim.Clear()
    return fixed


def convert_mmod(dat_path: Path, onnx_path: Path) -> Path:
    """Convert ``mmod_human_face_detector.dat`` to ONNX at ``onnx_path`` (atomically)."""
    model = build_mmod_onnx(parse_mmod(Path(dat_path).read_bytes()))
    onnx_path = Path(onnx_path)
    _atomic_write(onnx_path, lambda tmp: tmp.write_bytes(model.SerializeToString()))
    return onnx_path


def cached_mmod_onnx(cache_dir: Path, dat_path: Path | None = None) -> Path:
    """The converted detector in ``cache_dir``, (re)converted when it is missing, damaged,
    from another source file or from another converter version (see ``cached_onnx``)."""
    if dat_path is None:
        from faceledger.vision.models import model_path

        dat_path = model_path("mmod")
    return cached_onnx(
        Path(cache_dir) / ONNX_FILENAME,
        Path(dat_path),
        lambda dat, out: convert_mmod(dat, out),
        CONVERTER_VERSION,
        MODEL_ID,
    )


def read_metadata(model_meta: dict[str, str]) -> dict[str, Any]:
    """The :data:`METADATA_KEY` JSON of a converted model's metadata map."""
    raw = model_meta.get(METADATA_KEY)
    if raw is None:
        raise DlibFormatError(f"ONNX model has no {METADATA_KEY!r} metadata: not converted here")
    data = json.loads(raw)
    if not isinstance(data, dict) or data.get("model_id") != MODEL_ID:
        raise DlibFormatError(f"ONNX model's {METADATA_KEY!r} metadata is not an MMOD's")
    return data
