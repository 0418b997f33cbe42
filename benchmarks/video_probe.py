"""Time to search with a video probe (#14 item 3; target: a 10-second 720p clip in under 10 s
on 2 cores), next to a baseline measured in the same run: the same sampled frames searched
one by one as photos.

Makes a clip from LFW photos with PyAV (tests/videoclips.py: each person an LFW photo, twice
its size, panned and zoomed across a grey frame; H.264 in MP4), ingests a small LFW gallery
(those people's other photos and some others) into a fresh data dir, then times

* ``video``: ``Faceledger.search_video`` on the clip, end to end (decode, sample, detect,
  embed and track every sampled frame, fuse, search, the probe frame, the record and ledger),
  after one untimed warm-up run, with the default detection threads (2 on 2 cores), then
  with one;
* ``decode``: decoding and sampling the clip alone (no face work);
* ``baseline``: each sampled frame, as a JPEG, searched with ``Faceledger.search``, summed.

    python benchmarks/video_probe.py [--seconds 10] [--size 1280x720] [--fps 25]
        [--sample-fps 2] [--people 1] [--lfw-dir DIR]

Prints one JSON object: wall and CPU seconds of each (and the load average: wall time is
best measured alone on the machine; CPU time is not inflated by other processes).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
PW = "video-probe-benchmark"
PEOPLE = [("Al_Gore", 3), ("Adrien_Brody", 4), ("Abdullah_Gul", 3)]
OTHERS = [
    "Aaron_Peirsol",
    "Alejandro_Toledo",
    "Ali_Naimi",
    "Alvaro_Uribe",
    "Amelie_Mauresmo",
    "Andre_Agassi",
    "Andy_Roddick",
]


def cpu() -> float:
    """CPU seconds this process has used (all threads): unlike wall time, not inflated by
    other processes on the machine."""
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=25, help="the clip's frame rate")
    ap.add_argument("--sample-fps", type=float, default=2.0, help="frames sampled a second")
    ap.add_argument("--people", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--lfw-dir", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    from PIL import Image

    from faceledger.core import Faceledger, SearchRequest
    from faceledger.gallery.ingest import PipelineSettings
    from faceledger.gallery.sources import iter_paths
    from faceledger.vision.video import VideoLimits, sample_frames
    from videoclips import clip

    lfw = args.lfw_dir
    people = PEOPLE[: args.people]
    t0 = time.perf_counter()
    data = clip(
        [lfw / n / f"{n}_{i:04d}.jpg" for n, i in people],
        seconds=args.seconds,
        fps=args.fps,
        size=(width, height),
        scale=2.0,
    )
    made = time.perf_counter() - t0

    base = Path(tempfile.mkdtemp(prefix="video-probe-"))
    try:
        photos = base / "gallery"
        photos.mkdir()
        for name in [n for n, _ in PEOPLE] + OTHERS:
            src = lfw / name / f"{name}_0001.jpg"
            if src.is_file():
                shutil.copy(src, photos)
        fl = Faceledger(base / "data")
        root = fl.init_admin("root", PW)
        fl.add_user(root, "ivy", PW, "investigator", None)
        fl.ingest(root, iter_paths([photos], "archive", "benchmark"), PipelineSettings())
        fl.save_policy(root, fl.policy().with_value("daily_quota", "0"))
        fl.video_limits = VideoLimits(fps=args.sample_fps)
        ivy = fl.login("ivy", PW)
        req = SearchRequest("BENCH-1", "violent-crime", "benchmark of a video probe", top_k=10)
        fl.search(ivy, (photos / f"{PEOPLE[0][0]}_0001.jpg").read_bytes(), req)  # warm up

        t0 = time.perf_counter()
        frames = list(sample_frames(data, fl.video_limits))
        decode = time.perf_counter() - t0

        track = 1 if args.people > 1 else None
        timed: dict[str, tuple[float, float]] = {}
        result: dict[str, Any] = {}
        for key, threads in (("warm-up", 1), ("threads", VideoLimits().threads), ("one", 1)):
            fl.video_limits = VideoLimits(fps=args.sample_fps, threads=threads)
            t0, c0 = time.perf_counter(), cpu()
            result = fl.search_video(ivy, data, req, track=track)
            timed[key] = (time.perf_counter() - t0, cpu() - c0)
        video, video_cpu = timed["threads"]
        one_thread, one_cpu = timed["one"]

        jpegs = []
        for f in frames:
            buf = io.BytesIO()
            Image.fromarray(f.pixels).save(buf, format="JPEG", quality=92)
            jpegs.append(buf.getvalue())
        t0, c0 = time.perf_counter(), cpu()
        found = 0
        for jpeg in jpegs:
            found += len(fl.search(ivy, jpeg, req)["faces"])
        baseline, baseline_cpu = time.perf_counter() - t0, cpu() - c0
        top = result["faces"][0]["candidates"][0]
        fl.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(
        json.dumps(
            {
                "clip": {
                    "seconds": args.seconds,
                    "size": f"{width}x{height}",
                    "fps": args.fps,
                    "bytes": len(data),
                    "people": args.people,
                    "made_s": round(made, 2),
                },
                "cpus": os.cpu_count(),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "sample_fps": args.sample_fps,
                "frames_sampled": len(frames),
                "video_search_s": round(video, 2),
                "video_search_cpu_s": round(video_cpu, 2),
                "video_threads": VideoLimits().threads,
                "video_search_1_thread_s": round(one_thread, 2),
                "video_search_1_thread_cpu_s": round(one_cpu, 2),
                "decode_and_sample_s": round(decode, 2),
                "baseline_frames_as_photos_s": round(baseline, 2),
                "baseline_cpu_s": round(baseline_cpu, 2),
                "baseline_faces_searched": found,
                "speed_vs_baseline": round(baseline / video, 2),
                "target_s": 10.0,
                "within_target": video < 10.0,
                "track": result["video"]["track"],
                "tracks": result["video"]["tracks"],
                "frames_used": result["video"]["frames_used"],
                "top_candidate": Path(top["provenance"][0]["original_path"]).name,
                "top_score": top["score"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
