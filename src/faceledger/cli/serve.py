"""``serve``: the HTTP API and the web UI (registered at the top level by
:mod:`faceledger.cli`)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from faceledger import config
from faceledger.cli.common import DataDir, fail


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    data_dir: DataDir = None,
) -> None:
    """Serve the HTTP API and the web UI."""
    from faceledger.gallery.index.milvus import is_milvus_uri, probe
    from faceledger.http.app import serve as run_server

    try:
        index = os.environ.get("FACELEDGER_INDEX")
        if index and is_milvus_uri(index):
            probe(index)  # a Milvus server nothing answers on: refuse now, not at a search
        run_server(config.data_dir(data_dir), host, port)
    except ValueError as exc:  # a bad setting ($FACELEDGER_*), named in the message
        fail(str(exc))
