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
The machine is shared, so each side also records how busy the CPUs were while it ran:
``cores_busy`` is the CPU time of its own process tree (this process, the pool workers or
the ingest subprocess and its workers) divided by its wall time, i.e. the average number of
cores it kept busy; ``machine_cores_busy`` is the same for every process on the machine
(``/proc/stat``), so the difference is what other work took; and the 1-minute load average
is sampled every second during the run (mean and max; it trails by about a minute, so on a
run of a minute or two it is only a rough guide). ``load_before`` is the load average when
the side started.
Install the baseline with ``pip install face_recognition==1.3.0 --no-deps`` (its API needs
only dlib, numpy, Pillow and ``face_recognition_models``).

    python benchmarks/ingest.py --images 2000 [--lfw-dir DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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


# -- CPU use and load during a run --------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _live_descendants_cpu() -> dict[tuple[int, int], float]:
    """(pid, start time) -> CPU seconds of each live descendant of this process: its own
    plus that of the children it has reaped (``/proc/<pid>/stat``; empty off Linux).

    A forkserver pool's workers are children of the forkserver, not of this process, so
    ``RUSAGE_CHILDREN`` never sees them while the forkserver lives; once it has reaped them
    their CPU time is in its ``cutime``/``cstime``, which this counts.
    """
    parent: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue  # exited meanwhile
        fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces
        pid = int(entry)
        parent[pid] = int(fields[1])
        stats[pid] = fields
    tree, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - tree
        tree |= frontier
    out = {}
    for pid in tree:
        f = stats[pid]  # fields[0] is the state: utime..cstime are 11..14, starttime 19
        ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        out[(pid, int(f[19]))] = ticks / _CLK_TCK
    return out


def _machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)  # idle + iowait
    total = sum(cpu[:8])  # guest time is already inside user/nice
    return total - idle, total


@dataclass
class _Snapshot:
    wall: float
    own: float  # this process, user + system
    reaped: float  # children this process has waited for, user + system
    live: dict[tuple[int, int], float]
    machine: tuple[int, int]

    @classmethod
    def now(cls) -> _Snapshot:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(
            time.perf_counter(),
            me.ru_utime + me.ru_stime,
            kids.ru_utime + kids.ru_stime,
            _live_descendants_cpu(),
            _machine_busy_ticks(),
        )


class CpuMeter:
    """CPU time of this process tree and the load average while a block runs.

    Use as ``with CpuMeter() as m: ...`` and read ``m.result()`` afterwards. End the block
    only once every process it started has exited and been waited for (``Pool.close`` and
    ``join``; ``subprocess.run`` returns after the wait), so each one's CPU time is counted
    exactly once: while alive from ``/proc``, once reaped in its parent's child totals.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.loads.append(os.getloadavg()[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> CpuMeter:
        self.load_before = os.getloadavg()[0]
        self.start = _Snapshot.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = _Snapshot.now()
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, Any]:
        a, b = self.start, self.end
        wall = b.wall - a.wall
        live = sum(cpu - a.live.get(key, 0.0) for key, cpu in b.live.items())
        cpu = (b.own - a.own) + (b.reaped - a.reaped) + live
        busy = b.machine[0] - a.machine[0]
        total = b.machine[1] - a.machine[1]
        ncpu = os.cpu_count() or 1
        return {
            "cpu_seconds": cpu,
            "cores_busy": cpu / wall if wall > 0 else 0.0,
            "machine_cores_busy": ncpu * busy / total if total > 0 else None,
            "load_before": self.load_before,
            "load_mean": sum(self.loads) / len(self.loads),
            "load_max": max(self.loads),
            "load_samples": len(self.loads),
        }


def describe_load(r: dict[str, Any]) -> str:
    machine = r["machine_cores_busy"]
    others = "" if machine is None else f", machine {machine:.2f}"
    return (
        f"cores busy: this side {r['cores_busy']:.2f}{others}; 1-min load average "
        f"during: mean {r['load_mean']:.2f}, max {r['load_max']:.2f} "
        f"(before {r['load_before']:.2f})"
    )


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
    with CpuMeter() as meter:
        t0 = time.perf_counter()
        pool = context.Pool(processes=workers)
        try:
            counts = pool.map(_fr_image, [str(p) for p in paths])
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.close()
            pool.join()  # the workers have exited and been reaped: their CPU is counted
        seconds = time.perf_counter() - t0
    return {
        "images": len(paths),
        "faces": sum(counts),
        "no_face": sum(1 for c in counts if c == 0),
        "seconds": seconds,
        **meter.result(),
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
    with CpuMeter() as meter:
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
        "stages": summary.get("stages", {}),
        **meter.result(),
        "command": " ".join(cmd[1:]),
    }


WORKER_STAGES = ("decode", "detect", "embed")
PARENT_STAGES = ("read", "files", "database", "wait", "index")


def breakdown(stages: dict[str, float], images: int, workers: int) -> list[str]:
    """Where ingest's time went, per stored photo: the workers' stages (CPU-bound, on
    ``workers`` processes) and the parent's (reading, storing, waiting for the workers)."""
    if not stages or not images:
        return ["(no per-stage times: this faceledger does not report them)"]

    def per_photo(keys: tuple[str, ...]) -> tuple[str, float]:
        parts = [(k, 1000 * stages.get(k, 0.0) / images) for k in keys if k in stages]
        text = ", ".join(f"{k} {ms:.1f}" for k, ms in parts)
        return text, sum(ms for _, ms in parts)

    w_text, w_total = per_photo(WORKER_STAGES)
    p_text, _ = per_photo(PARENT_STAGES)
    busy = sum(1000 * stages.get(k, 0.0) / images for k in ("read", "files", "database"))
    return [
        f"per photo, ms of worker time: {w_text} (sum {w_total:.1f}; over {workers} "
        f"workers: {w_total / max(workers, 1):.1f} ms of wall per photo)",
        f"per photo, ms in the parent: {p_text} (busy {busy:.1f}, the rest waiting)",
    ]


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
    print(f"    {describe_load(fr)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="faceledger-bench-") as tmp:
        fl = run_faceledger(paths, args.workers, extra, Path(tmp))
    fl_rate = fl["images"] / fl["seconds"]
    print(
        f"(b) faceledger ingest (stored, indexed):            {fl_rate:7.1f} images/s "
        f"({fl['seconds']:.1f} s, {fl['ingest_seconds']:.1f} s inside ingest; {fl['faces']} "
        f"faces, {fl['no_face']} images without, {fl['duplicates']} duplicates, "
        f"{fl['failed']} failed)"
    )
    print(f"    {describe_load(fl)}")
    for line in breakdown(fl["stages"], fl["new"], args.workers):
        print(f"    {line}")
    print(
        f"ratio (b)/(a): {fl_rate / fr_rate:.2f}x (cores busy {fl['cores_busy']:.2f} during "
        f"(b) vs {fr['cores_busy']:.2f} during (a); machine-wide busy beyond this side's "
        "is other work, which slows either side)"
    )
    if args.json:
        doc = {"face_recognition": fr, "faceledger": fl, "ratio": fl_rate / fr_rate}
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
