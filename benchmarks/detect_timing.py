"""Benchmark: HOG detection in a 12-megapixel photo costs about what a 2-megapixel one does.

The detector works at most on ``max_pixels`` (2 MP by default): a larger photo is reduced
first, so the face it holds is found at the cost of a 2 MP photo. This measures that: the
same LFW face pasted into a 4000x3000 canvas (the 12 MP photo) and into a 1600x1200 one (the
baseline, measured in the same run on the same cores), each detected ``--repeat`` times; it
prints the median time of both and their ratio, and checks the face is found in the big one.

    python benchmarks/detect_timing.py [--repeat 5] [--lfw-dir DIR]

A ratio near 1 (up to ~3, the reduction itself costs something) is what the README claims;
a ratio near 6 (the pixel ratio) would mean the big photo is scanned at full size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from faceledger.vision.detection import create_detector

REPO = Path(__file__).resolve().parents[1]


def default_lfw_dir() -> Path:
    env = os.environ.get("FACELEDGER_LFW")
    return Path(env) if env else REPO.parent / "shared" / "data" / "lfw"


def canvas(face: Image.Image, size: tuple[int, int], side: int, at: tuple[int, int]) -> np.ndarray:
    out = Image.new("RGB", size, (110, 120, 130))
    out.paste(face.resize((side, side)), at)
    return np.asarray(out)


def median_seconds(detect: object, image: np.ndarray, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        detect(image)  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lfw-dir", type=Path, default=default_lfw_dir())
    args = ap.parse_args()
    photo = args.lfw_dir / "Al_Gore" / "Al_Gore_0001.jpg"
    if not photo.is_file():
        print(f"LFW not found at {args.lfw_dir} (set FACELEDGER_LFW or --lfw-dir)", file=sys.stderr)
        return 2
    face = Image.open(photo).convert("RGB")
    big = canvas(face, (4000, 3000), 1000, (2500, 900))  # LFW face box ~ 45% of the photo
    small = canvas(face, (1600, 1200), 400, (1000, 360))
    det = create_detector("hog")
    found = det.detect(big)  # also warms up
    if len(found) != 1:
        print(f"expected one face in the 12 MP photo, found {len(found)}", file=sys.stderr)
        return 1
    det.detect(small)
    t_big = median_seconds(det.detect, big, args.repeat)
    t_small = median_seconds(det.detect, small, args.repeat)
    print(f"HOG detection, median of {args.repeat}, one face, {os.cpu_count()} CPUs:")
    print(f"  12 MP photo (4000x3000):          {t_big * 1000:8.1f} ms")
    print(f"  baseline 1.9 MP photo (1600x1200): {t_small * 1000:8.1f} ms")
    print(f"  ratio: {t_big / t_small:.2f} (pixels: {4000 * 3000 / (1600 * 1200):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
