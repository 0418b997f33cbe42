"""The core's shared state and the two helpers every operation uses: who may do this
(:meth:`CoreBase.require`) and the record that they did (:meth:`CoreBase.record`); the
limits and small helpers of the core's rules."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from faceledger.accounts import auth
from faceledger.accounts.auth import Actor, PermissionDenied
from faceledger.cases.policy import Policy, policy_path
from faceledger.db.schema import (
    searches,
    verifications,
)
from faceledger.db.schema import users as users_table
from faceledger.db.store import Store, atomic_write, now_iso
from faceledger.errors import PolicyTamperedError, RefusedError
from faceledger.ledger import audit
from faceledger.ledger.guards import install_ledger_guards
from faceledger.search.searcher import Searcher
from faceledger.vision.analysis import FaceAnalyzer


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


class CoreBase:
    def __init__(
        self,
        data_dir: Path,
        db_url: str | None = None,
        model_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        import os

        auth.argon2_cost()  # a bad $FACELEDGER_ARGON2 stops here, not at the first login
        self.model_dir = model_dir or os.environ.get("FACELEDGER_MODEL_DIR") or None
        self.device = device
        self.store = Store(data_dir, url=db_url)
        install_ledger_guards(self.store)
        self.data_dir = self.store.data_dir
        self._searcher: Searcher | None = None
        self._analyzer_factory: Callable[[], FaceAnalyzer] | None = None
        # dlib's detector, landmarker and network are not documented as thread-safe: one
        # thread at a time uses the shared analyzer (searches, detection, 1:1, erasure).
        self.analysis_lock = threading.RLock()
        from faceledger.gallery.erasure import finish_pending_files

        finish_pending_files(self.store)

    def close(self) -> None:
        """Release the database connections (the data dir stays as it is)."""
        self.store.close()

    # -- ledger helpers --------------------------------------------------------------------
    @staticmethod
    def _insert_recorded(
        conn: Any,
        actor: Actor,
        table: Any,
        values: dict[str, Any],
        action: str,
        target: str,
        id_key: str,
        details: dict[str, Any],
    ) -> int:
        """Insert a row of ``table`` and, in the caller's transaction, its ledger entry
        (``details``, with the row's id as ``id_key``); the row keeps the entry's seq
        (``ledger_seq``). ``audit verify`` checks such rows against their entries. Returns the
        row's id."""
        pk = conn.execute(insert(table).values(**values, created_at=now_iso())).inserted_primary_key
        assert pk is not None  # a single-row INSERT always reports its key
        rid = int(pk[0])
        entry = audit.append(conn, actor.username, action, target, {id_key: rid, **details})
        conn.execute(table.update().where(table.c.id == rid).values(ledger_seq=entry.seq))
        return rid

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

    def has_users(self) -> bool:
        with self.store.engine.connect() as conn:
            return bool(conn.execute(select(func.count()).select_from(users_table)).scalar_one())

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

    def policy_for_edit(self) -> Policy:
        """The policy an admin changes: the valid current one, else (tampered with or
        missing) the file's contents or, if it does not parse, the defaults."""
        try:
            return self.policy()
        except PolicyTamperedError:
            path = policy_path(self.data_dir)
            try:
                return Policy.from_bytes(path.read_bytes()) if path.is_file() else Policy()
            except ValueError:
                return Policy()

    def update_policy(self, actor: Actor, changes: dict[str, Any], as_text: bool = False) -> Policy:
        """Change some settings of the policy (admin), recorded with old and new values;
        ``as_text``: the values are as typed (:meth:`Policy.parse_value`)."""
        self.require(actor, "manage_policy")
        current = self.policy_for_edit()
        if as_text:
            changes = {k: current.parse_value(k, v) for k, v in changes.items()}
        new = current.with_changes(changes)
        self.save_policy(actor, new)
        return new

    def set_policy_value(self, actor: Actor, key: str, value: str) -> Policy:
        """Change one setting from its text form (lists comma-separated)."""
        return self.update_policy(actor, {key: value}, as_text=True)

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
