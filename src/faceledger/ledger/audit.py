"""The ledger: an append-only, hash-chained record of every security-relevant event.

Each entry stores ``prev_hash`` (the previous entry's hash) and ``hash`` =
SHA-256 over a canonical JSON serialisation of (seq, ts, actor, action, target, details,
prev_hash). Editing, deleting or reordering any entry breaks the chain at that entry;
truncating the tail is caught by comparing with a checkpoint (``seq:hash``) kept elsewhere.
The database refuses UPDATE and DELETE on the table (triggers, see store.py), and the
application only ever inserts. The ledger never holds images or embeddings: only hashes,
ids and counts.

:func:`verify` also recomputes the records the ledger vouches for: every row of
``searches``, ``verifications``, ``case_requests``, ``reviews`` and ``case_notes`` must have
its ledger entry and agree with it (case number, purpose, SHA-256 of the justification,
probe/photo hashes, request id, results; a request's status must be its last decision's; a
review's candidate, stage, decision and the SHA-256 of its reason; a note's text's), so
editing a record in the database, or inserting one behind faceledger's back, is detected too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Table, func, insert, or_, select
from sqlalchemy.engine import Connection, RowMapping

from faceledger.db.schema import case_notes, case_requests, ledger, reviews, searches, verifications
from faceledger.db.store import Store, now_iso

GENESIS = "0" * 64
BATCH = 5000  # rows per query when streaming the ledger and the records
MAX_LISTED = 100  # mismatches listed one by one in a VerifyResult (all are counted)


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


def text_sha256(text: str) -> str:
    """The SHA-256 (hex) of a text as UTF-8: how the ledger quotes a justification."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    head_seq: int = 0
    # rows of searches, verifications and case_requests recomputed against the chain
    records_checked: int = 0
    # {"table", "row_id", "seq" (the ledger entry, None when the row has none), "problem"};
    # the first MAX_LISTED, and how many there were in all
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    mismatch_count: int = 0
    # seqs of ``ledger.guard_restored`` entries: the guard was found missing or disabled
    guard_restorations: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ChainChecker:
    """Feed entries in seq order (the whole ledger, or an export of it); the first break
    in the chain ends up in ``problem``/``bad_seq``."""

    def __init__(self) -> None:
        self.prev = GENESIS
        self.expected_seq = 1
        self.n = 0
        self.problem: str | None = None
        self.bad_seq: int | None = None

    def feed(
        self,
        seq: int,
        ts: str,
        actor: str,
        action: str,
        target: str,
        details: str,
        prev_hash: str,
        hash_: str,
    ) -> bool:
        """False (and the problem recorded) at the first bad entry."""
        self.n += 1
        if seq != self.expected_seq:
            self.bad_seq = self.expected_seq
            self.problem = f"entry {self.expected_seq} is missing (next is {seq})"
            return False
        if prev_hash != self.prev:
            self.bad_seq = seq
            self.problem = (
                f"entry {seq} does not follow entry {seq - 1} "
                "(deleted, inserted or reordered entries)"
            )
            return False
        if entry_hash(seq, ts, actor, action, target, details, prev_hash) != hash_:
            self.bad_seq = seq
            self.problem = f"entry {seq} was modified"
            return False
        self.prev = hash_
        self.expected_seq += 1
        return True


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


def _entry(r: RowMapping) -> Entry:
    return Entry(
        r["seq"],
        r["ts"],
        r["actor"],
        r["action"],
        r["target"],
        json.loads(r["details"]),
        r["prev_hash"],
        r["hash"],
    )


def is_about_case(e: Entry, case: str) -> bool:
    """Whether an entry concerns ``case``: its target, or its details' case_number."""
    case = case.strip()
    return e.target.strip() == case or e.details.get("case_number") == case


def iter_entries(
    store: Store,
    since: str | None = None,
    until: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    batch: int = BATCH,
    case: str | None = None,
    through_seq: int | None = None,
) -> Iterator[Entry]:
    """Entries in seq order; ``case`` keeps those whose target or ``details.case_number``
    is that case number; ``through_seq`` stops at that entry (a report's ledger head)."""
    q = select(ledger).order_by(ledger.c.seq)
    if since:
        q = q.where(ledger.c.ts >= since)
    if until:
        q = q.where(ledger.c.ts < until)
    if actor:
        q = q.where(ledger.c.actor == actor)
    if action:
        q = q.where(ledger.c.action == action)
    if through_seq is not None:
        q = q.where(ledger.c.seq <= through_seq)
    if case is not None:
        case = case.strip()
        # a superset in SQL (canonical JSON writes the field as "case_number":"..."),
        # made exact below
        q = q.where(
            or_(
                ledger.c.target.contains(case, autoescape=True),
                ledger.c.details.contains(
                    '"case_number":' + json.dumps(case, ensure_ascii=False), autoescape=True
                ),
            )
        )
    with store.engine.connect() as conn:
        for r in conn.execute(q.execution_options(yield_per=batch)).mappings():
            e = _entry(r)
            if case is None or is_about_case(e, case):
                yield e


