"""The faceledger core: every entry point (CLI, HTTP API, web UI) goes through here.

:class:`Faceledger` answers the three questions for every operation: who is this
(authentication), may they do this (:data:`faceledger.auth.PERMISSIONS`), and record that
they did (the ledger). Refusals are recorded too. Rules about searches (case number,
purpose, justification, supervisor approval, quotas, probe quality, candidate limits) are
checked here before any face is compared, so no interface can skip them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select, update

from faceledger import audit, auth, probes
from faceledger.analysis import FaceAnalyzer
from faceledger.auth import Actor, AuthError, PermissionDenied
from faceledger.decode import DecodeError, decode_probe
from faceledger.policy import Policy, optout_threshold, policy_path
from faceledger.schema import (
    blocklist,
    case_requests,
    searches,
    tokens,
    users,
    verifications,
)
from faceledger.schema import probes as probe_table
from faceledger.search import LEADS_NOTICE, NoFaceError, Searcher
from faceledger.store import Store, atomic_write, insert_or_ignore, now_iso
from faceledger.types import Face


class RefusedError(Exception):
    """A request that the rules refuse (missing case, unapproved purpose, quota...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PolicyTamperedError(Exception):
    """policy.json differs from the last version recorded in the ledger."""


@dataclass
class SearchRequest:
    case_number: str
    purpose: str
    justification: str
    request_id: int | None = None
    top_k: int = 10


SYSTEM = Actor(0, "system", frozenset(), via="system")

# Caps on what users type (characters). Longer input is refused before anything is stored,
# so nobody can bloat the permanent ledger; :func:`bounded` clips anything that still
# reaches it (request paths, names from elsewhere) as a second line of defence.
MAX_CASE_NUMBER = 64
MAX_PURPOSE = 64
MAX_JUSTIFICATION = 2000
MAX_NOTE = 2000
MAX_TOKEN_NAME = 100
MAX_UNIT = 64
LEDGER_TARGET_MAX = 200
LEDGER_TEXT_MAX = 2000


def check_length(name: str, value: str | None, limit: int) -> None:
    """Refuse (code ``too-long``) text over ``limit`` characters."""
    if value is not None and len(value) > limit:
        raise RefusedError(
            "too-long", f"{name} is {len(value)} characters long; at most {limit} are allowed"
        )


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[: limit // 2]}…[{len(text)} characters, sha256 {digest}…]"


def bounded(value: Any, limit: int = LEDGER_TEXT_MAX) -> Any:
    """``value`` with every string longer than ``limit`` clipped (recursively)."""
    if isinstance(value, str):
        return _clip(value, limit)
    if isinstance(value, dict):
        return {k: bounded(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded(v, limit) for v in value]
    return value


def _count_comparisons(conn: Any, where: Callable[[Any], tuple[Any, ...]]) -> int:
    """Searches plus 1:1 verifications matching ``where(table)`` (quotas and approval
    limits count both alike)."""
    return sum(
        int(conn.execute(select(func.count()).select_from(t).where(*where(t))).scalar_one())
        for t in (searches, verifications)
    )


def text_sha256(text: str) -> str:
    """What the ledger keeps of a free-text field: its SHA-256 (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()


def case_details(case_number: str, purpose: str, justification: str) -> dict[str, str]:
    """The case fields as every search, verify and case request records them."""
    return {
        "case_number": case_number,
        "purpose": purpose,
        "justification_sha256": text_sha256(justification),
    }


class Faceledger:
    def __init__(
        self,
        data_dir: Path,
        db_url: str | None = None,
        model_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        import os

        self.model_dir = model_dir or os.environ.get("FACELEDGER_MODEL_DIR") or None
        self.device = device
        self.store = Store(data_dir, url=db_url)
        self.data_dir = self.store.data_dir
        self._searcher: Searcher | None = None
        self._analyzer_factory: Callable[[], FaceAnalyzer] | None = None
        # dlib's detector, landmarker and network are not documented as thread-safe: one
        # thread at a time uses the shared analyzer (searches, detection, 1:1, erasure).
        self.analysis_lock = threading.RLock()
        from faceledger.privacy import finish_pending_files

        finish_pending_files(self.store)

    # -- ledger helpers --------------------------------------------------------------------
    def record(self, actor: Actor, action: str, target: str = "", **details: Any) -> None:
        if actor.token_id is not None:
            details.setdefault("token_id", actor.token_id)
        audit.record(
            self.store,
            _clip(actor.username, LEDGER_TARGET_MAX),
            action,
            _clip(target, LEDGER_TARGET_MAX),
            bounded(details),
        )

    def require(self, actor: Actor, permission: str, target: str = "") -> None:
        """Raise PermissionDenied (and record the denial) unless ``actor`` may do this."""
        if not actor.can(permission):
            self.record(
                actor, "authz.denied", target, permission=permission, roles=sorted(actor.roles)
            )
            raise PermissionDenied(
                f"{actor.username} ({', '.join(sorted(actor.roles)) or 'no role'}) may not "
                f"{permission.replace('_', ' ')}"
            )

    # -- users and authentication ----------------------------------------------------------
    def has_users(self) -> bool:
        with self.store.engine.connect() as conn:
            return bool(conn.execute(select(func.count()).select_from(users)).scalar_one())

    def init_admin(self, username: str, password: str) -> Actor:
        """Create the first admin; refused once any user exists."""
        problem = auth.username_problem(username)
        if problem:
            raise RefusedError("bad-username", problem)
        username = auth.canonical_username(username)
        auth.check_password_strength(password)
        with self.store.writer.begin() as conn:
            if conn.execute(select(func.count()).select_from(users)).scalar_one():
                raise RefusedError("already-initialised", "this data dir already has users")
            uid = self._insert_user(conn, username, password, frozenset({"admin"}), None)
            audit.append(conn, username, "user.init_admin", username, {"roles": ["admin"]})
        self.save_policy(
            Actor(int(uid), username, frozenset({"admin"}), via="bootstrap"), Policy(), initial=True
        )
        return Actor(int(uid), username, frozenset({"admin"}), via="bootstrap")

    @staticmethod
    def _insert_user(
        conn: Any, username: str, password: str, roles: frozenset[str], unit: str | None
    ) -> int:
        pk = conn.execute(
            insert(users).values(
                username=username,
                username_key=auth.username_key(username),
                password_hash=auth.hash_password(password),
                roles=",".join(sorted(roles)),
                unit=unit,
                disabled=False,
                failed_logins=0,
                created_at=now_iso(),
            )
        ).inserted_primary_key
        assert pk is not None  # a single-row INSERT always reports its key
        return int(pk[0])

    def _actor_from_row(self, row: Any, via: str, token_id: int | None = None) -> Actor:
        return Actor(
            int(row.id), row.username, auth.parse_roles(row.roles), row.unit, via, token_id
        )

    _username_keys_filled: bool = False

    def _ensure_username_keys(self) -> None:
        """Fill ``users.username_key`` where an older database left it empty (once)."""
        if self._username_keys_filled:
            return
        missing = users.c.username_key.is_(None)
        with self.store.engine.connect() as conn:
            todo = conn.execute(select(func.count()).select_from(users).where(missing)).scalar()
        if todo:
            with self.store.writer.begin() as conn:
                for uid, name in conn.execute(select(users.c.id, users.c.username).where(missing)):
                    conn.execute(
                        update(users)
                        .where(users.c.id == uid)
                        .values(username_key=auth.username_key(name))
                    )
        self._username_keys_filled = True

    @staticmethod
    def _user_by_key(conn: Any, key: str, typed: str) -> Any:
        """The user whose name's key is ``key`` (an older database may hold two such names:
        then the exact name, else the first)."""
        rows = conn.execute(
            select(users).where(users.c.username_key == key).order_by(users.c.id)
        ).all()
        return next((r for r in rows if r.username == typed), rows[0] if rows else None)

    @staticmethod
    def _login_wait(conn: Any, key: str, address: str, now: datetime) -> int:
        """Seconds the (name key, address) pair must still wait after failed logins."""
        from faceledger.schema import login_failures as lf

        until = conn.execute(
            select(lf.c.blocked_until).where(lf.c.username_key == key, lf.c.address == address)
        ).scalar()
        if not until:
            return 0
        import math

        return max(0, math.ceil((auth.parse_ts(until) - now).total_seconds()))

    @staticmethod
    def _note_login_failure(conn: Any, key: str, address: str, now: datetime) -> dict[str, Any]:
        """Count a failure for (name key, address) and start its back-off when due; the
        count and any wait, for the ledger entry."""
        from sqlalchemy import delete

        from faceledger.schema import login_failures as lf

        stamp = now.isoformat(timespec="seconds")
        horizon = (now - auth.LOGIN_FAILURE_MEMORY).isoformat(timespec="seconds")
        pair = (lf.c.username_key == key, lf.c.address == address)
        row = conn.execute(select(lf).where(*pair)).first()
        failures = 1 if row is None or row.last_failure_at < horizon else int(row.failures) + 1
        wait = auth.login_backoff_seconds(failures)
        blocked = (now + timedelta(seconds=wait)).isoformat(timespec="seconds") if wait else None
        values = {"failures": failures, "last_failure_at": stamp, "blocked_until": blocked}
        if row is None:
            conn.execute(delete(lf).where(lf.c.last_failure_at < horizon))  # forgotten pairs
            conn.execute(insert(lf).values(username_key=key, address=address, **values))
        else:
            conn.execute(update(lf).where(*pair).values(**values))
        return {"failures": failures} | ({"blocked_for": wait} if wait else {})

    def login(self, username: str, password: str, address: str = "local") -> Actor:
        """Check a user's password. ``address`` says where the attempt comes from (the
        client's address for the web, "cli" for the command line): failures back off per
        (name, address), so nobody can lock another user out (see :func:`auth.
        login_backoff_seconds`). Every refusal costs one password check and reads the same
        (unknown user, wrong password, disabled account); the ledger keeps the reason."""
        return self._login(username, password, address, 0)[0]

    def login_session(
        self, username: str, password: str, address: str, days: int = 1
    ) -> tuple[Actor, int, str]:
        """:meth:`login` that also creates a web session's token (named ``web-session``) in
        the same transaction, named in the one ``login`` ledger entry: (actor, token id,
        secret)."""
        actor, session = self._login(username, password, address, days)
        assert session is not None  # a successful login with days > 0 makes one
        return actor, session[0], session[1]

    def _login(
        self, username: str, password: str, address: str, session_days: int
    ) -> tuple[Actor, tuple[int, str] | None]:
        if len(username) > auth.MAX_USERNAME_LENGTH:  # never a user: refused, not recorded
            raise RefusedError(
                "bad-username", f"user names are at most {auth.MAX_USERNAME_LENGTH} characters"
            )
        address = address[: auth.MAX_ADDRESS_LENGTH]
        # NFKC can lengthen a typed name 18-fold; a key past the longest a user can have
        # (192) names nobody, and its first 200 characters still give it its own back-off.
        key = auth.username_key(username)[: auth.MAX_KEY_LENGTH]
        self._ensure_username_keys()
        now = auth.utcnow()
        with self.store.engine.connect() as conn:
            row = self._user_by_key(conn, key, username)
            wait = self._login_wait(conn, key, address, now)
        # The password check runs outside any transaction, and once on every path.
        if wait:
            auth.verify_dummy(password)
            raise auth.LoginThrottled(wait)
        problem = None
        if row is None:
            auth.verify_dummy(password)
            problem = "unknown user"
        elif not auth.verify_password(row.password_hash, password):
            problem = "wrong password"
        elif row.disabled:
            problem = "account disabled"
        session: tuple[int, str] | None = None
        with self.store.writer.begin() as conn:
            if problem:
                who = username if row is None else row.username
                details = {"reason": problem, "address": address}
                details |= self._note_login_failure(conn, key, address, now)
                audit.append(conn, who, "login.failed", who, details)
            else:
                from sqlalchemy import delete

                from faceledger.schema import login_failures as lf

                assert row is not None  # an unknown user always sets a problem
                conn.execute(delete(lf).where(lf.c.username_key == key, lf.c.address == address))
                entry: dict[str, Any] = {"address": address}
                if session_days > 0:
                    secret, h = auth.new_token()
                    expires = (now + timedelta(days=session_days)).isoformat(timespec="seconds")
                    pk = conn.execute(
                        insert(tokens).values(
                            user_id=row.id,
                            token_hash=h,
                            name="web-session",
                            created_at=now_iso(),
                            expires_at=expires,
                        )
                    ).inserted_primary_key
                    assert pk is not None  # a single-row INSERT always reports its key
                    session = (int(pk[0]), secret)
                    entry |= {"token_id": session[0], "token_name": "web-session"}
                    entry["expires_at"] = expires
                audit.append(conn, row.username, "login", row.username, entry)
        if problem:
            raise AuthError(
                f"login refused for {username!r}: wrong user name or password, "
                "or the account is disabled"
            )
        return self._actor_from_row(row, "password"), session

    def authenticate_token(
        self, secret: str, record_use: bool = True, web_session: bool = False
    ) -> Actor:
        """The token's user. Its use is recorded (``token.use``) at most once per 10 minutes;
        a web session's token (``web_session``) only notes its last use: its login entry
        says all there is."""
        h = auth.token_hash(secret)
        now = auth.utcnow()
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(tokens, users.c.username, users.c.roles, users.c.unit, users.c.disabled)
                .join(users, users.c.id == tokens.c.user_id)
                .where(tokens.c.token_hash == h)
            ).first()
        problem = None
        if row is None:
            problem = "unknown token"
        elif row.revoked_at:
            problem = "token revoked"
        elif auth.parse_ts(row.expires_at) <= now:
            problem = "token expired"
        elif row.disabled:
            problem = "account disabled"
        if problem:
            who = row.username if row is not None else "anonymous"
            self.record(
                SYSTEM if row is None else Actor(0, who, frozenset()),
                "token.rejected",
                who,
                reason=problem,
                token_id=None if row is None else row.id,
            )
            raise AuthError(f"token refused: {problem}")
        assert row is not None  # an unknown token always sets a problem
        actor = Actor(
            int(row.user_id),
            row.username,
            auth.parse_roles(row.roles),
            row.unit,
            "token",
            int(row.id),
        )
        last = row.last_used_at
        # Token use is recorded at most once per token per 10 minutes; every action done
        # with a token also names the token in its own ledger entry.
        if record_use and (last is None or auth.parse_ts(last) < now - timedelta(minutes=10)):
            with self.store.writer.begin() as conn:
                conn.execute(
                    update(tokens)
                    .where(tokens.c.id == row.id)
                    .values(last_used_at=now.isoformat(timespec="seconds"))
                )
                if not web_session:
                    audit.append(conn, row.username, "token.use", row.name, {"token_id": row.id})
        return actor

    def change_password(
        self, actor: Actor, current: str, new: str, address: str = "local"
    ) -> list[int]:
        """Change the actor's own password (any role), given the current one. A wrong
        current password counts as a failed login for (name, address) and backs off the
        same way. The user's other web sessions end; their ids are returned."""
        auth.check_password_strength(new)
        if new == current:
            raise RefusedError("same-password", "the new password is the current one")
        address = address[: auth.MAX_ADDRESS_LENGTH]
        key = auth.username_key(actor.username)
        now = auth.utcnow()
        with self.store.engine.connect() as conn:
            stored = conn.execute(
                select(users.c.password_hash).where(users.c.id == actor.user_id)
            ).scalar()
            wait = self._login_wait(conn, key, address, now)
        if wait:
            auth.verify_dummy(current)
            raise auth.LoginThrottled(wait)
        if stored is None:
            raise RefusedError("no-such-user", f"no user {actor.username!r}")
        ok = auth.verify_password(stored, current)
        via = {"token_id": actor.token_id} if actor.token_id else {}
        ended: list[int] = []
        with self.store.writer.begin() as conn:
            if not ok:
                details = {"reason": "wrong current password", "address": address}
                details |= self._note_login_failure(conn, key, address, now) | via
                audit.append(
                    conn, actor.username, "user.password_change_refused", actor.username, details
                )
            else:
                conn.execute(
                    update(users)
                    .where(users.c.id == actor.user_id)
                    .values(password_hash=auth.hash_password(new))
                )
                ended = [
                    int(t)
                    for t in conn.execute(
                        select(tokens.c.id).where(
                            tokens.c.user_id == actor.user_id,
                            tokens.c.name == "web-session",
                            tokens.c.revoked_at.is_(None),
                            tokens.c.id != (actor.token_id or 0),
                        )
                    ).scalars()
                ]
                if ended:
                    conn.execute(
                        update(tokens).where(tokens.c.id.in_(ended)).values(revoked_at=now_iso())
                    )
                audit.append(
                    conn,
                    actor.username,
                    "user.password_change",
                    actor.username,
                    {"ended_sessions": ended} | via,
                )
        if not ok:
            raise RefusedError("wrong-password", "the current password is wrong")
        return ended

    def unlock_user(self, actor: Actor, username: str) -> int:
        """Clear the login back-off of ``username`` from every address (admin); how many
        (name, address) pairs were cleared."""
        from sqlalchemy import delete

        from faceledger.schema import login_failures as lf

        if len(username) > auth.MAX_USERNAME_LENGTH:
            raise RefusedError(
                "no-such-user", "no such user (user names are at most 64 characters)"
            )
        self.require(actor, "manage_users", username)
        key = auth.username_key(username)
        self._ensure_username_keys()
        with self.store.writer.begin() as conn:
            row = self._user_by_key(conn, key, username)
            if row is None:
                raise RefusedError("no-such-user", f"no user {username!r}")
            cleared = conn.execute(delete(lf).where(lf.c.username_key == key)).rowcount
            audit.append(conn, actor.username, "user.unlock", row.username, {"cleared": cleared})
        return int(cleared)

    def add_user(
        self,
        actor: Actor,
        username: str,
        password: str,
        roles: str | list[str],
        unit: str | None = None,
    ) -> int:
        # Lengths first: nothing over-long is recorded, not even in a denial.
        if len(username) > auth.MAX_USERNAME_LENGTH:
            raise RefusedError(
                "bad-username", f"user names are at most {auth.MAX_USERNAME_LENGTH} characters"
            )
        if unit is not None and len(unit) > auth.MAX_UNIT_LENGTH:
            raise RefusedError("bad-unit", f"units are at most {auth.MAX_UNIT_LENGTH} characters")
        self.require(actor, "manage_users", username)
        parsed = auth.parse_roles(roles)
        auth.check_password_strength(password)
        problem = auth.username_problem(username)
        if problem:
            raise RefusedError("bad-username", problem)
        username = auth.canonical_username(username)
        key = auth.username_key(username)
        self._ensure_username_keys()
        with self.store.writer.begin() as conn:
            clash = conn.execute(
                select(users.c.username).where(
                    (users.c.username_key == key) | (users.c.username == username)
                )
            ).scalar()
            if clash is not None:
                raise RefusedError(
                    "user-exists",
                    f"user {username!r} already exists"
                    if clash == username
                    else f"{username!r} is too like the existing user {clash!r}",
                )
            uid = self._insert_user(conn, username, password, parsed, unit)
            audit.append(
                conn, actor.username, "user.add", username, {"roles": sorted(parsed), "unit": unit}
            )
        return int(uid)

    def list_users(self, actor: Actor) -> list[dict[str, Any]]:
        """Users; ``locked_until`` is the end of the longest login back-off that one of the
        user's (name, address) pairs is in now (admins clear it with :meth:`unlock_user`)."""
        from faceledger.schema import login_failures as lf

        self.require(actor, "manage_users")
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.username)).mappings().all()
            backoff = dict(
                conn.execute(
                    select(lf.c.username_key, func.max(lf.c.blocked_until))
                    .where(lf.c.blocked_until > now_iso())
                    .group_by(lf.c.username_key)
                ).all()
            )
        return [
            {
                "id": r["id"],
                "username": r["username"],
                "roles": r["roles"].split(","),
                "unit": r["unit"],
                "disabled": bool(r["disabled"]),
                "locked_until": backoff.get(r["username_key"] or auth.username_key(r["username"])),
                "created_at": r["created_at"],
            }
            for r in rows
        ]

    def _user_id(self, conn: Any, username: str) -> int:
        uid = conn.execute(select(users.c.id).where(users.c.username == username)).scalar()
        if uid is None:
            raise RefusedError("no-such-user", f"no user {username!r}")
        return int(uid)

    def set_disabled(self, actor: Actor, username: str, disabled: bool = True) -> None:
        self.require(actor, "manage_users", username)
        if disabled and username == actor.username:
            raise RefusedError("self-disable", "you cannot disable your own account")
        with self.store.writer.begin() as conn:
            uid = self._user_id(conn, username)
            conn.execute(update(users).where(users.c.id == uid).values(disabled=disabled))
            audit.append(
                conn, actor.username, "user.disable" if disabled else "user.enable", username, {}
            )

    def _refuse_self_change(self, actor: Actor, username: str, what: str) -> None:
        """Nobody grants themselves roles or moves themselves to another unit."""
        if username == actor.username:
            self.record(
                actor, "authz.denied", username, permission="manage_users", reason=f"self-{what}"
            )
            raise RefusedError(
                f"self-{what}", f"you cannot change your own {what}; ask another admin"
            )

    def set_roles(self, actor: Actor, username: str, roles: str | list[str]) -> None:
        self.require(actor, "manage_users", username)
        parsed = auth.parse_roles(roles)
        self._refuse_self_change(actor, username, "roles")
        with self.store.writer.begin() as conn:
            uid = self._user_id(conn, username)
            old = conn.execute(select(users.c.roles).where(users.c.id == uid)).scalar()
            conn.execute(
                update(users).where(users.c.id == uid).values(roles=",".join(sorted(parsed)))
            )
            audit.append(
                conn,
                actor.username,
                "user.set_roles",
                username,
                {"old": str(old).split(","), "new": sorted(parsed)},
            )

    def set_unit(self, actor: Actor, username: str, unit: str | None) -> None:
        """Move a user to another unit (admins; never themselves)."""
        self.require(actor, "manage_users", username)
        unit = (unit or "").strip() or None
        check_length("unit", unit, MAX_UNIT)
        self._refuse_self_change(actor, username, "unit")
        with self.store.writer.begin() as conn:
            uid = self._user_id(conn, username)
            old = conn.execute(select(users.c.unit).where(users.c.id == uid)).scalar()
            conn.execute(update(users).where(users.c.id == uid).values(unit=unit))
            audit.append(conn, actor.username, "user.set_unit", username, {"old": old, "new": unit})

    def create_token(
        self, actor: Actor, username: str, name: str = "api", days: int = auth.DEFAULT_TOKEN_DAYS
    ) -> tuple[int, str]:
        """A new token for yourself. Nobody, admins included, creates a token for another
        user: that would let them act, and be recorded, as that user."""
        if username != actor.username:
            self.record(
                actor, "authz.denied", username, permission="create_token", reason="impersonation"
            )
            raise RefusedError(
                "impersonation",
                f"a token acts as its owner: {actor.username} cannot create one for "
                f"{username}; they must create it themselves",
            )
        check_length("token name", name, MAX_TOKEN_NAME)
        if not 1 <= days <= 366:
            raise RefusedError("bad-expiry", "token lifetime must be 1 to 366 days")
        secret, h = auth.new_token()
        expires = (auth.utcnow() + timedelta(days=days)).isoformat(timespec="seconds")
        with self.store.writer.begin() as conn:
            uid = self._user_id(conn, username)
            pk = conn.execute(
                insert(tokens).values(
                    user_id=uid, token_hash=h, name=name, created_at=now_iso(), expires_at=expires
                )
            ).inserted_primary_key
            assert pk is not None  # a single-row INSERT always reports its key
            tid = pk[0]
            audit.append(
                conn,
                actor.username,
                "token.create",
                username,
                {"token_id": int(tid), "name": name, "expires_at": expires},
            )
        return int(tid), secret

    def revoke_token(self, actor: Actor, token_id: int) -> None:
        with self.store.writer.begin() as conn:
            row = conn.execute(
                select(tokens.c.user_id, users.c.username)
                .join(users, users.c.id == tokens.c.user_id)
                .where(tokens.c.id == token_id)
            ).first()
            if row is None:
                raise RefusedError("no-such-token", f"no token {token_id}")
        if row.username != actor.username:
            self.require(actor, "manage_users", f"token {token_id}")
        with self.store.writer.begin() as conn:
            conn.execute(update(tokens).where(tokens.c.id == token_id).values(revoked_at=now_iso()))
            audit.append(conn, actor.username, "token.revoke", row.username, {"token_id": token_id})

    def list_tokens(self, actor: Actor, username: str | None = None) -> list[dict[str, Any]]:
        username = username or actor.username
        if username != actor.username:
            self.require(actor, "manage_users", username)
        with self.store.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(tokens)
                    .join(users, users.c.id == tokens.c.user_id)
                    .where(users.c.username == username)
                )
                .mappings()
                .all()
            )
        return [
            {
                k: r[k]
                for k in ("id", "name", "created_at", "expires_at", "revoked_at", "last_used_at")
            }
            for r in rows
        ]

    # -- policy ----------------------------------------------------------------------------
    def policy(self) -> Policy:
        path = policy_path(self.data_dir)
        if not path.is_file():
            if self.has_users():
                raise PolicyTamperedError(f"{path} is missing; an admin must set the policy")
            return Policy()
        data = path.read_bytes()
        recorded = None
        for e in audit.iter_entries(self.store, action="policy.set"):
            recorded = e.details.get("sha256")
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise PolicyTamperedError(
                f"{path} was changed outside faceledger (its hash differs from the ledger's); "
                "searches are refused until an admin sets the policy with `faceledger policy set`"
            )
        return Policy.from_bytes(data)

    def save_policy(self, actor: Actor, new: Policy, initial: bool = False) -> None:
        if not initial:
            self.require(actor, "manage_policy")
        new.validate()
        path = policy_path(self.data_dir)
        try:
            old = Policy.from_bytes(path.read_bytes()) if path.is_file() else None
        except ValueError:
            old = None
        with self.store.writer.begin() as conn:
            atomic_write(path, new.to_bytes())
            changes = (
                {}
                if old is None
                else {
                    k: {"old": v, "new": getattr(new, k)}
                    for k, v in vars(old).items()
                    if getattr(new, k) != v
                }
            )
            audit.append(
                conn,
                actor.username,
                "policy.set",
                "policy.json",
                {"sha256": new.sha256(), "changes": changes, "initial": initial},
            )

    # -- case requests ---------------------------------------------------------------------
    def request_case(self, actor: Actor, case_number: str, purpose: str, justification: str) -> int:
        self._check_case_lengths(case_number, purpose, justification)
        self.require(actor, "request_case", case_number)
        self._check_case_fields(actor, case_number, purpose, justification)
        case_number, justification = case_number.strip(), justification.strip()
        with self.store.writer.begin() as conn:
            pk = conn.execute(
                insert(case_requests).values(
                    case_number=case_number,
                    purpose=purpose,
                    justification=justification,
                    requested_by=actor.user_id,
                    status="pending",
                    created_at=now_iso(),
                )
            ).inserted_primary_key
            assert pk is not None  # a single-row INSERT always reports its key
            rid = pk[0]
            audit.append(
                conn,
                actor.username,
                "case.request",
                case_number,
                {"request_id": int(rid), **case_details(case_number, purpose, justification)},
            )
        return int(rid)

    def _decider_check(self, actor: Actor, permission: str, request_id: int) -> Any:
        """The request, if ``actor`` (a supervisor) may decide on it: requests of their own
        unit only, never their own request; a supervisor without a unit decides none."""
        self.require(actor, permission, f"request {request_id}")
        req = users.alias("req")
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(case_requests, req.c.unit.label("unit"))
                .join(req, req.c.id == case_requests.c.requested_by)
                .where(case_requests.c.id == request_id)
            ).first()
        if row is None:
            raise RefusedError("no-such-request", f"no case request {request_id}")
        reason = None
        if row.requested_by == actor.user_id:
            reason, message = "self-approval", "you cannot decide your own request"
        elif not actor.unit:
            reason = "no-unit"
            message = "supervisors without a unit decide no requests; an admin must set yours"
        elif row.unit != actor.unit:
            reason = "other-unit"
            message = f"request {request_id} comes from another unit than yours ({actor.unit})"
        if reason:  # refused, and recorded like a denial
            self.record(
                actor,
                "authz.denied",
                f"request {request_id}",
                permission=permission,
                reason=reason,
            )
            raise RefusedError(reason, message)
        return row

    def decide_case(
        self,
        actor: Actor,
        request_id: int,
        approve: bool,
        note: str = "",
        search_limit: int | None = None,
    ) -> None:
        """Approve or deny a pending request. An approval lasts the policy's
        ``approval_days`` and, with ``search_limit``, that many searches and verifications."""
        check_length("note", note, MAX_NOTE)
        if search_limit is not None and not 1 <= search_limit <= 100_000:
            raise RefusedError("bad-search-limit", "a search limit is 1 to 100,000 searches")
        self._decider_check(actor, "decide_case", request_id)
        pol = self.policy()
        with self.store.writer.begin() as conn:
            row = conn.execute(
                select(case_requests).where(case_requests.c.id == request_id)
            ).first()
            assert row is not None  # requests are never deleted
            if row.status != "pending":
                raise RefusedError("already-decided", f"request {request_id} is {row.status}")
            status = "approved" if approve else "denied"
            expires = (
                (auth.utcnow() + timedelta(days=pol.approval_days)).isoformat(timespec="seconds")
                if approve
                else None
            )
            conn.execute(
                update(case_requests)
                .where(case_requests.c.id == request_id)
                .values(
                    status=status,
                    decided_by=actor.user_id,
                    decided_at=now_iso(),
                    decision_note=note,
                    expires_at=expires,
                    search_limit=search_limit if approve else None,
                )
            )
            details: dict[str, Any] = {
                "request_id": request_id,
                "case_number": row.case_number,
                "purpose": row.purpose,
                "note": note,
            }
            if approve:
                details |= {"expires_at": expires, "search_limit": search_limit}
            audit.append(
                conn,
                actor.username,
                f"case.{'approve' if approve else 'deny'}",
                row.case_number,
                details,
            )

    def withdraw_case(self, actor: Actor, request_id: int, note: str) -> None:
        """End an approval before its time (a supervisor of the requester's unit)."""
        check_length("note", note, MAX_NOTE)
        self._decider_check(actor, "decide_case", request_id)
        if len(note.strip()) < 3:
            raise RefusedError("missing-note", "say why the approval is withdrawn")
        with self.store.writer.begin() as conn:
            row = conn.execute(
                select(case_requests).where(case_requests.c.id == request_id)
            ).first()
            assert row is not None  # requests are never deleted
            if row.status != "approved":
                raise RefusedError(
                    "not-approved", f"request {request_id} is {row.status}, not approved"
                )
            conn.execute(
                update(case_requests)
                .where(case_requests.c.id == request_id)
                .values(
                    status="withdrawn",
                    withdrawn_by=actor.user_id,
                    withdrawn_at=now_iso(),
                    withdrawal_note=note.strip(),
                )
            )
            audit.append(
                conn,
                actor.username,
                "case.withdraw",
                row.case_number,
                {
                    "request_id": request_id,
                    "case_number": row.case_number,
                    "purpose": row.purpose,
                    "note": note.strip(),
                },
            )

    def list_case_requests(self, actor: Actor, status: str | None = None) -> list[dict[str, Any]]:
        self.require(actor, "list_cases")
        req = users.alias("req")
        q = select(
            case_requests, req.c.username.label("requested_by_name"), req.c.unit.label("unit")
        ).join(req, req.c.id == case_requests.c.requested_by)
        if status:
            q = q.where(case_requests.c.status == status)
        if not (actor.roles & {"admin", "auditor"}):
            mine = case_requests.c.requested_by == actor.user_id
            if "supervisor" in actor.roles and actor.unit:
                q = q.where(mine | (req.c.unit == actor.unit))
            else:  # investigators, and supervisors without a unit: their own requests
                q = q.where(mine)
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(case_requests.c.id)).mappings()]

    # -- search ----------------------------------------------------------------------------
    @staticmethod
    def _check_case_lengths(case: str, purpose: str, why: str) -> None:
        check_length("case number", case, MAX_CASE_NUMBER)
        check_length("purpose", purpose, MAX_PURPOSE)
        check_length("justification", why, MAX_JUSTIFICATION)

    def _check_case_fields(self, actor: Actor, case: str, purpose: str, why: str) -> Policy:
        pol = self.policy()
        problems = []
        if not case or not case.strip():
            problems.append("a case number (--case)")
        if purpose not in pol.purposes:
            problems.append(
                f"a purpose from the policy list ({', '.join(pol.purposes)})"
                + (f"; {purpose!r} is not one" if purpose else "")
            )
        if not why or len(why.strip()) < 10:
            problems.append("a justification of at least 10 characters")
        if problems:
            self.record(
                actor, "search.refused", case or "", reason="missing-case-fields", purpose=purpose
            )
            raise RefusedError("missing-case-fields", "a search needs " + "; ".join(problems))
        return pol

    def set_analyzer_factory(self, factory: Callable[[], FaceAnalyzer]) -> None:
        self._analyzer_factory = factory
        self._searcher = None

    def searcher(self) -> Searcher:
        if self._searcher is None:
            if self._analyzer_factory is None:
                from faceledger.embedding import create_embedder_for_model

                model = self.store.model_id()
                if model is None:
                    raise RefusedError("empty-gallery", "the gallery is empty: ingest first")
                from faceledger.ingest import PipelineSettings

                embedder = create_embedder_for_model(
                    model, model_dir=self.model_dir, device=self.device
                )
                settings = PipelineSettings(
                    min_face=20, model_dir=self.model_dir, device=self.device
                )
                detector = settings.analyzer().detector if self.model_dir else None
                self._searcher = Searcher(
                    self.store, FaceAnalyzer(detector=detector, embedder=embedder)
                )
            else:
                self._searcher = Searcher(self.store, self._analyzer_factory())
        return self._searcher

    def comparisons_today(self, user_id: int) -> int:
        """Searches and 1:1 verifications by ``user_id`` since 00:00 UTC (the daily quota)."""
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since = start.isoformat(timespec="seconds")
        with self.store.engine.connect() as conn:
            return _count_comparisons(
                conn, lambda t: (t.c.user_id == user_id, t.c.created_at >= since)
            )

    def _approval_problem(self, actor: Actor, req: SearchRequest, pol: Policy) -> str | None:
        """Why the approval this search relies on (or lacks) does not cover it, or None.

        A quoted request must be the searcher's own, approved, for this very case and
        purpose, not expired, withdrawn or used up. Without one, the purpose must not need
        approval and no request for this case may have been denied."""
        case = req.case_number.strip()
        rid = req.request_id
        with self.store.engine.connect() as conn:
            row = (
                None
                if rid is None
                else conn.execute(select(case_requests).where(case_requests.c.id == rid)).first()
            )
            denied = conn.execute(
                select(case_requests.c.id)
                .where(case_requests.c.case_number == case, case_requests.c.status == "denied")
                .limit(1)
            ).scalar()
            used = (
                0 if row is None else _count_comparisons(conn, lambda t: (t.c.request_id == rid,))
            )
        if rid is None:
            if req.purpose in pol.approval_required:
                return (
                    f"purpose {req.purpose!r} needs a supervisor-approved case request; "
                    "quote its request id"
                )
            if denied is not None:
                return (
                    f"a request for case {case!r} was denied (request {denied}); the case "
                    "can be searched again only under a newly approved request"
                )
            return None
        if row is None:
            return f"there is no case request {rid}"
        if row.requested_by != actor.user_id:
            return f"request {rid} was made by another user"
        if row.case_number != case or row.purpose != req.purpose:
            return (
                f"request {rid} approves case {row.case_number!r} for {row.purpose!r}, "
                f"not case {case!r} for {req.purpose!r}"
            )
        if row.status != "approved":
            return f"request {rid} is {row.status}, not approved"
        if row.expires_at and auth.parse_ts(row.expires_at) <= auth.utcnow():
            return f"the approval of request {rid} expired at {row.expires_at}"
        if row.search_limit is not None and used >= int(row.search_limit):
            return f"the approval of request {rid} covered {row.search_limit} searches, all used"
        return None

    def authorise_search(self, actor: Actor, req: SearchRequest) -> Policy:
        """All the rules, before any face is compared. Raises RefusedError/PermissionDenied."""
        self._check_case_lengths(req.case_number, req.purpose, req.justification)
        self.require(actor, "search", req.case_number)
        pol = self._check_case_fields(actor, req.case_number, req.purpose, req.justification)
        reason = self._approval_problem(actor, req, pol)
        if reason:
            self.record(
                actor,
                "search.refused",
                req.case_number,
                reason="not-approved",
                purpose=req.purpose,
                request_id=req.request_id,
                detail=reason,
            )
            raise RefusedError("not-approved", reason)
        if pol.daily_quota and self.comparisons_today(actor.user_id) >= pol.daily_quota:
            self.record(
                actor,
                "search.quota_refused",
                req.case_number,
                purpose=req.purpose,
                quota=pol.daily_quota,
            )
            raise RefusedError(
                "quota-exceeded",
                f"daily quota of {pol.daily_quota} searches and verifications reached",
            )
        return pol

    def _decode_probe(self, actor: Actor, data: bytes, action: str, case: str, **what: Any) -> Any:
        """Decode a probe photo (bounded in pixels and in how many decode at once); a photo
        that cannot be decoded is recorded as ``action`` before the error goes up."""
        try:
            return decode_probe(data)
        except DecodeError as exc:
            self.record(actor, action, case, **what, error=exc.reason)
            raise

    def _insert_comparison(
        self,
        conn: Any,
        actor: Actor,
        req: SearchRequest,
        table: Any,
        row: dict[str, Any],
        details: dict[str, Any],
    ) -> int:
        """Store a search or a 1:1 verification with its case fields, and its ledger entry
        (``search`` / ``verify``: its id, the case fields and the justification's SHA-256,
        which ``audit verify`` checks the row against), inside the caller's transaction."""
        case, why = req.case_number.strip(), req.justification.strip()
        pk = conn.execute(
            insert(table).values(
                user_id=actor.user_id,
                case_number=case,
                purpose=req.purpose,
                justification=why,
                request_id=req.request_id,
                created_at=now_iso(),
                **row,
            )
        ).inserted_primary_key
        assert pk is not None  # a single-row INSERT always reports its key
        rid = int(pk[0])
        action, id_key = ("search", "search_id") if table is searches else ("verify", "verify_id")
        entry = {
            id_key: rid,
            **case_details(case, req.purpose, why),
            "request_id": req.request_id,
            **details,
        }
        if actor.token_id:
            entry["token_id"] = actor.token_id
        audit.append(conn, actor.username, action, case, entry)
        return rid

    def search(
        self,
        actor: Actor,
        photo: bytes,
        req: SearchRequest,
        face_box: list[int] | None = None,
    ) -> dict[str, Any]:
        """Search the gallery with every face in ``photo``, or with the one in ``face_box``.

        With ``face_box`` the probe is the region around that face with any other face found
        there painted out, so the other people in the photo are not compared; the ledger
        entry names the whole photo's hash and the region used."""
        pol = self.authorise_search(actor, req)
        top_k = max(1, min(req.top_k, pol.max_candidates))
        photo_sha = hashlib.sha256(photo).hexdigest()
        img = self._decode_probe(
            actor, photo, "search.bad_probe", req.case_number, probe_sha256=photo_sha
        )
        region: list[int] | None = None
        probe = photo
        with self.analysis_lock:
            searcher = self.searcher()
            pixels = img.pixels
            if face_box is not None:
                if face_box[2] > img.width or face_box[3] > img.height:
                    raise RefusedError("bad-face-box", "face_box lies outside the photo")
                found = searcher.analyzer.detector.detect(pixels)
                others = [
                    b for b in (d.bbox.as_list() for d in found) if probes.iou(b, face_box) < 0.3
                ]
                region = probes.region_around(face_box, img.width, img.height)
                pixels = probes.masked_region(pixels, region, others)
                probe = probes.png_bytes(pixels)
            faces = searcher.analyzer.analyze(pixels)
            searchable = [f for f in faces if f.quality >= pol.min_probe_quality]
            results = searcher.search_faces(searchable, top_k) if searchable else []
            gallery_faces = len(searcher.indexes.sync())
            model_id = searcher.analyzer.model_id
        probe_sha = hashlib.sha256(probe).hexdigest()
        by_index = {id(f): r for f, r in zip(searchable, results, strict=True)}
        probe_faces: list[dict[str, Any]] = []
        for i, f in enumerate(faces):
            r = by_index.get(id(f))
            if r is None:
                d = f.detection
                doc: dict[str, Any] = {
                    "face_index": i,
                    "bbox": d.bbox.as_list(),
                    "quality": f.quality,
                    "size": f.size,
                    "sharpness": round(f.sharpness, 2),
                    "yaw": round(f.yaw, 3),
                    "below_min_quality": True,
                    "candidates": [],
                }
            else:
                doc = r.__dict__ | {"face_index": i, "below_min_quality": False}
                doc["candidates"] = [c.__dict__ for c in r.candidates]
            doc["warnings"] = probes.quality_warnings(f.size, f.sharpness, f.yaw)
            probe_faces.append(doc)
        if region is not None:
            x0, y0 = region[0], region[1]
            for pf in probe_faces:
                b = pf["bbox"]
                pf["bbox"] = [b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0]
                if pf.get("landmarks"):
                    pf["landmarks"] = [[p[0] + x0, p[1] + y0] for p in pf["landmarks"]]
            assert face_box is not None
            best = max(probe_faces, key=lambda pf: probes.iou(pf["bbox"], face_box), default=None)
            for pf in probe_faces:
                pf["selected"] = pf is best
        summary = [
            {
                "face": pf["face_index"],
                "candidates": [[c["face_id"], round(c["score"], 4)] for c in pf["candidates"]],
            }
            for pf in probe_faces
        ]
        with self.store.writer.begin() as conn:
            details: dict[str, Any] = {
                "probe_sha256": probe_sha,
                "faces": len(faces),
                "results": summary,
            }
            if region is not None:
                details |= {"photo_sha256": photo_sha, "probe_region": region}
            sid = self._insert_comparison(
                conn,
                actor,
                req,
                searches,
                {
                    "probe_sha256": probe_sha,
                    "faces": len(faces),
                    "result_json": json.dumps(summary),
                },
                details,
            )
            if pol.retain_probes_days > 0:
                rel = f"probes/{probe_sha}.bin"
                atomic_write(self.data_dir / rel, probe)
                expires = (auth.utcnow() + timedelta(days=pol.retain_probes_days)).isoformat(
                    timespec="seconds"
                )
                conn.execute(
                    insert_or_ignore(probe_table, conn),
                    {
                        "sha256": probe_sha,
                        "stored_path": rel,
                        "search_id": sid,
                        "expires_at": expires,
                    },
                )
        if not faces:
            raise NoFaceError(f"no face found in the probe photo (search {sid} recorded)")
        return {
            "search_id": sid,
            "probe_sha256": probe_sha,
            "photo_sha256": photo_sha,
            "probe_region": region,
            "case_number": req.case_number,
            "purpose": req.purpose,
            "gallery_faces": gallery_faces,
            "model_id": model_id,
            "faces": probe_faces,
            "notice": LEADS_NOTICE,
        }

    def verify(
        self,
        actor: Actor,
        photo_a: bytes,
        photo_b: bytes,
        req: SearchRequest,
        box_a: list[int] | None = None,
        box_b: list[int] | None = None,
    ) -> dict[str, Any]:
        """1:1 comparison of one face in each photo, under the same rules as a search.

        Investigators only, with case, purpose, justification, approval and the daily quota
        (shared with searches) checked by :meth:`authorise_search`; the probe-quality minimum
        applies to both faces. Every comparison, also one that finds no face, is stored in
        ``verifications`` and the ledger (hashes and score, no image). The face is the one
        matching ``box_*`` or else the largest in each photo."""
        self._check_case_lengths(req.case_number, req.purpose, req.justification)
        self.require(actor, "verify", req.case_number)
        pol = self.authorise_search(actor, req)
        shas = [hashlib.sha256(p).hexdigest() for p in (photo_a, photo_b)]
        chosen: list[Face | None] = []
        counts: list[int] = []
        for label, data, sha, box in (
            ("A", photo_a, shas[0], box_a),
            ("B", photo_b, shas[1], box_b),
        ):
            img = self._decode_probe(
                actor, data, "verify.bad_photo", req.case_number, photo=label, photo_sha256=sha
            )
            with self.analysis_lock:
                found = self.searcher().analyzer.analyze(img.pixels)
            del img
            counts.append(len(found))
            if not found:
                chosen.append(None)
            elif box is not None:
                chosen.append(max(found, key=lambda f: probes.iou(f.detection.bbox.as_list(), box)))
            else:
                chosen.append(max(found, key=lambda f: f.size))
        searcher = self.searcher()
        calib, model_id = searcher.calibration, searcher.analyzer.model_id
        missing = [label for label, f in zip("AB", chosen, strict=True) if f is None]
        low = [
            label
            for label, f in zip("AB", chosen, strict=True)
            if f is not None and f.quality < pol.min_probe_quality
        ]
        score = est = None
        if missing:
            outcome = "no-face"
        elif low:
            outcome = "low-quality"
        else:
            outcome = "compared"
            fa, fb = chosen
            assert fa is not None and fb is not None
            score = float(np.dot(fa.embedding, fb.embedding))
            est = calib.estimate(score) if calib else None
        rounded = None if score is None else round(score, 4)
        with self.store.writer.begin() as conn:
            hashes = {"photo_a_sha256": shas[0], "photo_b_sha256": shas[1]}
            vid = self._insert_comparison(
                conn,
                actor,
                req,
                verifications,
                {**hashes, "outcome": outcome, "score": rounded},
                {
                    **hashes,
                    "faces_a": counts[0],
                    "faces_b": counts[1],
                    "outcome": outcome,
                    "score": rounded,
                    "est_fmr": None if est is None else est.fmr,
                },
            )
        if missing:
            raise NoFaceError(f"no face found in photo {' and '.join(missing)}")
        if low:
            raise RefusedError(
                "low-quality",
                f"the face in photo {' and '.join(low)} is below the policy's minimum quality "
                f"({pol.min_probe_quality})",
            )
        assert score is not None
        return {
            "verify_id": vid,
            "case_number": req.case_number,
            "purpose": req.purpose,
            "model_id": model_id,
            "score": round(score, 5),
            "est_fmr": None if est is None else est.fmr,
            "est_fmr_extrapolated": None if est is None else est.extrapolated,
            "faces": [
                {
                    "photo": label,
                    "photo_sha256": sha,
                    "faces_in_photo": n,
                    "bbox": f.detection.bbox.as_list(),
                    "quality": f.quality,
                    "warnings": probes.quality_warnings(f.size, f.sharpness, f.yaw),
                }
                for label, sha, n, f in zip("AB", shas, counts, chosen, strict=True)
                if f is not None
            ],
            "notice": LEADS_NOTICE,
        }

    def _detects_today(self, actor: Actor) -> int:
        from faceledger.schema import ledger

        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with self.store.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(ledger)
                    .where(
                        ledger.c.action == "probe.detect",
                        ledger.c.actor == actor.username,
                        ledger.c.ts >= start.isoformat(timespec="seconds"),
                    )
                ).scalar_one()
            )

    def detect(self, actor: Actor, photo: bytes, case_number: str = "") -> dict[str, Any]:
        """The faces in a photo (boxes, quality), for picking one before a search.

        Investigators only; compares nothing and stores nothing; recorded in the ledger with
        the photo's hash, the number of faces and the case it serves (when given), and
        counted against the policy's ``daily_detect_quota``."""
        check_length("case number", case_number, MAX_CASE_NUMBER)
        case = case_number.strip()
        self.require(actor, "search", case or "detect")
        pol = self.policy()
        if pol.daily_detect_quota and self._detects_today(actor) >= pol.daily_detect_quota:
            self.record(actor, "search.quota_refused", case, quota=pol.daily_detect_quota)
            raise RefusedError(
                "quota-exceeded", f"daily quota of {pol.daily_detect_quota} face detections reached"
            )
        sha = hashlib.sha256(photo).hexdigest()
        img = self._decode_probe(actor, photo, "search.bad_probe", case, probe_sha256=sha)
        with self.analysis_lock:
            found = self.searcher().analyzer.analyze(img.pixels)
        self.record(
            actor,
            "probe.detect",
            case or sha[:16],
            photo_sha256=sha,
            faces=len(found),
            case_number=case or None,
        )
        out = []
        for i, f in enumerate(found):
            warnings = probes.quality_warnings(f.size, f.sharpness, f.yaw)
            out.append(
                {
                    "face_index": i,
                    "bbox": f.detection.bbox.as_list(),
                    "quality": f.quality,
                    "size": f.size,
                    "sharpness": round(f.sharpness, 2),
                    "yaw": round(f.yaw, 3),
                    "warnings": warnings,
                    "warning_text": [probes.QUALITY_HINTS[w] for w in warnings],
                    "below_min_quality": f.quality < pol.min_probe_quality,
                }
            )
        return {
            "photo_sha256": sha,
            "width": img.width,
            "height": img.height,
            "faces": out,
            "min_probe_quality": pol.min_probe_quality,
        }

    def _readable_search(self, actor: Actor, search_id: int) -> Any:
        """The search row, if ``actor`` may read it: their own; a supervisor those of their
        unit and those run under approvals they gave; auditors all."""
        self.require(actor, "view_search", f"search {search_id}")
        with self.store.engine.connect() as conn:
            row = (
                conn.execute(
                    select(
                        searches,
                        users.c.username,
                        users.c.unit,
                        case_requests.c.decided_by.label("approved_by"),
                    )
                    .join(users, users.c.id == searches.c.user_id)
                    .outerjoin(case_requests, case_requests.c.id == searches.c.request_id)
                    .where(searches.c.id == search_id)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise RefusedError("no-such-search", f"no search {search_id}")
        supervisor = "supervisor" in actor.roles
        if not (
            row["user_id"] == actor.user_id
            or "auditor" in actor.roles
            or (supervisor and actor.unit and actor.unit == row["unit"])
            or (supervisor and row["approved_by"] == actor.user_id)
        ):
            self.record(actor, "authz.denied", f"search {search_id}", permission="view_search")
            raise PermissionDenied("you may only view your own searches")
        return row

    def get_search(self, actor: Actor, search_id: int) -> dict[str, Any]:
        row = self._readable_search(actor, search_id)
        results = json.loads(row["result_json"])
        self.record(
            actor,
            "search.view",
            f"search {search_id}",
            search_id=search_id,
            case_number=row["case_number"],
            candidates=[int(fid) for f in results for fid, _score in f["candidates"]],
        )
        return {
            k: row[k]
            for k in (
                "id",
                "username",
                "case_number",
                "purpose",
                "justification",
                "request_id",
                "probe_sha256",
                "faces",
                "created_at",
            )
        } | {"results": results}

    def candidate_file(self, actor: Actor, search_id: int, face_id: int, what: str) -> Path:
        """A candidate's crop (``what="crop"``) or source image (``"image"``), served only
        as part of a search that returned that face, to those who may read the search, while
        the search is within the policy's ``result_view_days``.

        Thumbnails are not recorded one by one (the search, or the ``search.view`` of a
        record, lists the candidates shown); opening a source image is."""
        row = self._readable_search(actor, search_id)
        pol = self.policy()
        ends = auth.parse_ts(row["created_at"]) + timedelta(days=pol.result_view_days)
        results = json.loads(row["result_json"])
        reason = None
        if auth.utcnow() >= ends:
            reason = "results-expired"
            message = f"search {search_id}'s results could be viewed until {ends:%Y-%m-%d}"
        elif face_id not in {int(fid) for f in results for fid, _ in f["candidates"]}:
            reason = "not-a-candidate"
            message = f"face {face_id} is not among the candidates of search {search_id}"
        if reason:
            self.record(
                actor,
                "authz.denied",
                f"search {search_id}",
                permission="view_candidate",
                reason=reason,
                face_id=face_id,
            )
            raise RefusedError(reason, message)
        rec = self.store.candidates([face_id]).get(face_id)
        if rec is None:
            raise RefusedError("erased", f"face {face_id} has since been erased from the gallery")
        if what == "image":
            self.record(
                actor,
                "image.view",
                rec.image_sha,
                search_id=search_id,
                face_id=face_id,
                case_number=row["case_number"],
            )
            return self.data_dir / rec.stored_path
        return self.data_dir / rec.crop_path

    # -- gallery ----------------------------------------------------------------------------
    def ingest(
        self,
        actor: Actor,
        items: Iterable[Any],
        settings: Any,
        workers: int = 1,
        args: dict[str, Any] | None = None,
        advance: Callable[[int], None] = lambda n: None,
        engine: str = "local",
        address: str | None = None,
    ) -> Any:
        """Ingest ``items``. ``engine``: ``local`` (a pool of ``workers`` processes) or
        ``ray`` (Ray Data actors on the cluster at ``address``, else a local Ray; ``workers``
        actors, 0 or less: one per cluster CPU)."""
        from faceledger.ingest import Ingestor, check_engine
        from faceledger.privacy import load_blocklist, purge_expired

        check_engine(engine, address)
        self.require(actor, "ingest")
        ingestor: Ingestor
        if engine == "ray":
            from faceledger.ingest_ray import RayIngestor

            ingestor = RayIngestor(
                self.store, settings, address=address, concurrency=workers if workers > 0 else None
            )
        else:
            ingestor = Ingestor(self.store, settings, workers=workers)
        pol = self.policy()
        purge_expired(self, SYSTEM)
        ingestor.blocklist = load_blocklist(self.store)
        ingestor.optout_threshold = (
            optout_threshold(pol, self.store.model_id()) if len(ingestor.blocklist) else 1.0
        )
        ingestor.retention_days = pol.image_retention_days
        args = {**(args or {}), "engine": engine} | ({"address": address} if address else {})
        self.record(actor, "ingest.start", args.get("source", ""), args=args)
        try:
            summary = ingestor.run(items, args, advance)
        except BaseException as exc:
            # Every ingest.start gets its end: what stopped it (what was committed before
            # stays, and its images are in the ingest_runs row marked interrupted). When the
            # database itself cannot be written, this entry cannot be either.
            with contextlib.suppress(Exception):
                self.record(
                    actor,
                    "ingest.failed",
                    args.get("source", ""),
                    error=type(exc).__name__,
                    message=str(exc)[:500],
                )
            raise
        self.record(
            actor,
            "ingest",
            args.get("source", ""),
            run_id=summary.run_id,
            seen=summary.seen,
            new=summary.new,
            duplicates=summary.duplicates,
            faces=summary.faces,
            opted_out=summary.opted_out,
            failures=dict(summary.failures),
        )
        self._searcher = None
        return summary

    def stats(self, actor: Actor) -> dict[str, Any]:
        self.require(actor, "stats")
        s = self.store.stats()
        s["ledger_entries"] = audit.count(self.store)
        if not actor.can("manage_users"):  # where the data lives is the operators' business
            s.pop("data_dir", None)
        return s

    def add_blocklist_embeddings(
        self, conn: Any, model_id: str, vectors: np.ndarray, reference: str
    ) -> int:
        rows = [
            {
                "model_id": model_id,
                "embedding": np.asarray(v, "<f4").tobytes(),
                "reference": reference,
                "created_at": now_iso(),
            }
            for v in vectors
        ]
        if rows:
            conn.execute(insert(blocklist), rows)
        return len(rows)

    # -- audit -----------------------------------------------------------------------------
    def audit_verify(
        self, actor: Actor, checkpoint: str | None = None, report: str | None = None
    ) -> audit.VerifyResult:
        """The chain, the records against it and, with ``checkpoint`` (``seq:hash``) or a
        transparency report's text (``report``, whose ledger head is the checkpoint),
        truncation or rewriting since."""
        from faceledger import reports

        self.require(actor, "verify_ledger")
        if report is not None:
            head = reports.ledger_head_of(report)
            if head is None:
                raise RefusedError(
                    "bad-report", "no ledger head (seq:hash) found in the report given"
                )
            if checkpoint and checkpoint.strip() != head:
                raise RefusedError(
                    "bad-report", "give a checkpoint or a report, not two different heads"
                )
            checkpoint = head
        result = audit.verify(self.store, checkpoint)
        # Recording the check extends the chain, so it is done after verifying.
        self.record(
            actor,
            "audit.verify",
            "ledger",
            ok=result.ok,
            entries=result.entries,
            first_bad_seq=result.first_bad_seq,
            checkpoint=checkpoint,
            records_checked=result.records_checked,
            mismatches=result.mismatch_count,
            guard_restorations=len(result.guard_restorations),
        )
        return result

    def audit_checkpoint(self, actor: Actor) -> str:
        self.require(actor, "verify_ledger")
        seq, h = audit.head(self.store)
        self.record(actor, "audit.checkpoint", "ledger", seq=seq, hash=h)
        return f"{seq}:{h}"

    def audit_entries(
        self,
        reader: Actor,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        case: str | None = None,
    ) -> list[audit.Entry]:
        """Ledger entries, optionally filtered by who acted, action, time and case number
        (the entry's target or ``details.case_number``) (auditors)."""
        self.require(reader, "read_ledger")
        return list(
            audit.iter_entries(
                self.store, since=since, until=until, actor=actor, action=action, case=case
            )
        )

    def audit_export(
        self,
        reader: Actor,
        fmt: str,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        case: str | None = None,
    ) -> Iterable[str]:
        """The filtered ledger as CSV or JSON lines, streamed in seq order up to the head at
        the time of the request (auditors); the export itself is recorded first."""
        from faceledger import reports

        self.require(reader, "read_ledger")
        if fmt not in ("csv", "jsonl"):
            raise RefusedError("bad-format", "export format must be csv or jsonl")
        through, _ = audit.head(self.store)
        filters = {"actor": actor, "action": action, "from": since, "to": until, "case": case}
        self.record(
            reader,
            "audit.export",
            "ledger",
            format=fmt,
            through_seq=through,
            filters={k: v for k, v in filters.items() if v},
        )
        entries = audit.iter_entries(
            self.store,
            since=since,
            until=until,
            actor=actor,
            action=action,
            case=case,
            through_seq=through,
        )
        return reports.ledger_csv(entries) if fmt == "csv" else reports.ledger_jsonl(entries)

    def audit_report(self, actor: Actor, start: Any, end: Any) -> dict[str, Any]:
        from faceledger import reports

        self.require(actor, "report")
        unit_users = None
        if "auditor" not in actor.roles:  # supervisors see their own unit
            with self.store.engine.connect() as conn:
                unit_users = (
                    {
                        r[0]
                        for r in conn.execute(
                            select(users.c.username).where(users.c.unit == actor.unit)
                        )
                    }
                    if (actor.unit)
                    else {actor.username}
                )
        report = reports.build(self.store, start, end, unit_users, generated_by=actor.username)
        self.record(
            actor,
            "audit.report",
            f"{start}..{end}",
            unit=None if unit_users is None else actor.unit,
            ledger_head=report["ledger_head"],
        )
        return report

    def purge(self, actor: Actor) -> dict[str, int]:
        from faceledger.privacy import purge_expired

        self.require(actor, "purge")
        return purge_expired(self, actor)

    def erase(self, actor: Actor, **kwargs: Any) -> Any:
        """Erase faces for good (see :func:`faceledger.privacy.erase`); a reason is required,
        and erasure by photo confirms faces from :meth:`erase_preview` (``preview_id``)."""
        from faceledger.privacy import erase

        return erase(self, actor, **kwargs)

    def erase_preview(
        self, actor: Actor, probe: bytes, threshold: float | None = None
    ) -> dict[str, Any]:
        """The faces an erasure by the subject's photo would take, recorded, for one hour."""
        from faceledger.privacy import erase_preview

        return erase_preview(self, actor, probe, threshold)

    def get_erase_preview(self, actor: Actor, preview_id: int) -> dict[str, Any]:
        from faceledger.privacy import get_preview

        return get_preview(self, actor, preview_id)

    def erase_preview_crop(self, actor: Actor, preview_id: int, face_id: int) -> Path:
        """A crop of a face in a preview, for the admin who made it, while it is open."""
        from faceledger.privacy import preview_crop_path

        return preview_crop_path(self, actor, preview_id, face_id)
