"""The application: the HTTP API (``/api/v1``) and the web UI, served by uvicorn
(``faceledger serve``).

Every endpoint goes through :class:`faceledger.core.Faceledger`: the core authenticates,
decides permissions, applies the search rules and writes the ledger. This package only
translates HTTP to core calls and core refusals to HTTP errors (``{"code", "message"}``
with a stable ``code``), plus what only an HTTP server needs:

* **Authentication**: ``Authorization: Bearer <token>`` (tokens from
  :meth:`~faceledger.core.Faceledger.create_token`), or the web UI's session cookie.
  Logging in through the UI checks the password with the core and creates a one-day API
  token named ``web-session`` for that user; its secret stays in the server's memory (the
  cookie holds only a random session id) and every request authenticates with it, so a
  disabled user, a revoked token or changed roles take effect at the next request. Logging
  out, or the session idling out, revokes the token.
* **CSRF**: requests authenticated by the cookie and not GET/HEAD/OPTIONS must send the
  session's CSRF token (``X-CSRF-Token`` header, or a ``csrf_token`` form field for the
  UI's forms). The cookie is ``HttpOnly; SameSite=Strict`` and ``Secure`` when the request
  came over https (or always/never: ``FACELEDGER_COOKIE_SECURE=1/0``).
* **Limits**: request bodies are capped while they are read (``FACELEDGER_MAX_UPLOAD_MB``,
  ``FACELEDGER_MAX_INGEST_UPLOAD_MB`` for ingest uploads); a simple in-process token bucket
  limits requests per user (all of one user's tokens and sessions share it), searches per
  user, and login attempts per client address. Sessions and buckets live in this process:
  run one server process per data dir.
* **Server-Timing**: a search's response says where the server's time went, stage by
  stage (upload, decode, detect, embed, index, database reads, ledger...;
  :mod:`faceledger.timing`), for operators and ``benchmarks/search_http.py``.
* **Concurrency**: endpoints are sync functions run in the server's threadpool; the core
  uses the face analyzer (dlib) one thread at a time (``Faceledger.analysis_lock``) and
  decodes probes in a bounded pool (:func:`faceledger.vision.decode.decode_probe`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from faceledger import __version__
from faceledger.core import Faceledger
from faceledger.errors import fields_at_fault
from faceledger.http import routes, web
from faceledger.http.context import AppContext
from faceledger.http.errors import KNOWN_ERRORS, error_for, json_error
from faceledger.http.middleware import (
    BodyLimitMiddleware,
    SecurityHeadersMiddleware,
    ServerTimingMiddleware,
)
from faceledger.http.settings import API, ApiSettings, server_config
from faceledger.http.web.responses import error_page
from faceledger.search.searcher import LEADS_NOTICE
from faceledger.vision.decode import configure_probes

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> Response:
        status, code, message, headers = error_for(exc)
        if status >= 500:
            log.error("error on %s %s", request.method, request.url.path, exc_info=exc)
        if request.url.path.startswith("/api/"):
            return json_error(status, code, message, headers, fields_at_fault(exc))
        return error_page(request, exc, status, code, message)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
            problems.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", ""))
        message = "invalid request: " + "; ".join(problems)
        if request.url.path.startswith("/api/"):
            return json_error(422, "invalid-request", message, {})
        return error_page(request, exc, 422, "invalid-request", message)

    for cls in (*KNOWN_ERRORS, UnicodeEncodeError, HTTPException, Exception):
        app.add_exception_handler(cls, handle)
    app.add_exception_handler(RequestValidationError, validation)


def create_app(
    data_dir: Path,
    *,
    settings: ApiSettings | None = None,
    faceledger: Faceledger | None = None,
) -> FastAPI:
    """The API and the web UI over one data dir.

    ``faceledger`` lets a caller (tests) pass a prepared core; else one is opened on
    ``data_dir``. ``settings`` default to :meth:`ApiSettings.from_env`.
    """
    settings = settings or ApiSettings.from_env()
    configure_probes(settings.max_probe_pixels, settings.probe_decoders)  # process-wide
    fl = faceledger or Faceledger(Path(data_dir))
    ctx = AppContext(fl, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if fl.has_users():
            try:  # retention applies at server start, as at every ingest
                await run_in_threadpool(fl.apply_retention)
            except Exception:
                log.exception("retention purge at start failed")
        yield
        # Sessions are in the database and outlive this server (another may serve them).
        ctx.jobs.shutdown()

    app = FastAPI(
        title="faceledger",
        version=__version__,
        description=(
            "Face search over a lawfully held gallery, with accountability built in. "
            + LEADS_NOTICE
            + " Errors are JSON objects with a stable `code` and a `message`."
        ),
        lifespan=lifespan,
        docs_url=None,  # the Swagger UI needs a CDN; the contract is /openapi.json
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodyLimitMiddleware, settings=settings)  # type: ignore[arg-type]
    app.add_middleware(SecurityHeadersMiddleware)  # type: ignore[arg-type]
    # outermost, so that a search's Server-Timing counts from the request's arrival
    searches = {("POST", f"{API}/searches")}
    app.add_middleware(ServerTimingMiddleware, routes=searches)  # type: ignore[arg-type]
    return app


def serve(data_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API and web UI with uvicorn (one process: sessions and limits are in memory).

    Behind a TLS-terminating proxy, name it in FACELEDGER_TRUSTED_PROXIES so that its
    X-Forwarded-For gives the client's address and its X-Forwarded-Proto the session
    cookie's Secure flag (or force that with FACELEDGER_COOKIE_SECURE=1).
    """
    import uvicorn

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(Path(data_dir))
    # The first search would wait for the models, the index and the subject count (about
    # 23 s at 1M faces): load them while the server starts answering.
    fl = app.state.ctx.fl
    threading.Thread(target=_warm_up, args=(fl,), name="warm-up", daemon=True).start()
    uvicorn.Server(server_config(app, host, port)).run()


def _warm_up(fl: Faceledger) -> None:
    t0 = time.perf_counter()
    try:
        fl.warm_up()
    except Exception:
        log.exception("warm-up failed (the first search will load what it needs)")
        return
    log.info("warmed up in %.1f s: models, vector index, subject count", time.perf_counter() - t0)
