"""The ``audit`` group: the hash-chained ledger (verify, checkpoint, export) and the
transparency report."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from faceledger.cli.common import AsUser, DataDir, err, fail, out
from faceledger.cli.session import session
from faceledger.ledger.audit import time_bound

audit_app = typer.Typer(help="The tamper-evident ledger and reports.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    checkpoint: Annotated[
        str | None, typer.Option(help="A checkpoint (seq:hash) kept elsewhere.")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="A transparency report (JSON, CSV or HTML) kept elsewhere: its ledger head "
            "is the checkpoint.",
        ),
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Recompute the hash chain and the records against it; exit 1 naming the first bad
    entry and every record that disagrees with its entry."""
    report_text = None
    if report is not None:
        try:
            report_text = report.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read the report {report}: {exc}")
    with session(data_dir, as_user) as (fl, actor):
        res = fl.audit_verify(actor, checkpoint, report=report_text)
    for warning in res.warnings:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}")
    if not res.ok:
        for m in res.mismatches:
            err.print(f"  {escape(m['problem'])}")
        if res.mismatch_count > len(res.mismatches):
            err.print(f"  ... and {res.mismatch_count - len(res.mismatches)} more")
        at = f" at entry {res.first_bad_seq}" if res.first_bad_seq is not None else ""
        fail(f"ledger verification FAILED{at}: {escape(res.problem or '')}")
    against = " and matches the report" if report else " and the checkpoint" if checkpoint else ""
    out.print(
        f"ledger OK{against}: {res.entries} entries, {res.records_checked} records agree, "
        f"head {res.head_seq}:{res.head_hash}"
    )


@audit_app.command("checkpoint")
def audit_checkpoint(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Print the head of the chain (seq:hash); keep it outside this machine."""
    with session(data_dir, as_user) as (fl, actor):
        print(fl.audit_checkpoint(actor))


@audit_app.command("log")
def audit_log(
    actor_name: Annotated[str | None, typer.Option("--actor")] = None,
    action: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option("--from", help="ISO time or date.")] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="ISO time (exclusive) or date (inclusive).")
    ] = None,
    case: Annotated[
        str | None,
        typer.Option("--case", help="Entries about this case number (target or details)."),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="jsonl (JSON lines) or csv (re-verifiable).")
    ] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the export to this file.")
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """List or export ledger entries (auditor), in seq order."""
    if fmt not in ("jsonl", "csv"):
        fail("--format must be jsonl or csv")
    try:  # a date means the whole day, as in the API and the web page
        since, until = time_bound(since), time_bound(until, end=True)
    except ValueError:
        fail("--from and --to are dates like 2026-01-31 or ISO times")
    with session(data_dir, as_user) as (fl, actor):
        lines = fl.audit_export(
            actor, fmt, actor=actor_name, action=action, since=since, until=until, case=case
        )
        n = 0
        if output:
            with output.open("w", encoding="utf-8", newline="") as fh:
                for line in lines:
                    fh.write(line)
                    n += line.count("\n")
        else:
            for line in lines:
                sys.stdout.write(line)
    if output:
        entries = n - 1 if fmt == "csv" else n
        err.print(f"{entries} entr{'y' if entries == 1 else 'ies'} written to {output}")


@audit_app.command("report")
def audit_report(
    date_from: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD.")],
    date_to: Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD.")],
    fmt: Annotated[str, typer.Option("--format", help="json, csv or html.")] = "json",
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Transparency report over a date range (auditor; supervisors: their unit)."""
    from faceledger.ledger import reports

    if fmt not in ("json", "csv", "html"):
        fail("--format must be json, csv or html")
    try:
        start, end = date.fromisoformat(date_from), date.fromisoformat(date_to)
    except ValueError:
        fail("--from and --to are dates like 2026-01-31")
    if end < start:
        fail("--to is before --from")
    with session(data_dir, as_user) as (fl, actor):
        rep = fl.audit_report(actor, start, end)
    text = (
        json.dumps(rep, indent=2) + "\n"
        if fmt == "json"
        else reports.to_csv(rep)
        if fmt == "csv"
        else reports.to_html(rep)
    )
    if output:
        output.write_text(text)
        out.print(f"report written to {output}")
    else:
        sys.stdout.write(text)
