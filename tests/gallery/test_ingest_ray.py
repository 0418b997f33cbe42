"""The Ray ingest engine in a Ray of the test process builds the local engine's gallery.

On a cluster of two nodes started with `ray start`, through the command: test_ray_cluster.py.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import lfw_image
from faceledger.cli import app
from faceledger.core import Faceledger
from faceledger.db.schema import faces, images
from faceledger.db.store import Store
from faceledger.gallery.index import IndexManager
from faceledger.gallery.ingest import Ingestor, PipelineSettings
from faceledger.gallery.ingest_ray import RayIngestor
from faceledger.gallery.sources import iter_paths
from faceledger.ledger import audit

# What is tested is the split of the work over Ray; its rows go through the local engine's
# store code (Ingestor._handle), which the PostgreSQL pass runs: SQLite only (nopg).
pytestmark = pytest.mark.nopg


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def photo_folder(lfw: Path, src: Path, n_people: int, duplicate: tuple[int, int]) -> list[str]:
    """Two LFW photos each of the first ``n_people`` with two, one folder per person, and
    person ``duplicate[0]``'s first photo again in person ``duplicate[1]``'s folder."""
    people = [p.name for p in sorted(lfw.iterdir()) if lfw_image(lfw, p.name, 2).is_file()]
    people = people[:n_people]
    for name in people:
        (src / name).mkdir()
        for n in (1, 2):
            shutil.copy(lfw_image(lfw, name, n), src / name)
    first, into = (people[i] for i in duplicate)
    shutil.copy(lfw_image(lfw, first, 1), src / into / "zz_same_again.jpg")
    return people


@pytest.fixture(scope="module")
def photos(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 LFW photos (two each of 4 people) and a duplicate."""
    src = tmp_path_factory.mktemp("photos")
    photo_folder(lfw, src, 4, (1, 3))
    return src


def _gallery(store: Store) -> tuple[dict[str, int], list[tuple[int, str, int, list[float]]], Any]:
    with store.engine.connect() as conn:
        counts = {r.sha256: r.face_count for r in conn.execute(select(images))}
        rows = conn.execute(select(faces).order_by(faces.c.id)).all()
    meta = [(r.id, r.image_sha, r.face_index, json.loads(r.bbox_json)) for r in rows]
    vecs = np.stack([np.frombuffer(r.embedding, np.float32) for r in rows])
    return counts, meta, vecs


def same_gallery(a: Path, b: Path, store_a: Store, store_b: Store) -> None:
    counts_a, meta_a, vecs_a = _gallery(store_a)
    counts_b, meta_b, vecs_b = _gallery(store_b)
    assert counts_a == counts_b  # same images (SHA-256), same faces per image
    assert meta_a == meta_b  # same face ids, in the same order, same boxes
    assert vecs_a.shape == vecs_b.shape and float(np.abs(vecs_a - vecs_b).max()) < 1e-5
    for crop in (a / "crops").rglob("*.jpg"):
        assert (b / crop.relative_to(a)).read_bytes() == crop.read_bytes()


def test_ray_engine_in_a_ray_of_this_process(
    photos: Path, tmp_path: Path, fresh_db, ray_cluster: None
) -> None:
    local_store = Store(tmp_path / "local")
    local = Ingestor(local_store, PipelineSettings()).run(iter_paths([photos], "lfw", "test"))
    assert local.seen == 9 and local.new == 8 and local.duplicates == 1

    fresh_db()
    ray_store = Store(tmp_path / "ray")
    ticks: list[int] = []
    # a window of 3 images in batches of 2: results wait for the slower actor, in order
    dist = RayIngestor(ray_store, PipelineSettings(), chunk_size=3, batch_size=2).run(
        iter_paths([photos], "lfw", "test"), advance=ticks.append
    )
    assert ray.is_initialized()  # the test's Ray is left running
    for key in ("seen", "new", "duplicates", "faces", "no_face"):
        assert getattr(dist, key) == getattr(local, key), key
    assert sum(ticks) == dist.seen
    assert dist.ray is not None and dist.ray["actors"] == dist.ray["model_loads"] == 2
    assert sum(dist.ray["batches"].values()) == 4  # 8 new photos, 2 a batch
    same_gallery(tmp_path / "local", tmp_path / "ray", local_store, ray_store)
    assert len(IndexManager(ray_store).sync()) == ray_store.face_count() == dist.faces

    again = RayIngestor(ray_store, PipelineSettings()).run(iter_paths([photos], "lfw", "test"))
    assert again.new == 0 and again.duplicates == 9


def test_ray_engine_through_the_core_keeps_opt_outs_and_the_ledger(
    lfw: Path, tmp_path: Path, ray_cluster: None
) -> None:
    """The Ray engine is entered through ``Faceledger.ingest`` like the local one: a subject
    erased with an opt-out is refused on the actors' results (the shared store code), an
    unrelated person in the same run is kept, and the run is in the ledger (engine named)."""
    fl = Faceledger(tmp_path / "data")
    root = fl.init_admin("root", "admin password 1")
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(lfw_image(lfw, "Adrien_Brody", 1), first)
    fl.ingest(root, iter_paths([first], "archive", "test"), PipelineSettings())
    preview = fl.erase_preview(root, lfw_image(lfw, "Adrien_Brody", 2).read_bytes(), 0.93)
    rep = fl.erase(
        root,
        preview_id=preview["preview_id"],
        face_ids=[f["face_id"] for f in preview["faces"]],
        optout_reference="request-77",
        reason="opt-out request 77",
    )
    assert rep.blocklisted == 1
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(lfw_image(lfw, "Adrien_Brody", 3), again)
    shutil.copy(lfw_image(lfw, "Abdullah_Gul", 2), again)
    summary = fl.ingest(
        root, iter_paths([again], "archive2", "test"), PipelineSettings(), engine="ray"
    )
    assert summary.ray is not None and summary.ray["actors"] >= 1
    assert summary.opted_out == 1 and summary.new == 1
    start, done = (
        list(audit.iter_entries(fl.store, action=a))[-1] for a in ("ingest.start", "ingest")
    )
    assert start.details["args"]["engine"] == "ray"
    assert done.details["opted_out"] == 1 and done.details["run_id"] == summary.run_id
    assert audit.verify(fl.store).ok


def test_cli_ingest_engine_refusals(
    lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    g = tmp_path / "g"
    g.mkdir()
    for name in ("Al_Gore", "Adrien_Brody", "Abdullah_Gul"):
        shutil.copy(lfw_image(lfw, name, 1), g)
    monkeypatch.setenv("FACELEDGER_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FACELEDGER_PASSWORD", "admin password 1")
    assert runner.invoke(app, ["init", "--admin", "root"]).exit_code == 0
    ingest = ["ingest", str(g), "--legal-basis", "test", "--as", "root"]

    r = runner.invoke(app, [*ingest, "--engine", "spark"])
    assert r.exit_code == 1 and "unknown --engine 'spark'" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    r = runner.invoke(app, [*ingest, "--address", "ray://nowhere:10001"])
    assert r.exit_code == 1 and "--engine ray" in r.output
