"""Tell what an ONNX face model is from its graph signature (the folder is loaded by
:mod:`faceledger.vision.onnxmodels.router`).

An operator drops InsightFace-style models (e.g. ``buffalo_l``: ``det_10g.onnx``,
``w600k_r50.onnx``, plus landmark and gender/age models faceledger does not use) into a
folder; :func:`load_model_dir` inspects every ``.onnx`` file's inputs and outputs and builds
the detector and the embedder without any file name or configuration. The rules:

- **detection** (SCRFD): one NCHW 3-channel image input whose spatial size is dynamic or a
  multiple of the largest stride, and 6, 9, 10 or 15 outputs laid out as InsightFace
  exports them: scores (last dim 1) for each stride, then box distances (last dim 4), then,
  for 9/15 outputs, keypoint offsets (last dim 10). 6/9 outputs: strides 8/16/32 with two
  anchors per location; 10/15: strides 8..128 with one.
- **recognition** (ArcFace family): one NCHW 3-channel 112x112 input, one output ``[N, D]``
  with a fixed ``D``. Input normalisation is ``(x - 127.5) / 127.5`` unless the graph starts
  with Sub and Mul nodes (MXNet exports that normalise inside the graph), which then get raw
  pixels, as InsightFace does.
- **landmark** (192x192 input) and **attribute** (96x96 input): InsightFace's other models;
  recognised so that a ``buffalo_l`` folder loads, and skipped.
- anything else is **unknown**, with the reasons each rule rejected it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from faceledger.vision.embedding.onnx_backend import select_providers

if TYPE_CHECKING:
    import onnxruntime as ort

RECOGNITION = "recognition"
DETECTION = "detection"
LANDMARK = "landmark"
ATTRIBUTE = "attribute"
UNKNOWN = "unknown"
USED_TASKS = (RECOGNITION, DETECTION)


# outputs -> (strides, anchors per location, has keypoints), as InsightFace's SCRFD reads them
SCRFD_LAYOUTS: dict[int, tuple[tuple[int, ...], int, bool]] = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


class ModelRouterError(ValueError):
    """A model file or folder faceledger cannot use, with the reason."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...] | None  # None: rank unknown; None entries: dynamic dims

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name} [?]"
        return f"{self.name} [{', '.join('?' if d is None else str(d) for d in self.shape)}]"


@dataclass
class ModelInfo:
    """What :func:`inspect_model` found in one ``.onnx`` file."""

    path: Path
    sha256: str
    task: str
    reasons: list[str]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    # recognition
    input_size: tuple[int, int] | None = None  # (width, height); None: dynamic
    dim: int | None = None
    input_mean: float = 127.5
    input_std: float = 127.5
    # detection
    strides: tuple[int, ...] = ()
    num_anchors: int = 0
    use_kps: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def used(self) -> bool:
        return self.task in USED_TASKS

    def summary(self) -> str:
        ins = ", ".join(t.describe() for t in self.inputs)
        outs = ", ".join(t.describe() for t in self.outputs)
        return (
            f"{self.path.name}: {self.task} ({'; '.join(self.reasons)}) inputs {ins} outputs {outs}"
        )


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    ttype = value_info.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in ttype.shape.dim
    )


