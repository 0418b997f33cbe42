from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from faceledger.evaluation import datasets

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb


def _tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_official_pairs_checksum_matches_shared_copy(lfw: Path) -> None:
    pairs = next(f for f in datasets.LFW_FILES if f.name == "pairs.txt")
    datasets.verify(lfw / "pairs.txt", pairs.md5)
    with pytest.raises(datasets.ChecksumError):
        datasets.verify(lfw / "pairsDevTest.txt", pairs.md5)


def test_safe_extract_refuses_traversal(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tgz"
    _tgz(bad, {"lfw-deepfunneled/A/A_0001.jpg": b"x", "../escape.jpg": b"y"})
    with pytest.raises(ValueError, match="unsafe"):
        datasets.safe_extract_tgz(bad, tmp_path / "out", strip_top="lfw-deepfunneled")
    assert not (tmp_path / "escape.jpg").exists()


@pytest.fixture
def local_mirror(tmp_path: Path):
    """The real download code against a loopback HTTP server serving a tiny fake LFW."""
    root = tmp_path / "mirror"
    root.mkdir()
    _tgz(root / "lfw-deepfunneled.tgz", {"lfw-deepfunneled/Ann/Ann_0001.jpg": b"jpeg"})
    for name in ("pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt", "lfw-names.txt"):
        (root / name).write_text(f"{name}\n")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_fetch_downloads_verifies_and_unpacks(local_mirror, tmp_path: Path, monkeypatch) -> None:
    root, url = local_mirror
    files = [
        datasets.RemoteFile(
            f.name, hashlib.md5((root / f.name).read_bytes()).hexdigest(), f.archive
        )
        for f in datasets.LFW_FILES
    ]
    monkeypatch.setattr(datasets, "LFW_FILES", files)
    dest = datasets.fetch_lfw(tmp_path / "lfw", base_url=url)
    assert (dest / "Ann" / "Ann_0001.jpg").read_bytes() == b"jpeg"
    assert (dest / "pairs.txt").read_text() == "pairs.txt\n"


def test_fetch_refuses_a_corrupted_download(local_mirror, tmp_path: Path) -> None:
    _, url = local_mirror  # serves files whose MD5s are not the official ones
    with pytest.raises(datasets.ChecksumError, match="does not match"):
        datasets.fetch_lfw(tmp_path / "lfw", base_url=url)
