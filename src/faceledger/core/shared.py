"""What several API servers on one gallery share, kept in the gallery database so that N
``faceledger serve`` processes behave as one: web sessions (and the messages they carry to
the next page) and the request rate limits. Ingest jobs are in ``core/jobs.py``.

A web session is a token of its own (named ``web-session``, made with the login in one
ledger entry) plus a ``web_sessions`` row with its idle and total clocks. The cookie holds
the token's secret; the database holds only its SHA-256, as for every token, so reading
the database gives no session away. The CSRF token is derived from the secret (HMAC), so it
needs no storage and every server computes the same one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.engine import Connection

from faceledger.accounts import auth
from faceledger.accounts.auth import Actor, AuthError, PermissionDenied
from faceledger.core.accounts import AccountsDoor
from faceledger.db.schema import rate_buckets, tokens, users, web_sessions
from faceledger.errors import RefusedError

# last_seen is written at most this often per session (every request would be a write);
# the idle clock is therefore exact to within this many seconds
TOUCH_EVERY_SECONDS = 15.0
RATE_KEY_MAX = 200  # rate_buckets.key


def csrf_of(secret: str) -> str:
    """The session's CSRF token: the same on every server, never stored."""
    return hmac.new(secret.encode(), b"faceledger-csrf", hashlib.sha256).hexdigest()


@dataclass
class WebSession:
    """A live web session, as one request sees it (its clocks stay in the database).
    ``secret`` is the cookie's value."""

    token_id: int
    username: str
    secret: str = field(repr=False)
    flashes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def csrf(self) -> str:
        return csrf_of(self.secret)


