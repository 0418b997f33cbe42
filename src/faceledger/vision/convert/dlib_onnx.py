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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONVERTER_VERSION = 1
ONNX_OPSET = 17
INPUT_NAME = "chips"
OUTPUT_NAME = "descriptor"
ONNX_FILENAME = "dlib_resnet_v1.onnx"
SIDECAR_SUFFIX = ".sha256.json"
MODEL_ID = "dlib_resnet_v1"

_FLOAT_INF = 32000
_FLOAT_NINF = 32001
_FLOAT_NAN = 32002


class DlibFormatError(ValueError):
    """The file is not the dlib network this converter understands."""


# --------------------------------------------------------------------------------------
# Architecture: dlib's anet_type, as a list of slots from the loss layer down to the input.


@dataclass(frozen=True)
class Slot:
    """One layer of the dlib network type.

    ``kind`` is one of ``loss_metric``, ``fc``, ``avg_pool``, ``max_pool``, ``relu``,
    ``add_prev``, ``affine``, ``con``, ``tag``, ``skip``, ``input``. ``args`` are the
    template arguments: ``con`` (num_filters, nr, nc, stride_y, stride_x); pools
    (nr, nc, stride_y, stride_x); ``fc`` (num_outputs, has_bias); ``tag``/``skip``/
    ``add_prev`` (tag id); ``input`` (rows, cols).
    """

    kind: str
    args: tuple[int, ...] = ()

    @property
    def is_structural(self) -> bool:
        """Tag and skip layers: they have a version number but no details."""
        return self.kind in ("tag", "skip")


Net = list[Slot]


def _con(n: int, k: int, stride: int, sub: Net) -> Net:
    return [Slot("con", (n, k, k, stride, stride)), *sub]


def _affine(sub: Net) -> Net:
    return [Slot("affine"), *sub]


def _relu(sub: Net) -> Net:
    return [Slot("relu"), *sub]


def _tag(tag_id: int, sub: Net) -> Net:
    return [Slot("tag", (tag_id,)), *sub]


def _skip(tag_id: int, sub: Net) -> Net:
    return [Slot("skip", (tag_id,)), *sub]


def _add_prev(tag_id: int, sub: Net) -> Net:
    return [Slot("add_prev", (tag_id,)), *sub]


def _avg_pool(nr: int, nc: int, sy: int, sx: int, sub: Net) -> Net:
    return [Slot("avg_pool", (nr, nc, sy, sx)), *sub]


def _max_pool(nr: int, nc: int, sy: int, sx: int, sub: Net) -> Net:
    return [Slot("max_pool", (nr, nc, sy, sx)), *sub]


def _block(n: int, stride: int, sub: Net) -> Net:
    # block = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
    return _affine(_con(n, 3, 1, _relu(_affine(_con(n, 3, stride, sub)))))


def _ares(n: int, sub: Net) -> Net:
    # relu<residual<block,N,affine,SUBNET>>, residual = add_prev1<block<N,BN,1,tag1<SUBNET>>>
    return _relu(_add_prev(1, _block(n, 1, _tag(1, sub))))


def _ares_down(n: int, sub: Net) -> Net:
    # relu<residual_down<...>>,
    # residual_down = add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,BN,2,tag1<SUBNET>>>>>>
    return _relu(_add_prev(2, _avg_pool(2, 2, 2, 2, _skip(1, _tag(2, _block(n, 2, _tag(1, sub)))))))


def anet_architecture(chip_size: int = 150) -> Net:
    """dlib's ``anet_type`` (dnn_face_recognition_ex.cpp), top (loss) first."""
    net: Net = [Slot("input", (chip_size, chip_size))]
    net = _max_pool(3, 3, 2, 2, _relu(_affine(_con(32, 7, 2, net))))
    for n in (32, 32, 32):  # alevel4
        net = _ares(n, net)
    net = _ares_down(64, net)  # alevel3
    for n in (64, 64, 64):
        net = _ares(n, net)
    net = _ares_down(128, net)  # alevel2
    for n in (128, 128):
        net = _ares(n, net)
    net = _ares_down(256, net)  # alevel1
    for n in (256, 256):
        net = _ares(n, net)
    net = _ares_down(256, net)  # alevel0
    net = _avg_pool(0, 0, 1, 1, net)  # avg_pool_everything
    net = [Slot("fc", (128, 0)), *net]  # fc_no_bias<128>
    return [Slot("loss_metric"), *net]


