"""The load test (benchmarks/load.py) in a reduced form: a real server, concurrent clients,
an ingest at the same time, no errors, every search in the ledger once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_concurrent_searches_during_ingest(lfw: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "load.py"),
            "--clients",
            "8",
            "--requests",
            "2",
            "--gallery",
            "12",
            "--lfw-dir",
            str(lfw),
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["searches"] == 16 and summary["errors"] == 0
    assert summary["every_search_in_ledger_once"] and summary["ledger_verifies"]
    assert summary["ingest_during_run"]["new"] == 12
