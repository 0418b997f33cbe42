"""Memory taken by oversized probes: concurrent uploads to ``/api/v1/detect``.

Starts ``faceledger serve`` on 127.0.0.1 over a fresh data dir (two LFW photos in the
gallery, one investigator), warms it up with one ordinary detect, then posts UPLOADS copies
of a small file that decodes to a huge image (default: a 7999x7999 16-bit grey PNG of
124 KB) at the same moment, and reports the server's resident memory just before
(VmRSS) and its peak (VmHWM) after, from /proc.

    python benchmarks/probe_memory.py [--kind png16] [--side 7999] [--uploads 3]
        [--max-probe-mp 64] [--decoders 1] [--src DIR] [--lfw-dir DIR]

``--max-probe-mp`` and ``--decoders`` set FACELEDGER_MAX_PROBE_MEGAPIXELS and
FACELEDGER_PROBE_DECODERS for the server (raise the budget to make the server decode the
uploads instead of refusing them); ``--src`` runs the server on another source tree (an
older faceledger, to compare). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PW = "probe-memory-password"


def png(side: int, bit_depth: int, colour_type: int, channels: int) -> bytes:
    """A PNG of zeros written by hand (Pillow writes no 16-bit colour PNGs)."""
    row = b"\x00" + bytes(side * channels * bit_depth // 8)
    body = zlib.compress(row * side, 9)

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, bit_depth, colour_type, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def probe_file(kind: str, side: int) -> bytes:
    """A small file that decodes to a side x side image of the given kind."""
    from PIL import Image

    if kind == "png16":
        return png(side, 16, 0, 1)
    if kind == "png-rgba16":
        return png(side, 16, 6, 4)
    buf = io.BytesIO()
    if kind == "jpeg":
        Image.new("RGB", (side, side), (90, 90, 90)).save(buf, format="JPEG", quality=50)
    elif kind == "webp":
        Image.new("RGBA", (side, side), (9, 9, 9, 9)).save(buf, format="WEBP", lossless=True)
    elif kind == "tiff-float":
        Image.new("F", (side, side), 1.5).save(buf, format="TIFF", compression="tiff_adobe_deflate")
    else:
        raise SystemExit(f"unknown --kind {kind}")
    return buf.getvalue()


def memory_mb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out


def seed(data: Path, lfw: Path) -> str:
    """A data dir with two gallery photos and an investigator; that investigator's token."""
    from faceledger.core import Faceledger
    from faceledger.gallery.ingest import PipelineSettings
    from faceledger.gallery.sources import iter_paths

    photos = data.parent / "gallery"
    photos.mkdir()
    for name in ("Al_Gore", "Adrien_Brody"):
        shutil.copy(lfw / name / f"{name}_0001.jpg", photos)
    fl = Faceledger(data)
    root = fl.init_admin("root", PW)
    fl.add_user(root, "inv", PW, "investigator")
    fl.ingest(root, iter_paths([photos], "archive", "benchmark"), PipelineSettings(embedder="dlib"))
    inv = fl.login("inv", PW)
    return fl.create_token(inv, "inv", "probe-memory", days=1)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="png16", help="png16, png-rgba16, jpeg, webp, tiff-float")
    ap.add_argument("--side", type=int, default=7999, help="width and height, px")
    ap.add_argument("--uploads", type=int, default=3, help="posted at the same moment")
    ap.add_argument("--max-probe-mp", type=float, default=None)
    ap.add_argument("--decoders", type=int, default=None)
    ap.add_argument("--src", type=Path, default=REPO / "src", help="faceledger sources to serve")
    ap.add_argument("--lfw-dir", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="faceledger-probe-memory-"))
    data = tmp / "data"
    token = seed(data, args.lfw_dir)
    blob = probe_file(args.kind, args.side)
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
    if args.max_probe_mp is not None:
        env["FACELEDGER_MAX_PROBE_MEGAPIXELS"] = str(args.max_probe_mp)
    if args.decoders is not None:
        env["FACELEDGER_PROBE_DECODERS"] = str(args.decoders)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    command = ["serve", "--data-dir", str(data), "--port", str(port)]
    server = subprocess.Popen(
        [sys.executable, "-m", "faceledger.cli", *command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    headers = {"Authorization": f"Bearer {token}"}
    result: dict[str, Any] = {"kind": args.kind, "side": args.side, "file_bytes": len(blob)}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        warm = (args.lfw_dir / "Al_Gore" / "Al_Gore_0002.jpg").read_bytes()
        r = httpx.post(f"{base}/detect", headers=headers, files={"photo": ("a.jpg", warm)})
        r.raise_for_status()
        time.sleep(0.5)
        before = memory_mb(server.pid)
        barrier = threading.Barrier(args.uploads)
        answers: list[tuple[int, str, float]] = []

        def upload() -> None:
            with httpx.Client(timeout=600) as http:
                barrier.wait()
                t0 = time.perf_counter()
                resp = http.post(
                    f"{base}/detect", headers=headers, files={"photo": ("p.png", blob)}
                )
                code = resp.json().get("code", "ok") if resp.status_code != 200 else "ok"
                answers.append((resp.status_code, code, round(time.perf_counter() - t0, 2)))

        threads = [threading.Thread(target=upload) for _ in range(args.uploads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = memory_mb(server.pid)
        result |= {
            "rss_before_mib": before["VmRSS"],
            "peak_after_mib": after["VmHWM"],
            "added_mib": after["VmHWM"] - before["VmRSS"],
            "answers": sorted(answers),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
