"""The real Milvus server for the tests that need one (#16 item 1): a session fixture that
starts the ``milvus`` package's bundled standalone binary in a temporary directory, on free
loopback ports of its own, and stops (SIGTERM, then SIGKILL) and removes it at the end.

Only test files that import :func:`milvus_server_fixture` load it, so no other test pays for the
server's start (about 9 s on 2 cores). Under ``make test`` (``--dist loadfile``) a test file
runs on one worker, so one server serves a whole file; a second file importing it on the
other worker starts its own on other ports.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import need, need_module


@pytest.fixture(scope="session", name="milvus_server")
def milvus_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A running :class:`faceledger.gallery.index.milvus_server.LocalMilvus` (``.uri``,
    ``.stop()``, ``.start()`` on the same data and ports)."""
    need_module("milvus", "pip install -e '.[scale]' (milvus==2.3.5, the bundled server)")
    need_module("pymilvus", "pip install -e '.[scale]' (pymilvus)")
    from faceledger.gallery.index.milvus_server import LocalMilvus, MilvusServerError

    server = LocalMilvus(tmp_path_factory.mktemp("milvus-server"))
    try:
        server.start()
    except MilvusServerError as e:
        server.remove()
        need(False, f"the bundled Milvus server cannot run here: {e}")
    try:
        yield server
    finally:
        server.remove()