def head(store: Store) -> tuple[int, str]:
    with store.engine.connect() as conn:
        return head_at(conn)


def head_at(conn: Connection) -> tuple[int, str]:
    """(seq, hash) of the ledger's last entry in ``conn``'s database; (0, GENESIS) when
    it is empty."""
    last = conn.execute(
        select(ledger.c.seq, ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1)
    ).first()
    return (0, GENESIS) if last is None else (int(last.seq), str(last.hash))


def count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ledger)).scalar_one())


def parse_checkpoint(checkpoint: str) -> tuple[int, str] | None:
    try:
        cp_seq_s, cp_hash = checkpoint.strip().split(":", 1)
        cp_seq = int(cp_seq_s)
    except ValueError:
        return None
    if cp_seq < 0 or not cp_hash:
        return None
    return cp_seq, cp_hash.strip()


def _batches(
    conn: Connection, table: Table, key: str, batch: int, *where: Any
) -> Iterator[RowMapping]:
    """Rows of ``table`` in ``key`` order, ``batch`` at a time (keyset pagination)."""
    col = table.c[key]
    last: Any = None
    while True:
        q = select(table).where(*where).order_by(col).limit(batch)
        if last is not None:
            q = q.where(col > last)
        rows = conn.execute(q).mappings().all()
        if not rows:
            return
        yield from rows
        last = rows[-1][key]


def verify(
    store: Store | Connection,
    checkpoint: str | None = None,
    records: bool = True,
    batch: int = BATCH,
) -> VerifyResult:
    """Recompute the chain; with ``checkpoint`` ("seq:hash") also detect truncation; with
    ``records`` also recompute every search, verification and case request against it.

    Everything is read in one snapshot (a read transaction; REPEATABLE READ on
    PostgreSQL), in seq/id order, ``batch`` rows at a time. Given a connection instead of
    a store, it reads in that connection's transaction (what a migration has copied but
    not yet committed)."""
    chain = ChainChecker()
    restorations: list[int] = []
    with _reading(store) as conn:
        if conn.dialect.name == "postgresql" and isinstance(store, Store):
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        for r in _batches(conn, ledger, "seq", batch):
            seq = int(r["seq"])
            if not chain.feed(
                seq,
                r["ts"],
                r["actor"],
                r["action"],
                r["target"],
                r["details"],
                r["prev_hash"],
                r["hash"],
            ):
                return VerifyResult(
                    False, chain.n, chain.prev, chain.bad_seq, chain.problem, chain.expected_seq - 1
                )
            if r["action"] == "ledger.guard_restored":
                restorations.append(seq)
        last_seq = chain.expected_seq - 1
        res = VerifyResult(True, chain.n, chain.prev, head_seq=last_seq)
        res.guard_restorations = restorations
        if restorations:
            res.warnings.append(
                f"the ledger's append-only guard was found missing or disabled and restored "
                f"{len(restorations)} time(s): entries {', '.join(map(str, restorations))}"
            )
        if checkpoint:
            cp = parse_checkpoint(checkpoint)
            if cp is None:
                res.ok, res.problem = False, f"checkpoint {checkpoint!r} is not seq:hash"
                return res
            cp_seq, cp_hash = cp
            if cp_seq > last_seq:
                res.ok, res.first_bad_seq = False, last_seq + 1
                res.problem = (
                    f"the ledger ends at entry {last_seq} but the checkpoint "
                    f"names entry {cp_seq}: entries were removed (truncated)"
                )
                return res
            at = (
                GENESIS
                if cp_seq == 0
                else conn.execute(select(ledger.c.hash).where(ledger.c.seq == cp_seq)).scalar()
            )
            if at != cp_hash:
                res.ok, res.first_bad_seq = False, cp_seq
                res.problem = (
                    f"entry {cp_seq} differs from the checkpoint: the ledger was rewritten"
                )
                return res
        if records:
            _check_records(conn, res, batch)
    return res


