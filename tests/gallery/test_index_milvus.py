"""MilvusIndex against a real Milvus Lite instance (embedded; a local ``*.db`` path).

What a Milvus server does (HNSW for real, exact top-k, erasure, partitions, restarts, lost
connections) is tested against the real server in test_milvus_server.py. Kept here: URI
parsing (no server), and the ``*.db`` path mode with the manager's saved state: a Lite index
is picked up by a new process and rebuilt when its state file is lost (#16 item 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import need_module

need_module("pymilvus", "pip install -e '.[scale]' (pymilvus)")
need_module("milvus_lite", "pip install -e '.[scale]' (milvus-lite)")

from test_index import (  # noqa: E402
    add_faces,
    brute_force,
    delete_faces,
    new_store,
    synthetic,
)

from faceledger.gallery.index import IndexManager  # noqa: E402
from faceledger.gallery.index.milvus import is_milvus_uri, parse_uri  # noqa: E402


@pytest.fixture(scope="module")
def gallery() -> tuple[np.ndarray, np.ndarray]:
    return synthetic(2000, queries=30, seed=4)


def test_uri_parsing(tmp_path: Path) -> None:
    t = parse_uri("milvus://db.example:19531?collection=faces&token=u:p")
    assert (t.client_uri, t.collection, t.token, t.lite) == (
        "http://db.example:19531",
        "faces",
        "u:p",
        False,
    )
    assert parse_uri("milvuss://h").client_uri == "https://h:19530"
    lite = parse_uri(str(tmp_path / "m.db"))
    assert lite.lite and lite.client_uri == str((tmp_path / "m.db").resolve())
    assert is_milvus_uri("milvus://h:1") and is_milvus_uri("x/y.db")
    assert not is_milvus_uri("faiss") and not is_milvus_uri(None)
    with pytest.raises(ValueError):
        parse_uri("redis://h")


def test_index_manager_with_milvus_lite_uri(tmp_path: Path, gallery) -> None:
    vectors, probes = gallery
    store = new_store(tmp_path)
    ids = add_faces(store, vectors[:1000])
    uri = str(tmp_path / "lite" / "faces.db")
    mgr = IndexManager(store, uri=uri)
    index = mgr.sync()
    assert index.kind == "milvus_hnsw" and len(index) == 1000
    more = add_faces(store, vectors[1000:1200])
    assert len(mgr.sync()) == 1200
    all_ids = np.concatenate([ids, more])
    _, got = index.search(probes, 10)
    np.testing.assert_array_equal(got, brute_force(vectors[:1200], all_ids, probes, 10))
    gone = np.unique(got[:, :2].ravel())
    delete_faces(store, gone)
    index = mgr.sync()
    assert len(index) == 1200 - len(gone)
    _, after = index.search(probes, 10)
    assert not np.isin(after, gone).any()
    state = mgr._remote.state_path
    assert state.is_file()
    index.client.close()
    # a new process picks the saved state up; a lost state file means a rebuild
    again = IndexManager(store, uri=uri)
    assert len(again.sync()) == 1200 - len(gone)
    again._remote.index.client.close()
    state.unlink()
    rebuilt = IndexManager(store, uri=uri).sync()
    assert len(rebuilt) == 1200 - len(gone)
    _, final = rebuilt.search(probes, 10)
    np.testing.assert_array_equal(final, after)
