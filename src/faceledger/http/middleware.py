"""ASGI middleware: the request body size limit, the security headers and Server-Timing."""

from __future__ import annotations

import json
from collections.abc import Iterable
from time import perf_counter
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faceledger.http.settings import API, MB, ApiSettings
from faceledger.timing import Timings, recording


class BodyTooLarge(HTTPException):
    """Raised while a body is read past its limit (an HTTPException, so that FastAPI's body
    parsing passes it on instead of turning it into a generic 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BodyLimitMiddleware:
    """Refuse request bodies over the limit: by Content-Length up front, else while reading.

    The ingest endpoints (``/api/v1/ingest`` and the admin page's ingest form) get the
    larger ingest limit; every other request the upload limit.
    """

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, path: str) -> int:
        if path in (f"{API}/ingest", "/admin/ingest"):
            return self.settings.max_ingest_upload_bytes
        return self.settings.max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        message = f"request body is larger than the {limit / MB:.0f} MB limit"
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    status = 413 if declared > limit else 400
                    code = "too-large" if declared > limit else "bad-request"
                    text = message if declared > limit else "bad Content-Length header"
                    await _send_json(send, status, {"code": code, "message": text})
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(message)
            return msg

        await self.app(scope, limited_receive, send)


async def _send_json(send: Send, status: int, doc: dict[str, Any]) -> None:
    body = json.dumps(doc).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "media-src 'self' blob:; "  # the search page previews a video probe from the file chosen
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = {
                    b"x-content-type-options": b"nosniff",
                    b"x-frame-options": b"DENY",
                    b"referrer-policy": b"no-referrer",
                    b"content-security-policy": CSP.encode(),
                    b"cache-control": b"public, max-age=3600" if static else b"no-store",
                }
                headers += [(k, v) for k, v in extra.items() if k not in present]
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, send_with_headers)


class ServerTimingMiddleware:
    """A W3C ``Server-Timing`` header on the responses of the ``routes`` named (method,
    path): the request's stages as the search path times them (:mod:`faceledger.timing`;
    every stage named, 0 where it did not run), ``upload`` counting from the server's first
    read of the body to its last part, and ``total``, the server's time from the request's
    arrival to the start of its response. Durations in milliseconds."""

    def __init__(self, app: ASGIApp, routes: Iterable[tuple[str, str]]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) not in self.routes:
            await self.app(scope, receive, send)
            return
        t0 = perf_counter()
        rec = Timings()
        first: float | None = None
        done = False

        async def timed_receive() -> Message:
            nonlocal first, done
            if done:
                return await receive()
            if first is None:
                first = perf_counter()
            msg = await receive()
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                done = True
                rec.add("upload", perf_counter() - first)
            return msg

        async def send_with_timing(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                value = rec.header(total=perf_counter() - t0).encode("latin-1")
                msg = {**msg, "headers": [*msg.get("headers", []), (b"server-timing", value)]}
            await send(msg)

        with recording(rec):
            await self.app(scope, timed_receive, send_with_timing)


# -- sessions and rate limits -------------------------------------------------------------------
