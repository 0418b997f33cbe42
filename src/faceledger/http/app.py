"""The HTTP API (``/api/v1``), served with the web UI by uvicorn (``faceledger serve``).

Every endpoint goes through :class:`faceledger.core.Faceledger`: the core authenticates,
decides permissions, applies the search rules and writes the ledger. This module only
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
* **Concurrency**: endpoints are sync functions run in the server's threadpool; the core
  uses the face analyzer (dlib) one thread at a time (``Faceledger.analysis_lock``) and
  decodes probes in a bounded pool (:func:`faceledger.vision.decode.decode_probe`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import secrets
import threading
import time
import typing
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from faceledger import __version__
from faceledger.accounts.auth import Actor, AuthError, LoginThrottled, PermissionDenied
from faceledger.cases.policy import Policy, policy_path
from faceledger.core import Faceledger, PolicyTamperedError, RefusedError, SearchRequest
from faceledger.errors import BadTextError, ModelMismatchError
from faceledger.gallery.jobs import JobManager
from faceledger.gallery.sources import ItemError, SourceError, parse_when
from faceledger.ledger import audit, reports
from faceledger.search.searcher import LEADS_NOTICE, NoFaceError
from faceledger.vision import probes
from faceledger.vision.decode import (
    DEFAULT_MAX_PROBE_PIXELS,
    DEFAULT_PROBE_DECODERS,
    DecodeError,
    configure_probes,
)

log = logging.getLogger("faceledger.http.api")

API = "/api/v1"
SESSION_COOKIE = "faceledger_session"
LOGIN_CSRF_COOKIE = "faceledger_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MB = 1024 * 1024
MAX_ID = 2**63 - 1  # database ids are signed 64-bit integers
IMAGE_TYPES = ("image/",)
GENERIC_TYPES = ("application/octet-stream", "")
ARCHIVE_TYPES = (
    "application/zip",
    "application/x-zip-compressed",
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/x-gtar",
    "application/x-bzip2",
    "application/x-xz",
)
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".gif": "image/gif",
}

# -- settings ---------------------------------------------------------------------------------


def _env_float(environ: typing.Mapping[str, str], key: str, default: float) -> float:
    raw = environ.get(key, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"${key} must be a number, not {raw!r}") from exc


@dataclass
class ApiSettings:
    """Server settings; :meth:`from_env` reads the ``FACELEDGER_*`` variables named here."""

    max_upload_bytes: int = 20 * MB  # FACELEDGER_MAX_UPLOAD_MB: probes, any request body
    max_ingest_upload_bytes: int = 2048 * MB  # FACELEDGER_MAX_INGEST_UPLOAD_MB
    # FACELEDGER_INGEST_ROOTS (os.pathsep-separated): server-side folders an admin may ingest
    # from over HTTP. Empty: server-side paths are refused, uploads only.
    ingest_roots: tuple[Path, ...] = ()
    cookie_secure: bool | None = None  # FACELEDGER_COOKIE_SECURE=1/0; unset: when https
    session_idle_seconds: int = 30 * 60  # FACELEDGER_SESSION_IDLE_MINUTES
    session_max_seconds: int = 12 * 3600  # FACELEDGER_SESSION_MAX_HOURS
    rate_per_minute: float = 600.0  # FACELEDGER_RATE_PER_MINUTE: requests per user
    rate_burst: int = 200
    search_rate_per_minute: float = 30.0  # FACELEDGER_SEARCH_RATE_PER_MINUTE
    search_rate_burst: int = 10
    login_rate_per_minute: float = 10.0  # FACELEDGER_LOGIN_RATE_PER_MINUTE, per address
    login_rate_burst: int = 10
    ingest_workers: int = 1  # FACELEDGER_INGEST_WORKERS: processes per ingest job
    # FACELEDGER_MAX_PROBE_MEGAPIXELS: probes (search, verify, detect) larger than this are
    # refused from their header, before decoding; the gallery's own cap is larger.
    max_probe_pixels: int = DEFAULT_MAX_PROBE_PIXELS
    probe_decoders: int = DEFAULT_PROBE_DECODERS  # FACELEDGER_PROBE_DECODERS: at once
    # FACELEDGER_TRUSTED_PROXIES (comma-separated addresses or networks): reverse proxies
    # whose X-Forwarded-For / X-Forwarded-Proto are believed. Empty: none, the peer's
    # address is the client's (a client could otherwise pick its own address per request).
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: typing.Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if environ is None else environ
        s = cls()
        s.max_upload_bytes = int(
            _env_float(env, "FACELEDGER_MAX_UPLOAD_MB", s.max_upload_bytes / MB) * MB
        )
        s.max_ingest_upload_bytes = int(
            _env_float(env, "FACELEDGER_MAX_INGEST_UPLOAD_MB", s.max_ingest_upload_bytes / MB) * MB
        )
        roots = env.get("FACELEDGER_INGEST_ROOTS", "")
        s.ingest_roots = tuple(Path(r).resolve() for r in roots.split(os.pathsep) if r.strip())
        secure = env.get("FACELEDGER_COOKIE_SECURE", "").strip().lower()
        if secure in ("1", "true", "yes"):
            s.cookie_secure = True
        elif secure in ("0", "false", "no"):
            s.cookie_secure = False
        s.session_idle_seconds = int(
            _env_float(env, "FACELEDGER_SESSION_IDLE_MINUTES", s.session_idle_seconds / 60) * 60
        )
        s.session_max_seconds = int(
            _env_float(env, "FACELEDGER_SESSION_MAX_HOURS", s.session_max_seconds / 3600) * 3600
        )
        s.rate_per_minute = _env_float(env, "FACELEDGER_RATE_PER_MINUTE", s.rate_per_minute)
        s.search_rate_per_minute = _env_float(
            env, "FACELEDGER_SEARCH_RATE_PER_MINUTE", s.search_rate_per_minute
        )
        s.login_rate_per_minute = _env_float(
            env, "FACELEDGER_LOGIN_RATE_PER_MINUTE", s.login_rate_per_minute
        )
        s.ingest_workers = max(1, int(_env_float(env, "FACELEDGER_INGEST_WORKERS", 1)))
        s.max_probe_pixels = round(
            _env_float(env, "FACELEDGER_MAX_PROBE_MEGAPIXELS", s.max_probe_pixels / 1e6) * 1e6
        )
        if s.max_probe_pixels < 1:
            raise ValueError("$FACELEDGER_MAX_PROBE_MEGAPIXELS must be above 0")
        s.probe_decoders = int(_env_float(env, "FACELEDGER_PROBE_DECODERS", s.probe_decoders))
        if s.probe_decoders < 1:
            raise ValueError("$FACELEDGER_PROBE_DECODERS must be 1 or more")
        proxies = env.get("FACELEDGER_TRUSTED_PROXIES", "")
        s.trusted_proxies = tuple(p.strip() for p in proxies.split(",") if p.strip())
        proxy_networks(s.trusted_proxies)  # a bad entry fails at start, not per request
        return s


def proxy_networks(
    entries: Sequence[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """FACELEDGER_TRUSTED_PROXIES entries as networks (an address is a one-address network)."""
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(
                f"$FACELEDGER_TRUSTED_PROXIES: {entry!r} is not an IP address or network"
            ) from exc
    return tuple(nets)


# -- errors -----------------------------------------------------------------------------------


class ApiError(Exception):
    """An error this module raises itself (the core raises its own exceptions)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


REFUSAL_STATUS = {
    "quota-exceeded": 429,
    "not-approved": 403,
    "self-approval": 403,
    "other-unit": 403,
    "no-unit": 403,
    "impersonation": 403,
    "self-roles": 403,
    "self-unit": 403,
    "results-expired": 403,
    "not-a-candidate": 404,
    "erased": 410,
    "missing-case-fields": 400,
    "bad-report": 400,
    "bad-format": 400,
    "low-quality": 422,
    "already-decided": 409,
    "already-initialised": 409,
    "user-exists": 409,
    "self-disable": 409,
    "empty-gallery": 409,
    "bad-username": 400,
    "bad-expiry": 400,
    "missing-reason": 400,
    "no-calibration": 400,
    "not-in-preview": 400,
    "nothing-confirmed": 400,
    "preview-used": 409,
    "preview-expired": 410,
    "bad-unit": 400,
    "wrong-password": 403,
    "same-password": 400,
}

HTTP_CODES = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "rate-limited",
}


def refusal_status(code: str) -> int:
    if code in REFUSAL_STATUS:
        return REFUSAL_STATUS[code]
    return 404 if code.startswith("no-such-") else 400


