"""Kill an ingest with SIGKILL at random moments, restart it, and check nothing was lost.

CI runs a reduced form (FACELEDGER_CRASH_KILLS, default 4 kills over 40 photos); the full
run (20 kills over a few hundred photos) is `FACELEDGER_CRASH_KILLS=20
FACELEDGER_CRASH_IMAGES=300 pytest tests/test_crash.py -m slow`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import RawDB
from faceledger import audit
from faceledger.index import IndexManager
from faceledger.service import Faceledger

PW = "crash test password"


def _photos(lfw: Path, n: int) -> list[Path]:
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    out: list[Path] = []
    for person in people[::7]:
        out.extend(sorted(person.glob("*.jpg"))[:3])
        if len(out) >= n:
            break
    return out[:n]


def _ingest_cmd(data: Path, photos: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "faceledger.cli",
        "ingest",
        str(photos),
        "--legal-basis",
        "crash-test",
        "--data-dir",
        str(data),
        "--workers",
        "1",
        "--as",
        "root",
        "--json",
    ]


def _check_consistent(data: Path, n_photos: int) -> None:
    fl = Faceledger(data)
    raw = RawDB(data)
    assert raw.execute("select count(*) from images").fetchone()[0] == n_photos
    assert raw.execute("select count(*) from provenance").fetchone()[0] == n_photos
    db_faces = dict(raw.execute("select id, crop_path from faces").fetchall())
    on_disk = {str(p.relative_to(data)) for p in (data / "crops").rglob("*.jpg")}
    assert on_disk == set(db_faces.values()), "orphan or missing crops"
    stored = {r[0] for r in raw.execute("select stored_path from images")}
    assert {
        str(p.relative_to(data))
        for p in (data / "images").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    } == stored
    index = IndexManager(fl.store).sync()
    assert len(index) == len(db_faces)
    ids, vecs = next(fl.store.iter_vectors())
    sample = np.arange(0, len(ids), max(1, len(ids) // 20))
    _, found = index.search(vecs[sample], 1)
    assert (found[:, 0] == ids[sample]).all()
    assert audit.verify(fl.store).ok


def _run_with_kills(lfw: Path, tmp_path: Path, kills: int, n_images: int) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    chosen = _photos(lfw, n_images)
    for p in chosen:
        shutil.copy(p, photos / p.name)
    data = tmp_path / "data"
    env = {**os.environ, "FACELEDGER_PASSWORD": PW}
    Faceledger(data).init_admin("root", PW)
    rng = random.Random(1234)
    done = False
    for _ in range(kills):
        proc = subprocess.Popen(
            _ingest_cmd(data, photos), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(1.0, 6.0))
        if proc.poll() is not None:
            done = True
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run(
        _ingest_cmd(data, photos), env=env, capture_output=True, text=True, timeout=900
    )
    assert final.returncode == 0, final.stderr
    _check_consistent(data, len(chosen))
    raw = RawDB(data)
    statuses = [r[0] for r in raw.execute("select status from ingest_runs")]
    assert statuses[-1] == "done"
    if not done:
        assert statuses.count("interrupted") >= 1


def test_sigkill_during_ingest_loses_nothing(lfw: Path, tmp_path: Path) -> None:
    kills = int(os.environ.get("FACELEDGER_CRASH_KILLS", "4"))
    images = int(os.environ.get("FACELEDGER_CRASH_IMAGES", "40"))
    _run_with_kills(lfw, tmp_path, kills, images)


@pytest.mark.slow
def test_sigkill_during_ingest_full(lfw: Path, tmp_path: Path) -> None:
    _run_with_kills(lfw, tmp_path, 20, 300)
