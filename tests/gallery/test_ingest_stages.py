"""Ingest reports where its time went, stage by stage (#15 item 1: the per-stage breakdown
``benchmarks/ingest.py`` prints next to its ratio)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import lfw_image
from faceledger.db.store import Store
from faceledger.gallery.ingest import Ingestor, PipelineSettings
from faceledger.gallery.sources import iter_paths

WORKER = ("decode", "detect", "embed")
PEOPLE = ("Al_Gore", "Adrien_Brody", "Abdullah_Gul", "Aaron_Peirsol")


@pytest.mark.parametrize("workers", [1, 2])
def test_the_summary_times_each_stage(lfw: Path, tmp_path: Path, workers: int) -> None:
    """#15 item 1: the workers' stages (decode, detect, embed) and the parent's (read,
    files, database, index; with a pool also the wait for it) are summed over the photos
    stored, and account for no more than the workers' and the parent's time."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PEOPLE:
        shutil.copy(lfw_image(lfw, name, 1), photos)
    shutil.copy(lfw_image(lfw, PEOPLE[0], 1), photos / "again.jpg")
    store = Store(tmp_path / "data")
    summary = Ingestor(store, PipelineSettings(), workers=workers).run(
        iter_paths([photos], "lfw", "test")
    )
    assert summary.new == 4 and summary.duplicates == 1
    stages = summary.stages
    parent = {"read", "files", "database", "index"} | ({"wait"} if workers > 1 else set())
    assert set(stages) == set(WORKER) | parent, stages
    assert all(seconds >= 0 for seconds in stages.values())
    assert all(stages[k] > 0 for k in ("decode", "detect", "embed", "files", "database"))
    worker_time = sum(stages[k] for k in WORKER)
    assert worker_time <= workers * summary.seconds
    assert stages["read"] + stages["files"] + stages["database"] <= summary.seconds
    assert summary.as_dict()["stages"] == stages  # in --json and the run record
    store.close()
