"""Moving the data dir's gallery from SQLite to PostgreSQL (``faceledger migrate``), admins
only: the rules and the ledger entries; the mechanics are :mod:`faceledger.db.migrate`.

One run, from a SQLite data dir:

1. the SQLite gallery is held alone (refused while a server or an ingest has it open);
   the target must be empty, else the attempt is refused and recorded;
2. ``gallery.migration_started`` is appended to the SQLite ledger;
3. in ONE PostgreSQL transaction: every table is copied with its ids, sequences are set
   past them, the ledger's guard is installed, the chain and the records are verified there
   (its head must be SQLite's), ``gallery.migrated_from`` (rows per table, the source
   head) is appended and the copy is marked as this data dir's. An interruption before the
   commit leaves the target empty: a re-run starts again;
4. ``gallery.migrated_to`` (the PostgreSQL head) is appended to the SQLite ledger;
5. the data dir is switched: ``database.json`` names PostgreSQL, and ``gallery.db`` is
   renamed ``gallery.db.migrated-<time>``.

A re-run after the commit but before ``database.json`` was written replaces that copy with
a new one in one transaction (it is this data dir's: its meta ``data_dir_id`` is the one
SQLite's meta keeps; until the switch SQLite is the gallery and may have changed since). A
re-run after ``database.json`` was written (the data dir opens PostgreSQL) moves
``gallery.db`` aside and verifies. Any other non-empty target is refused.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from faceledger.accounts.auth import Actor
from faceledger.core.base import LEDGER_TARGET_MAX, bounded
from faceledger.core.ledger import LedgerDoor
from faceledger.db import migrate
from faceledger.db.store import (
    SQLITE_FILE,
    Store,
    normalise_url,
    now_iso,
    read_meta,
    redact_url,
    write_meta,
)
from faceledger.errors import RefusedError
from faceledger.ledger import audit
from faceledger.ledger.guards import install_ledger_guards, restore_ledger_guards


@dataclass
class MigrationResult:
    target: str  # the PostgreSQL database, password redacted
    data_dir_id: str  # the data dir's id there (meta data_dir_id, database.json)
    rows: dict[str, int]  # rows copied per table
    source_head: str  # "seq:hash" of the SQLite ledger that was copied
    target_head: str  # "seq:hash" of the PostgreSQL ledger after its move entry
    moved_aside: list[Path] = field(default_factory=list)  # where gallery.db (+ -wal...) went
    # an earlier run's copy, committed but never switched to, was replaced by a new one
    replaced_unfinished_copy: bool = False
    # an earlier run had switched the data dir; this one moved gallery.db aside
    finished_switch: bool = False
    entries_verified: int = 0  # ledger entries verified on PostgreSQL after the switch
    records_checked: int = 0  # records recomputed against the chain there


def _head_text(head: tuple[int, str]) -> str:
    return f"{head[0]}:{head[1]}"


class MigrationDoor(LedgerDoor):
    def migrate_database(
        self,
        actor: Actor,
        url: str,
        progress: migrate.Progress = lambda table, done, total: None,
    ) -> MigrationResult:
        """Move this data dir's SQLite gallery into the empty PostgreSQL database ``url``
        and switch the data dir to it (admin). ``progress(table, rows_done, rows_total)``
        is called as each table is copied. See the module's docstring for the steps."""
        shown = redact_url(normalise_url(url))
        self.require(actor, "migrate_database", bounded(shown, LEDGER_TARGET_MAX))
        if not migrate.is_postgresql_url(url):
            raise RefusedError(
                "bad-url",
                f"migrate moves a gallery to PostgreSQL: give postgresql://..., not {shown}",
            )
        target = normalise_url(url)
        if self.store.dialect == "postgresql":
            return self._finish_switch(actor, target)
        sqlite_file = self.data_dir / SQLITE_FILE
        if self.store.url != f"sqlite:///{sqlite_file}":
            raise RefusedError(
                "not-this-data-dir",
                f"the gallery open here is {redact_url(self.store.url)}, not the data dir's "
                f"own {sqlite_file}: migrate moves a data dir's gallery",
            )
        self.store.close()  # this process's own connections would count as another user
        try:
            with migrate.sole_connection(sqlite_file) as src, migrate.target_engine(target) as dst:
                result = self._copy(actor, src, dst, target, progress)
                # From here on every process that opens the data dir opens PostgreSQL.
                migrate.write_binding(self.data_dir, target, result.data_dir_id)
        except RefusedError as exc:
            self._record_quietly(actor, "gallery.migration_refused", shown, exc.code, exc)
            raise
        except BaseException as exc:
            self._record_quietly(actor, "gallery.migration_failed", shown, type(exc).__name__, exc)
            raise
        result.moved_aside = migrate.move_sqlite_aside(self.data_dir)
        self._reopen_and_verify(result)
        return result

    # -- steps ------------------------------------------------------------------------------
    def _copy(
        self,
        actor: Actor,
        src: Connection,
        dst: Engine,
        target: str,
        progress: migrate.Progress,
    ) -> MigrationResult:
        """Steps 2 to 4 (the module's docstring), with the SQLite gallery held alone. A copy
        this data dir's earlier run committed but never switched to is replaced: until the
        switch, SQLite is the gallery, and it may have changed since (the re-run's own
        login, to begin with)."""
        shown = redact_url(target)
        data_dir_id = self._data_dir_id(src)
        with dst.connect() as conn:
            state = migrate.target_state(conn)
        replacing = state.copied_for(data_dir_id)
        if not state.empty and not replacing:
            raise migrate.refuse_not_empty(target, state)
        with src.begin():
            audit.append(
                src,
                self._name(actor),
                "gallery.migration_started",
                bounded(shown, LEDGER_TARGET_MAX),
                {"to": shown, "data_dir_id": data_dir_id, "replaces_unfinished_copy": replacing},
            )
        with src.begin():
            source_head = audit.head_at(src)
            with dst.begin() as conn:
                migrate.lock_target(conn)
                state = migrate.target_state(conn)  # again, under the lock
                if state.copied_for(data_dir_id):
                    migrate.drop_tables(conn)
                elif not state.empty:
                    raise migrate.refuse_not_empty(target, state)
                migrate.create_tables(conn)
                rows = migrate.copy_tables(src, conn, progress)
                migrate.advance_sequences(src, conn)
                restore_ledger_guards(conn)
                self._check_copy(conn, source_head, shown)
                entry = audit.append(
                    conn,
                    self._name(actor),
                    "gallery.migrated_from",
                    "sqlite",
                    {
                        "from": "sqlite",
                        "data_dir_id": data_dir_id,
                        "rows": rows,
                        "source_head": _head_text(source_head),
                    },
                )
                record = {"source_head": _head_text(source_head), "rows": rows, "at": now_iso()}
                write_meta(conn, "data_dir_id", data_dir_id)
                write_meta(conn, migrate.MIGRATED_KEY, json.dumps(record))
            target_head = _head_text((entry.seq, entry.hash))
            audit.append(
                src,
                self._name(actor),
                "gallery.migrated_to",
                bounded(shown, LEDGER_TARGET_MAX),
                {
                    "to": shown,
                    "data_dir_id": data_dir_id,
                    "rows": rows,
                    "postgresql_head": target_head,
                },
            )
        return MigrationResult(
            shown,
            data_dir_id,
            rows,
            _head_text(source_head),
            target_head,
            replaced_unfinished_copy=replacing,
        )

    def _finish_switch(self, actor: Actor, target: str) -> MigrationResult:
        """The data dir already names PostgreSQL: finish a switch interrupted before
        ``gallery.db`` was moved aside, or refuse."""
        shown = redact_url(target)
        with self.store.engine.connect() as conn:
            raw = read_meta(conn, migrate.MIGRATED_KEY)
            data_dir_id = read_meta(conn, "data_dir_id")
        here = redact_url(self.store.url)
        sqlite_file = self.data_dir / SQLITE_FILE
        if raw is None:
            raise RefusedError(
                "not-sqlite",
                f"{self.data_dir} keeps its gallery in PostgreSQL ({here}) already: "
                "there is no SQLite gallery to move",
            )
        if target != self.store.url:
            raise RefusedError(
                "other-target",
                f"{self.data_dir} was moved to {here}, not {shown}",
            )
        if not sqlite_file.exists():
            raise RefusedError("already-migrated", f"{self.data_dir} was moved to {here} already")
        copied = json.loads(raw)
        source_head = str(copied["source_head"])
        with migrate.sole_connection(sqlite_file) as src, src.begin():
            if not self._is_moved_to(migrate.last_entry(src), data_dir_id, source_head):
                raise RefusedError(
                    "source-changed",
                    f"{sqlite_file} changed after it was copied to {here}: move it away by "
                    "hand once its last entries are accounted for",
                )
        result = MigrationResult(
            shown,
            str(data_dir_id),
            {str(k): int(v) for k, v in copied["rows"].items()},
            source_head,
            _head_text(audit.head(self.store)),
            finished_switch=True,
        )
        result.moved_aside = migrate.move_sqlite_aside(self.data_dir)
        self._reopen_and_verify(result, reopen=False)
        return result

    def _reopen_and_verify(self, result: MigrationResult, reopen: bool = True) -> None:
        """Open the data dir as every later process will (PostgreSQL), and verify the whole
        chain there, through the entry SQLite's head was copied as."""
        if reopen:
            self.store.close()
            self.store = Store(self.data_dir)
            install_ledger_guards(self.store)
            self._searcher = None  # its index reads the new store
        checked = audit.verify(self.store, checkpoint=result.source_head)
        if not checked.ok:
            raise RuntimeError(
                f"the moved gallery does not verify on {result.target}: {checked.problem}"
            )
        result.entries_verified = checked.entries
        result.records_checked = checked.records_checked

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _check_copy(conn: Connection, source_head: tuple[int, str], shown: str) -> None:
        """The chain and the records, verified in the copy's own transaction, must end where
        SQLite's did."""
        checked = audit.verify(conn)
        if not checked.ok:
            raise RuntimeError(f"the copy in {shown} does not verify: {checked.problem}")
        if (checked.head_seq, checked.head_hash) != source_head:
            raise RuntimeError(
                f"the copy's ledger ends at {checked.head_seq}:{checked.head_hash}, "
                f"SQLite's at {_head_text(source_head)}"
            )

    @staticmethod
    def _data_dir_id(src: Connection) -> str:
        """The id the data dir takes on PostgreSQL, chosen at the first attempt (kept in
        SQLite's meta, so a re-run knows its own copy)."""
        import uuid

        with src.begin():
            value = read_meta(src, migrate.PENDING_ID_KEY)
            if value is None:
                value = uuid.uuid4().hex
                write_meta(src, migrate.PENDING_ID_KEY, value)
        return value

    @staticmethod
    def _name(actor: Actor) -> str:
        return str(bounded(actor.username, LEDGER_TARGET_MAX))

    @staticmethod
    def _is_moved_to(
        last: dict[str, Any] | None, data_dir_id: str | None, source_head: str
    ) -> bool:
        """Whether ``last`` is this migration's ``gallery.migrated_to``, right after the
        entry the copy ended at."""
        if last is None or last["action"] != "gallery.migrated_to":
            return False
        details = json.loads(last["details"])
        return bool(
            details.get("data_dir_id") == data_dir_id
            and f"{int(last['seq']) - 1}:{last['prev_hash']}" == source_head
        )

    def _record_quietly(
        self, actor: Actor, action: str, shown: str, code: str, exc: BaseException
    ) -> None:
        """Record a refused or failed attempt where the gallery now is (a failure to record
        must not hide the error itself)."""
        with contextlib.suppress(Exception):
            self.record(actor, action, shown, code=code, error=str(exc))
