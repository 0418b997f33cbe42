"""Benchmark: dlib's MMOD CNN face detector on ONNX Runtime vs in dlib, and vs HOG.

The three detectors as the pipeline builds them (``create_detector``: ``hog`` with its 2 MP
work budget, ``cnn`` on ONNX Runtime and ``cnn-dlib`` with their 1 MP budget, all with the
same ``--min-face``, so each image is resized to the pipeline's real work scale first) run on
the same images in the same run, one image at a time, the order of the three rotating from
image to image:

(a) ``--photos`` LFW photos (the first photo of each person, sorted by name);
(b) ``--groups`` composed group photos: ``--faces-per-group`` LFW faces of different sizes
    pasted side by side on a grey canvas.

Prints, per detector, ms per image and faces per second, the ONNX CNN's speed-up over dlib's
CNN and its cost over HOG, the detection rates (LFW: photos with a face found; groups: placed
faces found / faces placed, a face counting as found when a box's centre lies in it), how
often the two CNN runtimes disagree (a box with IoU < 0.95 or a score off by > 1e-4), the
ONNX CNN's time split (pyramid, network, boxes) and how close the network's time is to the
FLOPs of its graph (counted from the Conv shapes for each work image's pyramid) at this
machine's measured float32 matmul throughput.

    python benchmarks/detect.py [--photos 100] [--groups 10] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from PIL import Image

from faceledger.types import Detection
from faceledger.vision.convert.dlib_onnx import network_flops
from faceledger.vision.convert.mmod_onnx import with_input_size
from faceledger.vision.detection import (
    DEFAULT_MIN_FACE,
    Detector,
    OnnxCnnDetector,
    create_detector,
    work_scale,
)
from faceledger.vision.detection_onnx import MmodOnnx

REPO = Path(__file__).resolve().parents[1]
GROUP_SIZE = (1000, 420)  # canvas (width, height): 0.42 MP, 1.2 MP at the work scale
GROUP_SIDES = (80, 110, 150, 200, 260)  # pasted crop sides, px (the face is ~3/4 of it)


def default_lfw_dir() -> Path:
    env = os.environ.get("FACELEDGER_LFW")
    return Path(env) if env else REPO.parent / "shared" / "data" / "lfw"


def lfw_photos(lfw: Path, n: int, skip: int = 0) -> list[np.ndarray]:
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[skip : skip + n]
    return [np.asarray(Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB")) for p in people]


def group_photo(
    faces: list[np.ndarray], sides: tuple[int, ...], size: tuple[int, int]
) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """LFW photos' centres (where the face is) pasted side by side on a grey canvas, and
    where each went (left, top, right, bottom)."""
    canvas = Image.new("RGB", size, (118, 124, 130))
    placed: list[tuple[int, int, int, int]] = []
    x = 10
    for face, side in zip(faces, sides, strict=True):
        crop = Image.fromarray(face).crop((50, 50, 200, 200)).resize((side, side))
        top = (size[1] - side) // 2
        canvas.paste(crop, (x, top))
        placed.append((x, top, x + side, top + side))
        x += side + 12
    return np.asarray(canvas), placed


def iou(a: Detection, b: Detection) -> float:
    x0, y0 = max(a.bbox.left, b.bbox.left), max(a.bbox.top, b.bbox.top)
    x1, y1 = min(a.bbox.right, b.bbox.right), min(a.bbox.bottom, b.bbox.bottom)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = a.bbox.width * a.bbox.height + b.bbox.width * b.bbox.height - inter
    return inter / union if union else 0.0


def same_faces(reference: list[Detection], other: list[Detection]) -> bool:
    if len(reference) != len(other):
        return False
    left = list(other)
    for ref in reference:
        best = max(left, key=lambda d: iou(ref, d))
        if iou(ref, best) < 0.95 or abs(ref.score - best.score) > 1e-4:
            return False
        left.remove(best)
    return True


@dataclass
class Tally:
    seconds: list[float] = field(default_factory=list)
    faces: int = 0
    hit_images: int = 0
    placed_found: int = 0
    found: list[list[Detection]] = field(default_factory=list)


def run_interleaved(
    detectors: dict[str, Detector],
    images: list[np.ndarray],
    placed: list[list[tuple[int, int, int, int]]] | None = None,
) -> dict[str, Tally]:
    names = list(detectors)
    tallies = {name: Tally() for name in names}
    for i, image in enumerate(images):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            t0 = time.perf_counter()
            found = detectors[name].detect(image)
            tallies[name].seconds.append(time.perf_counter() - t0)
            tallies[name].found.append(found)
        for name in names:
            tally, found = tallies[name], tallies[name].found[-1]
            tally.faces += len(found)
            tally.hit_images += bool(found)
            if placed is not None:
                tally.placed_found += sum(
                    any(
                        l0 <= (d.bbox.left + d.bbox.right) / 2 <= r0
                        and t0_ <= (d.bbox.top + d.bbox.bottom) / 2 <= b0
                        for d in found
                    )
                    for l0, t0_, r0, b0 in placed[i]
                )
    return tallies


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 3) -> float:
    """Best-of-``repeats`` float32 GEMM throughput of ONNX Runtime's MatMul (MLAS, the
    kernels its Conv uses) with ``threads`` threads."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
    session.run(None, feed)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def work_image(image: np.ndarray, min_face: int, max_pixels: int) -> np.ndarray:
    """The image as the CNN detectors see it (``_DlibDetector``'s work scale)."""
    h, w = image.shape[:2]
    scale = work_scale(h, w, min_face, max_pixels)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def onnx_breakdown(
    mmod: MmodOnnx, images: list[np.ndarray], min_face: int, model: onnx.ModelProto
) -> dict[str, float]:
    """Mean ms per image of the ONNX CNN's stages, and the graph's GFLOP per image."""
    stages: dict[str, list[float]] = {"resize": [], "pyramid": [], "network": [], "boxes": []}
    flops_by_shape: dict[tuple[int, int], int] = {}
    gflop: list[float] = []
    for image in images:
        t0 = time.perf_counter()
        work = work_image(image, min_face, OnnxCnnDetector.default_work_pixels)
        t1 = time.perf_counter()
        tensor, tiles = mmod.pyramid(work)
        t2 = time.perf_counter()
        scores = mmod.scores(tensor)
        t3 = time.perf_counter()
        mmod.detections(scores[0], tiles)
        t4 = time.perf_counter()
        for key, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[key].append(seconds * 1000)
        shape = (int(tensor.shape[2]), int(tensor.shape[3]))
        if shape not in flops_by_shape:
            flops_by_shape[shape] = network_flops(with_input_size(model, *shape))["total"]
        gflop.append(flops_by_shape[shape] / 1e9)
    out = {key: statistics.mean(v) for key, v in stages.items()}
    out["gflop"] = statistics.mean(gflop)
    return out