def error_for(exc: Exception) -> tuple[int, str, str, dict[str, str]]:
    """(status, code, message, headers) for an exception the API knows; 500 otherwise."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, LoginThrottled):
        wait = str(exc.retry_after)
        return 429, "login-throttled", str(exc), {"Retry-After": wait}
    if isinstance(exc, AuthError):
        return 401, "unauthenticated", str(exc), {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, PermissionDenied):
        return 403, "permission-denied", str(exc), {}
    if isinstance(exc, RefusedError):
        return refusal_status(exc.code), exc.code, str(exc), {}
    if isinstance(exc, DecodeError):
        return 422, exc.reason, str(exc), {}
    if isinstance(exc, NoFaceError):
        return 422, "no-face", str(exc), {}
    if isinstance(exc, PolicyTamperedError):
        return 409, "policy-tampered", str(exc), {}
    if isinstance(exc, ModelMismatchError):
        return 409, "model-mismatch", str(exc), {}
    if isinstance(exc, SourceError):
        return 400, "source-error", str(exc), {}
    if isinstance(exc, HTTPException):
        code = HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code
        return exc.status_code, code, message, dict(exc.headers or {})
    if isinstance(exc, BadTextError):
        return 400, "bad-text", str(exc), {}
    if isinstance(exc, UnicodeEncodeError) and "surrogates" in exc.reason:
        # JSON allows "\ud800" escapes; such text cannot be stored, hashed or logged as UTF-8
        return 400, "bad-text", "text must be valid Unicode (no lone surrogates)", {}
    return 500, "internal-error", "internal error; see the server log", {}


KNOWN_ERRORS = (
    ApiError,
    AuthError,
    PermissionDenied,
    RefusedError,
    DecodeError,
    NoFaceError,
    PolicyTamperedError,
    ModelMismatchError,
    SourceError,
    BadTextError,
)


@contextmanager
def invalid_input(code: str) -> Iterator[None]:
    """Turn the core's ValueErrors (bad roles, weak password, bad policy...) into 400s."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, code, str(exc)) from exc


# -- body size limit, security headers ----------------------------------------------------------


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


# -- sessions and rate limits -------------------------------------------------------------------


@dataclass
class WebSession:
    sid: str
    csrf: str
    token_id: int
    secret: str = field(repr=False)
    username: str
    created: float
    last_seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)


class SessionStore:
    """Server-side UI sessions, in memory: cookie value -> the session's API token."""

    def __init__(self, idle_seconds: int, max_seconds: int) -> None:
        self.idle = idle_seconds
        self.max = max_seconds
        self._by_sid: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def create(self, token_id: int, secret: str, username: str) -> WebSession:
        now = time.monotonic()
        sess = WebSession(
            sid=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            token_id=token_id,
            secret=secret,
            username=username,
            created=now,
            last_seen=now,
        )
        with self._lock:
            self._by_sid[sess.sid] = sess
        return sess

    def _expired(self, sess: WebSession, now: float) -> bool:
        return now - sess.last_seen > self.idle or now - sess.created > self.max

    def get(self, sid: str) -> tuple[WebSession | None, WebSession | None]:
        """(live session, expired session to end) for a cookie value."""
        now = time.monotonic()
        with self._lock:
            sess = self._by_sid.get(sid)
            if sess is None:
                return None, None
            if self._expired(sess, now):
                del self._by_sid[sid]
                return None, sess
            sess.last_seen = now
            return sess, None

    def pop(self, sid: str) -> WebSession | None:
        with self._lock:
            return self._by_sid.pop(sid, None)

    def pop_all(self) -> list[WebSession]:
        with self._lock:
            gone, self._by_sid = list(self._by_sid.values()), {}
        return gone

    def pop_expired(self) -> list[WebSession]:
        now = time.monotonic()
        with self._lock:
            gone = [s for s in self._by_sid.values() if self._expired(s, now)]
            for s in gone:
                del self._by_sid[s.sid]
        return gone


class RateLimiter:
    """Token buckets in memory: ``rate_per_minute`` refill, up to ``burst`` at once."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate_per_minute: float, burst: int) -> float:
        """0 when allowed, else the seconds to wait."""
        if rate_per_minute <= 0:
            return 0.0
        now = time.monotonic()
        rate = rate_per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 50_000:  # forget idle keys (their buckets are full)
                horizon = now - burst / rate
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > horizon}
            return (1.0 - tokens) / rate

    def waiting(self, key: str, rate_per_minute: float, burst: int) -> float:
        """Like :meth:`take` but consumes nothing: 0 when a token is there, else the wait."""
        if rate_per_minute <= 0:
            return 0.0
        now = time.monotonic()
        rate = rate_per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

    def check(self, key: str, rate_per_minute: float, burst: int, what: str) -> None:
        wait = self.take(key, rate_per_minute, burst)
        if wait:
            raise ApiError(
                429,
                "rate-limited",
                f"too many {what}; try again in {math.ceil(wait)} s",
                {"Retry-After": str(math.ceil(wait))},
            )


# -- the application context --------------------------------------------------------------------


class AppContext:
    """What every request handler shares: the core, sessions, limits, jobs, the analyzer lock."""

    def __init__(self, fl: Faceledger, settings: ApiSettings) -> None:
        self.fl = fl
        self.settings = settings
        self.sessions = SessionStore(settings.session_idle_seconds, settings.session_max_seconds)
        self.limiter = RateLimiter()
        self.jobs = JobManager(fl, settings.ingest_workers)
        self.proxies = proxy_networks(settings.trusted_proxies)

    # sessions ---------------------------------------------------------------------------------
    def start_session(self, username: str, password: str, address: str) -> tuple[Actor, WebSession]:
        """Log in and open a web session: the core creates the session's token with the
        login (one ledger entry); its secret stays here."""
        for old in self.sessions.pop_expired():
            self.end_session(old)
        actor, token_id, secret = self.fl.login_session(username, password, address, days=1)
        return actor, self.sessions.create(token_id, secret, actor.username)

    def end_session(self, sess: WebSession) -> None:
        """Revoke the session's token (best effort: it may be revoked or expired already)."""
        try:
            actor = self.fl.authenticate_token(sess.secret, record_use=False)
            self.fl.revoke_token(actor, sess.token_id)
        except (AuthError, RefusedError, PermissionDenied):
            pass

    def session_for(self, sid: str | None) -> WebSession | None:
        if not sid:
            return None
        live, expired = self.sessions.get(sid)
        if expired is not None:
            self.end_session(expired)
        return live

    def session_actor(self, sess: WebSession) -> Actor:
        try:
            return self.fl.authenticate_token(sess.secret, web_session=True)
        except AuthError:
            self.sessions.pop(sess.sid)
            raise

    def check_csrf(self, sess: WebSession, sent: str | None, where: str) -> None:
        if not sent or not secrets.compare_digest(sent, sess.csrf):
            self.fl.record(
                Actor(0, sess.username, frozenset(), via="session"),
                "csrf.rejected",
                where,
            )
            raise ApiError(403, "csrf", "missing or wrong CSRF token; reload the page")

    def limit_user(self, actor: Actor) -> None:
        s = self.settings
        self.limiter.check(f"user:{actor.user_id}", s.rate_per_minute, s.rate_burst, "requests")

    def limit_search(self, actor: Actor) -> None:
        s = self.settings
        self.limiter.check(
            f"search:{actor.user_id}", s.search_rate_per_minute, s.search_rate_burst, "searches"
        )

    def limit_login(self, client: str) -> None:
        s = self.settings
        self.limiter.check(
            f"login:{client}", s.login_rate_per_minute, s.login_rate_burst, "login attempts"
        )

    def check_failed_auth(self, client: str) -> None:
        """Refuse (429) an address whose recent bad tokens used up its allowance, before the
        core sees (and records) yet another one."""
        s = self.settings
        wait = self.limiter.waiting(
            f"authfail:{client}", s.login_rate_per_minute, s.login_rate_burst
        )
        if wait:
            raise ApiError(
                429,
                "rate-limited",
                f"too many failed authentications; try again in {math.ceil(wait)} s",
                {"Retry-After": str(math.ceil(wait))},
            )

    def note_failed_auth(self, client: str) -> None:
        s = self.settings
        self.limiter.take(f"authfail:{client}", s.login_rate_per_minute, s.login_rate_burst)

    def record_anonymous(self, client: str, method: str, path: str, reason: str) -> None:
        """Record an API request refused for want of credentials. Per address, as many as
        the login allowance; past it they are refused unrecorded (no ledger flood)."""
        s = self.settings
        if not self.limiter.take(f"anon:{client}", s.login_rate_per_minute, s.login_rate_burst):
            who = Actor(0, "anonymous", frozenset(), via="http")
            self.fl.record(who, "auth.missing", path, method=method, client=client, reason=reason)

    def cookie_secure(self, request: Request) -> bool:
        if self.settings.cookie_secure is not None:
            return self.settings.cookie_secure
        if self._trusted(request.client.host if request.client else ""):
            proto = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip()
            if proto:
                return proto.lower() == "https"
        return request.url.scheme == "https"

    # client addresses -------------------------------------------------------------------------
    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def client_address(self, request: Request) -> str:
        """Who is at the other end, for the per-address limits and the ledger: the peer's
        address; when the peer is a trusted proxy (FACELEDGER_TRUSTED_PROXIES), the last
        X-Forwarded-For hop that is not one. The server runs without uvicorn's own
        proxy-header rewriting (:func:`server_config`), so this is the only place that
        believes the header."""
        peer = request.client.host if request.client else "unknown"
        if not self._trusted(peer):
            return peer
        hops = [
            hop.strip()
            for value in request.headers.getlist("x-forwarded-for")
            for hop in value.split(",")
            if hop.strip()
        ]
        for hop in reversed(hops):
            try:
                ip = ipaddress.ip_address(hop)
            except ValueError:
                return peer  # not what a proxy writes: the proxy is the best we know
            if not any(ip in net for net in self.proxies):
                return str(ip)
        return hops[0] if hops else peer


