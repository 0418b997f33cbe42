"""Server settings (``FACELEDGER_*`` variables), trusted proxies and the uvicorn config."""

from __future__ import annotations

import ipaddress
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceledger.vision.decode import DEFAULT_MAX_PROBE_PIXELS, DEFAULT_PROBE_DECODERS

API = "/api/v1"  # where the API is served; the web UI's pages are outside it
MB = 1024 * 1024


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
