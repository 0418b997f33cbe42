"""Moving a data dir's SQLite gallery into an empty PostgreSQL database: the mechanics.

Every table of :data:`faceledger.db.schema.metadata` is copied, in foreign-key order
(``metadata.sorted_tables``), in batches, with its ids, so a table added to the schema is
moved without a change here. The rules (who may, when a target is refused, the ledger
entries on both sides, when to switch) are the core's (``core/migration.py``); this module
holds no rule and writes no ledger entry.

While it copies, the SQLite gallery is held by one connection alone
(:func:`sole_connection`): no other process may have it open, and none can open it until
the data dir has been switched (:func:`write_binding`), so nothing written to the old
gallery during the move is lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, inspect, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from faceledger.db.schema import ledger, metadata
from faceledger.db.store import (
    BINDING_FILE,
    PG_WRITER_LOCK,
    SQLITE_FILE,
    add_missing_columns,
    atomic_write,
    normalise_url,
    read_meta,
    redact_url,
)
from faceledger.errors import RefusedError

BATCH = 2000  # rows per INSERT statement (and per progress report)
# How long to wait for other connections to the SQLite gallery to go away (a command that
# is just finishing) before saying that another process holds it.
BUSY_WAIT_MS = 5000
# meta keys: on SQLite, the id the data dir will have on PostgreSQL (kept from the first
# attempt, so a re-run recognises its own copy); on PostgreSQL, the copy's record, written
# in the transaction that copied everything
PENDING_ID_KEY = "migration_data_dir_id"
MIGRATED_KEY = "migrated_from_sqlite"

# (table, rows copied so far, rows in the table)
Progress = Callable[[str, int, int], None]


def is_postgresql_url(url: str) -> bool:
    return normalise_url(url).startswith("postgresql+psycopg://")


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


# -- the SQLite side -------------------------------------------------------------------------


class _Busy(Exception):
    pass


def _hold_alone(dbapi_conn: Any, _record: Any) -> None:
    """Make this connection the gallery's only one, or raise :class:`_Busy`.

    A database in WAL mode leaves its WAL mode only when no other connection has it open,
    so switching to a rollback journal proves that none has; EXCLUSIVE locking mode then
    keeps the lock the first write transaction takes until this connection closes."""
    dbapi_conn.isolation_level = None  # transactions are begun explicitly (BEGIN EXCLUSIVE)
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={BUSY_WAIT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        try:
            mode = cur.execute("PRAGMA journal_mode=DELETE").fetchone()
        except sqlite3.OperationalError as exc:
            raise _Busy(str(exc)) from exc
        if mode is None or str(mode[0]).lower() != "delete":
            raise _Busy(f"journal mode stayed {mode[0] if mode else None!r}")
        cur.execute("PRAGMA locking_mode=EXCLUSIVE")
    finally:
        cur.close()


@contextmanager
def sole_connection(sqlite_file: Path) -> Iterator[Connection]:
    """A connection to the SQLite gallery that no other process shares: its first
    transaction takes the database's exclusive lock and keeps it until the connection
    closes (on leaving the block). Refused (code ``data-dir-busy``) while another process
    (``faceledger serve``, an ingest) has the gallery open."""
    engine = create_engine(f"sqlite:///{sqlite_file}", poolclass=NullPool)
    event.listen(engine, "connect", _hold_alone)
    event.listen(engine, "begin", lambda c: c.exec_driver_sql("BEGIN EXCLUSIVE"))
    try:
        try:
            conn = engine.connect()
        except (_Busy, SQLAlchemyError) as exc:
            cause = getattr(exc, "orig", None) or exc
            raise RefusedError(
                "data-dir-busy",
                f"another process has the gallery {sqlite_file} open ({cause}): stop "
                "`faceledger serve`, ingests and other commands on this data dir, then run "
                "the migration again",
            ) from exc
        with conn:
            yield conn
    finally:
        engine.dispose()


def sqlite_sequences(src: Connection) -> dict[str, int]:
    """The highest id each AUTOINCREMENT table ever gave out (``sqlite_sequence``): an
    erased face's id stays used."""
    have = src.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).first()
    if have is None:
        return {}
    return {
        str(name): int(seq)
        for name, seq in src.exec_driver_sql("SELECT name, seq FROM sqlite_sequence")
    }


def last_entry(conn: Connection) -> dict[str, Any] | None:
    """The ledger's last entry as a row mapping (details still as JSON text)."""
    row = conn.execute(select(ledger).order_by(ledger.c.seq.desc()).limit(1)).mappings().first()
    return None if row is None else dict(row)


# -- the PostgreSQL side ---------------------------------------------------------------------