def _fmt(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _image_input(inputs: list[TensorInfo]) -> tuple[TensorInfo | None, str]:
    """The single NCHW 3-channel input, or why there is none."""
    if len(inputs) != 1:
        return None, f"{len(inputs)} inputs (face models take one image tensor)"
    shape = inputs[0].shape
    if shape is None or len(shape) != 4:
        return None, f"input {_fmt(shape)} is not a 4-d image batch"
    if shape[1] not in (3, None):
        if shape[3] == 3:
            return None, f"input {_fmt(shape)} is NHWC; only NCHW graphs are supported"
        return None, f"input {_fmt(shape)} does not have 3 colour channels"
    return inputs[0], ""


def _check_scrfd(info: ModelInfo, inp: TensorInfo) -> str:
    """Fill in the SCRFD layout; return '' if it is one, else the reason it is not."""
    n = len(info.outputs)
    if n not in SCRFD_LAYOUTS:
        return f"{n} outputs (SCRFD detectors have 6, 9, 10 or 15)"
    strides, anchors, kps = SCRFD_LAYOUTS[n]
    fmc = len(strides)
    h, w = inp.shape[2], inp.shape[3]  # type: ignore[index]
    if (h is None) != (w is None):
        return f"input {_fmt(inp.shape)} has one fixed and one dynamic side"
    if h is not None and w is not None and (h % strides[-1] or w % strides[-1]):
        return f"input {w}x{h} is not a multiple of the largest stride {strides[-1]}"
    groups = [("score", 1)] * fmc + [("box", 4)] * fmc + ([("keypoint", 10)] * fmc if kps else [])
    declared = 0
    for i, (out, (kind, last)) in enumerate(zip(info.outputs, groups, strict=True)):
        if out.shape is None or not out.shape:
            continue
        declared += 1
        if out.shape[-1] != last or len(out.shape) not in (2, 3):
            return (
                f"output {i} ({out.name}) is {_fmt(out.shape)}; SCRFD's {kind} output for stride "
                f"{strides[i % fmc]} is [K, {last}]"
            )
        k = out.shape[-2]
        if h is not None and w is not None and k is not None:
            s = strides[i % fmc]
            expected = (h // s) * (w // s) * anchors
            if k != expected:
                return (
                    f"output {i} ({out.name}) has {k} rows; stride {s} on {w}x{h} with "
                    f"{anchors} anchors gives {expected}"
                )
    info.strides, info.num_anchors, info.use_kps = strides, anchors, kps
    info.input_size = (w, h) if w is not None and h is not None else None
    info.reasons.append(
        f"{n} outputs grouped scores/boxes{'/keypoints' if kps else ''} for strides "
        f"{'/'.join(map(str, strides))}, {anchors} anchor{'s' if anchors > 1 else ''} per location"
    )
    if declared < n:
        info.notes.append(f"{n - declared} output shapes are not declared; trusted the layout")
    info.reasons.append(
        "input size "
        + (f"{w}x{h}" if w is not None else "dynamic (run at 640x640 unless told otherwise)")
    )
    return ""


def _check_arcface(info: ModelInfo, inp: TensorInfo, graph: onnx.GraphProto) -> str:
    """Fill in the recogniser's size, dim and normalisation; '' if it is one."""
    h, w = inp.shape[2], inp.shape[3]  # type: ignore[index]
    if h is None or w is None:
        return f"input {_fmt(inp.shape)} has no fixed size (ArcFace recognisers take 112x112)"
    if (h, w) != (112, 112):
        return f"input is {w}x{h}; ArcFace-family recognisers take 112x112"
    if len(info.outputs) != 1:
        return f"{len(info.outputs)} outputs (a recogniser has one embedding output)"
    out = info.outputs[0].shape
    if out is None or len(out) != 2 or out[1] is None or out[1] < 2:
        return f"output {_fmt(out)} is not an [N, D] embedding with a fixed D"
    info.input_size, info.dim = (w, h), out[1]
    first = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in first)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in first)
    if has_sub and has_mul:
        info.input_mean, info.input_std = 0.0, 1.0
        norm = "graph normalises itself (MXNet-style Sub/Mul first), raw pixels in"
    else:
        norm = "input (x - 127.5) / 127.5"
    info.reasons.append(f"one {w}x{h} RGB input, one [N, {out[1]}] output: {norm}")
    return ""


def _onnx_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".onnx" and p.is_file())


def inspect_model(path: str | os.PathLike[str]) -> ModelInfo:
    """Read one ``.onnx`` file's signature and decide what it is (never raises for 'unknown')."""
    path = Path(path)
    if not path.is_file():
        raise ModelRouterError(f"{path}: no such model file")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises several types; all mean "not ONNX"
        raise ModelRouterError(f"{path.name} is not a readable ONNX model ({exc})") from exc
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    inputs = [TensorInfo(v.name, _dims(v)) for v in graph.input if v.name not in weights]
    outputs = [TensorInfo(v.name, _dims(v)) for v in graph.output]
    info = ModelInfo(
        path=path, sha256=sha, task=UNKNOWN, reasons=[], inputs=inputs, outputs=outputs
    )

    inp, why_not = _image_input(inputs)
    if inp is None:
        info.reasons.append(why_not)
        return info
    size = (inp.shape[2], inp.shape[3])  # type: ignore[index]
    rejected: list[str] = []
    if len(outputs) >= 5:
        why = _check_scrfd(info, inp)
        if not why:
            info.task = DETECTION
            return info
        rejected.append(f"not an SCRFD detector: {why}")
    else:
        rejected.append(f"not an SCRFD detector: {len(outputs)} outputs (it has 6, 9, 10 or 15)")
    if size == (192, 192):
        info.task = LANDMARK
        info.reasons.append("192x192 input: an InsightFace landmark model (not used)")
        return info
    if size == (96, 96):
        info.task = ATTRIBUTE
        info.reasons.append("96x96 input: an InsightFace attribute model (not used)")
        return info
    why = _check_arcface(info, inp, graph)
    if not why:
        info.task = RECOGNITION
        return info
    rejected.append(f"not a recogniser: {why}")
    info.reasons.extend(rejected)
    return info


def inspect_models(path: str | os.PathLike[str]) -> list[ModelInfo]:
    """Inspect a ``.onnx`` file, or every ``.onnx`` file directly inside a folder."""
    path = Path(path)
    if path.is_dir():
        return [inspect_model(p) for p in _onnx_files(path)]
    if path.is_file():
        return [inspect_model(path)]
    raise ModelRouterError(f"{path}: no such model file or folder")


def create_session(
    path: Path, device: str = "cpu", threads: int | None = None
) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads if threads is not None else (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    providers = select_providers(device, ort.get_available_providers())
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
