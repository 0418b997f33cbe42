"""The application context every request shares, and how a request finds it."""

from __future__ import annotations

import ipaddress
import math
import secrets
import typing
from dataclasses import asdict

from fastapi import Request

from faceledger.accounts.auth import Actor
from faceledger.core import Faceledger, WebSession
from faceledger.core.jobs import JobManager
from faceledger.http.errors import ApiError
from faceledger.http.ratelimit import RateLimiter
from faceledger.http.sessions import Flash
from faceledger.http.settings import ApiSettings, proxy_networks


class AppContext:
    """What every request handler shares: the core, the limits, the jobs, trusted proxies."""

    def __init__(self, fl: Faceledger, settings: ApiSettings) -> None:
        self.fl = fl
        self.settings = settings
        self.limiter = RateLimiter(fl)
        self.jobs = JobManager(fl, settings.ingest_workers, ingest_roots=settings.ingest_roots)
        self.proxies = proxy_networks(settings.trusted_proxies)

    # sessions (in the gallery database: any server can serve any session) -----------------
    def start_session(self, username: str, password: str, address: str) -> tuple[Actor, WebSession]:
        """Log in and open a web session: the core creates the session's token with the
        login (one ledger entry); the cookie carries its secret."""
        return self.fl.open_web_session(username, password, address)

    def end_session(self, sess: WebSession) -> None:
        """Log out: the session ends on every server, its token revoked."""
        self.fl.end_web_session(sess.secret, sess.token_id)

    def session_for(self, sid: str | None) -> WebSession | None:
        if not sid:
            return None
        s = self.settings
        return self.fl.web_session(sid, s.session_idle_seconds, s.session_max_seconds)

    def session_actor(self, sess: WebSession) -> Actor:
        return self.fl.web_session_actor(sess)

    def add_flash(self, sess: WebSession, flash: Flash) -> None:
        self.fl.add_flash(sess, asdict(flash))

    def take_flashes(self, sess: WebSession) -> list[Flash]:
        return [
            Flash(f["kind"], f["message"], f["section"], tuple(f["fields"]), dict(f["values"]))
            for f in self.fl.take_flashes(sess)
        ]

    def check_csrf(self, sess: WebSession, sent: str | None, where: str) -> None:
        if not sent or not secrets.compare_digest(sent, sess.csrf):
            self.fl.record_csrf_rejected(sess.username, where)
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
            self.fl.record_unauthenticated(client, method, path, reason)

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
