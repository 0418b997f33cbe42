"""Benchmark: probe to results over HTTP (#15 item 4).

POSTs a 1 MP probe photo (a held-out LFW photo scaled to ``--size``, 1155x866 by default,
JPEG) to ``/api/v1/searches`` of a real ``faceledger serve`` (a subprocess on 127.0.0.1, a
free port) over a gallery of ``--faces`` faces, ``--requests`` times, one request at a time,
and reports p50 and p99 of the client's wall time, split into the stages the server reports
in its ``Server-Timing`` header (:mod:`faceledger.timing`): upload (the server's read of the
body), auth, checks (case, policy, approval, quota), decode, detect, embed, index (sync and
search), db (candidates with provenance, subjects and their vectors), ledger (the search
record and its ledger entry, one transaction) and core (the core's other work); ``rest`` is
what is left of the client's wall time (the framework: routing, form parsing, response
validation and JSON, HTTP on loopback, the client). The client's own send time is reported
beside (httpcore's trace).

The baseline, measured in the same run, interleaved request by request: the same probes
searched through the core directly (``Faceledger.search``, in this process, the same user,
no HTTP), timed by the same spans. The HTTP overhead is the ratio of the two p50s.

The gallery: the real LFW faces of ``--people`` people (ingested by the product from their
photos, each labelled with its person; the probes' people keep one photo out, the probe),
and synthetic distractors up to ``--faces`` in all: LFW-calibrated faces from
:func:`faceledger.evaluation.bench.generate` (identities of 1 + Geometric faces, mean 4),
rotated onto the real faces' principal axes as ``benchmarks/realscale.py --align pca`` does
(so that real probes meet them in the index as they would meet real faces), one face per
image, labelled by identity, written through the store's bulk path
(:meth:`faceledger.db.store.Store.add_images`; no image files: a search reads none); then the
product builds the index (``Faceledger.rebuild_index``). The data dir is built under
``--workdir`` (default a temporary dir, removed after the run); with ``--keep`` it stays, and
a later run with ``--keep`` and the same gallery settings reuses it.

The searching user is an investigator with an API token; the policy's daily quota is off
and the server's per-user rate limits are raised (FACELEDGER_SEARCH_RATE_PER_MINUTE,
FACELEDGER_RATE_PER_MINUTE), as ``benchmarks/load.py`` does; everything else is the
product's default (the default probe detector, probes not retained).

Measured (2-core dev VM, shared; 1,000,000 faces: 445 real LFW faces of 100 people +
999,555 synthetic, ivf_pqfs; build 241 s: real ingest 26 s, synthetic rows 178 s, index
36 s; 10 probe people, 1155x866 JPEG of 86 KB; default probe detector HOG; 200 requests per
side, interleaved; the mate at rank 1 in every search). p50 ms per stage:

    stage       HTTP    core        stage       HTTP    core
    upload      0.83    0.00        index      15.48   14.49
    auth        1.01    0.00        db         20.64   21.55
    checks      1.31    1.62        ledger      2.31    2.41
    decode      6.91    7.53        core        4.75    4.78
    detect    282.25  286.63        rest        5.58    0.01
    embed      27.13   28.67        sum       368.20  367.69
    measured p50 381.36 (HTTP) 382.78 (core); p99 562.28 / 510.65; HTTP/core 1.00x
    first search after start (index loaded, subjects counted): 23.3 s

Target p50 <= 150 ms missed: HOG detection is 74% of it (the 1 MP probe is enlarged to the
2 MP working size so that 48 px faces reach HOG's 80 px window).

    python benchmarks/search_http.py                       # 1M faces, 200 requests
    python benchmarks/search_http.py --faces 100000 --requests 100 --json
    python benchmarks/search_http.py --workdir /var/tmp/fl-http --keep   # build once
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from faceledger.core import Faceledger, SearchRequest
from faceledger.db.store import NewImage
from faceledger.evaluation.bench import default_face_model, generate
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_manifest
from faceledger.timing import SEARCH_STAGES, TOTAL, Timings, parse_header, recording
from faceledger.types import BBox, Detection, Face, Provenance

REPO = Path(__file__).resolve().parents[1]

FL = [sys.executable, "-m", "faceledger.cli"]
PW = "search-http-benchmark-password"
USER = "bench"
BUILD_FILE = "build.json"
BUILD_VERSION = 1  # bump when the gallery this script builds changes
BATCH = 20_000  # distractor images per transaction
TARGET_P50_MS = 150.0
CASE = {
    "case_number": "BENCH-HTTP",
    "purpose": "missing-person",
    "justification": "benchmark of probe-to-results latency (#15 item 4)",
}


def say(msg: str) -> None:
    print(f"[search_http] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the gallery ------------------------------------------------------------------------------
def lfw_people(lfw: Path, people: int) -> list[list[Path]]:
    """``people`` LFW people with at least 2 photos (each person's photos sorted), spread
    evenly over the sorted list."""
    found = []
    for d in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(d.glob("*.jpg"))
        if len(photos) >= 2:
            found.append(photos)
    if len(found) < people:
        sys.exit(f"{lfw}: only {len(found)} people with 2+ photos, {people} wanted")
    step = len(found) / people
    return [found[int(i * step)] for i in range(people)]


def probe_jpeg(path: Path, size: tuple[int, int]) -> bytes:
    """An LFW photo scaled to cover ``size`` (width, height) and centre-cropped to it."""
    w, h = size
    img = Image.open(path).convert("RGB")
    scale = max(w / img.width, h / img.height)
    big = img.resize(
        (round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC
    )
    left, top = (big.width - w) // 2, (big.height - h) // 2
    buf = io.BytesIO()
    big.crop((left, top, left + w, top + h)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _frame(vectors: np.ndarray) -> np.ndarray:
    """Orthonormal columns: the mean direction, then the principal axes orthogonal to it
    (by decreasing variance)."""
    v = np.asarray(vectors, np.float64)
    d = v.mean(axis=0)
    d /= np.linalg.norm(d)
    proj = np.eye(len(d)) - np.outer(d, d)
    w, e = np.linalg.eigh(proj @ np.cov(v.T) @ proj)
    q, r = np.linalg.qr(np.column_stack([d, e[:, np.argsort(w)[::-1][: len(d) - 1]]]))
    return np.asarray(q * np.sign(np.diag(r)))


def alignment(real: np.ndarray, synthetic: np.ndarray) -> np.ndarray:
    """The rotation (rows map as ``v @ R.T``) taking the synthetic faces' mean direction
    and principal axes onto the real faces' (``benchmarks/realscale.py --align pca``): an
    orthogonal map, so the synthetic faces' scores among themselves are unchanged."""
    return (_frame(real) @ _frame(synthetic).T).astype(np.float32)


def distractors(real: np.ndarray, count: int, seed: int, model_id: str) -> Iterator[list[NewImage]]:
    """Batches of synthetic one-face images (see the module docstring)."""
    model = default_face_model(real.shape[1])
    rot = None
    det = Detection(bbox=BBox(0, 0, 100, 100), score=1.0, detector="synthetic")
    label_base = 0
    done = 0
    for chunk in generate(model, count, 0, seed=seed):
        if rot is None:  # fitted once, on the first chunk (as realscale fits on a sample)
            rot = alignment(real, chunk.vectors[:50_000])
            say(f"distractors aligned to the axes of {len(real)} real faces")
        vectors = (chunk.vectors @ rot.T).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for s in range(0, len(vectors), BATCH):
            batch = []
            for j, (vec, label) in enumerate(
                zip(vectors[s : s + BATCH], chunk.labels[s : s + BATCH], strict=True)
            ):
                i = done + s + j
                sha = hashlib.sha256(f"synthetic-{seed}-{i}".encode()).hexdigest()
                prov = Provenance(
                    source="synthetic",
                    legal_basis="benchmark: synthetic faces, no person",
                    original_path=f"synthetic/{i}.jpg",
                    subject_label=f"synthetic-{label_base + int(label)}",
                )
                face = Face(det, vec, model_id, 1.0, 100, 100.0, 0.0)
                batch.append(
                    NewImage(sha, 250, 250, "JPEG", 0, f"synthetic/{sha}.jpg", prov, [(face, "")])
                )
            yield batch
        label_base += int(chunk.labels.max()) + 1 if len(chunk.labels) else 0
        done += len(vectors)


def build(data: Path, args: argparse.Namespace, people: list[list[Path]]) -> dict[str, Any]:
    """A fresh data dir: users, policy, the real faces, the distractors, the index."""
    t_all = time.perf_counter()
    fl = Faceledger(data)
    admin = fl.init_admin("admin", PW)
    fl.add_user(admin, USER, PW, "investigator")
    fl.update_policy(admin, {"daily_quota": 0})
    # the real faces: every photo of each person but the probes' (each probe person's first),
    # copied beside a manifest that names the person each shows
    photos_dir = data.parent / "lfw-gallery"
    shutil.rmtree(photos_dir, ignore_errors=True)
    photos_dir.mkdir(parents=True)
    with (photos_dir / "manifest.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "subject_label"])
        copied = 0
        for n, photos in enumerate(people):
            for p in (photos[1:] if n < args.probes else photos)[: args.max_photos]:
                shutil.copy(p, photos_dir / p.name)
                out.writerow([p.name, p.parent.name])
                copied += 1
    t0 = time.perf_counter()
    items = iter_manifest(photos_dir / "manifest.csv", "lfw", "benchmark: LFW, public data set")
    workers = 2 if copied >= 40 else 1  # a pool's start costs more than a few photos
    summary = fl.ingest(admin, items, PipelineSettings(), workers=workers)
    t_real = time.perf_counter() - t0
    real = [v for _, v in fl.store.iter_vectors()]
    real_vecs = np.concatenate(real) if real else np.zeros((0, 128), np.float32)
    model_id = fl.store.model_id()
    if model_id is None:
        sys.exit(f"no face was found in the {copied} LFW photos ingested: {summary.failures}")
    say(f"{len(real_vecs)} real faces of {len(people)} people ingested in {t_real:.1f}s")
    t0 = time.perf_counter()
    added = 0
    for batch in distractors(real_vecs, max(0, args.faces - len(real_vecs)), args.seed, model_id):
        added += fl.store.add_images(batch, None)
    t_syn = time.perf_counter() - t0
    say(f"{added} synthetic faces written in {t_syn:.1f}s")
    t0 = time.perf_counter()
    faces, kind = fl.rebuild_index(admin)
    t_index = time.perf_counter() - t0
    say(f"index of {faces} faces ({kind}) built in {t_index:.1f}s")
    _, token = fl.create_token(fl.login(USER, PW), USER, "benchmark", 30)
    fl.close()
    return {
        "version": BUILD_VERSION,
        "faces": args.faces,
        "people": args.people,
        "probes": args.probes,
        "max_photos": args.max_photos,
        "seed": args.seed,
        "gallery_faces": faces,
        "real_faces": len(real_vecs),
        "real_photos_ingested": summary.new,
        "synthetic_faces": added,
        "index_kind": kind,
        "token": token,
        "seconds": {
            "ingest_real": round(t_real, 1),
            "write_synthetic": round(t_syn, 1),
            "index": round(t_index, 1),
            "total": round(time.perf_counter() - t_all, 1),
        },
    }


def prepared(args: argparse.Namespace, people: list[list[Path]]) -> tuple[Path, dict[str, Any]]:
    """The data dir under the work dir, built now or (``--keep``) reused from a run with the
    same settings."""
    data = args.workdir / "data"
    info_path = args.workdir / BUILD_FILE
    want = {k: getattr(args, k) for k in ("faces", "people", "probes", "max_photos", "seed")}
    if args.keep and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("version") == BUILD_VERSION and all(info.get(k) == v for k, v in want.items()):
            say(f"reusing the gallery in {data} (built in {info['seconds']['total']}s)")
            info["reused"] = True
            return data, info
        say(f"{data} was built with other settings: building again")
    if data.exists():
        shutil.rmtree(data)
    info_path.unlink(missing_ok=True)
    info = build(data, args, people)
    info_path.write_text(json.dumps(info, indent=1))
    info["reused"] = False
    return data, info


# --- measuring --------------------------------------------------------------------------------
def top_person(result: dict[str, Any]) -> str | None:
    """The person the best candidate of the first probe face is labelled as."""
    faces = result.get("faces") or []
    cands = faces[0]["candidates"] if faces else []
    prov = cands[0]["provenance"] if cands else []
    return prov[0].get("subject_label") if prov else None


def http_search(
    client: httpx.Client, base: str, token: str, probe: bytes
) -> tuple[dict[str, Any], dict[str, Any]]:
    events: dict[str, float] = {}

    def trace(name: str, info: dict[str, Any]) -> None:
        events[name] = time.perf_counter()

    t0 = time.perf_counter()
    r = client.post(
        f"{base}/searches",
        headers={"Authorization": f"Bearer {token}"},
        files={"probe": ("probe.jpg", probe, "image/jpeg")},
        data=CASE,
        extensions={"trace": trace},
    )
    wall = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"search over HTTP: {r.status_code} {r.text[:300]}")
    header = r.headers.get("server-timing")
    if header is None:
        raise RuntimeError("the search's response has no Server-Timing header")
    send = events.get("http11.send_request_body.complete", t0) - events.get(
        "http11.send_request_headers.started", t0
    )
    sample = {"wall_ms": 1000 * wall, "stages": parse_header(header), "send_ms": 1000 * send}
    return sample, r.json()


def core_search(fl: Faceledger, actor: Any, probe: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    with recording(Timings()) as rec:
        t0 = time.perf_counter()
        result = fl.search(actor, probe, SearchRequest(**CASE))
        wall = time.perf_counter() - t0
    stages = {name: rec.ms(name) for name in rec.seconds}
    return {"wall_ms": 1000 * wall, "stages": stages}, result


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values, np.float64), q)), 2) if values else 0.0


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99 of the wall time, and the p50 of each stage and of the rest (wall time less
    every stage) with their sum beside the measured p50."""
    walls = [s["wall_ms"] for s in samples]
    stages = {n: pct([s["stages"].get(n, 0.0) for s in samples], 50) for n in SEARCH_STAGES}
    rest = [s["wall_ms"] - sum(s["stages"].get(n, 0.0) for n in SEARCH_STAGES) for s in samples]
    stages["rest"] = pct(rest, 50)
    out: dict[str, Any] = {
        "requests": len(samples),
        "p50_ms": pct(walls, 50),
        "p99_ms": pct(walls, 99),
        "mean_ms": round(statistics.fmean(walls), 2) if walls else 0.0,
        "stages_p50_ms": stages,
        "stages_p50_sum_ms": round(sum(stages.values()), 2),
    }
    if samples and TOTAL in samples[0]["stages"]:
        out["server_total_p50_ms"] = pct([s["stages"][TOTAL] for s in samples], 50)
        out["outside_server_p50_ms"] = pct([s["wall_ms"] - s["stages"][TOTAL] for s in samples], 50)
        out["client_send_p50_ms"] = pct([s["send_ms"] for s in samples], 50)
    return out


def start_server(data: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "FACELEDGER_DATA": str(data),
        "FACELEDGER_SEARCH_RATE_PER_MINUTE": "100000",
        "FACELEDGER_RATE_PER_MINUTE": "100000",
    }
    port = free_port()
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen(
        [*FL, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}); see {log.name}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError("the server did not answer /health within 120 s")


def measure(
    data: Path, info: dict[str, Any], probes: list[tuple[str, bytes]], args: argparse.Namespace
) -> dict[str, Any]:
    """Warm both sides up, then ``--requests`` searches each, interleaved."""
    fl = Faceledger(data)
    actor = fl.authenticate_token(info["token"])
    server, base = start_server(data, args.workdir)
    http: list[dict[str, Any]] = []
    core: list[dict[str, Any]] = []
    hits = {"http": 0, "core": 0}
    cold: dict[str, float] = {}
    try:
        with httpx.Client(timeout=900) as client:
            for i in range(args.warmup):
                name, probe = probes[i % len(probes)]
                t0 = time.perf_counter()
                http_search(client, base, info["token"], probe)
                t1 = time.perf_counter()
                core_search(fl, actor, probe)
                if i == 0:
                    cold = {
                        "http_s": round(t1 - t0, 2),
                        "core_s": round(time.perf_counter() - t1, 2),
                    }
                    say(f"first search: HTTP {cold['http_s']}s, core {cold['core_s']}s")
            for i in range(args.requests):
                name, probe = probes[i % len(probes)]
                order = ("http", "core") if i % 2 == 0 else ("core", "http")
                for side in order:
                    if side == "http":
                        sample, result = http_search(client, base, info["token"], probe)
                        http.append(sample)
                    else:
                        sample, result = core_search(fl, actor, probe)
                        core.append(sample)
                    hits[side] += top_person(result) == name
    finally:
        server.terminate()
        server.wait(timeout=60)
        detector = fl.searcher().analyzer.detector.name
        fl.close()
    h, c = summarise(http), summarise(core)
    ratio = h["p50_ms"] / c["p50_ms"] if c["p50_ms"] else None
    return {
        "http": h | {"rank1_mate": round(hits["http"] / max(1, len(http)), 3)},
        "core": c | {"rank1_mate": round(hits["core"] / max(1, len(core)), 3)},
        "http_over_core_p50": None if ratio is None else round(ratio, 3),
        "http_minus_core_p50_ms": round(h["p50_ms"] - c["p50_ms"], 2),
        "first_search_s": cold,
        "detector": detector,
        "target_p50_ms": TARGET_P50_MS,
        "target_met": h["p50_ms"] <= TARGET_P50_MS,
    }


def report(doc: dict[str, Any]) -> str:
    g, m = doc["gallery"], doc["measured"]
    h, c = m["http"], m["core"]
    how = "reused" if g["reused"] else "built"
    secs = g["seconds"]
    lines = [
        f"gallery: {g['gallery_faces']:,} faces ({g['index_kind']}): {g['real_faces']} real "
        f"LFW faces of {g['people']} people + {g['synthetic_faces']:,} synthetic; {how}, build "
        f"{secs['total']}s (real ingest {secs['ingest_real']}s, synthetic rows "
        f"{secs['write_synthetic']}s, index {secs['index']}s)",
        f"probe: {doc['probe']['width']}x{doc['probe']['height']} JPEG, "
        f"{doc['probe']['kb']:.0f} KB, {len(doc['probe']['people'])} people; detector "
        f"{m['detector']}; {h['requests']} requests per side, interleaved, one at a time",
        "",
        f"{'stage (p50, ms)':<18}{'HTTP':>10}{'core':>10}",
    ]
    for name in [*SEARCH_STAGES, "rest"]:
        lines.append(
            f"{name:<18}{h['stages_p50_ms'][name]:>10.2f}{c['stages_p50_ms'][name]:>10.2f}"
        )
    lines += [
        f"{'sum of p50s':<18}{h['stages_p50_sum_ms']:>10.2f}{c['stages_p50_sum_ms']:>10.2f}",
        f"{'measured p50':<18}{h['p50_ms']:>10.2f}{c['p50_ms']:>10.2f}",
        f"{'measured p99':<18}{h['p99_ms']:>10.2f}{c['p99_ms']:>10.2f}",
        f"{'rank-1 mate':<18}{h['rank1_mate']:>10.3f}{c['rank1_mate']:>10.3f}",
        "",
        f"server total p50 {h['server_total_p50_ms']} ms; outside the server (HTTP on "
        f"loopback, client) p50 {h['outside_server_p50_ms']} ms; client send p50 "
        f"{h['client_send_p50_ms']} ms",
        f"HTTP over core, p50: {m['http_over_core_p50']}x (+{m['http_minus_core_p50_ms']} ms)",
        f"target p50 <= {m['target_p50_ms']:.0f} ms over HTTP: "
        + ("met" if m["target_met"] else "MISSED"),
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=1_000_000, help="gallery faces in all")
    ap.add_argument("--requests", type=int, default=200, help="timed searches per side")
    ap.add_argument("--warmup", type=int, default=3, help="untimed searches per side first")
    ap.add_argument("--people", type=int, default=100, help="real LFW people in the gallery")
    ap.add_argument("--probes", type=int, default=10, help="of them, people probed (cycled)")
    ap.add_argument("--max-photos", type=int, default=10, help="gallery photos per person")
    ap.add_argument("--size", default="1155x866", help="probe photo WIDTHxHEIGHT")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lfw-dir", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    ap.add_argument("--workdir", type=Path, help="where the data dir is built (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir; reuse a kept one")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    if not 1 <= args.probes <= args.people:
        ap.error("--probes must be between 1 and --people")
    if args.requests < 1 or args.warmup < 1:
        ap.error("--requests and --warmup must be at least 1")
    width, _, height = args.size.partition("x")
    size = (int(width), int(height))
    temp = args.workdir is None
    args.workdir = Path(tempfile.mkdtemp(prefix="fl-search-http-")) if temp else args.workdir
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        people = lfw_people(args.lfw_dir, args.people)
        data, info = prepared(args, people)
        probes = [(p[0].parent.name, probe_jpeg(p[0], size)) for p in people[: args.probes]]
        measured = measure(data, info, probes, args)
    finally:
        if not args.keep:
            if temp:
                shutil.rmtree(args.workdir, ignore_errors=True)
            else:  # what this run built; the server's log stays
                for built in ("data", "lfw-gallery"):
                    shutil.rmtree(args.workdir / built, ignore_errors=True)
                (args.workdir / BUILD_FILE).unlink(missing_ok=True)
    doc = {
        "gallery": {k: v for k, v in info.items() if k != "token"},
        "probe": {
            "width": size[0],
            "height": size[1],
            "kb": round(statistics.fmean(len(b) for _, b in probes) / 1024, 1),
            "people": [n for n, _ in probes],
        },
        "measured": measured,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(doc, indent=1) if args.json else report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