def ctx_of(request: Request) -> AppContext:
    return typing.cast(AppContext, request.app.state.ctx)


bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API token (`faceledger tokens create`, or POST /api/v1/tokens).",
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description="The web UI's session; other than GET, requests also need the "
    "X-CSRF-Token header with the session's CSRF token.",
)


def current_actor(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    sid: Annotated[str | None, Depends(cookie_scheme)],
) -> Actor:
    """Who is calling: a bearer token, else the session cookie (with CSRF on writes)."""
    ctx = ctx_of(request)
    if creds is not None:
        client = ctx.client_address(request)
        ctx.check_failed_auth(client)
        try:
            actor = ctx.fl.authenticate_token(creds.credentials)
        except AuthError:
            ctx.note_failed_auth(client)
            raise
    else:
        sess = ctx.session_for(sid)
        if sess is None:
            client = ctx.client_address(request)
            reason = "no credentials" if not sid else "session ended"
            ctx.record_anonymous(client, request.method, request.url.path, reason)
            raise AuthError(
                "authentication required: send 'Authorization: Bearer <token>' or log in"
                if not sid
                else "your session has ended; log in again"
            )
        if request.method not in SAFE_METHODS:
            ctx.check_csrf(sess, request.headers.get(CSRF_HEADER), request.url.path)
        actor = ctx.session_actor(sess)
    ctx.limit_user(actor)
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


def ctx_dep(request: Request) -> AppContext:
    return ctx_of(request)


Ctx = Annotated[AppContext, Depends(ctx_dep)]


# -- translation helpers ------------------------------------------------------------------------


def parse_box(text: str, field_name: str = "face_box") -> list[int] | None:
    """A face box form field, or None; a bad one is a 400 ``bad-face-box``."""
    try:
        return probes.parse_box(text, field_name)
    except probes.BadBoxError as exc:
        raise ApiError(400, "bad-face-box", str(exc)) from exc


def candidate_out(search_id: int, c: dict[str, Any]) -> dict[str, Any]:
    """A candidate as the API shows it: no server paths, and its crop and source image only
    through the search that returned it."""
    doc = {k: v for k, v in c.items() if k not in ("crop_path", "image_path")}
    doc["crop_url"] = f"{API}/searches/{search_id}/faces/{c['face_id']}/crop"
    doc["image_url"] = f"{API}/searches/{search_id}/faces/{c['face_id']}/image"
    return doc


def search_out(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    faces = []
    for f in result["faces"]:
        face = dict(f)
        face["candidates"] = [candidate_out(result["search_id"], c) for c in f["candidates"]]
        face.setdefault("selected", None)
        faces.append(face)
    out["faces"] = faces
    return out


def read_upload(
    upload: UploadFile | None, field_name: str, allowed: tuple[str, ...] = IMAGE_TYPES
) -> bytes:
    """The bytes of an uploaded file part, after a content-type check."""
    if upload is None or (not upload.filename and upload.size in (None, 0)):
        raise ApiError(400, "missing-file", f"send the photo as the multipart file '{field_name}'")
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if not (ctype in GENERIC_TYPES or any(ctype.startswith(a) for a in allowed)):
        raise ApiError(
            415,
            "unsupported-media-type",
            f"'{field_name}' is {ctype}; send an image (image/jpeg, image/png, ...)",
        )
    return upload.file.read()


def parse_request_id(text: str) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
        raise ApiError(400, "bad-request-id", "request_id must be a number")
    return int(text)


def parse_day(text: str | None, name: str) -> date:
    try:
        return date.fromisoformat((text or "").strip())
    except ValueError as exc:
        raise ApiError(400, "bad-date", f"{name} must be a date like 2026-01-31") from exc


def day_bound(text: str | None, name: str, end: bool = False) -> str | None:
    """A ledger timestamp bound from a date (whole days; ``end`` is inclusive) or a time."""
    if not text:
        return None
    text = text.strip()
    if len(text) == 10:
        d = parse_day(text, name)
        if end and d == date.max:
            return None  # nothing can come after the last representable day
        return (d + timedelta(days=1)).isoformat() if end else d.isoformat()
    try:
        from datetime import datetime

        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError as exc:
        raise ApiError(400, "bad-date", f"{name} must be a date or an ISO 8601 time") from exc


def safe_filename(name: str) -> str:
    base = Path(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[:120]


def start_ingest(
    ctx: AppContext,
    actor: Actor,
    source: str,
    legal_basis: str,
    expires_at: str,
    server_path: str,
    uploads: list[UploadFile],
) -> dict[str, Any]:
    """Queue an ingest job from a server-side path (under the allowed roots) or uploads."""
    fl = ctx.fl
    fl.require(actor, "ingest", source)
    uploads = [u for u in uploads if u.filename or (u.size or 0) > 0]
    source = source.strip()
    if not source or len(source) > 200:
        raise ApiError(400, "missing-source", "name the source of these photos (source)")
    if len(legal_basis.strip()) < 3:
        raise ApiError(
            400, "missing-legal-basis", "legal_basis is required: why you may hold these photos"
        )
    if bool(server_path.strip()) == bool(uploads):
        raise ApiError(400, "nothing-to-ingest", "give either a server-side path or files")
    try:
        expiry = parse_when(expires_at, "expires_at")
    except ItemError as exc:
        raise ApiError(400, "bad-date", str(exc)) from exc
    if server_path.strip():
        raw = Path(server_path.strip())
        resolved = raw.resolve()
        roots = ctx.settings.ingest_roots
        if not raw.is_absolute() or not any(resolved.is_relative_to(r) for r in roots):
            fl.record(actor, "ingest.path_refused", str(raw), roots=[str(r) for r in roots])
            raise ApiError(
                403,
                "path-not-allowed",
                "server-side paths must be absolute and inside an allowed root "
                "(FACELEDGER_INGEST_ROOTS)" + ("; none is configured" if not roots else ""),
            )
        if not resolved.exists():
            raise ApiError(400, "no-such-path", f"{raw} does not exist on the server")
        job = ctx.jobs.submit_ingest(actor, [resolved], source, legal_basis.strip(), expiry)
        return job.as_dict()
    job_id, folder = ctx.jobs.new_upload_dir()
    try:
        names: list[str] = []
        for i, up in enumerate(uploads):
            ctype = (up.content_type or "").split(";")[0].strip().lower()
            if not (ctype in GENERIC_TYPES or ctype.startswith("image/") or ctype in ARCHIVE_TYPES):
                raise ApiError(
                    415,
                    "unsupported-media-type",
                    f"{up.filename}: {ctype} is neither an image nor a zip/tar archive",
                )
            name = safe_filename(up.filename or f"file{i}")
            if name in names:
                name = f"{i}_{name}"
            names.append(name)
            with open(folder / name, "wb") as out:
                while chunk := up.file.read(1 << 20):
                    out.write(chunk)
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        raise
    job = ctx.jobs.submit_ingest(
        actor,
        [folder / n for n in names],  # each file: archives are opened, not skipped
        source,
        legal_basis.strip(),
        expiry,
        upload_dir=folder,
        job_id=job_id,
        shown_paths=[f"upload:{n}" for n in names],
    )
    return job.as_dict()


def job_for(ctx: AppContext, actor: Actor, job_id: str) -> dict[str, Any]:
    ctx.fl.require(actor, "ingest", f"job {job_id}")
    job = ctx.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "no-such-job", f"no job {job_id} (jobs are kept until a restart)")
    return job.as_dict()


def parse_face_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]
        if any(abs(i) > MAX_ID for i in ids):
            raise ValueError("out of range")
    except ValueError as exc:
        raise ApiError(400, "bad-face-ids", "face_ids are numbers, comma-separated") from exc
    return ids