@contextmanager
def target_engine(url: str) -> Iterator[Engine]:
    engine = create_engine(normalise_url(url), future=True, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


@dataclass
class TargetState:
    """What a target database already holds."""

    tables_with_rows: list[str]  # faceledger tables that hold rows (meta included)
    data_dir_id: str | None  # the data dir it belongs to (meta ``data_dir_id``)
    migrated: dict[str, Any] | None  # the record of a finished copy (meta MIGRATED_KEY)

    @property
    def empty(self) -> bool:
        return not self.tables_with_rows

    def copied_for(self, data_dir_id: str) -> bool:
        """Whether it holds this data dir's finished copy (committed, not yet switched to)."""
        return self.migrated is not None and self.data_dir_id == data_dir_id


def target_state(dst: Connection) -> TargetState:
    existing = set(inspect(dst).get_table_names())
    with_rows = [
        t.name
        for t in metadata.sorted_tables
        if t.name in existing
        and dst.execute(select(literal(1)).select_from(t).limit(1)).first() is not None
    ]
    data_dir_id = migrated = None
    if "meta" in with_rows:
        data_dir_id = read_meta(dst, "data_dir_id")
        raw = read_meta(dst, MIGRATED_KEY)
        migrated = json.loads(raw) if raw else None
    return TargetState(with_rows, data_dir_id, migrated)


def refuse_not_empty(url: str, state: TargetState) -> RefusedError:
    owner = (
        f" (it holds the gallery of data dir id {state.data_dir_id})" if state.data_dir_id else ""
    )
    return RefusedError(
        "target-not-empty",
        f"the database {redact_url(normalise_url(url))} is not empty{owner}: "
        f"{', '.join(state.tables_with_rows)} hold rows. A gallery moves only into an empty "
        "database: create a new one (CREATE DATABASE) and migrate into it",
    )


def lock_target(dst: Connection) -> None:
    """The lock every faceledger writer on that database takes first (store.PG_WRITER_LOCK),
    for the copy's whole transaction: two migrations into one database cannot interleave."""
    dst.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITER_LOCK})")


def drop_tables(dst: Connection) -> None:
    """Drop every faceledger table (children first), in the caller's transaction: for
    replacing this data dir's own copy, never switched to, with a new one."""
    metadata.drop_all(dst)


def create_tables(dst: Connection) -> None:
    metadata.create_all(dst)
    add_missing_columns(dst)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def copy_tables(
    src: Connection, dst: Connection, progress: Progress, batch: int = BATCH
) -> dict[str, int]:
    """Copy every row of every table, parents before children, ids kept, through
    PostgreSQL's COPY in ``dst``'s transaction (a multi-row INSERT per batch is about five
    times slower); ``progress`` hears of each ``batch`` rows. Returns the rows copied per
    table."""
    raw: Any = dst.connection.dbapi_connection  # psycopg's, inside dst's transaction
    counts: dict[str, int] = {}
    for table in metadata.sorted_tables:
        total = int(src.execute(select(func.count()).select_from(table)).scalar_one())
        progress(table.name, 0, total)
        order = list(table.primary_key.columns) or list(table.columns)
        result = src.execution_options(yield_per=batch).execute(select(table).order_by(*order))
        columns = ", ".join(_quote(c.name) for c in table.columns)
        done = 0
        try:
            with (
                raw.cursor() as cur,
                cur.copy(f"COPY {_quote(table.name)} ({columns}) FROM STDIN") as copy,
            ):
                for rows in result.partitions(batch):
                    for row in rows:
                        copy.write_row(tuple(row))
                    done += len(rows)
                    progress(table.name, done, total)
        except raw.Error as exc:  # the server checks rows (lengths, keys) as they arrive
            raise RuntimeError(
                f"PostgreSQL refused rows of table {table.name} "
                f"({str(exc).splitlines()[0]}); nothing was moved"
            ) from exc
        counts[table.name] = done
    return counts


def advance_sequences(src: Connection, dst: Connection) -> dict[str, int]:
    """Set every PostgreSQL sequence behind a copied column past the ids in use (and past
    the highest id SQLite ever gave out for AUTOINCREMENT tables), so later inserts never
    collide with, or reuse, a copied id. Returns each sequence's new value."""
    floors = sqlite_sequences(src)
    done: dict[str, int] = {}
    for table in metadata.sorted_tables:
        for col in table.columns:
            seq = dst.exec_driver_sql(
                "SELECT pg_get_serial_sequence(%(t)s, %(c)s)",
                {"t": f'"{table.name}"', "c": col.name},
            ).scalar()
            if seq is None:
                continue
            top = dst.execute(select(func.max(col))).scalar()
            value = max(int(top or 0), floors.get(table.name, 0))
            if value > 0:
                dst.exec_driver_sql(
                    "SELECT setval(%(s)s, %(v)s, true)", {"s": str(seq), "v": value}
                )
            done[str(seq)] = value
    return done


# -- the switch --------------------------------------------------------------------------------


def write_binding(data_dir: Path, url: str, data_dir_id: str) -> Path:
    """Point the data dir at its PostgreSQL database (``database.json``, written atomically,
    mode 0600): from now on every process that opens the data dir opens PostgreSQL."""
    path = data_dir / BINDING_FILE
    record = {"url": normalise_url(url), "data_dir_id": data_dir_id}
    atomic_write(path, json.dumps(record).encode())
    return path


def move_sqlite_aside(data_dir: Path, stamp: str | None = None) -> list[Path]:
    """Rename ``gallery.db`` (and any ``-wal``, ``-shm``, ``-journal`` beside it) to
    ``gallery.db.migrated-<UTC time>``: kept, but never opened as the gallery again.
    Returns the new paths (empty when there was nothing left to move)."""
    stamp = stamp or now_stamp()
    base = data_dir / f"{SQLITE_FILE}.migrated-{stamp}"
    n = 1
    while base.exists():
        n += 1
        base = data_dir / f"{SQLITE_FILE}.migrated-{stamp}-{n}"
    moved = []
    # the database file last: while it is there, its journal files are found beside it
    for suffix in ("-wal", "-shm", "-journal", ""):
        path = data_dir / f"{SQLITE_FILE}{suffix}"
        if path.exists():
            dest = base.with_name(base.name + suffix)
            os.replace(path, dest)
            moved.append(dest)
    if moved:
        fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return moved[::-1]
