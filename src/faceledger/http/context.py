"""The application context every request shares, and how a request finds it."""

from __future__ import annotations

import ipaddress
import math
import secrets
import typing

from fastapi import Request

from faceledger.accounts.auth import Actor, AuthError, PermissionDenied
from faceledger.core import Faceledger, RefusedError
from faceledger.core.jobs import JobManager
from faceledger.http.errors import ApiError
from faceledger.http.ratelimit import RateLimiter
from faceledger.http.sessions import SessionStore, WebSession
from faceledger.http.settings import ApiSettings, proxy_networks


class AppContext:
    """What every request handler shares: the core, sessions, limits, jobs, the analyzer lock."""

    def __init__(self, fl: Faceledger, settings: ApiSettings) -> None:
        self.fl = fl
        self.settings = settings
        self.sessions = SessionStore(settings.session_idle_seconds, settings.session_max_seconds)
        self.limiter = RateLimiter()
        self.jobs = JobManager(fl, settings.ingest_workers, ingest_roots=settings.ingest_roots)
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
