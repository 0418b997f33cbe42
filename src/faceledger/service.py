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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select, update

from faceledger import audit, auth
from faceledger.analysis import FaceAnalyzer
from faceledger.auth import Actor, AuthError, PermissionDenied
from faceledger.decode import decode_image
from faceledger.policy import Policy, optout_threshold, policy_path
from faceledger.schema import blocklist, case_requests, probes, searches, tokens, users
from faceledger.search import LEADS_NOTICE, NoFaceError, Searcher
from faceledger.store import Store, atomic_write, insert_or_ignore, now_iso


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
        from faceledger.privacy import finish_pending_files

        finish_pending_files(self.store)

    # -- ledger helpers --------------------------------------------------------------------
    def record(self, actor: Actor, action: str, target: str = "", **details: Any) -> None:
        if actor.token_id is not None:
            details.setdefault("token_id", actor.token_id)
        audit.record(self.store, actor.username, action, target, details)

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
        self.require(actor, "manage_users")
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.username)).mappings().all()
        return [
            {
                "id": r["id"],
                "username": r["username"],
                "roles": r["roles"].split(","),
                "unit": r["unit"],
                "disabled": bool(r["disabled"]),
                "locked_until": r["locked_until"],
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

    def set_roles(self, actor: Actor, username: str, roles: str | list[str]) -> None:
        self.require(actor, "manage_users", username)
        parsed = auth.parse_roles(roles)
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

    def create_token(
        self, actor: Actor, username: str, name: str = "api", days: int = auth.DEFAULT_TOKEN_DAYS
    ) -> tuple[int, str]:
        """A new token for ``username`` (admins: anyone; others: themselves)."""
        if username != actor.username:
            self.require(actor, "manage_users", username)
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
        self.require(actor, "request_case", case_number)
        self._check_case_fields(actor, case_number, purpose, justification)
        with self.store.writer.begin() as conn:
            pk = conn.execute(
                insert(case_requests).values(
                    case_number=case_number.strip(),
                    purpose=purpose,
                    justification=justification.strip(),
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
                {"request_id": int(rid), "purpose": purpose},
            )
        return int(rid)

    def decide_case(self, actor: Actor, request_id: int, approve: bool, note: str = "") -> None:
        self.require(actor, "decide_case", f"request {request_id}")
        with self.store.engine.connect() as conn:  # who asked never changes: no lock needed
            asker = conn.execute(
                select(case_requests.c.requested_by).where(case_requests.c.id == request_id)
            ).scalar()
        if asker is not None and asker == actor.user_id:  # refused, and recorded like a denial
            self.record(
                actor,
                "authz.denied",
                f"request {request_id}",
                permission="decide_case",
                reason="self-approval",
            )
            raise RefusedError("self-approval", "you cannot decide your own request")
        with self.store.writer.begin() as conn:
            row = conn.execute(
                select(case_requests).where(case_requests.c.id == request_id)
            ).first()
            if row is None:
                raise RefusedError("no-such-request", f"no case request {request_id}")
            if row.status != "pending":
                raise RefusedError("already-decided", f"request {request_id} is {row.status}")
            if row.requested_by == actor.user_id:
                raise RefusedError("self-approval", "you cannot decide your own request")
            status = "approved" if approve else "denied"
            conn.execute(
                update(case_requests)
                .where(case_requests.c.id == request_id)
                .values(
                    status=status,
                    decided_by=actor.user_id,
                    decided_at=now_iso(),
                    decision_note=note,
                )
            )
            audit.append(
                conn,
                actor.username,
                f"case.{'approve' if approve else 'deny'}",
                row.case_number,
                {"request_id": request_id, "purpose": row.purpose, "note": note},
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
            if "supervisor" in actor.roles and actor.unit:
                q = q.where(req.c.unit == actor.unit)
            elif "supervisor" not in actor.roles:
                q = q.where(case_requests.c.requested_by == actor.user_id)
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(case_requests.c.id)).mappings()]

    # -- search ----------------------------------------------------------------------------
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

    def searches_today(self, user_id: int) -> int:
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with self.store.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(searches)
                    .where(
                        searches.c.user_id == user_id,
                        searches.c.created_at >= start.isoformat(timespec="seconds"),
                    )
                ).scalar_one()
            )

    def authorise_search(self, actor: Actor, req: SearchRequest) -> Policy:
        """All the rules, before any face is compared. Raises RefusedError/PermissionDenied."""
        self.require(actor, "search", req.case_number)
        pol = self._check_case_fields(actor, req.case_number, req.purpose, req.justification)
        if req.purpose in pol.approval_required:
            with self.store.engine.connect() as conn:
                row = (
                    None
                    if req.request_id is None
                    else conn.execute(
                        select(case_requests).where(case_requests.c.id == req.request_id)
                    ).first()
                )
            reason = None
            if row is None:
                reason = (
                    f"purpose {req.purpose!r} needs a supervisor-approved request "
                    "(faceledger cases request, then --request ID)"
                )
            elif row.status != "approved":
                reason = f"request {req.request_id} is {row.status}, not approved"
            elif row.case_number != req.case_number.strip() or row.purpose != req.purpose:
                reason = f"request {req.request_id} is for another case or purpose"
            elif row.requested_by != actor.user_id:
                reason = f"request {req.request_id} was made by another user"
            if reason:
                self.record(
                    actor,
                    "search.refused",
                    req.case_number,
                    reason="not-approved",
                    purpose=req.purpose,
                    request_id=req.request_id,
                )
                raise RefusedError("not-approved", reason)
        if pol.daily_quota and self.searches_today(actor.user_id) >= pol.daily_quota:
            self.record(
                actor,
                "search.quota_refused",
                req.case_number,
                purpose=req.purpose,
                quota=pol.daily_quota,
            )
            raise RefusedError("quota-exceeded", f"daily search quota of {pol.daily_quota} reached")
        return pol

    def search(self, actor: Actor, probe: bytes, req: SearchRequest) -> dict[str, Any]:
        pol = self.authorise_search(actor, req)
        top_k = max(1, min(req.top_k, pol.max_candidates))
        probe_sha = hashlib.sha256(probe).hexdigest()
        searcher = self.searcher()
        try:
            img = decode_image(probe)
        except Exception as exc:
            self.record(
                actor,
                "search.bad_probe",
                req.case_number,
                probe_sha256=probe_sha,
                error=getattr(exc, "reason", "decode"),
            )
            raise
        faces = searcher.analyzer.analyze(img.pixels)
        searchable = [f for f in faces if f.quality >= pol.min_probe_quality]
        results = searcher.search_faces(searchable, top_k) if searchable else []
        by_index = {id(f): r for f, r in zip(searchable, results, strict=True)}
        probe_faces: list[dict[str, Any]] = []
        for i, f in enumerate(faces):
            r = by_index.get(id(f))
            if r is None:
                d = f.detection
                probe_faces.append(
                    {
                        "face_index": i,
                        "bbox": d.bbox.as_list(),
                        "quality": f.quality,
                        "size": f.size,
                        "below_min_quality": True,
                        "candidates": [],
                    }
                )
            else:
                doc = r.__dict__ | {"face_index": i, "below_min_quality": False}
                doc["candidates"] = [c.__dict__ for c in r.candidates]
                probe_faces.append(doc)
        summary = [
            {
                "face": pf["face_index"],
                "candidates": [[c["face_id"], round(c["score"], 4)] for c in pf["candidates"]],
            }
            for pf in probe_faces
        ]
        with self.store.writer.begin() as conn:
            pk = conn.execute(
                insert(searches).values(
                    user_id=actor.user_id,
                    case_number=req.case_number.strip(),
                    purpose=req.purpose,
                    justification=req.justification.strip(),
                    request_id=req.request_id,
                    probe_sha256=probe_sha,
                    faces=len(faces),
                    result_json=json.dumps(summary),
                    created_at=now_iso(),
                )
            ).inserted_primary_key
            assert pk is not None  # a single-row INSERT always reports its key
            sid = int(pk[0])
            audit.append(
                conn,
                actor.username,
                "search",
                req.case_number,
                {
                    "search_id": sid,
                    "purpose": req.purpose,
                    "request_id": req.request_id,
                    "probe_sha256": probe_sha,
                    "faces": len(faces),
                    "results": summary,
                    **({"token_id": actor.token_id} if actor.token_id else {}),
                },
            )
            if pol.retain_probes_days > 0:
                rel = f"probes/{probe_sha}.bin"
                atomic_write(self.data_dir / rel, probe)
                expires = (auth.utcnow() + timedelta(days=pol.retain_probes_days)).isoformat(
                    timespec="seconds"
                )
                conn.execute(
                    insert_or_ignore(probes, conn),
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
            "case_number": req.case_number,
            "purpose": req.purpose,
            "gallery_faces": len(searcher.indexes.sync()),
            "model_id": searcher.analyzer.model_id,
            "faces": probe_faces,
            "notice": LEADS_NOTICE,
        }

    def get_search(self, actor: Actor, search_id: int) -> dict[str, Any]:
        self.require(actor, "view_search", f"search {search_id}")
        with self.store.engine.connect() as conn:
            row = (
                conn.execute(
                    select(searches, users.c.username, users.c.unit)
                    .join(users, users.c.id == searches.c.user_id)
                    .where(searches.c.id == search_id)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise RefusedError("no-such-search", f"no search {search_id}")
        own = row["user_id"] == actor.user_id
        if (
            not own
            and not (actor.roles & {"auditor"})
            and not ("supervisor" in actor.roles and actor.unit and actor.unit == row["unit"])
        ):
            self.record(actor, "authz.denied", f"search {search_id}", permission="view_search")
            raise PermissionDenied("you may only view your own searches")
        self.record(actor, "search.view", f"search {search_id}")
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
        } | {"results": json.loads(row["result_json"])}

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
        return s

    def view_image_path(self, actor: Actor, sha: str) -> Path:
        self.require(actor, "view_image", sha)
        from faceledger.schema import images

        with self.store.engine.connect() as conn:
            rel = conn.execute(select(images.c.stored_path).where(images.c.sha256 == sha)).scalar()
        if rel is None:
            raise RefusedError("no-such-image", f"no image {sha}")
        self.record(actor, "image.view", sha)
        return self.data_dir / rel

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
    def audit_verify(self, actor: Actor, checkpoint: str | None = None) -> audit.VerifyResult:
        self.require(actor, "verify_ledger")
        result = audit.verify(self.store, checkpoint)
        # Recording the check extends the chain, so it is done after verifying.
        self.record(
            actor,
            "audit.verify",
            "ledger",
            ok=result.ok,
            entries=result.entries,
            first_bad_seq=result.first_bad_seq,
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
    ) -> list[audit.Entry]:
        """Ledger entries, optionally filtered by who acted, action and time (auditors)."""
        self.require(reader, "read_ledger")
        return list(
            audit.iter_entries(self.store, since=since, until=until, actor=actor, action=action)
        )

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
        report = reports.build(self.store, start, end, unit_users)
        self.record(
            actor,
            "audit.report",
            f"{start}..{end}",
            unit=None if unit_users is None else actor.unit,
        )
        return report

    def purge(self, actor: Actor) -> dict[str, int]:
        from faceledger.privacy import purge_expired

        self.require(actor, "purge")
        return purge_expired(self, actor)

    def erase(self, actor: Actor, **kwargs: Any) -> Any:
        from faceledger.privacy import erase

        return erase(self, actor, **kwargs)