def erase_request(
    ctx: AppContext,
    actor: Actor,
    face_ids: str,
    image_sha: str,
    source: str,
    preview_id: str,
    optout_reference: str,
    reason: str,
) -> dict[str, Any]:
    """An erasure by face ids, image or source, or the faces confirmed from a preview
    (``preview_id`` with ``face_ids`` the confirmed subset, which may be empty)."""
    preview: int | None = None
    if preview_id.strip():
        if not (preview_id.strip().isascii() and preview_id.strip().isdigit()):
            raise ApiError(400, "bad-preview-id", "preview_id is a number")
        preview = int(preview_id.strip())
        if preview > MAX_ID:
            raise ApiError(400, "bad-preview-id", "preview_id is a number")
    ids = parse_face_ids(face_ids) if face_ids.strip() or preview is not None else None
    with invalid_input("invalid-erasure"):
        report = ctx.fl.erase(
            actor,
            face_ids=ids,
            image_sha=image_sha.strip() or None,
            source=source.strip() or None,
            preview_id=preview,
            optout_reference=optout_reference.strip() or None,
            reason=reason.strip(),
        )
    return typing.cast(dict[str, Any], report.as_dict())


def erasure_preview_request(
    ctx: AppContext, actor: Actor, probe: bytes, threshold: float | None
) -> dict[str, Any]:
    """Make an erasure preview."""
    ctx.fl.require(actor, "erase")
    with invalid_input("invalid-erasure"):
        doc = ctx.fl.erase_preview(actor, probe, threshold)
    return preview_out(doc)


def preview_crop_url(preview_id: int, face_id: int) -> str:
    return f"{API}/erasures/previews/{preview_id}/faces/{face_id}/crop"


def preview_out(doc: dict[str, Any]) -> dict[str, Any]:
    """A preview with each face's crop URL (served to the preview's admin only)."""
    out = dict(doc)
    out["faces"] = [
        f | {"crop_url": None if f["erased"] else preview_crop_url(doc["preview_id"], f["face_id"])}
        for f in doc["faces"]
    ]
    return out


def current_policy_for_edit(fl: Faceledger) -> Policy:
    """The policy to change: the valid current one, else (tampered or missing) the file's
    contents or the defaults, as ``faceledger policy set`` does."""
    try:
        return fl.policy()
    except PolicyTamperedError:
        path = policy_path(fl.data_dir)
        try:
            return Policy.from_bytes(path.read_bytes()) if path.is_file() else Policy()
        except ValueError:
            return Policy()


def policy_dict(p: Policy) -> dict[str, Any]:
    return {f.name: getattr(p, f.name) for f in fields(p)}


# -- OpenAPI models ---------------------------------------------------------------------------


class ErrorOut(BaseModel):
    code: str = Field(description="Stable machine-readable code")
    message: str = Field(description="What went wrong, for people")
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "missing-case-fields",
                    "message": "a search needs a case number (--case); a justification of "
                    "at least 10 characters",
                }
            ]
        }
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Bad input, or a refusal by the search rules"},
    401: {"model": ErrorOut, "description": "Not authenticated"},
    403: {"model": ErrorOut, "description": "Not permitted (recorded in the ledger)"},
    404: {"model": ErrorOut, "description": "No such user, token, search, job, case request..."},
    409: {
        "model": ErrorOut,
        "description": "Conflicts with the current state (already exists or decided, "
        "policy changed outside faceledger, empty gallery...)",
    },
    429: {"model": ErrorOut, "description": "Rate limit or daily search quota"},
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    413: {"model": ErrorOut, "description": "Upload larger than the limit"},
    415: {"model": ErrorOut, "description": "Not an image content type"},
    422: {
        "model": ErrorOut,
        "description": "Not a usable image (code from the decoder), or no face",
    },
}


class HealthOut(BaseModel):
    status: str
    version: str
    initialised: bool
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ok", "version": "0.1.0", "initialised": True}]}
    )


class MeOut(BaseModel):
    username: str
    roles: list[str]
    unit: str | None
    via: str
    token_id: int | None
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "username": "ivy",
                    "roles": ["investigator"],
                    "unit": "north",
                    "via": "token",
                    "token_id": 3,
                }
            ]
        }
    )


class CandidateOut(BaseModel):
    rank: int
    face_id: int
    score: float = Field(description="Cosine similarity of the two face vectors")
    est_fmr: float | None = Field(
        description="Estimated false match rate at this score (calibrated on impostor pairs); "
        "null without a calibration for the model"
    )
    est_fmr_extrapolated: bool | None
    expected_false_candidates: float | None = Field(
        description="Different people expected to score at least this high in a gallery of "
        "this size (gallery faces x est_fmr)"
    )
    quality: float
    bbox: list[int] = Field(description="The face in the source image: left, top, right, bottom")
    crop_url: str
    image_sha256: str
    image_url: str
    provenance: list[dict[str, Any]]


class ProbeFaceOut(BaseModel):
    face_index: int
    bbox: list[int]
    quality: float
    size: int
    sharpness: float | None = None
    yaw: float | None = None
    warnings: list[str]
    below_min_quality: bool
    selected: bool | None = Field(
        None, description="With face_box: the face that was asked for (others are not searched)"
    )
    candidates: list[CandidateOut]


SEARCH_EXAMPLE: dict[str, Any] = {
    "search_id": 12,
    "probe_sha256": "9f2c...e1",
    "photo_sha256": "41ab...07",
    "probe_region": [210, 0, 500, 250],
    "case_number": "CASE-2026-114",
    "purpose": "violent-crime",
    "gallery_faces": 5210,
    "model_id": "dlib_resnet_v1",
    "notice": LEADS_NOTICE,
    "faces": [
        {
            "face_index": 0,
            "bbox": [318, 68, 425, 175],
            "quality": 0.91,
            "size": 107,
            "sharpness": 88.1,
            "yaw": 0.04,
            "warnings": [],
            "below_min_quality": False,
            "selected": True,
            "candidates": [
                {
                    "rank": 1,
                    "face_id": 881,
                    "score": 0.9512,
                    "est_fmr": 2.1e-06,
                    "est_fmr_extrapolated": True,
                    "expected_false_candidates": 0.011,
                    "quality": 0.88,
                    "bbox": [67, 68, 174, 175],
                    "crop_url": "/api/v1/searches/12/faces/881/crop",
                    "image_sha256": "5d1e...c3",
                    "image_url": "/api/v1/searches/12/faces/881/image",
                    "provenance": [
                        {
                            "source": "press-archive",
                            "original_path": "/srv/photos/2019/0412.jpg",
                            "source_url": "https://example.org/photo/0412",
                            "captured_at": "2019-04-12",
                            "legal_basis": "public press archive, licence 17/2019",
                            "subject_label": None,
                            "ingested_at": "2026-01-02T10:11:12+00:00",
                        }
                    ],
                }
            ],
        }
    ],
}


class SearchOut(BaseModel):
    search_id: int
    probe_sha256: str = Field(description="SHA-256 of the probe compared (the face region)")
    photo_sha256: str = Field(description="SHA-256 of the uploaded photo")
    probe_region: list[int] | None
    case_number: str
    purpose: str
    gallery_faces: int
    model_id: str
    notice: str
    faces: list[ProbeFaceOut]
    model_config = ConfigDict(json_schema_extra={"examples": [SEARCH_EXAMPLE]})


class DetectFaceOut(BaseModel):
    face_index: int
    bbox: list[int]
    quality: float
    size: int
    sharpness: float
    yaw: float
    warnings: list[str] = Field(description="small, blurred, turned")
    warning_text: list[str]
    below_min_quality: bool


class DetectOut(BaseModel):
    photo_sha256: str
    width: int
    height: int
    min_probe_quality: float
    faces: list[DetectFaceOut]
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "photo_sha256": "41ab...07",
                    "width": 500,
                    "height": 250,
                    "min_probe_quality": 0.0,
                    "faces": [
                        {
                            "face_index": 0,
                            "bbox": [68, 68, 175, 175],
                            "quality": 0.93,
                            "size": 107,
                            "sharpness": 91.2,
                            "yaw": 0.02,
                            "warnings": [],
                            "warning_text": [],
                            "below_min_quality": False,
                        }
                    ],
                }
            ]
        }
    )


