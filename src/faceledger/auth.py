"""Who is asking, and may they do this: users, roles, passwords, tokens, permissions.

Permissions are decided here and nowhere else (:data:`PERMISSIONS`). Passwords are hashed
with argon2id; API tokens are random 256-bit secrets stored as SHA-256 hashes (a fast hash
is right for high-entropy secrets), revocable and expiring. There is no anonymous or trial
mode: every operation on a gallery runs as an authenticated, enabled user.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("admin", "investigator", "supervisor", "auditor")

PERMISSIONS: dict[str, frozenset[str]] = {
    "search": frozenset({"investigator"}),
    "verify": frozenset({"investigator"}),
    "request_case": frozenset({"investigator"}),
    "decide_case": frozenset({"supervisor"}),
    "list_cases": frozenset({"investigator", "supervisor", "admin", "auditor"}),
    "view_search": frozenset({"investigator", "supervisor", "auditor"}),
    "ingest": frozenset({"admin"}),
    "erase": frozenset({"admin"}),
    "purge": frozenset({"admin"}),
    "manage_users": frozenset({"admin"}),
    "manage_policy": frozenset({"admin"}),
    "manage_index": frozenset({"admin"}),
    "read_ledger": frozenset({"auditor"}),
    "verify_ledger": frozenset({"auditor", "admin"}),
    "report": frozenset({"auditor", "supervisor"}),
    "stats": frozenset(ROLES),
}

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
TOKEN_PREFIX = "flt_"
DEFAULT_TOKEN_DAYS = 90
MIN_PASSWORD_LENGTH = 10

_hasher = PasswordHasher()


class AuthError(Exception):
    """Authentication failed (bad credentials, disabled, locked, expired or revoked)."""


class PermissionDenied(Exception):
    """Authenticated, but the user's roles do not allow this."""


@dataclass(frozen=True)
class Actor:
    user_id: int
    username: str
    roles: frozenset[str]
    unit: str | None = None
    via: str = "password"  # password | token | bootstrap
    token_id: int | None = None

    def can(self, permission: str) -> bool:
        return bool(self.roles & PERMISSIONS[permission])


def parse_roles(text: str | list[str]) -> frozenset[str]:
    items = text.split(",") if isinstance(text, str) else text
    roles = frozenset(r.strip() for r in items if r.strip())
    unknown = roles - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")
    if not roles:
        raise ValueError("a user needs at least one role")
    return roles


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> tuple[str, str]:
    """(secret shown once to the user, hash stored)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return secret, token_hash(secret)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_ts(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
