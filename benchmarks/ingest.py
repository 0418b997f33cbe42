"""Benchmark: ingesting LFW photos, the ``face_recognition`` library vs ``faceledger ingest``.

Both sides get the same N LFW images (evenly spaced over the sorted file list) and the same
number of worker processes:

(a) ``face_recognition`` 1.3.0 as its CLI runs with ``--cpus N``: a ``forkserver`` process
    pool (each worker imports the library and loads dlib's models), and per image
    ``load_image_file`` -> ``face_locations`` (HOG, upsample 1) -> ``face_encodings``
    (5-point landmarks + ResNet descriptor). Only vectors are produced; nothing is stored.
(b) ``faceledger ingest <folder> --workers N --json`` as a subprocess, as the admin of a
    fresh data dir (``faceledger init`` first, untimed): decoding, detection,
    landmarks, alignment, embedding, quality, face crops, SHA-256 dedup, the SQLite rows
    and files, and the vector index, all committed. The folder holds hard links to (or copies
    of) the images.

Times are wall-clock and include process start-up and model loading on both sides.
Install the baseline with ``pip install face_recognition==1.3.0 --no-deps`` (its API needs
only dlib, numpy, Pillow and ``face_recognition_models``).

    python benchmarks/ingest.py --images 2000 [--lfw-dir DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_USER = "bench-admin"
BENCH_PASSWORD = "bench-only-password-0123456789"  # a throw-away data dir's admin


def default_lfw_dir() -> Path:
    env = os.environ.get("FACELEDGER_LFW")
    return Path(env) if env else REPO.parent / "shared" / "data" / "lfw"


def pick_images(lfw: Path, n: int) -> list[Path]:
    """``n`` LFW images spread evenly over the sorted list of all of them."""
    every = sorted(lfw.glob("*/*.jpg"))
    if not every:
        raise SystemExit(f"no LFW images under {lfw}")
    if n >= len(every):
        return every
    step = len(every) / n
    return [every[int(i * step)] for i in range(n)]


def _fr_image(path: str) -> int:
    """One image through face_recognition, as its CLI's ``test_image`` does; faces found."""
    import face_recognition

    image = face_recognition.load_image_file(path)
    locations = face_recognition.face_locations(image)
    encodings = face_recognition.face_encodings(image, known_face_locations=locations)
    return len(encodings)


def run_face_recognition(paths: list[Path], workers: int) -> dict[str, Any]:
    # face_recognition_cli.process_images_in_process_pool: forkserver where available
    context: Any = multiprocessing
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with context.Pool(processes=workers) as pool:
        counts = pool.map(_fr_image, [str(p) for p in paths])
    seconds = time.perf_counter() - t0
    return {
        "images": len(paths),
        "faces": sum(counts),
        "no_face": sum(1 for c in counts if c == 0),
        "seconds": seconds,
        "load_before": load,
    }


def faceledger_exe() -> str:
    here = Path(sys.executable).parent / "faceledger"
    if here.is_file():
        return str(here)
    found = shutil.which("faceledger")
    if found is None:
        raise SystemExit("the faceledger command is not installed (pip install -e .)")
    return found


def run_faceledger(paths: list[Path], workers: int, extra: list[str], work: Path) -> dict[str, Any]:
    folder = work / "images"
    folder.mkdir()
    for p in paths:  # LFW names are unique: <person>_<nnnn>.jpg
        # ingest refuses symlinks that leave the folder, so hard-link, or copy across devices
        try:
            os.link(p, folder / p.name)
        except OSError:
            shutil.copyfile(p, folder / p.name)
    data_dir = work / "data"
    env = {**os.environ, "FACELEDGER_PASSWORD": BENCH_PASSWORD}
    env.pop("FACELEDGER_TOKEN", None)
    init = [faceledger_exe(), "init", "--admin", BENCH_USER, "--data-dir", str(data_dir)]
    proc = subprocess.run(init, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"faceledger init failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cmd = [
        faceledger_exe(),
        "ingest",
        str(folder),
        "--legal-basis",
        "bench",
        "--data-dir",
        str(data_dir),
        "--as",
        BENCH_USER,
        "--workers",
        str(workers),
        "--json",
        *extra,
    ]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"faceledger ingest failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    if summary["failed"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["failures"].items()))
        first = summary["errors"][0]["message"] if summary["errors"] else ""
        raise SystemExit(
            f"faceledger ingest failed on {summary['failed']} of {summary['seen']} images "
            f"({reasons}; e.g. {first}); no rate reported"
        )
    return {
        "images": summary["seen"],
        "new": summary["new"],
        "duplicates": summary["duplicates"],
        "failed": summary["failed"],
        "faces": summary["faces"],
        "no_face": summary["no_face"],
        "seconds": seconds,
        "ingest_seconds": summary["seconds"],
        "load_before": load,
        "command": " ".join(cmd[1:]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="number of LFW images")
    parser.add_argument("--lfw-dir", type=Path, default=None, help="LFW root folder")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--detector", default=None, help="faceledger --detector (default: its own)")
    parser.add_argument("--embedder", default=None, help="faceledger --embedder (default: its own)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)

    lfw = args.lfw_dir or default_lfw_dir()
    if not lfw.is_dir():
        print(f"LFW not found at {lfw}; pass --lfw-dir or set FACELEDGER_LFW", file=sys.stderr)
        return 2
    try:
        import face_recognition  # noqa: F401
    except ImportError:
        print("pip install face_recognition==1.3.0 --no-deps", file=sys.stderr)
        return 2
    paths = pick_images(lfw, args.images)
    for p in paths:  # warm the page cache so neither side pays for the first read
        p.read_bytes()
    extra = []
    if args.detector:
        extra += ["--detector", args.detector]
    if args.embedder:
        extra += ["--embedder", args.embedder]

    print(f"{len(paths)} LFW images, {args.workers} workers, {os.cpu_count()} CPUs", flush=True)
    fr = run_face_recognition(paths, args.workers)
    fr_rate = fr["images"] / fr["seconds"]
    print(
        f"(a) face_recognition face_locations+face_encodings: {fr_rate:7.1f} images/s "
        f"({fr['seconds']:.1f} s; {fr['faces']} faces, {fr['no_face']} images without)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="faceledger-bench-") as tmp:
        fl = run_faceledger(paths, args.workers, extra, Path(tmp))
    fl_rate = fl["images"] / fl["seconds"]
    print(
        f"(b) faceledger ingest (stored, indexed):            {fl_rate:7.1f} images/s "
        f"({fl['seconds']:.1f} s, {fl['ingest_seconds']:.1f} s inside ingest; {fl['faces']} "
        f"faces, {fl['no_face']} images without, {fl['duplicates']} duplicates, "
        f"{fl['failed']} failed)"
    )
    print(f"ratio (b)/(a): {fl_rate / fr_rate:.2f}x")
    print(
        f"1-min load average before (a): {fr['load_before']:.2f}, before (b): "
        f"{fl['load_before']:.2f} (other work on the machine slows either side)"
    )
    if args.json:
        doc = {"face_recognition": fr, "faceledger": fl, "ratio": fl_rate / fr_rate}
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
