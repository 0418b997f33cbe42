"""Users, passwords, sessions and API tokens: who is this."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from faceledger.accounts import auth
from faceledger.accounts.auth import Actor, AuthError
from faceledger.cases.policy import Policy
from faceledger.core.base import MAX_TOKEN_NAME, MAX_UNIT, SYSTEM, CoreBase, check_length
from faceledger.db.schema import (
    tokens,
    users,
    web_sessions,
)
from faceledger.db.store import now_iso
from faceledger.errors import FieldValueError, RefusedError
from faceledger.ledger import audit


class AccountsDoor(CoreBase):
    # -- users and authentication ----------------------------------------------------------
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
        from faceledger.db.schema import login_failures as lf

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

        from faceledger.db.schema import login_failures as lf

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
        # A hash made with other argon2 settings ($FACELEDGER_ARGON2) is re-made now, while
        # the password is at hand, outside the write transaction.
        rehashed = None
        if row is not None and not problem and auth.needs_rehash(row.password_hash):
            rehashed = auth.hash_password(password)
        session: tuple[int, str] | None = None
        with self.store.writer.begin() as conn:
            if problem:
                who = username if row is None else row.username
                details = {"reason": problem, "address": address}
                details |= self._note_login_failure(conn, key, address, now)
                audit.append(conn, who, "login.failed", who, details)
            else:
                from sqlalchemy import delete

                from faceledger.db.schema import login_failures as lf

                assert row is not None  # an unknown user always sets a problem
                conn.execute(delete(lf).where(lf.c.username_key == key, lf.c.address == address))
                entry: dict[str, Any] = {"address": address}
                if rehashed is not None:
                    done = conn.execute(
                        update(users)
                        .where(users.c.id == row.id, users.c.password_hash == row.password_hash)
                        .values(password_hash=rehashed)
                    ).rowcount
                    entry["password_rehashed"] = bool(done)
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
                    # the web session's clocks, shared by every server (core/shared.py)
                    clock = time.time()
                    conn.execute(
                        insert(web_sessions).values(
                            token_id=session[0], created=clock, last_seen=clock, flashes_json="[]"
                        )
                    )
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
                select(
                    tokens,
                    users.c.username,
                    users.c.roles,
                    users.c.unit,
                    users.c.disabled,
                    web_sessions.c.token_id.label("session_of"),
                )
                .join(users, users.c.id == tokens.c.user_id)
                .outerjoin(web_sessions, web_sessions.c.token_id == tokens.c.id)
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
        elif row.session_of is not None and not web_session:
            # the cookie of a web session is its token's secret: never a bearer token
            problem = "a web session's cookie, not an API token"
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

    def record_csrf_rejected(self, username: str, where: str) -> None:
        """Record a web form refused for a missing or wrong CSRF token. The session's user
        is named but not trusted: whoever sent the form did not prove to be them."""
        self.record(Actor(0, username, frozenset(), via="session"), "csrf.rejected", where)

    def record_unauthenticated(self, client: str, method: str, path: str, reason: str) -> None:
        """Record an API request refused for want of credentials (``auth.missing``), by
        ``client`` address; the interface bounds how many it sends per address."""
        who = Actor(0, "anonymous", frozenset(), via="http")
        self.record(who, "auth.missing", path, method=method, client=client, reason=reason)

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

        from faceledger.db.schema import login_failures as lf

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
                "bad-username",
                f"user names are at most {auth.MAX_USERNAME_LENGTH} characters",
                ("username",),
            )
        if unit is not None and len(unit) > auth.MAX_UNIT_LENGTH:
            raise RefusedError(
                "bad-unit", f"units are at most {auth.MAX_UNIT_LENGTH} characters", ("unit",)
            )
        self.require(actor, "manage_users", username)
        try:
            parsed = auth.parse_roles(roles)
        except ValueError as exc:
            raise FieldValueError(str(exc), ("roles",)) from exc
        try:
            auth.check_password_strength(password)
        except ValueError as exc:
            raise FieldValueError(str(exc), ("password",)) from exc
        problem = auth.username_problem(username)
        if problem:
            raise RefusedError("bad-username", problem, ("username",))
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
                    ("username",),
                )
            uid = self._insert_user(conn, username, password, parsed, unit)
            audit.append(
                conn, actor.username, "user.add", username, {"roles": sorted(parsed), "unit": unit}
            )
        return int(uid)

    def list_users(self, actor: Actor) -> list[dict[str, Any]]:
        """Users; ``locked_until`` is the end of the longest login back-off that one of the
        user's (name, address) pairs is in now (admins clear it with :meth:`unlock_user`)."""
        from faceledger.db.schema import login_failures as lf

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
