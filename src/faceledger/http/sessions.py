"""The web UI's sessions: server-side, in memory; the cookie holds only a random id."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

SESSION_COOKIE = "faceledger_session"
LOGIN_CSRF_COOKIE = "faceledger_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Flash:
    """A message for the next page: ``section`` is the id of the page part it belongs to
    (the redirect's ``#fragment``), where the page shows it, in view; ``fields`` the form
    inputs at fault, marked there; ``values`` what the form held, to fill it in again."""

    kind: str
    message: str
    section: str = ""
    fields: tuple[str, ...] = ()
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class WebSession:
    sid: str
    csrf: str
    token_id: int
    secret: str = field(repr=False)
    username: str
    created: float
    last_seen: float
    flashes: list[Flash] = field(default_factory=list)


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