@contextlib.contextmanager
def _reading(source: Store | Connection) -> Iterator[Connection]:
    if isinstance(source, Connection):
        yield source
    else:
        with source.engine.connect() as conn:
            yield conn


# -- the records against the chain -----------------------------------------------------------


def _hash16(obj: Any) -> bytes:
    return hashlib.sha256(canonical(obj).encode()).digest()[:16]


def _case_of(e: Entry) -> str:
    value = e.details.get("case_number", e.target)
    return value.strip() if isinstance(value, str) else str(value)


def _score(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


# Per table: the fields an entry may vouch for, each with how to read it from the entry and
# from the row. Only the fields the entry has are compared (older entries have fewer).
_Field = tuple[Callable[[Entry], Any], Callable[[RowMapping], Any]]


def _detail(name: str, norm: Callable[[Any], Any] = lambda v: v) -> Callable[[Entry], Any]:
    return lambda e: norm(e.details[name])


# What searches and verifications both record: the case fields and the approval quoted.
COMPARISON_FIELDS: dict[str, _Field] = {
    "case_number": (_case_of, lambda r: r["case_number"].strip()),
    "purpose": (_detail("purpose"), lambda r: r["purpose"]),
    "justification_sha256": (
        _detail("justification_sha256"),
        lambda r: text_sha256(r["justification"]),
    ),
    "request_id": (_detail("request_id"), lambda r: r["request_id"]),
}
SEARCH_FIELDS: dict[str, _Field] = {
    **COMPARISON_FIELDS,
    "probe_sha256": (_detail("probe_sha256"), lambda r: r["probe_sha256"]),
    "faces": (_detail("faces"), lambda r: r["faces"]),
    "results": (
        _detail("results", lambda v: _hash16(v).hex()),
        lambda r: _hash16(json.loads(r["result_json"])).hex(),
    ),
    # the search as it was shown (schema 3 on): its stored text, byte for byte
    "shown_sha256": (
        _detail("shown_sha256"),
        lambda r: hashlib.sha256(r["shown_json"].encode()).hexdigest() if r["shown_json"] else None,
    ),
}
VERIFY_FIELDS: dict[str, _Field] = {
    **COMPARISON_FIELDS,
    "photo_a_sha256": (_detail("photo_a_sha256"), lambda r: r["photo_a_sha256"]),
    "photo_b_sha256": (_detail("photo_b_sha256"), lambda r: r["photo_b_sha256"]),
    "outcome": (_detail("outcome"), lambda r: r["outcome"]),
    "score": (_detail("score", _score), lambda r: _score(r["score"])),
}
REQUEST_FIELDS: dict[str, _Field] = {
    "case_number": (_case_of, lambda r: r["case_number"].strip()),
    "purpose": (_detail("purpose"), lambda r: r["purpose"]),
    "justification_sha256": (
        _detail("justification_sha256"),
        lambda r: text_sha256(r["justification"]),
    ),
}
REVIEW_FIELDS: dict[str, _Field] = {
    "search_id": (_detail("search_id"), lambda r: r["search_id"]),
    "face_id": (_detail("face_id"), lambda r: r["face_id"]),
    "stage": (_detail("stage"), lambda r: r["stage"]),
    "decision": (_detail("decision"), lambda r: r["decision"]),
    "reason_sha256": (_detail("reason_sha256"), lambda r: text_sha256(r["reason"])),
}
NOTE_FIELDS: dict[str, _Field] = {
    "case_number": (_case_of, lambda r: r["case_number"].strip()),
    "text_sha256": (_detail("text_sha256"), lambda r: text_sha256(r["text"])),
}
APPROVAL_FIELDS: dict[str, _Field] = {
    "expires_at": (_detail("expires_at"), lambda r: r["expires_at"]),
    "search_limit": (_detail("search_limit"), lambda r: r["search_limit"]),
}
DECISIONS = {"case.approve": "approved", "case.deny": "denied", "case.withdraw": "withdrawn"}


def _present(e: Entry, spec: dict[str, _Field]) -> tuple[str, ...]:
    # case_number is always vouched for: by the target where details lack it
    return tuple(k for k in spec if k == "case_number" or k in e.details)


def _entry_values(e: Entry, names: tuple[str, ...], spec: dict[str, _Field]) -> list[Any]:
    return [spec[k][0](e) for k in names]


def _row_values(r: RowMapping, names: tuple[str, ...], spec: dict[str, _Field]) -> list[Any]:
    return [spec[k][1](r) for k in names]


def _differing(e: Entry, r: RowMapping, spec: dict[str, _Field]) -> list[str]:
    names = _present(e, spec)
    return [
        k
        for k, a, b in zip(
            names, _entry_values(e, names, spec), _row_values(r, names, spec), strict=True
        )
        if a != b
    ]


class _Report:
    def __init__(self, res: VerifyResult) -> None:
        self.res = res

    def add(self, table: str, row_id: int, seq: int | None, problem: str) -> None:
        res = self.res
        res.mismatch_count += 1
        if len(res.mismatches) < MAX_LISTED:
            res.mismatches.append(
                {"table": table, "row_id": row_id, "seq": seq, "problem": problem}
            )
        if seq is not None and (res.first_bad_seq is None or seq < res.first_bad_seq):
            res.first_bad_seq = seq
        if res.ok:
            res.ok = False
            res.problem = problem


def _entries(conn: Connection, actions: Iterable[str], batch: int) -> Iterator[Entry]:
    for r in _batches(conn, ledger, "seq", batch, ledger.c.action.in_(list(actions))):
        yield _entry(r)


def _int_key(e: Entry, name: str) -> int | None:
    v = e.details.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _check_one_to_one(
    conn: Connection,
    report: _Report,
    table: Table,
    action: str,
    key: str,
    spec: dict[str, _Field],
    batch: int,
) -> int:
    """Rows of ``table`` against their ``action`` entries (``details[key]`` = row id).

    A merge of two streams: rows in id order, entries in seq order (the same order, as a
    row and its entry are written in one transaction under the write lock). Entries read
    ahead of their row wait in ``ahead`` (only their seq and a 16-byte digest); entries
    for rows no longer there are dropped."""
    name = table.name
    entries = _entries(conn, [action], batch)
    ahead: dict[int, tuple[int, tuple[str, ...], bytes]] = {}
    done = False
    checked = 0
    for r in _batches(conn, table, "id", batch):
        checked += 1
        rid = int(r["id"])
        found = ahead.pop(rid, None)
        while found is None and not done:
            e = next(entries, None)
            if e is None:
                done = True
                break
            k = _int_key(e, key)
            if k is None or k < rid:
                continue  # not about a row, or about a row no longer there
            names = _present(e, spec)
            item = (e.seq, names, _hash16(_entry_values(e, names, spec)))
            if k == rid:
                found = item
            else:
                ahead.setdefault(k, item)
        if found is None:
            report.add(
                name,
                rid,
                None,
                f"{name} row {rid} has no '{action}' ledger entry (inserted outside faceledger?)",
            )
            continue
        seq, names, digest = found
        if _hash16(_row_values(r, names, spec)) != digest:
            e = _entry(conn.execute(select(ledger).where(ledger.c.seq == seq)).mappings().one())
            report.add(
                name,
                rid,
                seq,
                f"{name} row {rid} disagrees with ledger entry {seq} ({action}): "
                f"{', '.join(_differing(e, r, spec)) or 'fields'} differ "
                "(changed in the database?)",
            )
    return checked


@dataclass
class _RequestTrail:
    request: tuple[int, tuple[str, ...], bytes] | None = None
    decision_seq: int | None = None
    status: str = "pending"
    approval: tuple[int, tuple[str, ...], bytes] | None = None


def _check_requests(conn: Connection, report: _Report, batch: int) -> int:
    """Case requests against their ``case.request`` entry and their last decision."""
    trails: dict[int, _RequestTrail] = {}  # one per request: few, as a supervisor decides each
    for e in _entries(conn, ["case.request", *DECISIONS], batch):
        rid = _int_key(e, "request_id")
        if rid is None:
            continue
        t = trails.setdefault(rid, _RequestTrail())
        if e.action == "case.request":
            if t.request is None:
                names = _present(e, REQUEST_FIELDS)
                t.request = (e.seq, names, _hash16(_entry_values(e, names, REQUEST_FIELDS)))
            continue
        t.decision_seq, t.status = e.seq, DECISIONS[e.action]
        if e.action == "case.approve":
            names = tuple(k for k in APPROVAL_FIELDS if k in e.details)
            t.approval = (e.seq, names, _hash16(_entry_values(e, names, APPROVAL_FIELDS)))
    checked = 0
    for r in _batches(conn, case_requests, "id", batch):
        checked += 1
        rid = int(r["id"])
        t = trails.pop(rid, _RequestTrail())
        where = f"case_requests row {rid}"
        if t.request is None:
            report.add(
                "case_requests",
                rid,
                t.decision_seq,
                f"{where} has no 'case.request' ledger entry (inserted outside faceledger?)",
            )
            continue
        seq, names, digest = t.request
        if _hash16(_row_values(r, names, REQUEST_FIELDS)) != digest:
            e = _entry(conn.execute(select(ledger).where(ledger.c.seq == seq)).mappings().one())
            report.add(
                "case_requests",
                rid,
                seq,
                f"{where} disagrees with ledger entry {seq} (case.request): "
                f"{', '.join(_differing(e, r, REQUEST_FIELDS)) or 'fields'} differ "
                "(changed in the database?)",
            )
        if r["status"] != t.status:
            last = (
                f"its last decision is entry {t.decision_seq} ({t.status})"
                if t.decision_seq is not None
                else f"the ledger has no decision on it (entry {seq}: requested, pending)"
            )
            report.add(
                "case_requests",
                rid,
                t.decision_seq if t.decision_seq is not None else seq,
                f"{where} has status {r['status']!r} but {last} (changed in the database?)",
            )
        # an approval in force must keep the expiry and search limit it was given
        if t.approval is not None and t.approval[1] and t.decision_seq == t.approval[0]:
            aseq, anames, adigest = t.approval
            if _hash16(_row_values(r, anames, APPROVAL_FIELDS)) != adigest:
                report.add(
                    "case_requests",
                    rid,
                    aseq,
                    f"{where} disagrees with ledger entry {aseq} (case.approve): "
                    "the approval's expiry or search limit differs (changed in the database?)",
                )
    return checked


def _check_records(conn: Connection, res: VerifyResult, batch: int) -> None:
    report = _Report(res)
    n = _check_one_to_one(conn, report, searches, "search", "search_id", SEARCH_FIELDS, batch)
    n += _check_one_to_one(conn, report, verifications, "verify", "verify_id", VERIFY_FIELDS, batch)
    n += _check_one_to_one(
        conn, report, reviews, "candidate.review", "review_id", REVIEW_FIELDS, batch
    )
    n += _check_one_to_one(conn, report, case_notes, "case.note", "note_id", NOTE_FIELDS, batch)
    n += _check_requests(conn, report, batch)
    res.records_checked = n
    if res.mismatch_count > 1 and res.problem:
        res.problem += f" (and {res.mismatch_count - 1} more record problem(s))"


def check_export(rows: Iterable[dict[str, Any]], whole: bool = True) -> VerifyResult:
    """Re-verify an export (:func:`faceledger.ledger.reports.read_ledger_export`). A whole-ledger
    export is checked as a chain (compare its last ``seq:hash`` with a checkpoint); a
    filtered one (``whole=False``) entry by entry, each hash recomputed from its fields."""
    chain = ChainChecker()
    n, last_seq, last_hash = 0, 0, GENESIS
    for row in rows:
        n += 1
        seq = int(row["seq"])
        details = row["details"]
        if not isinstance(details, str):  # JSON lines carry the details as an object
            details = canonical(details)
        fields = (seq, row["ts"], row["actor"], row["action"], row["target"], details)
        if whole:
            if not chain.feed(*fields, row["prev_hash"], row["hash"]):
                return VerifyResult(False, n, last_hash, chain.bad_seq, chain.problem, last_seq)
        elif entry_hash(*fields, row["prev_hash"]) != row["hash"]:
            return VerifyResult(False, n, last_hash, seq, f"entry {seq} was modified", last_seq)
        last_seq, last_hash = seq, row["hash"]
    return VerifyResult(True, n, last_hash, head_seq=last_seq)


def time_bound(text: str | None, end: bool = False) -> str | None:
    """A ledger time filter from what a person types: a date means whole days (as an ``end``
    bound, inclusive: up to the next day's start) and an ISO 8601 time is taken as it is.
    None for no bound; ValueError for neither."""
    if not text or not text.strip():
        return None
    text = text.strip()
    if len(text) == 10:
        d = date.fromisoformat(text)  # ValueError: not a date
        if end and d == date.max:
            return None  # nothing can come after the last representable day
        return (d + timedelta(days=1)).isoformat() if end else d.isoformat()
    return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
