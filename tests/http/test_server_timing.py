"""A search's Server-Timing header, and the probe-to-results benchmark over HTTP
(benchmarks/search_http.py) in a reduced form: #15 item 4."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conftest import lfw_image
from conftest_api import own_token, seed
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.timing import SEARCH_STAGES, TOTAL, parse_header

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests another httpx package; irrelevant here
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
CASE = {
    "case_number": "CASE-T",
    "purpose": "violent-crime",
    "justification": "CCTV still from the robbery",
}


def test_a_search_says_where_its_time_went(lfw: Path, analyzer, tmp_path: Path) -> None:
    """#15 item 4: POST /api/v1/searches answers with a Server-Timing header naming every
    stage of the search (upload to ledger), each >= 0, their sum within the request's wall
    time and within the server's own total; the stages that ran took time; the OpenAPI
    schema documents the header. Other routes carry no timing."""
    fl = seed(lfw, tmp_path, analyzer)
    token = own_token(fl, "ivy")[1]
    settings = ApiSettings(search_rate_per_minute=0, rate_per_minute=0)
    app = create_app(fl.data_dir, faceledger=fl, settings=settings)
    probe = lfw_image(lfw, "Al_Gore", 2).read_bytes()
    with TestClient(app) as client:
        t0 = time.perf_counter()
        r = client.post(
            "/api/v1/searches",
            headers={"Authorization": f"Bearer {token}"},
            data=CASE,
            files={"probe": ("probe.jpg", probe, "image/jpeg")},
        )
        wall_ms = 1000 * (time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        assert r.json()["faces"][0]["candidates"], "the search compared nothing"
        timing = parse_header(r.headers["server-timing"])
        assert list(timing) == [*SEARCH_STAGES, TOTAL]
        assert all(ms >= 0 for ms in timing.values())
        stages = sum(timing[s] for s in SEARCH_STAGES)
        assert stages <= timing[TOTAL] + 0.01 and timing[TOTAL] <= wall_ms
        for ran in ("auth", "checks", "decode", "detect", "embed", "index", "db", "ledger"):
            assert timing[ran] > 0, ran
        # a request without a probe still says what it measured (no face work done)
        bad = client.post(
            "/api/v1/searches", headers={"Authorization": f"Bearer {token}"}, data=CASE
        )
        assert bad.status_code == 400
        assert parse_header(bad.headers["server-timing"])["detect"] == 0
        assert "server-timing" not in client.get("/api/v1/health").headers
        spec = client.get("/openapi.json").json()
        ok = spec["paths"]["/api/v1/searches"]["post"]["responses"]["200"]
        assert "Server-Timing" in ok["headers"]


@pytest.mark.nopg  # the benchmark script runs: the database code runs in the other tests
def test_search_http_benchmark_runs(lfw: Path, tmp_path: Path) -> None:
    """#15 item 4: benchmarks/search_http.py against a real `faceledger serve` over a small
    synthetic-plus-LFW gallery: exits 0 with p50/p99 over HTTP and in the core, the
    per-stage breakdown beside the measured total, the HTTP overhead ratio, and the probe's
    mate found at rank 1 on both sides."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "search_http.py"),
            "--faces",
            "2000",
            "--requests",
            "5",
            "--warmup",
            "1",
            "--people",
            "3",
            "--probes",
            "1",
            "--max-photos",
            "3",
            "--lfw-dir",
            str(lfw),
            "--workdir",
            str(tmp_path / "work"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["gallery"]["gallery_faces"] == 2000
    m = doc["measured"]
    for side in ("http", "core"):
        s = m[side]
        assert s["requests"] == 5 and 0 < s["p50_ms"] <= s["p99_ms"]
        assert set(s["stages_p50_ms"]) == {*SEARCH_STAGES, "rest"}
        assert s["stages_p50_sum_ms"] > 0 and s["rank1_mate"] == 1.0
    assert m["http"]["server_total_p50_ms"] <= m["http"]["p50_ms"]
    assert m["http_over_core_p50"] > 0 and isinstance(m["target_met"], bool)
    assert not (tmp_path / "work" / "data").exists()  # without --keep nothing is left
