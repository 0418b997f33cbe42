"""The ledger's guard: database triggers that refuse UPDATE and DELETE (and on PostgreSQL
TRUNCATE) on the ledger table, checked and restored each time faceledger opens a database,
the restoration itself recorded in the ledger."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection

from faceledger.db.store import Store
from faceledger.ledger import audit

log = logging.getLogger(__name__)

LEDGER_GUARDS = {
    "sqlite": [
        "CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger "
        "BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END",
        "CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger "
        "BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'the ledger is append-only'; END; $$ LANGUAGE plpgsql",
        "CREATE TRIGGER ledger_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()",
    ],
}
_PG_GUARD_BODY = " BEGIN RAISE EXCEPTION 'the ledger is append-only'; END; "
# pg_trigger.tgtype of the guard: BEFORE (2) | DELETE (8) | UPDATE (16) | TRUNCATE (32),
# statement level (bit 0 clear)
_PG_GUARD_TYPE = 2 | 8 | 16 | 32
# PostgreSQL: the trigger's state ('O' fires, 'A' always fires, 'D' disabled, 'R' only in
# replica sessions), its type and its function's body; no row when the trigger is missing
_PG_GUARD_STATE = (
    "SELECT t.tgenabled, t.tgtype, p.proname, p.prosrc FROM pg_trigger t "
    "JOIN pg_proc p ON p.oid = t.tgfoid "
    "WHERE t.tgname = 'ledger_no_change' AND t.tgrelid = 'ledger'::regclass"
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_guard_problems(conn: Connection) -> tuple[list[str], list[str]]:
    """(what is wrong, other triggers on the ledger) on SQLite."""
    have = {
        str(name): " ".join(str(sql).split())
        for name, sql in conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ledger'"
        )
    }
    ours = {sql.split()[2]: " ".join(sql.split()) for sql in LEDGER_GUARDS["sqlite"]}
    problems = []
    for name, sql in ours.items():
        if name not in have:
            problems.append(f"trigger {name} missing")
        elif have[name] != sql:
            problems.append(f"trigger {name} altered")
    # any other trigger on the ledger could drop or rewrite appends (RAISE(IGNORE))
    extra = sorted(set(have) - set(ours))
    return problems + [f"unexpected trigger {name!r}" for name in extra], extra


def _pg_guard_problems(conn: Connection) -> tuple[list[str], list[str], list[str]]:
    """(what is wrong, other triggers, rules on the ledger) on PostgreSQL."""
    # any other trigger or rule on the ledger could drop or rewrite appends
    triggers = [
        str(name)
        for (name,) in conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'ledger'::regclass "
            "AND NOT tgisinternal AND tgname <> 'ledger_no_change' ORDER BY tgname"
        )
    ]
    rules = [
        str(name)
        for (name,) in conn.exec_driver_sql(
            "SELECT r.rulename FROM pg_rewrite r WHERE r.ev_class = 'ledger'::regclass "
            "ORDER BY r.rulename"
        )
    ]
    problems = []
    row = conn.exec_driver_sql(_PG_GUARD_STATE).first()
    if row is None:
        problems.append("trigger ledger_no_change missing")
    else:
        state, tgtype, proname, body = row
        if state not in ("O", "A"):
            problems.append(f"trigger ledger_no_change disabled (state {state!r})")
        if int(tgtype) != _PG_GUARD_TYPE or proname != "ledger_append_only":
            problems.append("trigger ledger_no_change altered")
        if " ".join(str(body).split()) != " ".join(_PG_GUARD_BODY.split()):
            problems.append("function ledger_append_only altered")
    problems += [f"unexpected trigger {n!r}" for n in triggers]
    problems += [f"unexpected rule {n!r}" for n in rules]
    return problems, triggers, rules


def restore_ledger_guards(conn: Connection) -> list[str]:
    """Check the triggers that make the database itself refuse UPDATE and DELETE (and on
    PostgreSQL TRUNCATE) on the ledger; restore whatever is missing, disabled or altered,
    and drop any other trigger or rule on the ledger (one could silently drop appends), in
    the caller's write transaction. Returns what was wrong (empty when all was well)."""
    dialect = conn.dialect.name
    if dialect not in LEDGER_GUARDS:
        raise RuntimeError(f"no append-only guard for database {dialect!r}")
    if dialect == "postgresql":
        # Only touch the table when needed: DDL on it would block concurrent appends.
        problems, triggers, rules = _pg_guard_problems(conn)
        for name in triggers:
            conn.exec_driver_sql(f"DROP TRIGGER {_quote(name)} ON ledger")
        for name in rules:
            conn.exec_driver_sql(f"DROP RULE {_quote(name)} ON ledger")
        guard = [p for p in problems if not p.startswith("unexpected")]
        if guard == ["trigger ledger_no_change disabled (state 'D')"]:
            conn.exec_driver_sql("ALTER TABLE ledger ENABLE TRIGGER ledger_no_change")
        elif guard:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS ledger_no_change ON ledger")
            for sql in LEDGER_GUARDS["postgresql"]:
                conn.exec_driver_sql(sql)
        return problems
    problems, extra = _sqlite_guard_problems(conn)
    for name in extra:
        conn.exec_driver_sql(f"DROP TRIGGER {_quote(name)}")
    if problems:
        for sql in LEDGER_GUARDS["sqlite"]:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {sql.split()[2]}")
            conn.exec_driver_sql(sql)
    return problems


def install_ledger_guards(store: Store) -> list[str]:
    """Restore the ledger's guard (:func:`restore_ledger_guards`) and, on a database that
    faceledger had opened before (``store.known``), append a ``ledger.guard_restored``
    entry saying what was missing, in the same transaction: a guard removed to edit the
    ledger is put back and the removal itself is recorded. The core calls it right after
    opening the store."""
    engine = store.writer
    with engine.begin() as conn:
        problems = restore_ledger_guards(conn)
        if problems and store.known:
            log.warning("the ledger's guard was not intact (%s): restored", "; ".join(problems))
            audit.append(
                conn,
                "system",
                "ledger.guard_restored",
                "ledger",
                {"problems": problems, "database": engine.dialect.name},
            )
    return problems
