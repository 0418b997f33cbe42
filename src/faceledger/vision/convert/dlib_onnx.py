"""Convert dlib's ResNet face descriptor to ONNX, reading dlib's own serialisation format.

``dlib_face_recognition_resnet_model_v1.dat`` is a serialised ``anet_type`` from dlib's
``examples/dnn_face_recognition_ex.cpp``: a 29-convolution ResNet on 150x150 RGB chips that
ends in a 128-d ``fc_no_bias`` layer under ``loss_metric``. This module parses that file
directly (no dlib import) and emits an equivalent ONNX graph.

How dlib writes a network (``dlib/dnn/core.h``): every layer object serialises its version
number and then its sub-network *before* its own details, so the file holds the versions of
all layers from the loss layer down to the input, then the input layer, then the details of
each computational layer from the input upwards. ``add_tag_layer`` and ``add_skip_layer``
write only a version, so the network's wiring is not in the file: it comes from the
``anet_type`` template, reproduced in :func:`anet_architecture`, and the file is checked
against it slot by slot.

Points where dlib differs from a naive reading, all mirrored here:

* Input (``input_rgb_image_sized``): planar R, G, B; each value is
  ``(pixel - avg_channel) / 256`` with the per-channel means stored in the file.
* Padding: ``con``/``max_pool``/``avg_pool`` pad ``size/2`` only when the stride is 1 and
  pad nothing otherwise, so every stride-2 layer is "valid" with floor division.
* ``add_prev`` adds tensors of different shapes: the output takes the larger size in every
  dimension and the smaller operand is zero-padded at the end (more channels, extra
  bottom/right rows and columns). With 150x150 input this happens in every downsampling
  residual (channel counts differ), and spatially in ``level1``, where the stride-2 branch
  gives 3x3 but the 2x2 average pool gives 4x4.
* ``avg_pool_everything`` is an average over the whole remaining map (2x2 here).
* ``affine`` is the inference form of ``bn_con``: ``y = gamma * x + beta`` per channel
  (a ``bn_con2`` block is converted the way dlib's ``affine_`` constructor does).
* ``fc_no_bias`` multiplies the flattened (C, H, W) input by a (num_inputs, num_outputs)
  row-major matrix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# --------------------------------------------------------------------------------------
# ONNX graph.
from faceledger.vision.convert.dlib_format import (
    AffineParams,
    ConvParams,
    DlibFormatError,
    DlibNetwork,
    FcParams,
    InputParams,
    PoolParams,
    anet_architecture,
    parse_dlib_network,
)

CONVERTER_VERSION = 1
ONNX_OPSET = 17
INPUT_NAME = "chips"
OUTPUT_NAME = "descriptor"
ONNX_FILENAME = "dlib_resnet_v1.onnx"
SIDECAR_SUFFIX = ".sha256.json"
MODEL_ID = "dlib_resnet_v1"


class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._arrays: dict[str, np.ndarray] = {}
        self._count: dict[str, int] = {}

    def name(self, prefix: str) -> str:
        i = self._count.get(prefix, 0)
        self._count[prefix] = i + 1
        return f"{prefix}_{i}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        self._arrays[name] = array
        return name

    def set_const(self, name: str, array: np.ndarray) -> None:
        self._arrays[name] = array

    def get_const(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def node(self, op: str, inputs: list[str], prefix: str, **attrs: Any) -> str:
        out = self.name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def finish(self) -> list[onnx.TensorProto]:
        return [numpy_helper.from_array(a, name) for name, a in self._arrays.items()]


@dataclass
class Value:
    name: str
    shape: tuple[int, int, int]  # (channels, rows, cols) per sample


def _pool_out(size: int, window: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - window) // stride


def emit_layers(g: GraphBuilder, net: DlibNetwork, cur: Value, fold_affine: bool) -> Value:
    """Append ``net``'s layers (bottom up) to ``g``, starting from the input value ``cur``;
    returns the last layer's output. Affine layers are folded into the convolution before
    them where ``fold_affine`` allows it (see :func:`build_onnx`)."""
    tags: dict[int, Value] = {}
    tagged_names: set[str] = set()
    # The most recent Conv whose output is `cur` and is still free to absorb an affine layer.
    last_conv: tuple[str, str, str] | None = None  # (output, weight const, bias const)

    for layer in net.layers:
        kind, p = layer.slot.kind, layer.params
        if kind == "tag":
            tags[layer.slot.args[0]] = cur
            tagged_names.add(cur.name)
            continue
        if kind == "skip":
            cur = tags[layer.slot.args[0]]
            continue
        if kind == "con":
            assert isinstance(p, ConvParams)
            c_in, h, w = cur.shape
            if p.weights.shape[1] != c_in:
                raise DlibFormatError(f"con expects {p.weights.shape[1]} channels, gets {c_in}")
            kh, kw = p.weights.shape[2:]
            w_name = g.const("conv_w", p.weights)
            b_name = g.const("conv_b", p.bias)
            out = g.node(
                "Conv",
                [cur.name, w_name, b_name],
                "conv",
                kernel_shape=[kh, kw],
                strides=list(p.stride),
                pads=[p.padding[0], p.padding[1], p.padding[0], p.padding[1]],
            )
            shape = (
                p.weights.shape[0],
                _pool_out(h, kh, p.stride[0], p.padding[0]),
                _pool_out(w, kw, p.stride[1], p.padding[1]),
            )
            cur = Value(out, shape)
            last_conv = (out, w_name, b_name)
            continue
        if kind == "affine":
            assert isinstance(p, AffineParams)
            if p.gamma.size != cur.shape[0]:
                raise DlibFormatError(f"affine has {p.gamma.size} channels, input {cur.shape[0]}")
            if (
                fold_affine
                and last_conv is not None
                and last_conv[0] == cur.name
                and cur.name not in tagged_names
            ):
                _, w_name, b_name = last_conv
                scale = p.gamma.astype(np.float64)
                folded_w = g.get_const(w_name).astype(np.float64) * scale[:, None, None, None]
                folded_b = g.get_const(b_name).astype(np.float64) * scale + p.beta
                g.set_const(w_name, folded_w.astype(np.float32))
                g.set_const(b_name, folded_b.astype(np.float32))
            else:
                gamma = p.gamma.reshape(1, -1, 1, 1).astype(np.float32)
                beta = p.beta.reshape(1, -1, 1, 1).astype(np.float32)
                out = g.node("Mul", [cur.name, g.const("affine_gamma", gamma)], "affine_mul")
                out = g.node("Add", [out, g.const("affine_beta", beta)], "affine")
                cur = Value(out, cur.shape)
            last_conv = None
            continue
        last_conv = None
        if kind == "relu":
            cur = Value(g.node("Relu", [cur.name], "relu"), cur.shape)
        elif kind in ("max_pool", "avg_pool"):
            assert isinstance(p, PoolParams)
            c, h, w = cur.shape
            if p.size == (0, 0):
                if p.stride != (1, 1) or p.padding != (0, 0):
                    raise DlibFormatError("whole-input pooling with stride/padding")
                op = "GlobalMaxPool" if kind == "max_pool" else "GlobalAveragePool"
                cur = Value(g.node(op, [cur.name], "global_pool"), (c, 1, 1))
                continue
            wh = p.size[0] or h
            ww = p.size[1] or w
            attrs: dict[str, Any] = {
                "kernel_shape": [wh, ww],
                "strides": list(p.stride),
                "pads": [p.padding[0], p.padding[1], p.padding[0], p.padding[1]],
            }
            if kind == "avg_pool":
                # dlib averages over the window's in-bounds part only.
                attrs["count_include_pad"] = 0
                op = "AveragePool"
            else:
                op = "MaxPool"
            out = g.node(op, [cur.name], kind, **attrs)
            shape = (
                c,
                _pool_out(h, wh, p.stride[0], p.padding[0]),
                _pool_out(w, ww, p.stride[1], p.padding[1]),
            )
            cur = Value(out, shape)
        elif kind == "add_prev":
            other = tags[layer.slot.args[0]]
            (c1, h1, w1), (c2, h2, w2) = cur.shape, other.shape
            shape = (max(c1, c2), max(h1, h2), max(w1, w2))
            operands = [_zero_pad_to(g, v, shape) for v in (cur, other)]
            cur = Value(g.node("Add", operands, "add_prev"), shape)
        elif kind == "fc":
            assert isinstance(p, FcParams)
            flat = g.node("Flatten", [cur.name], "flatten", axis=1)
            if p.weights.shape[0] != math.prod(cur.shape):
                raise DlibFormatError(
                    f"fc expects {p.weights.shape[0]} inputs, gets {math.prod(cur.shape)}"
                )
            inputs = [flat, g.const("fc_w", p.weights)]
            if p.bias is not None:
                inputs.append(g.const("fc_b", p.bias))
            out = g.node("Gemm", inputs, "fc")
            cur = Value(out, (p.weights.shape[1], 1, 1))
        else:
            raise DlibFormatError(f"cannot convert layer kind {kind!r}")

    return cur


def build_onnx(net: DlibNetwork, fold_affine: bool = True) -> onnx.ModelProto:
    """An ONNX model equivalent to ``net``: (N, rows, cols, 3) uint8 RGB in, (N, 128) out.

    With ``fold_affine`` every affine layer that directly follows a convolution (and whose
    input is not tagged for reuse) is folded into that convolution's weights and bias.
    """
    if not isinstance(net.input, InputParams):
        raise DlibFormatError("build_onnx converts a network with a fixed-size RGB input")
    g = GraphBuilder()
    rows, cols = net.input.rows, net.input.cols

    # input_rgb_image_sized: HWC uint8 -> planar float, (x - mean) / 256 (exact in float32).
    x = g.node("Cast", [INPUT_NAME], "input_float", to=TensorProto.FLOAT)
    x = g.node("Transpose", [x], "input_planar", perm=[0, 3, 1, 2])
    mean = np.array(net.input.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
    x = g.node("Sub", [x, g.const("input_mean", mean)], "input_centred")
    scale = np.array(1.0 / 256.0, dtype=np.float32)
    x = g.node("Mul", [x, g.const("input_scale", scale)], "input_scaled")
    cur = emit_layers(g, net, Value(x, (3, rows, cols)), fold_affine)

    # Final layer's output is the descriptor.
    g.nodes.append(helper.make_node("Identity", [cur.name], [OUTPUT_NAME], name="descriptor"))
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", rows, cols, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", cur.shape[0]])],
        initializer=g.finish(),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        producer_name="faceledger.vision.convert.dlib_onnx",
        producer_version=str(CONVERTER_VERSION),
        doc_string=(
            "dlib_face_recognition_resnet_model_v1 converted from dlib's serialisation: "
            "150x150 RGB uint8 chips (NHWC) in, raw 128-d descriptors out (not normalised)."
        ),
    )
    model.ir_version = 8  # readable by every onnxruntime that supports opset 17
    helper.set_model_props(model, {"model_id": MODEL_ID})
    onnx.checker.check_model(model, full_check=True)
    return model


def _zero_pad_to(g: GraphBuilder, v: Value, shape: tuple[int, int, int]) -> str:
    """Zero-pad a (N, C, H, W) value at the end of C, H and W, as dlib's tt::add does."""
    extra = [t - s for t, s in zip(shape, v.shape, strict=True)]
    if not any(extra):
        return v.name
    pads = np.array([0, 0, 0, 0, 0, *extra], dtype=np.int64)
    return g.node("Pad", [v.name, g.const("pad", pads)], "zero_pad", mode="constant")