class VerifyOut(BaseModel):
    verify_id: int
    case_number: str
    purpose: str
    model_id: str
    score: float
    est_fmr: float | None
    est_fmr_extrapolated: bool | None
    faces: list[dict[str, Any]]
    notice: str
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "verify_id": 3,
                    "case_number": "CASE-2026-114",
                    "purpose": "identity-fraud",
                    "model_id": "dlib_resnet_v1",
                    "score": 0.947,
                    "est_fmr": 1.3e-05,
                    "est_fmr_extrapolated": False,
                    "faces": [
                        {
                            "photo": "A",
                            "photo_sha256": "41ab...07",
                            "faces_in_photo": 1,
                            "bbox": [68, 68, 175, 175],
                            "quality": 0.93,
                            "warnings": [],
                        }
                    ],
                    "notice": LEADS_NOTICE,
                }
            ]
        }
    )


class SearchRecordOut(BaseModel):
    id: int
    username: str
    case_number: str
    purpose: str
    justification: str
    request_id: int | None
    probe_sha256: str
    faces: int
    created_at: str
    results: list[dict[str, Any]] = Field(
        description="Per probe face: candidate [face_id, score] pairs as recorded"
    )


class CaseRequestIn(BaseModel):
    case_number: str = ""
    purpose: str = ""
    justification: str = ""
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "case_number": "FRAUD-9",
                    "purpose": "identity-fraud",
                    "justification": "passport application photo does not match the holder",
                }
            ]
        }
    )


class CaseDecisionIn(BaseModel):
    note: str = ""
    search_limit: int | None = Field(
        default=None, description="Approvals: at most this many searches and verifications under it"
    )
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"note": "grounds documented", "search_limit": 5}]}
    )


class CaseWithdrawIn(BaseModel):
    note: str = Field(description="Why the approval ends now")
    model_config = ConfigDict(json_schema_extra={"examples": [{"note": "suspect identified"}]})


class CaseRequestOut(BaseModel):
    id: int
    case_number: str
    purpose: str
    justification: str
    requested_by: int
    requested_by_name: str
    unit: str | None
    status: str
    decided_by: int | None
    decided_at: str | None
    decision_note: str | None
    created_at: str
    expires_at: str | None = Field(None, description="When an approval ends")
    search_limit: int | None = None
    withdrawn_by: int | None = None
    withdrawn_at: str | None = None
    withdrawal_note: str | None = None


class CreatedOut(BaseModel):
    id: int
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": 7}]})


class OkOut(BaseModel):
    ok: bool = True


class UserIn(BaseModel):
    username: str
    password: str = Field(description="At least 10 characters")
    roles: list[str] = Field(description="admin, investigator, supervisor, auditor")
    unit: str | None = None
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "username": "ivy",
                    "password": "a long passphrase",
                    "roles": ["investigator"],
                    "unit": "north",
                }
            ]
        }
    )


class UserPatch(BaseModel):
    disabled: bool | None = None
    roles: list[str] | None = None
    unit: str | None = Field(None, description="The user's unit ('' to clear it)")
    model_config = ConfigDict(json_schema_extra={"examples": [{"disabled": True}]})


class UserOut(BaseModel):
    id: int
    username: str
    roles: list[str]
    unit: str | None
    disabled: bool
    locked_until: str | None
    created_at: str


class TokenIn(BaseModel):
    user: str | None = Field(
        None,
        description="Optional check: must be your own user name (nobody creates tokens for "
        "another user)",
    )
    name: str = "api"
    days: int = 90
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "case-tool", "days": 30}]})


class TokenCreatedOut(BaseModel):
    id: int
    user: str
    secret: str = Field(description="Shown once; store it now")
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": 4, "user": "ivy", "secret": "flt_Xq...9w"}]}
    )


class TokenOut(BaseModel):
    id: int
    name: str
    created_at: str
    expires_at: str
    revoked_at: str | None
    last_used_at: str | None


class JobOut(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued, counting, running, done, failed or cancelled")
    created_by: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    total: int | None
    done: int
    progress: float | None
    args: dict[str, Any]
    summary: dict[str, Any] | None
    error: dict[str, str] | None
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f9a0c1d2b4e",
                    "kind": "ingest",
                    "status": "running",
                    "created_by": "root",
                    "created_at": "2026-01-02T10:11:12+00:00",
                    "started_at": "2026-01-02T10:11:12+00:00",
                    "finished_at": None,
                    "total": 1200,
                    "done": 311,
                    "progress": 0.2592,
                    "args": {"source": "press-archive", "legal_basis": "licence 17/2019"},
                    "summary": None,
                    "error": None,
                }
            ]
        }
    )


class RecordMismatchOut(BaseModel):
    table: str = Field(description="searches, verifications or case_requests")
    row_id: int
    seq: int | None = Field(description="The ledger entry it disagrees with; null if none")
    problem: str


class LedgerVerifyOut(BaseModel):
    ok: bool
    entries: int
    head_hash: str
    head_seq: int
    first_bad_seq: int | None
    problem: str | None
    records_checked: int = Field(
        description="Rows of searches, verifications and case_requests recomputed against "
        "their ledger entries"
    )
    mismatches: list[RecordMismatchOut] = Field(description="The first 100 records that disagree")
    mismatch_count: int
    guard_restorations: list[int] = Field(
        description="Seqs of ledger.guard_restored entries: the append-only guard was found "
        "missing or disabled when the database was opened, and restored"
    )
    warnings: list[str]
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ok": True,
                    "entries": 1204,
                    "head_hash": "c0ffee...",
                    "head_seq": 1204,
                    "first_bad_seq": None,
                    "problem": None,
                    "records_checked": 310,
                    "mismatches": [],
                    "mismatch_count": 0,
                    "guard_restorations": [],
                    "warnings": [],
                }
            ]
        }
    )


class CheckpointOut(BaseModel):
    checkpoint: str = Field(description="seq:hash; keep it outside this machine")


class LedgerEntryOut(BaseModel):
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class LedgerPageOut(BaseModel):
    total: int
    offset: int
    limit: int
    entries: list[LedgerEntryOut]


class ErasureOut(BaseModel):
    faces_erased: int
    face_ids: list[int]
    images_deleted: list[str]
    images_blurred: list[str]
    provenance_removed: int
    blocklisted: int
    preview_id: int | None = Field(None, description="The preview this erasure confirmed")


class ErasurePreviewFaceOut(BaseModel):
    face_id: int
    score: float
    est_fmr: float | None = Field(description="Estimated false match rate at this score")
    expected_false_matches: float | None = Field(
        description="Different people expected at or above this score: gallery size x FMR"
    )
    erased: bool = Field(description="Erased since the preview was made")
    image_sha256: str | None
    provenance: list[dict[str, Any]]
    crop_url: str | None = Field(description="Only for the admin who made the preview")


class ErasurePreviewOut(BaseModel):
    preview_id: int
    probe_sha256: str
    model_id: str | None
    threshold: float
    calibrated_threshold: float | None = Field(
        description="The score whose estimated FMR is calibrated_fmr (the default threshold)"
    )
    calibrated_fmr: float
    threshold_is_calibrated: bool
    threshold_fmr: float | None = Field(description="Estimated false match rate at threshold")
    gallery_faces: int
    expected_false_matches: float | None = Field(
        description="Faces of other people expected at or above the threshold: N x FMR"
    )
    truncated: bool = Field(description="More faces scored above the threshold than listed")
    created_at: str
    expires_at: str
    faces: list[ErasurePreviewFaceOut]


def _policy_models() -> tuple[type[BaseModel], type[BaseModel]]:
    hints = typing.get_type_hints(Policy)
    example = policy_dict(Policy())
    full: dict[str, Any] = {}
    partial: dict[str, Any] = {}
    for f in fields(Policy):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        full[f.name] = (hints[f.name], default)
        partial[f.name] = (hints[f.name] | None, None)
    cfg = ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})
    pin = create_model("PolicyIn", __config__=cfg, **full)
    pcfg = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"daily_quota": 20}]})
    ppatch = create_model("PolicyPatch", __config__=pcfg, **partial)
    return pin, ppatch


PolicyIn, PolicyPatch = _policy_models()


# -- routes -----------------------------------------------------------------------------------

router = APIRouter(prefix=API)
FormStr = Annotated[str, Form()]
DbId = Annotated[int, PathParam(ge=1, le=MAX_ID)]  # ids in paths (larger: 422, not a crash)


@router.get("/health", response_model=HealthOut, tags=["server"])
def health(ctx: Ctx) -> dict[str, Any]:
    """Liveness and readiness (no authentication): the database answers."""
    return {"status": "ok", "version": __version__, "initialised": ctx.fl.has_users()}


