"""``serve``: the HTTP API and the web UI (registered at the top level by
:mod:`faceledger.cli`)."""

from __future__ import annotations

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
    from faceledger.http.app import serve as run_server

    try:
        run_server(config.data_dir(data_dir), host, port)
    except ValueError as exc:  # a bad setting ($FACELEDGER_*), named in the message
        fail(str(exc))
