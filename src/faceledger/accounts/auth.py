"""Who is asking, and may they do this: users, roles, passwords, tokens, permissions.

Permissions are decided here and nowhere else (:data:`PERMISSIONS`). Passwords are hashed
with argon2id; API tokens are random 256-bit secrets stored as SHA-256 hashes (a fast hash
is right for high-entropy secrets), revocable and expiring. There is no anonymous or trial
mode: every operation on a gallery runs as an authenticated, enabled user.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("admin", "investigator", "supervisor", "auditor")

PERMISSIONS: dict[str, frozenset[str]] = {
    "search": frozenset({"investigator"}),
    "verify": frozenset({"investigator"}),
    "request_case": frozenset({"investigator"}),
    "decide_case": frozenset({"supervisor"}),
    "list_cases": frozenset({"investigator", "supervisor", "admin", "auditor"}),
    "view_search": frozenset({"investigator", "supervisor", "auditor"}),
    "review_candidate": frozenset({"investigator"}),
    "view_case": frozenset({"investigator", "supervisor", "auditor"}),
    "note_case": frozenset({"investigator", "supervisor"}),
    "ingest": frozenset({"admin"}),
    "erase": frozenset({"admin"}),
    "purge": frozenset({"admin"}),
    "manage_users": frozenset({"admin"}),
    "manage_policy": frozenset({"admin"}),
    "manage_index": frozenset({"admin"}),
    "manage_subjects": frozenset({"admin"}),
    "migrate_database": frozenset({"admin"}),
    "read_ledger": frozenset({"auditor"}),
    "verify_ledger": frozenset({"auditor", "admin"}),
    "report": frozenset({"auditor", "supervisor"}),
    "stats": frozenset(ROLES),
}

# Failed logins back off per (user-name key, client address), never per account: after
# LOGIN_FREE_FAILURES failures that pair waits LOGIN_BACKOFF_FIRST seconds, doubling with
# each further failure up to LOGIN_BACKOFF_MAX; the count is forgotten after
# LOGIN_FAILURE_MEMORY without a failure, or at a successful login, or by an admin's unlock.
LOGIN_FREE_FAILURES = 5
LOGIN_BACKOFF_FIRST = 60
LOGIN_BACKOFF_MAX = 15 * 60
LOGIN_FAILURE_MEMORY = timedelta(hours=24)
MAX_USERNAME_LENGTH = 64
MAX_KEY_LENGTH = 200  # users.username_key, login_failures.username_key
MAX_UNIT_LENGTH = 64
MAX_ADDRESS_LENGTH = 100  # login_failures.address
TOKEN_PREFIX = "flt_"
DEFAULT_TOKEN_DAYS = 90
MIN_PASSWORD_LENGTH = 10

# argon2id cost: $FACELEDGER_ARGON2 = "TIME_COST,MEMORY_KIB,PARALLELISM"; the default is
# argon2-cffi's (RFC 9106's second recommended profile: 3 passes over 64 MiB, 4 lanes, about
# 0.17 s here). An operator may raise it, or lower it on a small machine; a stored hash made
# with other settings is still checked by its own and re-made at the next login.
ARGON2_ENV = "FACELEDGER_ARGON2"
_DEFAULT = PasswordHasher()
DEFAULT_ARGON2 = (_DEFAULT.time_cost, _DEFAULT.memory_cost, _DEFAULT.parallelism)
_hashers: dict[str, PasswordHasher] = {}


def argon2_cost(text: str | None = None) -> tuple[int, int, int]:
    """(time cost, memory in KiB, parallelism) from ``text`` (default: $FACELEDGER_ARGON2);
    a ValueError says what is wrong with it."""
    text = os.environ.get(ARGON2_ENV, "") if text is None else text
    if not text.strip():
        return DEFAULT_ARGON2
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(
            f"{ARGON2_ENV}={text!r}: expected TIME_COST,MEMORY_KIB,PARALLELISM, e.g. "
            f"{','.join(map(str, DEFAULT_ARGON2))}"
        )
    t, m, p = (int(x) for x in parts)
    if t < 1 or p < 1 or m < 8 * p:
        raise ValueError(
            f"{ARGON2_ENV}={text!r}: argon2 needs a time cost and parallelism of at least 1 "
            "and at least 8 KiB of memory per lane"
        )
    return t, m, p


def _hasher() -> PasswordHasher:
    key = os.environ.get(ARGON2_ENV, "")
    hasher = _hashers.get(key)
    if hasher is None:
        t, m, p = argon2_cost(key)
        hasher = PasswordHasher(time_cost=t, memory_cost=m, parallelism=p, type=Type.ID)
        _hashers[key] = hasher
    return hasher


class AuthError(Exception):
    """Authentication failed (bad credentials, disabled, expired or revoked, throttled)."""


class LoginThrottled(AuthError):
    """Too many failed logins for this user name from this address: wait ``retry_after``
    seconds. Reads the same whether or not the name belongs to a user."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many failed logins for this user name from your address; "
            f"try again in {retry_after} s"
        )
        self.retry_after = retry_after


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


