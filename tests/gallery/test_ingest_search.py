"""End to end on real LFW photos and a real SQLite data dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import blank_jpeg, lfw_image, side_by_side
from faceledger.cli import app
from faceledger.db.store import ModelMismatchError, Store
from faceledger.gallery.index import IndexManager
from faceledger.gallery.ingest import Ingestor, PipelineSettings
from faceledger.gallery.sources import iter_manifest, iter_paths
from faceledger.search.searcher import NoFaceError, Searcher

PEOPLE = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody", "Al_Gore", "Alejandro_Toledo"]


@pytest.fixture
def gallery_dir(lfw: Path, tmp_path: Path) -> Path:
    """Two photos each of five people, a corrupt file in the middle, one no-face photo."""
    src = tmp_path / "photos"
    for name in PEOPLE:
        (src / name).mkdir(parents=True)
        for n in (1, 2):
            shutil.copy(lfw_image(lfw, name, n), src / name)
    (src / "Abdullah_Gul" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "Adrien_Brody" / "landscape.jpg").write_bytes(blank_jpeg())
    return src


def _ingest(store: Store, items, analyzer_settings=None, **kw):
    return Ingestor(store, analyzer_settings or PipelineSettings(), **kw).run(items)


def test_ingest_counts_failures_and_goes_on(gallery_dir: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    summary = _ingest(store, iter_paths([gallery_dir], "lfw-sample", "test"))
    assert summary.seen == 12
    assert summary.new == 11
    assert dict(summary.failures) == {"not-an-image": 1} or dict(summary.failures) == {
        "corrupt-image": 1
    }
    assert summary.no_face == 1
    assert summary.faces >= 10
    assert store.stats()["images"] == 11
    # every face has its crop on disk and its vector in the index
    index = IndexManager(store).sync()
    assert len(index) == store.face_count() == summary.faces
    for crop in (tmp_path / "data" / "crops").rglob("*.jpg"):
        assert crop.stat().st_size > 0
    assert "11 new" in summary.line() and "1 failed" in summary.line()


def test_reingest_is_a_noop_that_says_so(gallery_dir: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    first = _ingest(store, iter_paths([gallery_dir], "s", "test"))
    again = _ingest(store, iter_paths([gallery_dir], "s", "test"))
    assert again.new == 0 and again.duplicates == first.new
    assert store.face_count() == first.faces


def test_interrupted_ingest_resumes_without_loss_or_duplication(
    gallery_dir: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "data")
    seen = []

    def boom(n: int) -> None:
        seen.append(n)
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Ingestor(store, PipelineSettings()).run(
            iter_paths([gallery_dir], "s", "test"), advance=boom
        )
    partial = store.stats()
    assert 0 < partial["images"] < 11
    assert partial["ingest_runs"] == {"interrupted": 1}
    resumed = _ingest(store, iter_paths([gallery_dir], "s", "test"))
    assert resumed.duplicates == partial["images"]
    assert store.stats()["images"] == 11
    assert len(IndexManager(store).sync()) == store.face_count()


def test_multi_face_photo_and_search_each_face(lfw: Path, tmp_path: Path, analyzer) -> None:
    store = Store(tmp_path / "data")
    gallery = tmp_path / "g"
    gallery.mkdir()
    for name in PEOPLE:
        shutil.copy(lfw_image(lfw, name, 1), gallery)
    _ingest(store, iter_paths([gallery], "s", "test"))
    probe = side_by_side([lfw_image(lfw, "Al_Gore", 2), lfw_image(lfw, "Aaron_Peirsol", 2)])
    result = Searcher(store, analyzer).search_bytes(probe, top_k=3)
    assert len(result.faces) == 2
    left, right = sorted(result.faces, key=lambda f: f.bbox[0])
    top_left = left.candidates[0]
    top_right = right.candidates[0]
    assert "Al_Gore" in top_left.provenance[0]["original_path"]
    assert "Aaron_Peirsol" in top_right.provenance[0]["original_path"]
    assert top_left.score > left.candidates[1].score
    assert Path(top_left.crop_path).is_file() and Path(top_left.image_path).is_file()
    assert top_left.est_fmr is not None and 0 <= top_left.est_fmr <= 1
    assert top_left.expected_false_candidates == pytest.approx(5 * top_left.est_fmr)
    assert "not identifications" in result.notice


def test_no_face_probe(lfw: Path, tmp_path: Path, analyzer) -> None:
    store = Store(tmp_path / "data")
    _ingest(store, iter_paths([lfw_image(lfw, "Al_Gore", 1)], "s", "test"))
    with pytest.raises(NoFaceError):
        Searcher(store, analyzer).search_bytes(blank_jpeg())


def test_manifest_provenance_reaches_search_results(lfw: Path, tmp_path: Path, analyzer) -> None:
    photos = tmp_path / "m"
    photos.mkdir()
    shutil.copy(lfw_image(lfw, "Adrien_Brody", 1), photos / "p1.jpg")
    (photos / "manifest.csv").write_text(
        "path,source_url,captured_at,legal_basis,subject_label\n"
        "p1.jpg,https://records.example/42,2019-05-01,warrant-2019-77,Adrien Brody\n"
    )
    store = Store(tmp_path / "data")
    _ingest(store, iter_manifest(photos / "manifest.csv", "county-archive", None))
    res = Searcher(store, analyzer).search_bytes(lfw_image(lfw, "Adrien_Brody", 2).read_bytes())
    prov = res.faces[0].candidates[0].provenance[0]
    assert prov == {
        "source": "county-archive",
        "original_path": str((photos / "p1.jpg").resolve()),
        "source_url": "https://records.example/42",
        "captured_at": "2019-05-01",
        "legal_basis": "warrant-2019-77",
        "subject_label": "Adrien Brody",
        "ingested_at": prov["ingested_at"],
    }


def test_gallery_refuses_a_second_model(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    store.bind_model("dlib_resnet_v1", 128)
    with pytest.raises(ModelMismatchError):
        store.bind_model("arcface_r50", 512)


def test_index_is_rebuilt_when_missing_or_corrupt(gallery_dir: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    _ingest(store, iter_paths([gallery_dir], "s", "test"))
    mgr = IndexManager(store)
    ids0 = np.sort(np.concatenate([ids for ids, _ in store.iter_vectors()]))
    mgr.path.write_bytes(b"garbage")
    fresh = IndexManager(store).sync()
    assert len(fresh) == len(ids0)
    mgr.path.unlink()
    assert len(IndexManager(store).sync()) == len(ids0)


def test_cli_ingest_search_stats_json(lfw: Path, tmp_path: Path, monkeypatch) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    g = tmp_path / "g"
    g.mkdir()
    for name in PEOPLE[:3]:
        shutil.copy(lfw_image(lfw, name, 1), g)
    monkeypatch.setenv("FACELEDGER_DATA", str(data))
    monkeypatch.setenv("FACELEDGER_PASSWORD", "admin password 1")
    r = runner.invoke(app, ["ingest", str(g), "--legal-basis", "test", "--as", "root"])
    assert r.exit_code == 3 and "faceledger init" in r.output
    assert runner.invoke(app, ["init", "--admin", "root"]).exit_code == 0
    r = runner.invoke(app, ["ingest", str(g), "--as", "root", "--json", "--workers", "1"])
    assert r.exit_code != 0 and "legal-basis" in r.output
    ingest = ["ingest", str(g), "--legal-basis", "test", "--json", "--workers", "1"]
    r = runner.invoke(app, [*ingest, "--embedder", "dlib", "--as", "root"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["new"] == 3
    monkeypatch.setenv("FACELEDGER_NEW_PASSWORD", "investigator pw")
    r = runner.invoke(app, ["users", "add", "ivy", "--roles", "investigator", "--as", "root"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["tokens", "create", "--user", "ivy", "--as", "root"])
    assert r.exit_code == 4  # nobody creates a token for someone else (#11 item 2)
    monkeypatch.setenv("FACELEDGER_PASSWORD", "investigator pw")
    r = runner.invoke(app, ["tokens", "create", "--as", "ivy"])
    token = r.stdout.strip().splitlines()[-1]
    assert token.startswith("flt_")
    monkeypatch.setenv("FACELEDGER_TOKEN", token)
    monkeypatch.delenv("FACELEDGER_PASSWORD")
    probe = str(lfw_image(lfw, PEOPLE[0], 2))
    r = runner.invoke(app, ["search", probe, "--json"])
    assert r.exit_code == 4 and "case number" in r.output
    case = ["--case", "C-7", "--purpose", "missing-person", "--justification", "family report"]
    r = runner.invoke(app, ["search", probe, *case, "--json", "--top-k", "2"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["faces"][0]["candidates"][0]["provenance"][0]["original_path"].endswith(
        f"{PEOPLE[0]}_0001.jpg"
    )
    assert len(doc["faces"][0]["candidates"]) == 2
    noface = tmp_path / "noface.jpg"
    noface.write_bytes(blank_jpeg())
    r = runner.invoke(app, ["search", str(noface), *case])
    assert r.exit_code == 2 and "no face" in r.output
    r = runner.invoke(app, ["ingest", str(g), "--legal-basis", "x"])
    assert r.exit_code == 4 and "may not ingest" in r.output
    r = runner.invoke(app, ["stats", "--json"])
    assert json.loads(r.stdout)["images"] == 3
    r = runner.invoke(app, ["embed", str(lfw_image(lfw, PEOPLE[1], 1)), "--embedder", "dlib"])
    face = json.loads(r.stdout)["faces"][0]
    assert len(face["landmarks"]) == 5 and len(face["embedding"]) == 128
    assert abs(np.linalg.norm(face["embedding"]) - 1) < 1e-5


def test_a_photo_stored_by_another_ingest_meanwhile_is_a_duplicate(
    lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ingests of the same new photo at once: the one that commits second finds the
    image stored after its own check and records it as a duplicate, not a failure."""
    store = Store(tmp_path / "data")
    photo = lfw_image(lfw, "Al_Gore", 1)
    first = _ingest(store, iter_paths([photo], "first", "test"))
    assert first.new == 1
    real = store.has_image
    calls = {"n": 0}

    def not_yet(sha: str) -> bool:  # the second ingest checked before the first committed
        calls["n"] += 1
        return False if calls["n"] == 1 else real(sha)

    monkeypatch.setattr(store, "has_image", not_yet)
    second = _ingest(store, iter_paths([photo], "second", "test"))
    assert (second.new, second.duplicates, sum(second.failures.values())) == (0, 1, 0)
    stats = store.stats()
    assert stats["images"] == 1 and stats["faces"] == first.faces
    assert stats["sources"] == {"first": 1, "second": 1}  # both provenances recorded
