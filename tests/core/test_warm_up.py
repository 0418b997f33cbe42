"""A server loads what the first search needs when it starts, not when the first
investigator waits for it (#15 item 4: at 1M faces the first search waited 23 s)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest_api import PW, entries, seed
from faceledger.core import Faceledger
from faceledger.gallery import subjects


def test_warm_up_loads_the_index_and_the_subject_count_and_records_nothing(
    lfw: Path, tmp_path: Path, analyzer: Any, fresh_db: Any
) -> None:
    """#15 item 4: ``warm_up`` leaves the searcher with its index loaded and the subject
    count cached, writes no ledger entry, and on an empty gallery does nothing."""
    fl = seed(lfw, tmp_path, analyzer)
    data = fl.data_dir
    fl.close()
    subjects._counts.clear()
    core = Faceledger(data)
    core.set_analyzer_factory(lambda: analyzer)
    before = len(entries(core))
    core.warm_up()
    assert core._searcher is not None and core._searcher.indexes.index is not None
    assert len(core._searcher.indexes.index) == core.store.face_count() == 4
    assert core.store.url in subjects._counts
    assert len(entries(core)) == before
    core.close()

    fresh_db()  # a database of its own for the second data dir (the PostgreSQL pass)
    empty = Faceledger(tmp_path / "empty")
    empty.init_admin("root", PW)
    empty.warm_up()  # no gallery yet: nothing to load, no error
    assert empty._searcher is None
    empty.close()


def test_serve_warms_up_at_start(lfw: Path, tmp_path: Path, analyzer: Any) -> None:
    """#15 item 4: `faceledger serve` loads the models, the index and the subject count in
    the background once it starts, and says so in its log."""
    seed(lfw, tmp_path, analyzer).close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "faceledger.cli", "serve", "--port", str(port)]
    cmd += ["--data-dir", str(tmp_path / "data")]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=dict(os.environ)
    )
    assert proc.stderr is not None
    said: list[str] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            said.append(line)
            if "warmed up in" in line or "warm-up failed" in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert any("warmed up in" in line for line in said), "".join(said)