def username_key(name: str) -> str:
    """The form two user names must not share: NFKC, case-folded, NFKC again (so "IVY",
    "Ivy" and the full-width "ｉｖｙ" all give "ivy")."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())


# Scripts that one name may mix: Japanese writes Han with kana, Korean Han with Hangul.
_SCRIPT_MIXES = (frozenset({"CJK", "HIRAGANA", "KATAKANA"}), frozenset({"CJK", "HANGUL"}))
_NAME_PUNCTUATION = frozenset("._-")
_SCRIPT_ALIASES = {"KATAKANA-HIRAGANA": "KATAKANA", "IDEOGRAPHIC": "CJK"}


def _script(ch: str) -> str | None:
    """The script of a letter or mark, from its Unicode name ("LATIN SMALL LETTER A" ->
    LATIN, "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I" -> CYRILLIC); None for marks
    that take the script of the letter they follow."""
    name = unicodedata.name(ch, "")
    if not name or name.startswith("COMBINING "):
        return None
    first = name.split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(first, first)


def canonical_username(name: str) -> str:
    """How a new user name is stored: composed (NFC), as typed otherwise."""
    return unicodedata.normalize("NFC", name)


def username_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user name, or None. Names are 1 to 64 characters: letters
    and marks of one script (Japanese and Korean mixes allowed), ASCII digits, '.', '-',
    '_'; without compatibility characters (NFKC changes nothing but composition), so
    that names cannot look alike while differing (a Cyrillic "і" among Latin letters is
    refused). Names are stored composed (:func:`canonical_username`)."""
    if not name:
        return "a user name is needed"
    if len(name) > MAX_USERNAME_LENGTH or len(canonical_username(name)) > MAX_USERNAME_LENGTH:
        return f"user names are at most {MAX_USERNAME_LENGTH} characters"
    if len(username_key(name)) > MAX_KEY_LENGTH:  # folding takes at most 3 per letter
        return f"user names are at most {MAX_USERNAME_LENGTH} characters once case-folded"
    if unicodedata.normalize("NFKC", name) != unicodedata.normalize("NFC", name):
        return "user names may not hold compatibility characters (ligatures, full-width...)"
    scripts: set[str] = set()
    for ch in name:
        if ch in _NAME_PUNCTUATION or ch in "0123456789":
            continue
        if unicodedata.category(ch)[0] not in "LM":
            return "user names are letters, digits 0-9, '.', '-' and '_'"
        script = _script(ch)
        if script is not None:
            scripts.add(script)
    if len(scripts) > 1 and not any(scripts <= mix for mix in _SCRIPT_MIXES):
        return (
            "a user name may not mix scripts (" + ", ".join(sorted(scripts)).lower() + "): "
            "look-alike letters of another script are refused"
        )
    return None


def login_backoff_seconds(failures: int) -> int:
    """How long a (name, address) pair waits after ``failures`` consecutive failures."""
    if failures < LOGIN_FREE_FAILURES:
        return 0
    steps = min(failures - LOGIN_FREE_FAILURES, 16)  # 2**16 minutes is far past the cap
    return min(LOGIN_BACKOFF_MAX, LOGIN_BACKOFF_FIRST * 2**steps)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher().verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Whether a stored hash was made with other argon2 settings than today's."""
    try:
        return _hasher().check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


_dummy_hashes: dict[tuple[int, int, int], str] = {}


def verify_dummy(password: str) -> None:
    """Spend the time of one password check against nothing (unknown users, throttled
    attempts), so that a refusal takes as long whatever its reason."""
    cost = argon2_cost()
    if cost not in _dummy_hashes:
        _dummy_hashes[cost] = _hasher().hash(secrets.token_urlsafe(16))
    verify_password(_dummy_hashes[cost], password)


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
