"""``migrate``: move the data dir's SQLite gallery to PostgreSQL (registered at the top level
by :mod:`faceledger.cli`). The core's ``migrate_database`` does the work and holds the rules;
this command shows a progress bar per table and says where things went."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from faceledger.cli.common import AsUser, DataDir, JsonOut, dump, fail, out, progress_bar
from faceledger.cli.session import session


def migrate(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The EMPTY PostgreSQL database to move the gallery into, "
            "postgresql://user@host:port/db (a password may come from $PGPASSWORD or "
            "~/.pgpass instead of the URL).",
        ),
    ],
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """Move the gallery from SQLite to PostgreSQL and switch the data dir to it (admin).

    Every table is copied with its ids in one PostgreSQL transaction, the ledger is verified
    there end to end, the move is recorded in both ledgers, then database.json names the
    new database and gallery.db is renamed gallery.db.migrated-<time>. Stop `faceledger
    serve` and ingests on this data dir first (the command refuses while one has the gallery
    open). An interrupted migration can be run again."""
    with session(data_dir, as_user) as (fl, actor), ExitStack() as shown:
        tasks: dict[str, Any] = {}
        bars: list[Any] = []  # shown from the first table on (a refusal shows none)

        def progress(table: str, done: int, total: int) -> None:
            if not bars:
                bars.append(shown.enter_context(progress_bar("tables", None, not as_json)))
            bar = bars[0]
            if table not in tasks:
                if tasks:
                    bar.advance(bar.task_ids[0])
                tasks[table] = bar.add_task(f"  {table}", total=total)
            bar.update(tasks[table], completed=done)

        try:
            result = fl.migrate_database(actor, to, progress)
        except RuntimeError as exc:  # PostgreSQL refused rows, or the copy does not verify
            fail(escape(f"{exc}. The data dir still uses its SQLite gallery."))
        if bars:
            bars[0].update(bars[0].task_ids[0], completed=len(tasks), total=len(tasks))
    if as_json:
        dump(
            {
                "target": result.target,
                "data_dir_id": result.data_dir_id,
                "rows": result.rows,
                "source_head": result.source_head,
                "target_head": result.target_head,
                "moved_aside": [str(p) for p in result.moved_aside],
                "replaced_unfinished_copy": result.replaced_unfinished_copy,
                "finished_switch": result.finished_switch,
                "entries_verified": result.entries_verified,
                "records_checked": result.records_checked,
            }
        )
        return
    if result.rows and not result.finished_switch:
        table = Table("table", "rows copied")
        for name, n in result.rows.items():
            table.add_row(name, str(n))
        out.print(table)
    if result.finished_switch:
        out.print("finished the switch an earlier, interrupted run had begun")
    if result.replaced_unfinished_copy:
        out.print("replaced the copy an earlier, interrupted run had left unfinished")
    out.print(f"gallery moved to {escape(result.target)} (data dir id {result.data_dir_id})")
    out.print(
        f"ledger verified there: {result.entries_verified} entries, "
        f"{result.records_checked} records; SQLite's head {result.source_head} was copied, "
        f"PostgreSQL's head after the move is {result.target_head}"
    )
    for path in result.moved_aside:
        out.print(f"the old SQLite file was kept as {escape(str(path))}")
