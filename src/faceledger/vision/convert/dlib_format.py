"""dlib's serialisation of its networks: the layouts of the face recognition ResNet
(``dlib_face_recognition_resnet_model_v1.dat``) and of the MMOD CNN face detector
(``mmod_human_face_detector.dat``), and a reader for their weights, checked against the
layout slot by slot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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

    ``kind`` is one of ``loss_metric``, ``loss_mmod``, ``fc``, ``avg_pool``, ``max_pool``,
    ``relu``, ``add_prev``, ``affine``, ``con``, ``tag``, ``skip``, ``input``,
    ``input_pyramid``. ``args`` are the template arguments: ``con`` (num_filters, nr, nc,
    stride_y, stride_x); pools (nr, nc, stride_y, stride_x); ``fc`` (num_outputs, has_bias);
    ``tag``/``skip``/``add_prev`` (tag id); ``input`` (rows, cols) of
    ``input_rgb_image_sized``; ``input_pyramid`` (N) of
    ``input_rgb_image_pyramid<pyramid_down<N>>``.
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


def mmod_architecture() -> Net:
    """The ``net_type`` of dlib's ``dnn_mmod_face_detection_ex.cpp`` (and of
    ``cnn_face_detection_model_v1``), top (loss) first::

        con5d<N> = con<N,5,5,2,2>, con5<N> = con<N,5,5,1,1>
        downsampler = relu<affine<con5d<32, relu<affine<con5d<32, relu<affine<con5d<16,
                      SUBNET>>>>>>>>>
        rcon5 = relu<affine<con5<45, SUBNET>>>
        net_type = loss_mmod<con<1,9,9,1,1, rcon5<rcon5<rcon5<downsampler<
                   input_rgb_image_pyramid<pyramid_down<6>>>>>>>>
    """
    net: Net = [Slot("input_pyramid", (6,))]
    for n in (16, 32, 32):  # downsampler, bottom up
        net = _relu(_affine(_con(n, 5, 2, net)))
    for _ in range(3):  # rcon5
        net = _relu(_affine(_con(45, 5, 1, net)))
    net = [Slot("con", (1, 9, 9, 1, 1)), *net]
    return [Slot("loss_mmod"), *net]


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

    def byte(self) -> int:
        """A ``char``/``uint8_t``: dlib writes it as one raw byte."""
        return int(self._take(1)[0])

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
class PyramidInputParams:
    """``input_rgb_image_pyramid<pyramid_down<N>>``: the image and its smaller copies, each
    ``(N-1)/N`` of the one before, tiled into one image (dlib's ``create_tiled_pyramid``)."""

    mean_rgb: tuple[float, float, float]
    pyramid_down: int  # N
    padding: int  # between tiles
    outer_padding: int  # around the tiled image


@dataclass
class DetectorWindow:
    width: int
    height: int
    label: str = ""


@dataclass
class MmodOptions:
    """``loss_mmod``'s ``mmod_options`` as far as detection uses them (dlib/dnn/loss.h)."""

    detector_windows: list[DetectorWindow]
    loss_per_false_alarm: float
    loss_per_missed_target: float
    truth_match_iou_threshold: float
    nms_iou_thresh: float  # overlaps_nms: test_box_overlap(iou, percent_covered)
    nms_percent_covered_thresh: float
    ignore_iou_thresh: float
    ignore_percent_covered_thresh: float
    assume_image_pyramid: bool
    use_bounding_box_regression: bool
    bbr_lambda: float


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

    input: InputParams | PyramidInputParams
    layers: list[Layer]  # bottom (input side) first; tag/skip included, params None
    loss: dict[str, float] = field(default_factory=dict)
    mmod: MmodOptions | None = None  # the options of a loss_mmod network


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


def _read_input(r: _Reader, slot: Slot) -> InputParams | PyramidInputParams:
    name = r.string()
    if slot.kind == "input_pyramid":
        return _read_input_pyramid(r, slot, name)
    if name != "input_rgb_image_sized":
        raise DlibFormatError(f"expected 'input_rgb_image_sized', found {name!r}")
    mean = (r.float_(), r.float_(), r.float_())
    rows, cols = r.uint(), r.uint()
    if (rows, cols) != slot.args:
        raise DlibFormatError(f"input size {(rows, cols)} does not match {slot.args}")
    return InputParams(mean_rgb=mean, rows=rows, cols=cols)


def _read_input_pyramid(r: _Reader, slot: Slot, name: str) -> PyramidInputParams:
    # input_rgb_image_pyramid (dlib/dnn/input.h): means, then in version 2 the paddings;
    # version 1 files get dlib's defaults, 10 between tiles and 11 around them.
    if name not in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
        raise DlibFormatError(f"expected 'input_rgb_image_pyramid', found {name!r}")
    mean = (r.float_(), r.float_(), r.float_())
    padding, outer_padding = 10, 11
    if name == "input_rgb_image_pyramid2":
        padding, outer_padding = r.uint(), r.uint()
    return PyramidInputParams(
        mean_rgb=mean, pyramid_down=slot.args[0], padding=padding, outer_padding=outer_padding
    )


def _read_mmod_options(r: _Reader) -> MmodOptions:
    """``mmod_options`` (dlib/dnn/loss.h), versions 1 to 4."""
    version = r.int_()
    if not 1 <= version <= 4:
        raise DlibFormatError(f"unsupported mmod_options version {version}")
    windows: list[DetectorWindow] = []
    if version == 1:
        windows.append(DetectorWindow(r.uint(), r.uint()))
    else:
        for _ in range(r.uint()):
            window_version = r.int_()
            if window_version not in (1, 2):
                raise DlibFormatError(f"unsupported detector window version {window_version}")
            width, height = r.uint(), r.uint()
            label = r.string() if window_version == 2 else ""
            windows.append(DetectorWindow(width, height, label))
    if not windows or any(w.width < 1 or w.height < 1 for w in windows):
        raise DlibFormatError(f"bad mmod detector windows {windows}")
    loss_fa, loss_miss, truth_iou = r.float_(), r.float_(), r.float_()
    nms_iou, nms_cover = r.float_(), r.float_()
    ignore_iou, ignore_cover = r.float_(), r.float_()
    assume_pyramid, use_bbr, bbr_lambda = True, False, 100.0
    if version >= 3:
        assume_pyramid = bool(r.byte())
    if version >= 4:
        use_bbr, bbr_lambda = r.bool_(), r.float_()
    if not (0 <= nms_iou <= 1 and 0 <= nms_cover <= 1):
        raise DlibFormatError(f"bad mmod non-max suppression thresholds {(nms_iou, nms_cover)}")
    return MmodOptions(
        detector_windows=windows,
        loss_per_false_alarm=loss_fa,
        loss_per_missed_target=loss_miss,
        truth_match_iou_threshold=truth_iou,
        nms_iou_thresh=nms_iou,
        nms_percent_covered_thresh=nms_cover,
        ignore_iou_thresh=ignore_iou,
        ignore_percent_covered_thresh=ignore_cover,
        assume_image_pyramid=assume_pyramid,
        use_bounding_box_regression=use_bbr,
        bbr_lambda=bbr_lambda,
    )


def _read_loss(r: _Reader, slot: Slot) -> tuple[dict[str, float], MmodOptions | None]:
    name = r.string()
    if slot.kind == "loss_mmod":
        if name != "loss_mmod_":
            raise DlibFormatError(f"expected a loss_mmod layer, found {name!r}")
        return {}, _read_mmod_options(r)
    if name == "loss_metric_2":
        return {"margin": r.float_(), "distance_threshold": r.float_()}, None
    if name != "loss_metric_":
        raise DlibFormatError(f"expected a loss_metric layer, found {name!r}")
    return {}, None


def parse_dlib_network(data: bytes, architecture: Net | None = None) -> DlibNetwork:
    """Parse a serialised dlib network of the given architecture (default: ``anet_type``;
    :func:`mmod_architecture` for the MMOD face detector)."""
    arch = architecture if architecture is not None else anet_architecture()
    if arch[0].kind not in ("loss_metric", "loss_mmod") or arch[-1].kind not in (
        "input",
        "input_pyramid",
    ):
        raise ValueError("architecture must run from a loss layer down to an input")
    r = _Reader(data)

    # add_loss_layer: version, loss details, then the sub-network.
    if r.int_() != 1:
        raise DlibFormatError("not a dlib network file (bad add_loss_layer version)")
    loss, mmod = _read_loss(r, arch[0])

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
    return DlibNetwork(input=input_params, layers=layers, loss=loss, mmod=mmod)
