"""MilvusIndex against a real Milvus Lite instance (embedded; a local ``*.db`` path)."""

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
from faceledger.gallery.index.milvus import MilvusIndex, is_milvus_uri, parse_uri  # noqa: E402


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


def test_milvus_index_add_search_remove(tmp_path: Path, gallery) -> None:
    vectors, probes = gallery
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64) * 3
    index = MilvusIndex(str(tmp_path / "m.db"), 128, "dlib_resnet_v1", collection="t_faces")
    assert index.kind == "milvus_hnsw" and len(index) == 0
    index.add(ids, vectors)
    assert len(index) == len(vectors)
    scores, got = index.search(probes, 10)
    want = brute_force(vectors, ids, probes, 10)
    np.testing.assert_array_equal(got, want)
    rows = got[:, 0] // 3 - 1
    exact = np.einsum("ij,ij->i", vectors[rows], probes)
    np.testing.assert_allclose(scores[:, 0], exact, atol=1e-4)
    gone = np.unique(want[:, :2].ravel())
    assert index.remove(gone) == len(gone)
    assert len(index) == len(vectors) - len(gone)
    _, after = index.search(probes, 10)
    assert not np.isin(after, gone).any()
    keep = ~np.isin(ids, gone)
    np.testing.assert_array_equal(after, brute_force(vectors[keep], ids[keep], probes, 10))
    # another model's partition in the same collection is separate
    other = MilvusIndex(
        str(tmp_path / "m.db"), 128, "arcface/r50", collection="t_faces", client=index.client
    )
    assert other.partition == "m_arcface_r50" and len(other) == 0
    other.add(ids[:5], vectors[:5])
    assert len(other) == 5 and len(index) == len(vectors) - len(gone)


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