@router.get("/me", response_model=MeOut, responses=ERRORS, tags=["server"])
def me(actor: CurrentActor) -> dict[str, Any]:
    """Who the credentials belong to."""
    return {
        "username": actor.username,
        "roles": sorted(actor.roles),
        "unit": actor.unit,
        "via": actor.via,
        "token_id": actor.token_id,
    }


@router.get("/stats", responses=ERRORS, tags=["server"])
def stats(ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    """What the gallery holds (any role)."""
    return ctx.fl.stats(actor)


CASE_FIELDS_DOC = (
    "case_number, purpose (from the policy) and justification (10+ characters) are required; "
    "purposes that need approval also need request_id, an approved case request of yours."
)


@router.post("/detect", response_model=DetectOut, responses=UPLOAD_ERRORS, tags=["search"])
def detect(
    ctx: Ctx,
    actor: CurrentActor,
    photo: Annotated[UploadFile | None, File(description="The probe photo")] = None,
    case_number: Annotated[
        str, Form(description="The case this detection serves (recorded)", examples=["CASE-7"])
    ] = "",
) -> dict[str, Any]:
    """Find the faces in a photo (boxes and quality warnings) without comparing anything.

    For picking one face before a search; investigators only; recorded in the ledger and
    counted against the policy's daily_detect_quota."""
    ctx.limit_search(actor)
    data = read_upload(photo, "photo")
    return ctx.fl.detect(actor, data, case_number)


@router.post(
    "/searches",
    response_model=SearchOut,
    responses=UPLOAD_ERRORS,
    tags=["search"],
    description="Search the gallery with a probe photo: ranked candidates per face, as leads "
    "for human review. " + CASE_FIELDS_DOC,
)
def create_search(
    ctx: Ctx,
    actor: CurrentActor,
    probe: Annotated[UploadFile | None, File(description="The probe photo")] = None,
    case_number: Annotated[str, Form(examples=["CASE-2026-114"])] = "",
    purpose: Annotated[str, Form(examples=["violent-crime"])] = "",
    justification: Annotated[str, Form(examples=["CCTV still from the robbery at ..."])] = "",
    request_id: Annotated[str, Form(description="Approved case request id", examples=[""])] = "",
    top_k: Annotated[int, Form(ge=1, le=1000, description="Candidates per face")] = 10,
    face_box: Annotated[
        str,
        Form(
            description="left,top,right,bottom of one face (from /detect): only that face is "
            "searched",
            examples=["318,68,425,175"],
        ),
    ] = "",
) -> dict[str, Any]:
    ctx.limit_search(actor)
    box = parse_box(face_box)
    data = read_upload(probe, "probe")
    req = SearchRequest(case_number, purpose, justification, parse_request_id(request_id), top_k)
    return search_out(ctx.fl.search(actor, data, req, box))


@router.get(
    "/searches/{search_id}", response_model=SearchRecordOut, responses=ERRORS, tags=["search"]
)
def get_search(ctx: Ctx, actor: CurrentActor, search_id: DbId) -> dict[str, Any]:
    """A recorded search (own searches; supervisors their unit's and those under approvals
    they gave; auditors all). Each view is recorded with the candidates it shows."""
    return ctx.fl.get_search(actor, search_id)


@router.post(
    "/verify",
    response_model=VerifyOut,
    responses=UPLOAD_ERRORS,
    tags=["search"],
    description="1:1: how alike one face in each of two photos is (score and estimated FMR). "
    "Investigators only, under the same rules as a search, counted in the same daily quota "
    "and recorded in the ledger. " + CASE_FIELDS_DOC,
)
def verify(
    ctx: Ctx,
    actor: CurrentActor,
    photo_a: Annotated[UploadFile | None, File()] = None,
    photo_b: Annotated[UploadFile | None, File()] = None,
    case_number: FormStr = "",
    purpose: FormStr = "",
    justification: FormStr = "",
    request_id: FormStr = "",
    face_box_a: Annotated[str, Form(description="Which face in photo A (else the largest)")] = "",
    face_box_b: Annotated[str, Form(description="Which face in photo B (else the largest)")] = "",
) -> dict[str, Any]:
    ctx.limit_search(actor)
    box_a, box_b = parse_box(face_box_a, "face_box_a"), parse_box(face_box_b, "face_box_b")
    a = read_upload(photo_a, "photo_a")
    b = read_upload(photo_b, "photo_b")
    req = SearchRequest(case_number, purpose, justification, parse_request_id(request_id))
    return ctx.fl.verify(actor, a, b, req, box_a, box_b)


def _file_response(path: Path, filename: str) -> FileResponse:
    if not path.is_file():
        raise ApiError(404, "file-missing", "the file is gone (erased or purged)")
    media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return FileResponse(
        path,
        media_type=media,
        headers={
            "Cache-Control": "private, no-store",
            "Content-Disposition": f'inline; filename="{filename}"',
        },
    )


IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {"content": {"image/jpeg": {}}, "description": "The image"},
    404: {"model": ErrorOut, "description": "No such search, or the face is not its candidate"},
    410: {"model": ErrorOut, "description": "The face was erased since the search"},
}


@router.get(
    "/searches/{search_id}/faces/{face_id}/crop", responses=IMAGE_RESPONSES, tags=["search"]
)
def candidate_crop(ctx: Ctx, actor: CurrentActor, search_id: DbId, face_id: DbId) -> FileResponse:
    """The crop of a candidate this search returned (to whoever may read the search, within
    the policy's result_view_days); the search's own ledger entry lists what it showed."""
    path = ctx.fl.candidate_file(actor, search_id, face_id, "crop")
    return _file_response(path, f"face-{face_id}.jpg")


@router.get(
    "/searches/{search_id}/faces/{face_id}/image", responses=IMAGE_RESPONSES, tags=["search"]
)
def candidate_image(ctx: Ctx, actor: CurrentActor, search_id: DbId, face_id: DbId) -> FileResponse:
    """The source image of a candidate this search returned; each view is recorded."""
    path = ctx.fl.candidate_file(actor, search_id, face_id, "image")
    return _file_response(path, f"search-{search_id}-face-{face_id}{path.suffix}")


@router.post(
    "/ingest", status_code=202, response_model=JobOut, responses=UPLOAD_ERRORS, tags=["gallery"]
)
def ingest(
    ctx: Ctx,
    actor: CurrentActor,
    source: Annotated[str, Form(description="Source name recorded as provenance")] = "",
    legal_basis: Annotated[str, Form(description="Why you may hold these photos")] = "",
    expires_at: Annotated[str, Form(description="Retention: delete after this ISO date")] = "",
    path: Annotated[
        str, Form(description="A server-side file, folder or archive under FACELEDGER_INGEST_ROOTS")
    ] = "",
    files: Annotated[
        list[UploadFile] | None, File(description="Photos or zip/tar archives")
    ] = None,
) -> dict[str, Any]:
    """Start an ingest job (admin); poll GET /api/v1/jobs/{id} for its progress."""
    return start_ingest(ctx, actor, source, legal_basis, expires_at, path, files or [])


@router.get("/jobs", response_model=list[JobOut], responses=ERRORS, tags=["gallery"])
def list_jobs(ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    """Ingest jobs of this server process (admin)."""
    ctx.fl.require(actor, "ingest", "jobs")
    return [j.as_dict() for j in ctx.jobs.list()]


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS, tags=["gallery"])
def get_job(ctx: Ctx, actor: CurrentActor, job_id: str) -> dict[str, Any]:
    """An ingest job's progress and, once done, its summary (admin)."""
    return job_for(ctx, actor, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS, tags=["gallery"])
def cancel_job(ctx: Ctx, actor: CurrentActor, job_id: str) -> dict[str, Any]:
    """Stop a job after its current image; what it already stored stays (admin)."""
    job_for(ctx, actor, job_id)
    ctx.jobs.cancel(job_id)
    ctx.fl.record(actor, "ingest.cancel_requested", f"job {job_id}")
    return job_for(ctx, actor, job_id)


@router.post(
    "/erasures/previews",
    response_model=ErasurePreviewOut,
    responses=UPLOAD_ERRORS,
    tags=["gallery"],
)
def erasure_preview(
    ctx: Ctx,
    actor: CurrentActor,
    probe: Annotated[UploadFile | None, File(description="The subject's photo")] = None,
    threshold: Annotated[
        float | None,
        Form(ge=-1, le=1, description="Cosine score; default: the calibrated score of FMR 1e-6"),
    ] = None,
) -> dict[str, Any]:
    """Erasure by photo, step 1 (admin): the gallery faces scoring at or above the threshold
    against the subject's photo, with scores and estimated FMRs; recorded, valid for one
    hour, for you only. Confirm the right faces with POST /api/v1/erasures."""
    ctx.fl.require(actor, "erase")
    return erasure_preview_request(ctx, actor, read_upload(probe, "probe"), threshold)