def _default_padding(size: int, stride: int) -> int:
    """dlib's template default: pad size/2 for stride 1, nothing otherwise."""
    return size // 2 if stride == 1 else 0


# --------------------------------------------------------------------------------------
# dlib's serialisation primitives (dlib/serialize.h, dlib/dnn/tensor.h).


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._buf = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self._buf):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos}")
        chunk = self._buf[self.pos : end]
        self.pos = end
        return chunk

    def at_end(self) -> bool:
        return self.pos == len(self._buf)

    def int_(self) -> int:
        """dlib's packed integer: control byte (size | 0x80 if negative), then LE bytes."""
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if size > 8 or ctrl & 0x70:
            raise DlibFormatError(f"bad integer control byte {ctrl:#x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if ctrl & 0x80 else value

    def uint(self) -> int:
        value = self.int_()
        if value < 0:
            raise DlibFormatError(f"negative value where an unsigned one was expected: {value}")
        return value

    def float_(self) -> float:
        """dlib's portable float: (int64 mantissa, int16 exponent) -> mantissa * 2**exponent."""
        if self.pos < len(self._buf) and self._buf[self.pos] & 0x70:
            raise DlibFormatError("old ASCII float serialisation is not supported")
        mantissa = self.int_()
        exponent = self.int_()
        if exponent == _FLOAT_INF:
            return math.inf
        if exponent == _FLOAT_NINF:
            return -math.inf
        if exponent == _FLOAT_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def string(self) -> str:
        return bytes(self._take(self.uint())).decode("latin-1")

    def bool_(self) -> bool:
        ch = self._take(1)[0]
        if ch not in (0x30, 0x31):
            raise DlibFormatError(f"bad bool byte {ch:#x} at byte {self.pos - 1}")
        return ch == 0x31

    def tensor(self) -> np.ndarray:
        """A resizable_tensor as an (n, k, nr, nc) float32 array."""
        version = self.int_()
        shape = tuple(self.int_() for _ in range(4))
        if any(d < 0 for d in shape):
            raise DlibFormatError(f"bad tensor shape {shape}")
        count = math.prod(shape)
        if version == 2:  # raw little-endian IEEE floats
            data = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        elif version == 1:  # one portable float per element
            data = np.array([self.float_() for _ in range(count)], dtype=np.float32)
        else:
            raise DlibFormatError(f"unsupported tensor version {version}")
        return data.reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int_()
        if version != 1:
            raise DlibFormatError(f"unsupported alias_tensor version {version}")
        n, k, nr, nc = (self.int_() for _ in range(4))
        return n, k, nr, nc


# --------------------------------------------------------------------------------------
# Parsed layers.


@dataclass
class InputParams:
    mean_rgb: tuple[float, float, float]
    rows: int
    cols: int


@dataclass
class ConvParams:
    weights: np.ndarray  # (out, in, kh, kw) float32
    bias: np.ndarray  # (out,) float32
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class AffineParams:
    gamma: np.ndarray  # (channels,)
    beta: np.ndarray


@dataclass
class PoolParams:
    size: tuple[int, int]  # (0, 0): the whole input
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass
class FcParams:
    weights: np.ndarray  # (num_inputs, num_outputs)
    bias: np.ndarray | None


LayerParams = ConvParams | AffineParams | PoolParams | FcParams | None


@dataclass
class Layer:
    slot: Slot
    params: LayerParams = None


@dataclass
class DlibNetwork:
    """A parsed dlib network: the input layer and every layer from the input upwards."""

    input: InputParams
    layers: list[Layer]  # bottom (input side) first; tag/skip included, params None
    loss: dict[str, float] = field(default_factory=dict)


def _read_con(r: _Reader, slot: Slot, name: str) -> ConvParams:
    if name != "con_4":
        raise DlibFormatError(f"unsupported con layer version {name!r}")
    params = r.tensor()
    num_filters, nr, nc = r.int_(), r.int_(), r.int_()
    stride_y, stride_x = r.int_(), r.int_()
    pad_y, pad_x = r.int_(), r.int_()
    filters = r.alias_tensor()
    biases = r.alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.float_()
    want_n, want_nr, want_nc, want_sy, want_sx = slot.args
    if (num_filters, nr, nc, stride_y, stride_x) != (want_n, want_nr, want_nc, want_sy, want_sx):
        raise DlibFormatError(
            f"con layer {(num_filters, nr, nc, stride_y, stride_x)} does not match the "
            f"architecture's {slot.args}"
        )
    if (pad_y, pad_x) != (_default_padding(nr, stride_y), _default_padding(nc, stride_x)):
        raise DlibFormatError(f"con layer has non-default padding {(pad_y, pad_x)}")
    n_f, k_f, nr_f, nc_f = filters
    if (n_f, nr_f, nc_f) != (num_filters, nr, nc) or biases[0] * biases[1] != num_filters:
        raise DlibFormatError(f"con layer alias shapes {filters} {biases} are inconsistent")
    flat = params.reshape(-1)
    w_size = n_f * k_f * nr_f * nc_f
    if flat.size != w_size + num_filters:
        raise DlibFormatError(f"con layer has {flat.size} parameters, expected {w_size + n_f}")
    return ConvParams(
        weights=flat[:w_size].reshape(n_f, k_f, nr_f, nc_f).copy(),
        bias=flat[w_size:].copy(),
        stride=(stride_y, stride_x),
        padding=(pad_y, pad_x),
    )


def _read_affine(r: _Reader, name: str) -> AffineParams:
    if name == "affine_":
        params = r.tensor().reshape(-1)
        gamma_shape = r.alias_tensor()
        r.alias_tensor()  # beta has gamma's shape
        mode = r.int_()
        if mode != 0:  # CONV_MODE: one gamma/beta per channel
            raise DlibFormatError("only conv-mode affine layers are supported")
        size = math.prod(gamma_shape)
        if params.size != 2 * size:
            raise DlibFormatError("affine layer parameter size mismatch")
        return AffineParams(gamma=params[:size].copy(), beta=params[size:].copy())
    if name == "bn_con2":
        # A training-time batch-norm layer: convert it the way dlib's affine_(bn_) does.
        params = r.tensor().reshape(-1)
        gamma_shape = r.alias_tensor()
        r.alias_tensor()
        r.tensor()  # means (batch statistics of the last training step)
        r.tensor()  # invstds
        running_means = r.tensor().reshape(-1).astype(np.float64)
        running_variances = r.tensor().reshape(-1).astype(np.float64)
        r.uint()  # num_updates
        r.uint()  # running_stats_window_size
        for _ in range(4):
            r.float_()
        eps = r.float_()
        size = math.prod(gamma_shape)
        gamma = params[:size].astype(np.float64) / np.sqrt(running_variances + eps)
        beta = params[size:].astype(np.float64) - gamma * running_means
        return AffineParams(gamma=gamma.astype(np.float32), beta=beta.astype(np.float32))
    raise DlibFormatError(f"unsupported affine/batch-norm layer version {name!r}")


def _read_pool(r: _Reader, slot: Slot, name: str) -> PoolParams:
    expected = "max_pool_2" if slot.kind == "max_pool" else "avg_pool_2"
    if name != expected:
        raise DlibFormatError(f"expected {expected!r}, found {name!r}")
    nr, nc = r.int_(), r.int_()
    sy, sx = r.int_(), r.int_()
    py, px = r.int_(), r.int_()
    if (nr, nc, sy, sx) != slot.args:
        raise DlibFormatError(f"pool {(nr, nc, sy, sx)} does not match {slot.args}")
    if (py, px) != (_default_padding(nr, sy), _default_padding(nc, sx)):
        raise DlibFormatError(f"pool layer has non-default padding {(py, px)}")
    return PoolParams(size=(nr, nc), stride=(sy, sx), padding=(py, px))


def _read_fc(r: _Reader, slot: Slot, name: str) -> FcParams:
    if name != "fc_2":
        raise DlibFormatError(f"unsupported fc layer version {name!r}")
    num_outputs, num_inputs = r.uint(), r.uint()
    params = r.tensor().reshape(-1)
    r.alias_tensor()  # weights (num_inputs, num_outputs)
    r.alias_tensor()  # biases
    bias_mode = r.int_()  # 0: FC_HAS_BIAS, 1: FC_NO_BIAS
    for _ in range(4):
        r.float_()
    if num_outputs != slot.args[0] or bias_mode != (0 if slot.args[1] else 1):
        raise DlibFormatError(f"fc layer ({num_outputs}, mode {bias_mode}) != {slot.args}")
    w_size = num_inputs * num_outputs
    expected = w_size + (num_outputs if bias_mode == 0 else 0)
    if params.size != expected:
        raise DlibFormatError(f"fc layer has {params.size} parameters, expected {expected}")
    weights = params[:w_size].reshape(num_inputs, num_outputs).copy()
    bias = params[w_size:].copy() if bias_mode == 0 else None
    return FcParams(weights=weights, bias=bias)


def _read_details(r: _Reader, slot: Slot) -> LayerParams:
    name = r.string()
    if slot.kind == "con":
        return _read_con(r, slot, name)
    if slot.kind == "affine":
        return _read_affine(r, name)
    if slot.kind in ("max_pool", "avg_pool"):
        return _read_pool(r, slot, name)
    if slot.kind == "fc":
        return _read_fc(r, slot, name)
    if slot.kind == "relu":
        if name != "relu_":
            raise DlibFormatError(f"expected 'relu_', found {name!r}")
        return None
    if slot.kind == "add_prev":
        if name != "add_prev_":
            raise DlibFormatError(f"expected 'add_prev_', found {name!r}")
        return None
    raise DlibFormatError(f"no reader for layer kind {slot.kind!r}")


def _read_input(r: _Reader, slot: Slot) -> InputParams:
    name = r.string()
    if name != "input_rgb_image_sized":
        raise DlibFormatError(f"expected 'input_rgb_image_sized', found {name!r}")
    mean = (r.float_(), r.float_(), r.float_())
    rows, cols = r.uint(), r.uint()
    if (rows, cols) != slot.args:
        raise DlibFormatError(f"input size {(rows, cols)} does not match {slot.args}")
    return InputParams(mean_rgb=mean, rows=rows, cols=cols)


def parse_dlib_network(data: bytes, architecture: Net | None = None) -> DlibNetwork:
    """Parse a serialised dlib network of the given architecture (default: ``anet_type``)."""
    arch = architecture if architecture is not None else anet_architecture()
    if arch[0].kind != "loss_metric" or arch[-1].kind != "input":
        raise ValueError("architecture must run from a loss_metric layer down to an input")
    r = _Reader(data)

    # add_loss_layer: version, loss details, then the sub-network.
    if r.int_() != 1:
        raise DlibFormatError("not a dlib network file (bad add_loss_layer version)")
    loss_name = r.string()
    loss: dict[str, float] = {}
    if loss_name == "loss_metric_2":
        loss = {"margin": r.float_(), "distance_threshold": r.float_()}
    elif loss_name != "loss_metric_":
        raise DlibFormatError(f"expected a loss_metric layer, found {loss_name!r}")

    # Version numbers of every layer, from the top down to the bottom add_layer.
    body = arch[1:-1]
    if not body or body[-1].is_structural:
        raise ValueError("the layer above the input must be a computational layer")
    versions: list[int] = []
    for i, slot in enumerate(body):
        version = r.int_()
        bottom = i == len(body) - 1
        if slot.is_structural:
            ok = version == 1
        elif bottom:
            ok = version in (2, 3)
        else:
            ok = version in (1, 2)
        if not ok:
            raise DlibFormatError(
                f"layer {i} ({slot.kind}): version {version} does not fit the architecture"
            )
        versions.append(version)

    input_params = _read_input(r, arch[-1])

    layers: list[Layer] = []
    for i in range(len(body) - 1, -1, -1):  # bottom-up
        slot = body[i]
        if slot.is_structural:
            layers.append(Layer(slot))
            continue
        params = _read_details(r, slot)
        for _ in range(3):  # setup_called, gradient_input_is_stale, output_disabled
            r.bool_()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if i == len(body) - 1:
            r.tensor()  # grad_final
            if versions[i] >= 3:
                r.uint()  # sample_expansion_factor
        elif versions[i] >= 2:
            r.tensor()  # params_grad
        layers.append(Layer(slot, params))
    if not r.at_end():
        raise DlibFormatError(f"{len(data) - r.pos} trailing bytes after the network")
    return DlibNetwork(input=input_params, layers=layers, loss=loss)


# --------------------------------------------------------------------------------------
# ONNX graph.


class _GraphBuilder:
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
class _Value:
    name: str
    shape: tuple[int, int, int]  # (channels, rows, cols) per sample


def _pool_out(size: int, window: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - window) // stride


def build_onnx(net: DlibNetwork, fold_affine: bool = True) -> onnx.ModelProto:
    """An ONNX model equivalent to ``net``: (N, rows, cols, 3) uint8 RGB in, (N, 128) out.

    With ``fold_affine`` every affine layer that directly follows a convolution (and whose
    input is not tagged for reuse) is folded into that convolution's weights and bias.
    """
    g = _GraphBuilder()
    rows, cols = net.input.rows, net.input.cols

    # input_rgb_image_sized: HWC uint8 -> planar float, (x - mean) / 256 (exact in float32).
    x = g.node("Cast", [INPUT_NAME], "input_float", to=TensorProto.FLOAT)
    x = g.node("Transpose", [x], "input_planar", perm=[0, 3, 1, 2])
    mean = np.array(net.input.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
    x = g.node("Sub", [x, g.const("input_mean", mean)], "input_centred")
    scale = np.array(1.0 / 256.0, dtype=np.float32)
    x = g.node("Mul", [x, g.const("input_scale", scale)], "input_scaled")
    cur = _Value(x, (3, rows, cols))

    tags: dict[int, _Value] = {}
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
            cur = _Value(out, shape)
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
                cur = _Value(out, cur.shape)
            last_conv = None
            continue
        last_conv = None
        if kind == "relu":
            cur = _Value(g.node("Relu", [cur.name], "relu"), cur.shape)
        elif kind in ("max_pool", "avg_pool"):
            assert isinstance(p, PoolParams)
            c, h, w = cur.shape
            if p.size == (0, 0):
                if p.stride != (1, 1) or p.padding != (0, 0):
                    raise DlibFormatError("whole-input pooling with stride/padding")
                op = "GlobalMaxPool" if kind == "max_pool" else "GlobalAveragePool"
                cur = _Value(g.node(op, [cur.name], "global_pool"), (c, 1, 1))
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
            cur = _Value(out, shape)
        elif kind == "add_prev":
            other = tags[layer.slot.args[0]]
            (c1, h1, w1), (c2, h2, w2) = cur.shape, other.shape
            shape = (max(c1, c2), max(h1, h2), max(w1, w2))
            operands = [_zero_pad_to(g, v, shape) for v in (cur, other)]
            cur = _Value(g.node("Add", operands, "add_prev"), shape)
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
            cur = _Value(out, (p.weights.shape[1], 1, 1))
        else:
            raise DlibFormatError(f"cannot convert layer kind {kind!r}")

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


def _zero_pad_to(g: _GraphBuilder, v: _Value, shape: tuple[int, int, int]) -> str:
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
    """The converted ONNX model in ``cache_dir``, converting it first when needed.

    A sidecar JSON file records the SHA-256 of the ONNX file, of the source ``.dat`` and the
    converter version. The model is (re)converted when the ONNX file or the sidecar is
    missing, when the ONNX file's hash does not match (a corrupted or truncated file), when
    the source file's hash changed, or when the converter version changed.
    """
    if dat_path is None:
        from faceledger.vision.models import model_path

        dat_path = model_path("resnet")
    cache_dir = Path(cache_dir)
    onnx_path = cache_dir / ONNX_FILENAME
    sidecar = _sidecar_path(onnx_path)
    source_hash = _sha256_file(Path(dat_path))

    record = _read_sidecar(sidecar)
    if (
        record is not None
        and onnx_path.is_file()
        and record.get("source_sha256") == source_hash
        and record.get("converter_version") == CONVERTER_VERSION
        and record.get("onnx_sha256") == _sha256_file(onnx_path)
    ):
        return onnx_path

    convert_resnet(Path(dat_path), onnx_path)
    record = {
        "onnx_sha256": _sha256_file(onnx_path),
        "source_sha256": source_hash,
        "source": Path(dat_path).name,
        "converter_version": CONVERTER_VERSION,
        "model_id": MODEL_ID,
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
