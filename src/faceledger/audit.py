"""The ledger: an append-only, hash-chained record of every security-relevant event.

Each entry stores ``prev_hash`` (the previous entry's hash) and ``hash`` =
SHA-256 over a canonical JSON serialisation of (seq, ts, actor, action, target, details,
prev_hash). Editing, deleting or reordering any entry breaks the chain at that entry;
truncating the tail is caught by comparing with a checkpoint (``seq:hash``) kept elsewhere.
The database refuses UPDATE and DELETE on the table (triggers, see store.py), and the
application only ever inserts. The ledger never holds images or embeddings: only hashes,
ids and counts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from faceledger.schema import ledger
from faceledger.store import Store, now_iso

GENESIS = "0" * 64


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    seq: int, ts: str, actor: str, action: str, target: str, details: str, prev_hash: str
) -> str:
    body = canonical(
        {
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "action": action,
            "target": target,
            "details": details,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class Entry:
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


def append(
    conn: Connection,
    actor: str,
    action: str,
    target: str = "",
    details: dict[str, Any] | None = None,
) -> Entry:
    """Append inside the caller's write transaction (which holds the write lock)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE ledger IN SHARE ROW EXCLUSIVE MODE")
    last = conn.execute(
        select(ledger.c.seq, ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1)
    ).first()
    seq = 1 if last is None else int(last.seq) + 1
    prev = GENESIS if last is None else str(last.hash)
    ts = now_iso()
    det = canonical(details or {})
    h = entry_hash(seq, ts, actor, action, target, det, prev)
    conn.execute(
        insert(ledger).values(
            seq=seq,
            ts=ts,
            actor=actor,
            action=action,
            target=target,
            details=det,
            prev_hash=prev,
            hash=h,
        )
    )
    return Entry(seq, ts, actor, action, target, details or {}, prev, h)


def record(
    store: Store, actor: str, action: str, target: str = "", details: dict[str, Any] | None = None
) -> Entry:
    """Append in a transaction of its own."""
    with store.writer.begin() as conn:
        return append(conn, actor, action, target, details)


def iter_entries(
    store: Store,
    since: str | None = None,
    until: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    batch: int = 5000,
) -> Iterator[Entry]:
    q = select(ledger).order_by(ledger.c.seq)
    if since:
        q = q.where(ledger.c.ts >= since)
    if until:
        q = q.where(ledger.c.ts < until)
    if actor:
        q = q.where(ledger.c.actor == actor)
    if action:
        q = q.where(ledger.c.action == action)
    with store.engine.connect() as conn:
        for r in conn.execute(q.execution_options(yield_per=batch)).mappings():
            yield Entry(
                r["seq"],
                r["ts"],
                r["actor"],
                r["action"],
                r["target"],
                json.loads(r["details"]),
                r["prev_hash"],
                r["hash"],
            )


def head(store: Store) -> tuple[int, str]:
    with store.engine.connect() as conn:
        last = conn.execute(
            select(ledger.c.seq, ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1)
        ).first()
    return (0, GENESIS) if last is None else (int(last.seq), str(last.hash))


def count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ledger)).scalar_one())


def verify(store: Store, checkpoint: str | None = None) -> VerifyResult:
    """Recompute the chain; with ``checkpoint`` ("seq:hash") also detect truncation."""
    prev = GENESIS
    expected_seq = 1
    n = 0
    with store.engine.connect() as conn:
        rows = conn.execute(select(ledger).order_by(ledger.c.seq)).mappings()
        for r in rows:
            n += 1
            seq = int(r["seq"])
            if seq != expected_seq:
                return VerifyResult(
                    False, n, prev, expected_seq, f"entry {expected_seq} is missing (next is {seq})"
                )
            if r["prev_hash"] != prev:
                return VerifyResult(
                    False,
                    n,
                    prev,
                    seq,
                    f"entry {seq} does not follow entry {seq - 1} "
                    "(deleted, inserted or reordered entries)",
                )
            h = entry_hash(
                seq, r["ts"], r["actor"], r["action"], r["target"], r["details"], r["prev_hash"]
            )
            if h != r["hash"]:
                return VerifyResult(False, n, prev, seq, f"entry {seq} was modified")
            prev = r["hash"]
            expected_seq += 1
    last_seq = expected_seq - 1
    if checkpoint:
        try:
            cp_seq_s, cp_hash = checkpoint.strip().split(":", 1)
            cp_seq = int(cp_seq_s)
        except ValueError:
            return VerifyResult(False, n, prev, None, f"checkpoint {checkpoint!r} is not seq:hash")
        if cp_seq > last_seq:
            return VerifyResult(
                False,
                n,
                prev,
                last_seq + 1,
                f"the ledger ends at entry {last_seq} but the checkpoint "
                f"names entry {cp_seq}: entries were removed (truncated)",
            )
        with store.engine.connect() as conn:
            at = conn.execute(select(ledger.c.hash).where(ledger.c.seq == cp_seq)).scalar()
        if at != cp_hash:
            return VerifyResult(
                False,
                n,
                prev,
                cp_seq,
                f"entry {cp_seq} differs from the checkpoint: the ledger was rewritten",
            )
    return VerifyResult(True, n, prev)