# --------------------------------------------------------------------------------------
# Public entry points.


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def convert_resnet(dat_path: Path, onnx_path: Path) -> Path:
    """Convert dlib's ``dlib_face_recognition_resnet_model_v1.dat`` to ONNX at ``onnx_path``.

    The file is written atomically (temporary file in the same folder, then ``os.replace``).
    """
    net = parse_dlib_network(Path(dat_path).read_bytes())
    model = build_onnx(net)
    onnx_path = Path(onnx_path)
    _atomic_write(onnx_path, lambda tmp: tmp.write_bytes(model.SerializeToString()))
    return onnx_path


def _sidecar_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_resnet_onnx(cache_dir: Path, dat_path: Path | None = None) -> Path:
    """The converted ResNet in ``cache_dir``, converting it first when needed (see
    :func:`cached_onnx`)."""
    if dat_path is None:
        from faceledger.vision.models import model_path

        dat_path = model_path("resnet")
    return cached_onnx(
        Path(cache_dir) / ONNX_FILENAME,
        Path(dat_path),
        lambda dat, out: convert_resnet(dat, out),
        CONVERTER_VERSION,
        MODEL_ID,
    )


def cached_onnx(
    onnx_path: Path,
    dat_path: Path,
    convert: Callable[[Path, Path], object],
    converter_version: int,
    model_id: str,
) -> Path:
    """``onnx_path``, converted from ``dat_path`` by ``convert(dat_path, onnx_path)`` first
    when needed.

    A sidecar JSON file records the SHA-256 of the ONNX file, of the source ``.dat`` and the
    converter version. The model is (re)converted when the ONNX file or the sidecar is
    missing, when the ONNX file's hash does not match (a corrupted or truncated file), when
    the source file's hash changed, or when the converter version changed.
    """
    sidecar = _sidecar_path(onnx_path)
    source_hash = _sha256_file(dat_path)

    record = _read_sidecar(sidecar)
    if (
        record is not None
        and onnx_path.is_file()
        and record.get("source_sha256") == source_hash
        and record.get("converter_version") == converter_version
        and record.get("onnx_sha256") == _sha256_file(onnx_path)
    ):
        return onnx_path

    convert(dat_path, onnx_path)
    record = {
        "onnx_sha256": _sha256_file(onnx_path),
        "source_sha256": source_hash,
        "source": dat_path.name,
        "converter_version": converter_version,
        "model_id": model_id,
    }
    _atomic_write(sidecar, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return onnx_path


def network_flops(model: onnx.ModelProto) -> dict[str, int]:
    """Floating-point operations per sample of the Conv and Gemm/MatMul nodes.

    Counts 2 operations per multiply-accumulate, from the graph's own weight shapes and the
    shapes ONNX shape inference gives each node's output. Returns per-op-type totals and
    ``"total"``.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int | None]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weights = {init.name: list(init.dims) for init in inferred.graph.initializer}

    totals: dict[str, int] = {}
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            out = shapes[node.output[0]]
            if len(out) != 4 or any(d is None for d in out[1:]):
                raise ValueError(f"no static output shape for {node.name}")
            c_out, h_out, w_out = (int(d or 0) for d in out[1:])
            macs = c_out * h_out * w_out * math.prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            w = weights[node.input[1]]
            macs = w[0] * w[1]
        else:
            continue
        totals[node.op_type] = totals.get(node.op_type, 0) + 2 * macs
    totals["total"] = sum(totals.values())
    return totals


# The converter's public names, the format's included: callers import this module only.
__all__ = [
    "CONVERTER_VERSION",
    "INPUT_NAME",
    "MODEL_ID",
    "ONNX_FILENAME",
    "OUTPUT_NAME",
    "SIDECAR_SUFFIX",
    "DlibFormatError",
    "GraphBuilder",
    "Value",
    "anet_architecture",
    "build_onnx",
    "cached_onnx",
    "cached_resnet_onnx",
    "convert_resnet",
    "emit_layers",
    "network_flops",
    "parse_dlib_network",
]