class SharedStateDoor(AccountsDoor):
    """Web sessions and request rate limits, in the gallery database."""

    # -- web sessions ---------------------------------------------------------------------
    def open_web_session(
        self, username: str, password: str, address: str
    ) -> tuple[Actor, WebSession]:
        """Log in and open a web session (:meth:`login_session`: the token, its session
        row and the ``login`` ledger entry in one transaction)."""
        actor, token_id, secret = self.login_session(username, password, address, days=1)
        return actor, WebSession(token_id, actor.username, secret)

    def web_session(
        self, secret: str, idle_seconds: float, max_seconds: float
    ) -> WebSession | None:
        """The live session whose cookie is ``secret``, or None. A session past its idle or
        total limit is ended here (its token revoked, recorded) and None returned."""
        now = time.time()
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(web_sessions, users.c.username)
                .join(tokens, tokens.c.id == web_sessions.c.token_id)
                .join(users, users.c.id == tokens.c.user_id)
                .where(tokens.c.token_hash == auth.token_hash(secret))
            ).first()
        if row is None:
            return None
        if now - row.last_seen > idle_seconds or now - row.created > max_seconds:
            self.end_web_session(secret, int(row.token_id))
            return None
        if now - row.last_seen >= min(TOUCH_EVERY_SECONDS, idle_seconds / 10):
            with self.store.engine.begin() as conn:  # one row, no ledger: no writer lock
                conn.execute(
                    update(web_sessions)
                    .where(web_sessions.c.token_id == row.token_id)
                    .values(last_seen=now)
                )
        flashes = json.loads(row.flashes_json)
        return WebSession(int(row.token_id), row.username, secret, flashes)

    def web_session_actor(self, sess: WebSession) -> Actor:
        """The session's user, checked as a token (revoked, expired, disabled: AuthError,
        and the session row goes)."""
        try:
            return self.authenticate_token(sess.secret, web_session=True)
        except AuthError:
            self._drop_session_row(sess.token_id)
            raise

    def end_web_session(self, secret: str, token_id: int) -> None:
        """Log out, or end an expired session: its row goes and its token is revoked
        (recorded as the user's ``token.revoke``). Best effort for the token, which may be
        revoked or expired already."""
        try:
            actor = self.authenticate_token(secret, record_use=False, web_session=True)
            self.revoke_token(actor, token_id)
        except (AuthError, RefusedError, PermissionDenied):
            pass
        finally:
            self._drop_session_row(token_id)

    def _drop_session_row(self, token_id: int) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.token_id == token_id))

    def add_flash(self, sess: WebSession, message: dict[str, Any]) -> None:
        """Keep a message for the session's next page (which any server may render)."""
        with self.store.writer.begin() as conn:
            held = self._flashes(conn, sess.token_id)
            self._set_flashes(conn, sess.token_id, [*held, message][-20:])
        sess.flashes.append(message)

    def take_flashes(self, sess: WebSession) -> list[dict[str, Any]]:
        """The session's waiting messages, removed from it. Reads nothing when the request
        saw none (most pages), so a page view is no write."""
        if not sess.flashes:
            return []
        with self.store.writer.begin() as conn:
            held = self._flashes(conn, sess.token_id)
            if held:
                self._set_flashes(conn, sess.token_id, [])
        sess.flashes = []
        return held

    @staticmethod
    def _flashes(conn: Connection, token_id: int) -> list[dict[str, Any]]:
        raw = conn.execute(
            select(web_sessions.c.flashes_json).where(web_sessions.c.token_id == token_id)
        ).scalar()
        return list(json.loads(raw)) if raw else []

    @staticmethod
    def _set_flashes(conn: Connection, token_id: int, flashes: list[dict[str, Any]]) -> None:
        conn.execute(
            update(web_sessions)
            .where(web_sessions.c.token_id == token_id)
            .values(flashes_json=json.dumps(flashes))
        )

    # -- rate limits ----------------------------------------------------------------------
    def take_rate(self, key: str, rate_per_minute: float, burst: int, take: bool = True) -> float:
        """A token bucket shared by every server: ``rate_per_minute`` refill, up to
        ``burst`` at once. Takes a token (unless ``take`` is false, which only looks) and
        returns 0 when one was there, else the seconds until one is. One statement (an
        upsert), so concurrent servers never both spend the last token."""
        if rate_per_minute <= 0:
            return 0.0
        rate = rate_per_minute / 60.0
        now = time.time()
        key = key[:RATE_KEY_MAX]
        if not take:
            with self.store.engine.connect() as conn:
                refilled, _ = _refill(conn, rate, float(burst), now)
                tokens = conn.execute(
                    select(refilled).where(rate_buckets.c.key == key)
                ).scalar_one_or_none()
            tokens = float(burst) if tokens is None else float(tokens)
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate
        with self.store.engine.begin() as conn:
            tokens, allowed = self._take(conn, key, rate, float(burst), now)
            if secrets.randbelow(1024) == 0:  # now and then: forget long-idle buckets
                conn.execute(delete(rate_buckets).where(rate_buckets.c.updated < now - 86_400))
        return 0.0 if allowed else (1.0 - tokens) / rate

    @staticmethod
    def _take(
        conn: Connection, key: str, rate: float, burst: float, now: float
    ) -> tuple[float, bool]:
        base: Any
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            base = pg_insert(rate_buckets)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            base = sqlite_insert(rate_buckets)
        refilled, larger = _refill(conn, rate, burst, now)
        stmt = (
            base.values(key=key, tokens=burst - 1.0, updated=now, allowed=True)
            .on_conflict_do_update(
                index_elements=[rate_buckets.c.key],
                set_={
                    "tokens": case((refilled >= 1.0, refilled - 1.0), else_=refilled),
                    "updated": larger(rate_buckets.c.updated, now),  # never goes back
                    "allowed": refilled >= 1.0,
                },
            )
            .returning(rate_buckets.c.tokens, rate_buckets.c.allowed)
        )
        row = conn.execute(stmt).one()
        return float(row.tokens), bool(row.allowed)


def _refill(conn: Connection, rate: float, burst: float, now: float) -> tuple[Any, Any]:
    """The bucket's tokens at ``now`` (a SQL expression over its row), for the take and
    for a look alike; and the dialect's scalar two-argument max. ``now`` is read before
    the statement waits for the row, so a concurrent take (or a server whose clock is
    behind) can arrive with a ``now`` older than the row's: that is no time elapsed, never
    negative time (which would take tokens away)."""
    smaller: Any
    larger: Any
    if conn.dialect.name == "postgresql":
        smaller, larger = func.least, func.greatest
    else:
        smaller, larger = func.min, func.max  # SQLite's two-argument min/max are scalar
    elapsed = larger(0.0, now - rate_buckets.c.updated)
    return smaller(burst, rate_buckets.c.tokens + elapsed * rate), larger
