"""Helpers shared by the HTTP API and web UI tests: a seeded data dir and a live server."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import lfw_image
from faceledger.core import Faceledger
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_paths
from faceledger.ledger import audit

PW = "correct horse battery"
USERS = [
    ("ivy", "investigator", "north"),
    ("ian", "investigator", "south"),
    ("sam", "supervisor", "north"),
    ("ada", "auditor", None),
]
GALLERY = [("Al_Gore", 1), ("Adrien_Brody", 1), ("Aaron_Peirsol", 1), ("Abdullah_Gul", 1)]


def seed(
    lfw: Path, base: Path, analyzer: Any, gallery: list[tuple[str, int]] = GALLERY
) -> Faceledger:
    """A data dir with an admin ``root``, the users above and a tiny LFW gallery."""
    fl = Faceledger(base / "data")
    root = fl.init_admin("root", PW)
    for name, roles, unit in USERS:
        fl.add_user(root, name, PW, roles, unit)
    photos = base / "gallery"
    photos.mkdir()
    for name, n in gallery:
        shutil.copy(lfw_image(lfw, name, n), photos)
    fl.ingest(
        root, iter_paths([photos], "archive", "test fixture"), PipelineSettings(embedder="dlib")
    )
    fl.set_analyzer_factory(lambda: analyzer)
    return fl


def own_token(fl: Faceledger, user: str, name: str = "test", days: int = 90) -> tuple[int, str]:
    """A token ``user`` made for themselves (nobody can make one for another user)."""
    return fl.create_token(fl.login(user, PW), user, name, days)


def entries(
    fl: Faceledger, action: str | None = None, actor: str | None = None
) -> list[audit.Entry]:
    return list(audit.iter_entries(fl.store, action=action, actor=actor))


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port, in a thread, configured as
    ``faceledger serve`` runs it (:func:`faceledger.http.settings.server_config`)."""
    import uvicorn

    from faceledger.http.settings import server_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = server_config(app, "127.0.0.1", port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