@router.get(
    "/erasures/previews/{preview_id}",
    response_model=ErasurePreviewOut,
    responses=ERRORS,
    tags=["gallery"],
)
def get_erasure_preview(ctx: Ctx, actor: CurrentActor, preview_id: DbId) -> dict[str, Any]:
    """Your open (unused, unexpired) erasure preview (admin)."""
    return preview_out(ctx.fl.get_erase_preview(actor, preview_id))


@router.get(
    "/erasures/previews/{preview_id}/faces/{face_id}/crop",
    responses=IMAGE_RESPONSES,
    tags=["gallery"],
)
def erasure_preview_crop(
    ctx: Ctx, actor: CurrentActor, preview_id: DbId, face_id: DbId
) -> FileResponse:
    """The crop of a face in your open erasure preview (admin; the only way an admin sees a
    gallery face)."""
    path = ctx.fl.erase_preview_crop(actor, preview_id, face_id)
    return _file_response(path, f"face-{face_id}.jpg")


@router.post("/erasures", response_model=ErasureOut, responses=UPLOAD_ERRORS, tags=["gallery"])
def erase(
    ctx: Ctx,
    actor: CurrentActor,
    face_ids: Annotated[
        str, Form(description="Face ids, comma-separated (with preview_id: the confirmed ones)")
    ] = "",
    image_sha: Annotated[str, Form(description="An image's SHA-256")] = "",
    source: Annotated[str, Form(description="Every image only held from this source")] = "",
    preview_id: Annotated[
        str, Form(description="An erasure preview of yours: erase the face_ids confirmed from it")
    ] = "",
    optout_reference: Annotated[
        str, Form(description="With preview_id: keep the subject out of future ingests")
    ] = "",
    reason: Annotated[
        str, Form(description="Why (e.g. the erasure request number); required")
    ] = "",
) -> dict[str, Any]:
    """Erase faces for good (admin): by face ids, image, source, or the faces you confirm
    from an erasure preview (erasure by the subject's photo)."""
    ctx.fl.require(actor, "erase")
    return erase_request(
        ctx, actor, face_ids, image_sha, source, preview_id, optout_reference, reason
    )


@router.post("/purge", responses=ERRORS, tags=["gallery"])
def purge(ctx: Ctx, actor: CurrentActor) -> dict[str, int]:
    """Delete gallery images and retained probes past their retention date (admin)."""
    return ctx.fl.purge(actor)


@router.get("/cases", response_model=list[CaseRequestOut], responses=ERRORS, tags=["cases"])
def list_cases(
    ctx: Ctx,
    actor: CurrentActor,
    status: Annotated[str | None, Query(pattern="^(pending|approved|denied|withdrawn)$")] = None,
) -> list[dict[str, Any]]:
    """Case requests you may see: your own; supervisors their unit's; admins, auditors all."""
    return ctx.fl.list_case_requests(actor, status)


@router.post("/cases", status_code=201, response_model=CreatedOut, responses=ERRORS, tags=["cases"])
def request_case(ctx: Ctx, actor: CurrentActor, body: CaseRequestIn) -> dict[str, int]:
    """Ask a supervisor to approve searches for a case and purpose (investigators)."""
    rid = ctx.fl.request_case(actor, body.case_number, body.purpose, body.justification)
    return {"id": rid}


@router.post("/cases/{request_id}/approve", response_model=OkOut, responses=ERRORS, tags=["cases"])
def approve_case(
    ctx: Ctx, actor: CurrentActor, request_id: DbId, body: CaseDecisionIn | None = None
) -> dict[str, bool]:
    """Approve a pending request (supervisors of the requester's unit; not your own). The
    approval lasts the policy's approval_days and, with search_limit, that many searches."""
    body = body or CaseDecisionIn()
    ctx.fl.decide_case(actor, request_id, True, body.note, body.search_limit)
    return {"ok": True}


@router.post("/cases/{request_id}/deny", response_model=OkOut, responses=ERRORS, tags=["cases"])
def deny_case(
    ctx: Ctx, actor: CurrentActor, request_id: DbId, body: CaseDecisionIn | None = None
) -> dict[str, bool]:
    """Deny a pending request (supervisors of the requester's unit)."""
    ctx.fl.decide_case(actor, request_id, False, (body or CaseDecisionIn()).note)
    return {"ok": True}


@router.post("/cases/{request_id}/withdraw", response_model=OkOut, responses=ERRORS, tags=["cases"])
def withdraw_case(
    ctx: Ctx, actor: CurrentActor, request_id: DbId, body: CaseWithdrawIn
) -> dict[str, bool]:
    """End an approval now (supervisors of the requester's unit)."""
    ctx.fl.withdraw_case(actor, request_id, body.note)
    return {"ok": True}


