"""Load test: concurrent searches against `faceledger serve` while an ingest runs.

Bounded in count and time, loopback only. Starts a real server on 127.0.0.1 on a free port
over a fresh data dir seeded with LFW photos, creates one investigator (and API token) per
client, runs an ingest of more photos through the CLI at the same time, and has CLIENTS
threads each send REQUESTS searches. Prints throughput and p50/p99 latency, and checks
that there were no errors and that every search is in the ledger exactly once.

    python benchmarks/load.py [--clients 50] [--requests 4] [--gallery 100] [--lfw-dir DIR]

The server's per-user search rate limit is raised for the run (FACELEDGER_SEARCH_RATE_PER_
MINUTE) so that the test measures the engine, not the limiter; quotas are off (daily_quota 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FL = [sys.executable, "-m", "faceledger.cli"]
PW = "load-test-admin-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], env: dict[str, str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FL, *args], env=env, text=True, capture_output=True, check=True, timeout=1800, **kw
    )  # type: ignore[call-overload]


def make_investigators(data: Path, n: int) -> list[str]:
    """One investigator per client, each with an API token they create themselves: through
    the core in this process (the same calls as `users add` and `tokens create`, without
    2 x ``n`` interpreter starts; at 8 clients those were most of a small run's time)."""
    from faceledger.core import Faceledger

    fl = Faceledger(data)
    admin = fl.login("admin", PW)
    tokens = []
    for i in range(n):
        name, password = f"inv{i:03d}", f"inv{i:03d}-password-123"
        fl.add_user(admin, name, password, "investigator")
        tokens.append(fl.create_token(fl.login(name, password), name, "load")[1])
    fl.store.close()  # the server and the clients are other processes
    return tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=4, help="searches per client")
    ap.add_argument("--gallery", type=int, default=100, help="photos ingested before the run")
    ap.add_argument("--lfw-dir", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    ap.add_argument("--timeout", type=float, default=600, help="give up after this many s")
    args = ap.parse_args()

    people = sorted(p for p in args.lfw_dir.iterdir() if p.is_dir())
    photos = [sorted(p.glob("*.jpg")) for p in people if len(list(p.glob("*.jpg"))) >= 2]
    tmp = Path(tempfile.mkdtemp(prefix="faceledger-load-"))
    data, first, second = tmp / "data", tmp / "first", tmp / "second"
    first.mkdir()
    second.mkdir()
    for imgs in photos[: args.gallery]:
        shutil.copy(imgs[0], first)
    for imgs in photos[args.gallery : 2 * args.gallery]:
        shutil.copy(imgs[0], second)
    probes = [imgs[1].read_bytes() for imgs in photos[: args.gallery]]

    env = {
        **os.environ,
        "FACELEDGER_DATA": str(data),
        "FACELEDGER_PASSWORD": PW,
        "FACELEDGER_SEARCH_RATE_PER_MINUTE": "100000",
        "FACELEDGER_RATE_PER_MINUTE": "100000",
    }
    run(["init", "--admin", "admin"], env)
    run(["ingest", str(first), "--legal-basis", "load test", "--as", "admin"], env)
    run(["policy", "set", "daily_quota", "0", "--as", "admin"], env)
    tokens = make_investigators(data, args.clients)

    port = free_port()
    server = subprocess.Popen(
        [*FL, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        ingest = subprocess.Popen(
            [*FL, "ingest", str(second), "--legal-basis", "load test", "--as", "admin", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        latencies: list[float] = []
        errors: list[str] = []
        search_ids: list[int] = []
        lock = threading.Lock()
        deadline = time.monotonic() + args.timeout

        def client(i: int) -> None:
            headers = {"Authorization": f"Bearer {tokens[i]}"}
            with httpx.Client(timeout=120) as http:
                for r in range(args.requests):
                    if time.monotonic() > deadline:
                        return
                    probe = probes[(i * args.requests + r) % len(probes)]
                    t0 = time.perf_counter()
                    resp = http.post(
                        f"{base}/searches",
                        headers=headers,
                        files={"probe": ("p.jpg", probe, "image/jpeg")},
                        data={
                            "case_number": f"LOAD-{i}",
                            "purpose": "missing-person",
                            "justification": "load test of the search API",
                        },
                    )
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        if resp.status_code == 200:
                            search_ids.append(int(resp.json()["search_id"]))
                        else:
                            errors.append(f"{resp.status_code} {resp.text[:120]}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        ingest_out, _ = ingest.communicate(timeout=1800)
    finally:
        server.terminate()
        server.wait(timeout=30)

    # Only auditors read the ledger.
    aud = {**env, "FACELEDGER_PASSWORD": "auditor-password-123"}
    run(
        ["users", "add", "aud", "--roles", "auditor", "--as", "admin"],
        {**env, "FACELEDGER_NEW_PASSWORD": aud["FACELEDGER_PASSWORD"]},
    )
    log = run(["audit", "log", "--action", "search", "--as", "aud"], aud).stdout
    ledger_ids = [json.loads(line)["details"]["search_id"] for line in log.splitlines() if line]
    once = sorted(ledger_ids) == sorted(search_ids) and len(set(ledger_ids)) == len(ledger_ids)
    verify = run(["audit", "verify", "--as", "aud"], aud).returncode == 0
    lat = sorted(latencies)
    summary = {
        "clients": args.clients,
        "searches": len(search_ids),
        "errors": len(errors),
        "wall_seconds": round(wall, 2),
        "searches_per_second": round(len(search_ids) / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
        "ingest_during_run": json.loads(ingest_out) if ingest_out.strip() else None,
        "every_search_in_ledger_once": once,
        "ledger_verifies": verify,
    }
    print(json.dumps(summary, indent=2))
    for e in errors[:10]:
        print("error:", e, file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not errors and once and verify else 1


if __name__ == "__main__":
    sys.exit(main())