def report(title: str, tallies: dict[str, Tally], n_images: int, placed: int | None) -> None:
    print(f"\n{title}")
    print(f"  {'detector':10} {'ms/image':>9} {'median':>8} {'faces/s':>8}  detection rate")
    for name, t in tallies.items():
        total = sum(t.seconds)
        rate = (
            f"{t.placed_found}/{placed} faces placed = {t.placed_found / placed:.3f}"
            if placed
            else f"{t.hit_images}/{n_images} photos = {t.hit_images / n_images:.3f}"
        )
        print(
            f"  {name:10} {1000 * total / n_images:9.1f} {1000 * statistics.median(t.seconds):8.1f}"
            f" {t.faces / total:8.2f}  {rate}"
        )
    onnx_s, dlib_s, hog_s = (sum(tallies[k].seconds) for k in ("cnn", "cnn-dlib", "hog"))
    differ = sum(
        not same_faces(a, b)
        for a, b in zip(tallies["cnn-dlib"].found, tallies["cnn"].found, strict=True)
    )
    print(
        f"  ONNX CNN vs dlib CNN: {dlib_s / onnx_s:.1f}x faster; vs HOG: {onnx_s / hog_s:.1f}x "
        f"the time; images where the two CNN runtimes differ: {differ}/{n_images}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=100, help="LFW photos")
    parser.add_argument("--groups", type=int, default=10, help="composed group photos")
    parser.add_argument("--faces-per-group", type=int, default=len(GROUP_SIDES))
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for the ONNX CNN")
    parser.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE)
    parser.add_argument("--lfw-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    lfw = args.lfw_dir or default_lfw_dir()
    if not lfw.is_dir():
        print(f"LFW not found at {lfw} (set FACELEDGER_LFW or --lfw-dir)", file=sys.stderr)
        return 2
    if not 1 <= args.faces_per_group <= len(GROUP_SIDES):
        print(f"--faces-per-group: 1 to {len(GROUP_SIDES)}", file=sys.stderr)
        return 2

    make: dict[str, Callable[[], Detector]] = {
        "hog": lambda: create_detector("hog", min_face=args.min_face),
        "cnn": lambda: create_detector(
            "cnn", min_face=args.min_face, device=args.device, threads=args.threads
        ),
        "cnn-dlib": lambda: create_detector("cnn-dlib", min_face=args.min_face),
    }
    detectors = {name: build() for name, build in make.items()}
    onnx_cnn = detectors["cnn"]
    assert isinstance(onnx_cnn, OnnxCnnDetector)
    photos = lfw_photos(lfw, args.photos)
    sides = GROUP_SIDES[: args.faces_per_group]
    groups = [
        group_photo(
            lfw_photos(lfw, len(sides), skip=args.photos + g * len(sides)), sides, GROUP_SIZE
        )
        for g in range(args.groups)
    ]
    for det in detectors.values():  # warm-up (model loads, conversion, first-run costs)
        det.detect(photos[0])

    print(
        f"MMOD CNN on ONNX Runtime ({', '.join(onnx_cnn.providers)}, {args.threads} threads) vs "
        f"dlib's CNN vs HOG; {os.cpu_count()} CPUs; min_face {args.min_face} px, work budgets "
        f"HOG 2 MP, CNN 1 MP"
    )
    lfw_tallies = run_interleaved(detectors, photos)
    h, w = photos[0].shape[:2]
    s = work_scale(h, w, args.min_face, OnnxCnnDetector.default_work_pixels)
    report(
        f"(a) {len(photos)} LFW photos ({w}x{h}, CNN work image {round(w * s)}x{round(h * s)})",
        lfw_tallies,
        len(photos),
        None,
    )
    if groups:
        group_tallies = run_interleaved(detectors, [g[0] for g in groups], [g[1] for g in groups])
        report(
            f"(b) {len(groups)} group photos ({GROUP_SIZE[0]}x{GROUP_SIZE[1]}, "
            f"{len(sides)} faces each, crops of {', '.join(map(str, sides))} px)",
            group_tallies,
            len(groups),
            len(groups) * len(sides),
        )

    model = onnx.load(str(onnx_cnn.mmod.model_path))
    peak = matmul_peak_gflops(args.threads)
    print(f"\nONNX CNN, where the time goes (mean ms per image; {args.threads} threads):")
    for title, images in (("LFW", photos[:20]), ("groups", [g[0] for g in groups[:5]])):
        if not images:
            continue
        b = onnx_breakdown(onnx_cnn.mmod, images, args.min_face, model)
        net_gflops = b["gflop"] / (b["network"] / 1000)
        print(
            f"  {title:6}: resize {b['resize']:.1f}, pyramid {b['pyramid']:.1f}, network "
            f"{b['network']:.1f}, boxes {b['boxes']:.1f}; graph {b['gflop']:.2f} GFLOP/image "
            f"-> network at {net_gflops:.0f} GFLOP/s = {100 * net_gflops / peak:.0f}% of this "
            f"machine's measured float32 matmul throughput ({peak:.0f} GFLOP/s, ONNX Runtime, "
            f"{args.threads} threads); floor at that rate {1000 * b['gflop'] / peak:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