@router.get(
    "/audit/report",
    responses={
        **ERRORS,
        200: {
            "description": "The report as JSON, CSV or a self-contained HTML page",
            "content": {
                "application/json": {
                    "example": {
                        "from": "2026-01-01",
                        "to": "2026-01-31",
                        "searches": 42,
                        "searches_per_user": {"ivy": 30, "ian": 12},
                        "searches_per_purpose": {"violent-crime": 40, "missing-person": 2},
                        "searches_per_case": {"CASE-1": 20},
                        "searches_per_week": {"2026-W02": {"violent-crime": 12}},
                        "ledger_head": "1204:c0ffee...",
                        "generated_at": "2026-02-01T09:00:00+00:00",
                        "generated_by": "ada",
                        "verifications": 3,
                        "verifications_per_user": {"ivy": 3},
                        "verifications_per_purpose": {"violent-crime": 3},
                        "verifications_per_case": {"CASE-1": 3},
                        "verifications_per_outcome": {"compared": 3},
                        "detections_per_user": {"ivy": 5},
                        "account_changes": [
                            {
                                "when": "2026-01-05T10:00:00+00:00",
                                "by": "root",
                                "action": "user.set_roles",
                                "user": "ivy",
                                "change": "roles investigator -> investigator, supervisor",
                            }
                        ],
                        "case_requests": {"requested": 3, "approved": 2, "denied": 1},
                        "refusals": {"quota": 1},
                        "erasure": {
                            "erasures": 1,
                            "faces_erased": 2,
                            "images_deleted": 1,
                            "purges": 0,
                        },
                    }
                },
                "text/csv": {},
                "text/html": {},
            },
        },
    },
    tags=["audit"],
)
def audit_report(
    ctx: Ctx,
    actor: CurrentActor,
    date_from: Annotated[str, Query(alias="from", examples=["2026-01-01"])],
    date_to: Annotated[str, Query(alias="to", examples=["2026-01-31"])],
    fmt: Annotated[str, Query(alias="format", pattern="^(json|csv|html)$")] = "json",
) -> Response:
    """Transparency report from the ledger (auditors; supervisors: their unit)."""
    start, end = parse_day(date_from, "from"), parse_day(date_to, "to")
    if end < start:
        raise ApiError(400, "bad-date", "'to' is before 'from'")
    rep = ctx.fl.audit_report(actor, start, end)
    name = f"faceledger-report-{start}-{end}"
    if fmt == "csv":
        return Response(
            reports.to_csv(rep),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    if fmt == "html":
        return Response(
            reports.to_html(rep),
            media_type="text/html",
            headers={
                # the report is self-contained: inline style and a data: chart, nothing else
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                "img-src data:",
                "Content-Disposition": f'inline; filename="{name}.html"',
            },
        )
    return JSONResponse(rep)


@router.get("/audit/verify", response_model=LedgerVerifyOut, responses=ERRORS, tags=["audit"])
def audit_verify(
    ctx: Ctx,
    actor: CurrentActor,
    checkpoint: Annotated[str | None, Query(description="seq:hash kept elsewhere")] = None,
) -> dict[str, Any]:
    """Recompute the ledger's hash chain and every search, verification and case request
    against it (auditors, admins); ``checkpoint`` may be a transparency report's
    ``ledger_head``. The check is itself recorded."""
    res = ctx.fl.audit_verify(actor, checkpoint or None)
    return res.__dict__


@router.post("/audit/checkpoint", response_model=CheckpointOut, responses=ERRORS, tags=["audit"])
def audit_checkpoint(ctx: Ctx, actor: CurrentActor) -> dict[str, str]:
    """The head of the chain (seq:hash), to keep outside this machine (auditors, admins)."""
    return {"checkpoint": ctx.fl.audit_checkpoint(actor)}


@router.get(
    "/audit/entries",
    response_model=LedgerPageOut,
    responses={
        **ERRORS,
        200: {
            "description": "A page of entries (JSON), or with format=csv|jsonl the whole "
            "filtered ledger in seq order, streamed (re-verifiable: seq, ts, actor, action, "
            "target, details, prev_hash, hash)",
            "content": {"application/json": {}, "text/csv": {}, "application/x-ndjson": {}},
        },
    },
    tags=["audit"],
)
def audit_entries(
    ctx: Ctx,
    actor: CurrentActor,
    actor_name: Annotated[str | None, Query(alias="actor")] = None,
    action: str | None = None,
    since: Annotated[str | None, Query(alias="from", description="Date or ISO time")] = None,
    until: Annotated[
        str | None, Query(alias="to", description="Date (inclusive) or ISO time")
    ] = None,
    case: Annotated[
        str | None,
        Query(description="Entries about this case number (target or details.case_number)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    fmt: Annotated[str, Query(alias="format", pattern="^(json|csv|jsonl)$")] = "json",
) -> Any:
    """Ledger entries with filters (auditors), newest first by default; ``format=csv`` or
    ``jsonl`` exports the whole filtered ledger (the export is recorded)."""
    if fmt != "json":
        from fastapi.responses import StreamingResponse

        lines = ctx.fl.audit_export(
            actor,
            fmt,
            actor=actor_name or None,
            action=action or None,
            since=day_bound(since, "from"),
            until=day_bound(until, "to", end=True),
            case=case or None,
        )
        media = "text/csv" if fmt == "csv" else "application/x-ndjson"
        return StreamingResponse(
            iter(lines),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="faceledger-ledger.{fmt}"'},
        )
    entries = ledger_page(ctx.fl, actor, actor_name, action, since, until, case)
    if order == "desc":
        entries.reverse()
    return {
        "total": len(entries),
        "offset": offset,
        "limit": limit,
        "entries": [e.__dict__ for e in entries[offset : offset + limit]],
    }


def ledger_page(
    fl: Faceledger,
    actor: Actor,
    actor_name: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
    case: str | None = None,
) -> list[audit.Entry]:
    return fl.audit_entries(
        actor,
        actor=actor_name or None,
        action=action or None,
        since=day_bound(since, "from"),
        until=day_bound(until, "to", end=True),
        case=case or None,
    )


@router.get("/users", response_model=list[UserOut], responses=ERRORS, tags=["admin"])
def list_users(ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    """All users (admin)."""
    return ctx.fl.list_users(actor)


@router.post("/users", status_code=201, response_model=CreatedOut, responses=ERRORS, tags=["admin"])
def add_user(ctx: Ctx, actor: CurrentActor, body: UserIn) -> dict[str, int]:
    """Add a user (admin)."""
    with invalid_input("invalid-user"):
        uid = ctx.fl.add_user(actor, body.username, body.password, body.roles, body.unit)
    return {"id": uid}


@router.patch("/users/{username}", response_model=OkOut, responses=ERRORS, tags=["admin"])
def patch_user(ctx: Ctx, actor: CurrentActor, username: str, body: UserPatch) -> dict[str, bool]:
    """Disable or enable a user, set their roles or their unit (admin; not your own roles
    or unit)."""
    if body.disabled is None and body.roles is None and body.unit is None:
        raise ApiError(400, "nothing-to-change", "give disabled, roles and/or unit")
    with invalid_input("invalid-user"):
        if body.roles is not None:
            ctx.fl.set_roles(actor, username, body.roles)
        if body.unit is not None:
            ctx.fl.set_unit(actor, username, body.unit)
        if body.disabled is not None:
            ctx.fl.set_disabled(actor, username, body.disabled)
    return {"ok": True}


@router.post("/users/{username}/unlock", response_model=OkOut, responses=ERRORS, tags=["admin"])
def unlock_user(ctx: Ctx, actor: CurrentActor, username: str) -> dict[str, bool]:
    """Clear a user's login back-off from every address (admin)."""
    ctx.fl.unlock_user(actor, username)
    return {"ok": True}


@router.get("/tokens", response_model=list[TokenOut], responses=ERRORS, tags=["admin"])
def list_tokens(ctx: Ctx, actor: CurrentActor, user: str | None = None) -> list[dict[str, Any]]:
    """Your tokens, or (admin) another user's."""
    return ctx.fl.list_tokens(actor, user or None)


@router.post(
    "/tokens", status_code=201, response_model=TokenCreatedOut, responses=ERRORS, tags=["admin"]
)
def create_token(ctx: Ctx, actor: CurrentActor, body: TokenIn) -> dict[str, Any]:
    """A new API token for yourself (nobody, admins included, creates one for another
    user); the secret is shown once."""
    user = body.user or actor.username
    tid, secret = ctx.fl.create_token(actor, user, body.name.strip() or "api", body.days)
    return {"id": tid, "user": user, "secret": secret}


@router.delete("/tokens/{token_id}", response_model=OkOut, responses=ERRORS, tags=["admin"])
def revoke_token(ctx: Ctx, actor: CurrentActor, token_id: DbId) -> dict[str, bool]:
    """Revoke a token (your own; admins any)."""
    ctx.fl.revoke_token(actor, token_id)
    return {"ok": True}


@router.get("/policy", response_model=PolicyIn, responses=ERRORS, tags=["admin"])
def get_policy(ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    """The search policy in force (any role: purposes, quota, limits)."""
    return policy_dict(ctx.fl.policy())


@router.put("/policy", response_model=PolicyIn, responses=ERRORS, tags=["admin"])
def put_policy(ctx: Ctx, actor: CurrentActor, body: PolicyIn) -> dict[str, Any]:  # type: ignore[valid-type]
    """Replace the policy (admin); the change is recorded with old and new values."""
    with invalid_input("invalid-policy"):
        new = Policy(**body.model_dump())  # type: ignore[attr-defined]
        ctx.fl.save_policy(actor, new)
    return policy_dict(new)


@router.patch("/policy", response_model=PolicyIn, responses=ERRORS, tags=["admin"])
def patch_policy(ctx: Ctx, actor: CurrentActor, body: PolicyPatch) -> dict[str, Any]:  # type: ignore[valid-type]
    """Change some policy settings (admin)."""
    ctx.fl.require(actor, "manage_policy")
    changes = {k: v for k, v in body.model_dump().items() if v is not None}  # type: ignore[attr-defined]
    with invalid_input("invalid-policy"):
        new = Policy(**(policy_dict(current_policy_for_edit(ctx.fl)) | changes))
        ctx.fl.save_policy(actor, new)
    return policy_dict(new)


# -- the application --------------------------------------------------------------------------


def _json_error(status: int, code: str, message: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    from faceledger.http import web

    async def handle(request: Request, exc: Exception) -> Response:
        status, code, message, headers = error_for(exc)
        if status >= 500:
            log.error("error on %s %s", request.method, request.url.path, exc_info=exc)
        if request.url.path.startswith("/api/"):
            return _json_error(status, code, message, headers)
        return web.error_page(request, exc, status, code, message)

    async def validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query"))
            problems.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", ""))
        message = "invalid request: " + "; ".join(problems)
        if request.url.path.startswith("/api/"):
            return _json_error(422, "invalid-request", message, {})
        return web.error_page(request, exc, 422, "invalid-request", message)

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
    from fastapi.staticfiles import StaticFiles

    from faceledger.http import web

    settings = settings or ApiSettings.from_env()
    configure_probes(settings.max_probe_pixels, settings.probe_decoders)  # process-wide
    fl = faceledger or Faceledger(Path(data_dir))
    ctx = AppContext(fl, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        from faceledger.core import SYSTEM
        from faceledger.gallery.privacy import purge_expired

        if fl.has_users():
            try:  # retention applies at server start, as at every ingest
                await run_in_threadpool(purge_expired, fl, SYSTEM)
            except Exception:
                log.exception("retention purge at start failed")
        yield
        # Sessions live in this process only: end them all (revoking their tokens).
        for sess in ctx.sessions.pop_all():
            await run_in_threadpool(ctx.end_session, sess)
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
    app.include_router(router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    app.add_middleware(BodyLimitMiddleware, settings=settings)  # type: ignore[arg-type]
    app.add_middleware(SecurityHeadersMiddleware)  # type: ignore[arg-type]
    return app


def server_config(app: Any, host: str, port: int, log_level: str = "info") -> Any:
    """The uvicorn configuration the server runs with (``serve`` and the tests alike): one
    process, and no proxy-header rewriting, since uvicorn would believe X-Forwarded-For
    from 127.0.0.1 by default; :meth:`AppContext.client_address` decides instead."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        proxy_headers=False,
        server_header=False,
        log_level=log_level,
        lifespan="on",
    )


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
    uvicorn.Server(server_config(app, host, port)).run()
