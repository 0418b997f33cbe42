"""The case workflow: ``review`` (a candidate decision), ``reviews queue``, and the case
file (``cases show``, ``cases note``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from faceledger.cli.cases import cases_app
from faceledger.cli.common import AsUser, DataDir, JsonOut, dump, out
from faceledger.cli.session import session

reviews_app = typer.Typer(help="Candidate reviews: the blind second examinations.")

Decision = typer.Option(
    "--decision", help="excluded, inconclusive or possible-lead.", show_default=False
)


def review(
    search_id: Annotated[int, typer.Argument(help="The search's id.")],
    face: Annotated[int, typer.Option("--face", help="The candidate's gallery face id.")],
    decision: Annotated[str, Decision],
    reason: Annotated[str, typer.Option("--reason", help="What in the faces decided it.")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """Record your decision on a candidate of a search: the first (you ran the search) or the
    blind second one (another investigator's possible-lead, whose decision you do not see).
    A possible-lead is a lead only when two investigators decided so. Decisions are final."""
    with session(data_dir, as_user) as (fl, actor):
        state = fl.review(actor, search_id, face, decision, reason)
    if as_json:
        dump(state)
        return
    out.print(f"candidate {face} of search {search_id}: {state['status']}")
    if state["status"] == "awaiting-second":
        out.print("[dim]a second investigator's blind examination is needed for a lead[/]")


@reviews_app.command("queue")
def reviews_queue(
    data_dir: DataDir = None, as_user: AsUser = None, as_json: JsonOut = False
) -> None:
    """Candidates awaiting your blind second examination."""
    with session(data_dir, as_user) as (fl, actor):
        rows = fl.review_queue(actor)
    if as_json:
        dump(rows)
        return
    t = Table(title=f"{len(rows)} candidate(s) awaiting your second examination")
    for col in ("search", "face id", "case", "searched by", "when"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            str(r["search_id"]),
            str(r["face_id"]),
            escape(r["case_number"]),
            escape(r["username"]),
            r["created_at"],
        )
    out.print(t)


@cases_app.command("show")
def cases_show(
    case: Annotated[str, typer.Argument(help="The case number.")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
    as_json: JsonOut = False,
) -> None:
    """The case file: every search and verify in the case (also those with no candidate),
    approvals, reviews, notes, and who did what when (as far as you may see; recorded)."""
    from faceledger.search.searcher import LEADS_NOTICE

    with session(data_dir, as_user) as (fl, actor):
        file = fl.get_case(actor, case)
    if as_json:
        dump(file)
        return
    out.print(f"[bold yellow]{LEADS_NOTICE}[/]")
    out.print(f"[bold]case {escape(file['case_number'])}[/] (ledger head {_head(file)})")
    _table(
        "searches",
        ("id", "when", "by", "purpose", "faces", "candidates"),
        [
            (s["id"], s["created_at"], s["username"], s["purpose"], s["faces"], _count(s))
            for s in file["searches"]
        ],
    )
    _table(
        "verifications",
        ("id", "when", "by", "outcome", "score"),
        [
            (v["id"], v["created_at"], v["username"], v["outcome"], v["score"])
            for v in file["verifications"]
        ],
    )
    _table(
        "requests",
        ("id", "by", "purpose", "status", "decided by"),
        [
            (r["id"], r["requested_by_name"], r["purpose"], r["status"], r["decided_by_name"])
            for r in file["requests"]
        ],
    )
    _table(
        "candidates reviewed",
        ("search", "face id", "score", "status", "first", "second"),
        [
            (
                c["search_id"],
                c["face_id"],
                f"{c['score']:.3f}",
                c["status"],
                _decision(c["first"]),
                _decision(c["second"]),
            )
            for c in file["candidates"]
            if c["status"] != "unreviewed"
        ],
    )
    _table(
        "notes",
        ("when", "by", "note"),
        [(n["created_at"], n["username"], n["text"]) for n in file["notes"]],
    )
    _table(
        "ledger",
        ("seq", "when", "who", "what", "hash"),
        [(e["seq"], e["ts"], e["actor"], e["action"], e["hash"][:16]) for e in file["entries"]],
    )


@cases_app.command("note")
def cases_note(
    case: Annotated[str, typer.Argument(help="The case number.")],
    text: Annotated[str, typer.Argument(help="The note.")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Add a note to a case you work on (recorded in the ledger)."""
    with session(data_dir, as_user) as (fl, actor):
        note_id = fl.add_case_note(actor, case, text)
    out.print(f"note {note_id} added to case {escape(case)}")


def _head(file: dict[str, Any]) -> str:
    return f"{file['head']['seq']}:{file['head']['hash']}"


def _count(rec: dict[str, Any]) -> int:
    return sum(len(f["candidates"]) for f in rec["results"])


def _decision(d: dict[str, Any] | None) -> str:
    return "" if d is None else f"{d['decision']} by {d['examiner']}: {d['reason']}"


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        out.print(f"[dim]{title}: none[/]")
        return
    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(escape("" if v is None else str(v)) for v in row))
    out.print(t)
