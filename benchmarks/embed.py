"""Benchmark: dlib's ResNet face descriptor, dlib runtime vs the ONNX conversion.

(a) dlib as the ``face_recognition`` library drives it: ``face_recognition.face_encodings``
    calls ``face_recognition_model_v1.compute_face_descriptor(image, shape, num_jitters=1)``
    once per face on the full image (dlib cuts the chip itself). The same call is made
    here directly, so the 68-point landmark model that importing ``face_recognition``
    loads is never touched.
(b) :class:`OnnxDlibResnetEmbedder` on the same faces' chips, batched, same cores.

Prints faces/s of both and their ratio, the largest per-component difference between the
L2-normalised descriptors, and the ONNX embedder's achieved GFLOP/s (FLOPs counted from the
converted graph's Conv/Gemm shapes) next to this machine's measured float32 matmul peak.

    python benchmarks/embed.py --faces 500 [--lfw-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from faceledger.types import BBox, Detection
from faceledger.vision.convert.dlib_onnx import network_flops
from faceledger.vision.embedding import l2_normalise
from faceledger.vision.embedding.onnx_backend import DEFAULT_BATCH_SIZE, OnnxDlibResnetEmbedder
from faceledger.vision.models import model_path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Face:
    image: np.ndarray
    shape: dlib.full_object_detection
    detection: Detection


def default_lfw_dir() -> Path:
    env = os.environ.get("FACELEDGER_LFW")
    return Path(env) if env else REPO.parent / "shared" / "data" / "lfw"


def load_faces(lfw: Path, n: int) -> list[Face]:
    """First image of each LFW person (sorted), largest HOG face, 5-point landmarks."""
    detector = dlib.get_frontal_face_detector()
    landmarker = dlib.shape_predictor(str(model_path("landmarks5")))
    faces: list[Face] = []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        images = sorted(person.glob("*.jpg"))
        if not images:
            continue
        image = np.ascontiguousarray(np.asarray(Image.open(images[0]).convert("RGB")))
        rects = detector(image, 0)
        if len(rects) == 0:
            continue
        rect = max(rects, key=lambda r: r.area())
        shape = landmarker(image, rect)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        box = BBox(rect.left(), rect.top(), rect.right(), rect.bottom())
        faces.append(Face(image, shape, Detection(box, 1.0, "hog", points)))
        if len(faces) == n:
            break
    return faces


def matmul_peak_gflops(n: int = 4096, repeats: int = 3) -> float:
    """Best-of-``repeats`` float32 GEMM throughput of numpy's BLAS on this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=500, help="number of LFW faces")
    parser.add_argument("--lfw-dir", type=Path, default=None, help="LFW root folder")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=None, help="ONNX intra-op threads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="ONNX model cache")
    args = parser.parse_args(argv)

    lfw = args.lfw_dir or default_lfw_dir()
    if not lfw.is_dir():
        print(f"LFW not found at {lfw}; pass --lfw-dir or set FACELEDGER_LFW", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    faces = load_faces(lfw, args.faces)
    n = len(faces)
    if n == 0:
        print("no faces found", file=sys.stderr)
        return 1
    print(f"{n} LFW faces detected and landmarked in {time.perf_counter() - t0:.1f} s")
    print(f"machine: {os.cpu_count()} CPUs, onnxruntime {ort.__version__}, dlib {dlib.__version__}")

    net = dlib.face_recognition_model_v1(str(model_path("resnet")))
    embedder = OnnxDlibResnetEmbedder(
        cache_dir=args.cache_dir, threads=args.threads, batch_size=args.batch_size
    )
    t0 = time.perf_counter()
    chips = np.stack([embedder.align(f.image, f.detection) for f in faces])
    align_s = time.perf_counter() - t0

    # Warm-up both runtimes, then time them on alternating chunks of the same faces, so a
    # change in machine load during the run affects both sides alike.
    net.compute_face_descriptor(faces[0].image, faces[0].shape, 1)
    embedder.embed_chips(chips[: args.batch_size])
    load_before = os.getloadavg()[0]
    chunk = 4 * args.batch_size
    baseline: list[np.ndarray] = []
    onnx_parts: list[np.ndarray] = []
    dlib_s = dlib_cpu = onnx_s = onnx_cpu = 0.0
    for start in range(0, n, chunk):
        part = faces[start : start + chunk]
        # (a) dlib, one face at a time, exactly as face_recognition.face_encodings calls it.
        w0, c0 = time.perf_counter(), time.process_time()
        baseline += [np.asarray(net.compute_face_descriptor(f.image, f.shape, 1)) for f in part]
        dlib_s += time.perf_counter() - w0
        dlib_cpu += time.process_time() - c0
        # (b) ONNX Runtime, batched, on the chips the package's align() cut.
        w0, c0 = time.perf_counter(), time.process_time()
        onnx_parts.append(embedder.embed_chips(chips[start : start + chunk]))
        onnx_s += time.perf_counter() - w0
        onnx_cpu += time.process_time() - c0
    baseline_vectors = l2_normalise(np.array(baseline))
    onnx_vectors = np.concatenate(onnx_parts)

    flops = network_flops(onnx.load(str(embedder.model_path)))["total"]
    peak = matmul_peak_gflops()

    dlib_fps = n / dlib_s
    onnx_fps = n / onnx_s
    e2e_fps = n / (onnx_s + align_s)
    diff = float(np.abs(baseline_vectors - onnx_vectors).max())
    threads = args.threads or os.cpu_count()
    print(f"load average before timing: {load_before:.2f} (other work on the machine skews both)")
    print()
    print(
        f"(a) dlib compute_face_descriptor(image, shape), 1 face/call: {dlib_fps:8.1f} faces/s"
        f"  ({dlib_cpu / dlib_s:.1f} cores busy)"
    )
    print(
        f"(b) ONNX Runtime, batch {args.batch_size}, {threads} threads:"
        f"            {onnx_fps:8.1f} faces/s  ({onnx_cpu / onnx_s:.1f} cores busy)"
    )
    print(f"    ONNX incl. chip alignment (align + embed):           {e2e_fps:8.1f} faces/s")
    speedup, speedup_e2e = onnx_fps / dlib_fps, e2e_fps / dlib_fps
    print(f"speed-up (b)/(a): {speedup:.1f}x  (incl. alignment: {speedup_e2e:.1f}x)")
    print(f"max |a - b| over {n} faces x 128 (L2-normalised): {diff:.3g}")
    print(f"network FLOPs per face (Conv + Gemm from the ONNX graph): {flops / 1e9:.3f} GFLOP")
    print(
        f"achieved: ONNX {flops * onnx_fps / 1e9:.1f} GFLOP/s, dlib {flops * dlib_fps / 1e9:.1f} "
        f"GFLOP/s; numpy float32 matmul peak {peak:.1f} GFLOP/s "
        f"(ONNX at {100 * flops * onnx_fps / 1e9 / peak:.0f}% of it)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
