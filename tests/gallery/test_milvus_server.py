"""The Milvus backend against a real Milvus 2.3.5 standalone server (#16 item 1).

The server is the ``milvus`` package's bundled binary, started once for this file by the
session fixture of ``tests/milvus_server.py`` in a temporary directory on free ports. These
tests are about Milvus, not the gallery database: ``nopg`` (their rows go through the same
store code the PostgreSQL pass runs elsewhere).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import lfw_image, need_module

need_module("pymilvus", "pip install -e '.[scale]' (pymilvus)")

from milvus_server import milvus_server_fixture  # noqa: E402, F401  (the session fixture)
from test_index import add_faces, brute_force, delete_faces, new_store, synthetic  # noqa: E402

from faceledger.cli import app  # noqa: E402
from faceledger.core import Faceledger, SearchRequest  # noqa: E402
from faceledger.gallery.index import IndexManager  # noqa: E402
from faceledger.gallery.index.milvus import (  # noqa: E402
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    MilvusIndex,
    MilvusUnavailableError,
)
from faceledger.gallery.index.milvus_server import free_port  # noqa: E402
from faceledger.gallery.ingest import PipelineSettings  # noqa: E402
from faceledger.gallery.sources import iter_paths  # noqa: E402

pytestmark = pytest.mark.nopg

PW = "correct horse battery"
PEOPLE = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody", "Al_Gore"]


@pytest.fixture(scope="module")
def gallery() -> tuple[np.ndarray, np.ndarray]:
    return synthetic(2000, queries=30, seed=7)


def test_hnsw_runs_with_faceledger_parameters_and_search_is_exact(
    milvus_server: Any, gallery: tuple[np.ndarray, np.ndarray]
) -> None:
    """#16 item 1: the server builds the HNSW index faceledger asks for (type, metric, M,
    efConstruction read back from the server) over every row, and the top-10 through it
    equals brute force, with exact inner-product scores."""
    vectors, probes = gallery
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64) * 7
    index = MilvusIndex(milvus_server.uri, 128, "exact_test", collection="t_faces")
    index.add(ids, vectors)
    info = index.flush(wait_index=True, timeout_s=120)
    assert info["index_type"] == "HNSW" and info["metric_type"] == "IP", info
    assert int(info["M"]) == HNSW_M and int(info["efConstruction"]) == HNSW_EF_CONSTRUCTION
    assert int(info["indexed_rows"]) == int(info["total_rows"]) >= len(vectors), info
    assert index.client.describe_collection("t_faces")["consistency_level"] == 0  # Strong
    assert len(index) == len(vectors)
    scores, got = index.search(probes, 10)
    np.testing.assert_array_equal(got, brute_force(vectors, ids, probes, 10))
    exact = np.einsum("ij,ij->i", vectors[got[:, 0] // 7 - 1], probes)
    np.testing.assert_allclose(scores[:, 0], exact, atol=1e-4)


def test_erasure_is_gone_from_the_next_search_and_models_stay_apart(
    milvus_server: Any, gallery: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """#16 item 1: faces erased in the database (tombstones) and caught up by the manager, or
    removed from the index directly, are absent from the very next search (Strong reads
    after this client's own writes, no wait); another model's partition in the same
    collection neither shows in this model's results nor counts."""
    vectors, probes = gallery
    store = new_store(tmp_path)
    ids = add_faces(store, vectors[:1200])
    mgr = IndexManager(store, uri=f"{milvus_server.uri}?collection=t_faces")
    index = mgr.sync()
    assert index.kind == "milvus_hnsw" and len(index) == 1200
    _, got = index.search(probes, 10)
    np.testing.assert_array_equal(got, brute_force(vectors[:1200], ids, probes, 10))

    gone = np.unique(got[:, :2].ravel())
    delete_faces(store, gone)
    index = mgr.sync()
    _, after = index.search(probes, 10)
    keep = ~np.isin(ids, gone)
    np.testing.assert_array_equal(after, brute_force(vectors[:1200][keep], ids[keep], probes, 10))
    assert len(index) == 1200 - len(gone) == index.count()

    direct = np.unique(after[:, 0])
    assert index.remove(direct) == len(direct)
    assert index.level() == "Strong"  # within SELF_WRITE_STRONG_S of its own delete
    _, again = index.search(probes, 10)
    assert not np.isin(again, np.concatenate([gone, direct])).any()

    # the other model holds the probes themselves: any leak would be every probe's top hit
    other = MilvusIndex(
        milvus_server.uri, 128, "arcface/r50", collection=index.collection, client=index.client
    )
    assert other.partition == "m_arcface_r50" and len(other) == 0
    other_ids = np.arange(len(probes), dtype=np.int64) + 10**9
    other.add(other_ids, probes)
    assert len(other) == len(probes) and index.count() == 1200 - len(gone) - len(direct)
    _, mine = index.search(probes, 10)
    np.testing.assert_array_equal(mine, again)
    _, theirs = other.search(probes, 1)
    np.testing.assert_array_equal(theirs[:, 0], other_ids)


def test_lost_server_is_a_clear_error_and_a_restart_loses_nothing_acknowledged(
    milvus_server: Any, gallery: tuple[np.ndarray, np.ndarray]
) -> None:
    """#16 item 1: with the server stopped, the index raises MilvusUnavailableError naming the
    URI (not a gRPC traceback); restarted on the same data, it holds every acknowledged
    insert (flushed or not) and delete, and the same index object searches again."""
    vectors, probes = gallery
    uri = milvus_server.uri
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    index = MilvusIndex(uri, 128, "restart_test", collection="t_faces")
    index.add(ids[:1000], vectors[:1000])
    index.flush(wait_index=False)  # sealed segments ...
    index.add(ids[1000:], vectors[1000:])  # ... and rows only in the server's log
    _, top = index.search(probes, 10)
    gone = np.unique(top[:, 0])
    assert index.remove(gone) == len(gone)
    keep = ~np.isin(ids, gone)
    want = brute_force(vectors[keep], ids[keep], probes, 10)

    milvus_server.stop()
    for call in (lambda: index.search(probes, 10), lambda: index.add(ids[:1], vectors[:1])):
        with pytest.raises(MilvusUnavailableError) as err:
            call()
        assert uri in str(err.value) and "unreachable" in str(err.value)
        assert isinstance(err.value, ValueError)  # reported by every interface as a setting

    milvus_server.start()
    assert index.count() == int(keep.sum())
    _, got = index.search(probes, 10)
    np.testing.assert_array_equal(got, want)


def test_an_index_uri_pointing_at_nothing_is_a_clear_error(
    lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_db: Any
) -> None:
    """#16 item 5: a Milvus URI nothing answers on fails `ingest`, `search` and `serve` with a
    message that names the URI, at once, with no traceback."""
    uri = f"milvus://127.0.0.1:{free_port()}"
    monkeypatch.setenv("FACELEDGER_INDEX", uri)  # restored after the CLI's callback sets it
    store = new_store(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(MilvusUnavailableError) as err:
        IndexManager(store, uri=uri)
    assert uri in str(err.value) and time.monotonic() - t0 < 3
    store.close()

    fresh_db()  # a database of its own for the second data dir
    data = tmp_path / "cli"
    fl = Faceledger(data)
    fl.add_user(fl.init_admin("root", PW), "ivy", PW, "investigator", "north")
    fl.close()
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    photo, probe = lfw_image(lfw, "Al_Gore", 1), lfw_image(lfw, "Al_Gore", 2)
    runner = CliRunner()
    where = ["--data-dir", str(data)]
    for args in (  # the ingest stores the photo, then cannot reach the index
        ["ingest", str(photo), "--source", "s", "--legal-basis", "test", "--as", "root"],
        [
            "search",
            str(probe),
            "--case",
            "C-1",
            "--purpose",
            "violent-crime",
            "--as",
            "ivy",
            "--justification",
            "CCTV still from the robbery",
        ],
        ["serve", "--port", str(free_port())],  # refused before it listens
    ):
        res = runner.invoke(app, ["--index", uri, *args, *where])
        out = res.output + str(res.stderr_bytes or b"")
        assert res.exit_code == 1 and "Traceback" not in out, (args[0], out, res.exception)
        assert uri in out and "unreachable" in out, (args[0], out)


def test_a_data_dir_on_the_server_ingests_lfw_and_searches_through_the_core(
    milvus_server: Any, lfw: Path, tmp_path: Path, analyzer: Any, monkeypatch
) -> None:
    """#16 item 1: end to end, `--index milvus://...` (as $FACELEDGER_INDEX): LFW photos
    ingested through the core land in the server's collection, a search through the core
    finds the right person there, and an erasure is gone from the next search."""
    uri = f"{milvus_server.uri}?collection=e2e"
    monkeypatch.setenv("FACELEDGER_INDEX", uri)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PEOPLE:
        shutil.copy(lfw_image(lfw, name, 1), photos)
    fl = Faceledger(tmp_path / "data")
    root = fl.init_admin("root", PW)
    fl.add_user(root, "ivy", PW, "investigator", "north")
    summary = fl.ingest(root, iter_paths([photos], "archive", "test"), PipelineSettings())
    assert summary.faces == len(PEOPLE)
    fl.set_analyzer_factory(lambda: analyzer)
    req = SearchRequest("CASE-1", "violent-crime", "CCTV still from the robbery", top_k=3)
    probe = lfw_image(lfw, "Al_Gore", 2).read_bytes()
    ivy = fl.login("ivy", PW, "test")
    res = fl.search(ivy, probe, req)
    top = res["faces"][0]["candidates"][0]
    assert "Al_Gore" in top["provenance"][0]["original_path"]
    index = fl.searcher().indexes.sync()
    assert index.kind == "milvus_hnsw" and index.collection == "e2e"
    assert MilvusIndex(milvus_server.uri, index.dim, index.model_id, "e2e").count() == 4
    assert not (tmp_path / "data" / "index" / "faces.f32").exists()  # no local FAISS index

    fl.erase(root, face_ids=[top["face_id"]], reason="subject request")
    res = fl.search(fl.login("ivy", PW, "test"), probe, req)
    assert top["face_id"] not in [c["face_id"] for c in res["faces"][0]["candidates"]]
    assert index.count() == 3
    fl.close()
