"""Searches' authority: the ``cases`` group (requests and a supervisor's decision) and the
``policy`` group (the search policy)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from faceledger.cli.common import AsUser, DataDir, JsonOut, dump, err, fail, out
from faceledger.cli.session import session

cases_app = typer.Typer(
    help="Cases: requests, supervisor approval, the case file and notes.", no_args_is_help=True
)
policy_app = typer.Typer(help="Search policy (admin).", no_args_is_help=True)


@policy_app.command("show")
def policy_show(data_dir: DataDir = None, as_user: AsUser = None) -> None:
    with session(data_dir, as_user) as (fl, _actor):
        sys.stdout.write(fl.policy().to_bytes().decode())


@policy_app.command("set")
def policy_set(key: str, value: str, data_dir: DataDir = None, as_user: AsUser = None) -> None:
    """Change one policy setting (lists: comma-separated). Logged with old and new values."""
    with session(data_dir, as_user) as (fl, actor):
        fl.set_policy_value(actor, key, value)
    out.print(f"policy {key} = {value}")


@cases_app.command("request")
def cases_request(
    case: Annotated[str, typer.Option("--case")],
    purpose: Annotated[str, typer.Option()],
    justification: Annotated[str, typer.Option()],
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Ask a supervisor to approve searches for a case and purpose."""
    with session(data_dir, as_user) as (fl, actor):
        rid = fl.request_case(actor, case, purpose, justification)
    out.print(f"request {rid} for case {case} is pending a supervisor's decision")
    print(rid)


@cases_app.command("approve")
def cases_approve(
    request_id: int,
    note: str = "",
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="At most this many searches under the approval."),
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """Approve a request of your unit (it lasts the policy's approval_days)."""
    with session(data_dir, as_user) as (fl, actor):
        fl.decide_case(actor, request_id, True, note, limit)
    out.print(f"request {request_id} approved")


@cases_app.command("withdraw")
def cases_withdraw(
    request_id: int,
    note: Annotated[str, typer.Option(help="Why the approval ends now (required).")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """End an approval before its time."""
    with session(data_dir, as_user) as (fl, actor):
        fl.withdraw_case(actor, request_id, note)
    out.print(f"the approval of request {request_id} is withdrawn")


@cases_app.command("deny")
def cases_deny(
    request_id: int, note: str = "", data_dir: DataDir = None, as_user: AsUser = None
) -> None:
    with session(data_dir, as_user) as (fl, actor):
        fl.decide_case(actor, request_id, False, note)
    out.print(f"request {request_id} denied")


@cases_app.command("list")
def cases_list(
    status: Annotated[
        str | None, typer.Option(help="pending, approved, denied or withdrawn.")
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    with session(data_dir, as_user) as (fl, actor):
        dump(fl.list_case_requests(actor, status))


@cases_app.command("report")
def cases_report(
    case: Annotated[str, typer.Argument(help="Case number.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the report.")],
    fmt: Annotated[str, typer.Option("--format", help="pdf or html.")] = "pdf",
    search_id: Annotated[
        int | None, typer.Option("--search", min=1, help="Only this search of the case.")
    ] = None,
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """The lead report of a case (or of one search in it): leads, not identifications; per
    lead the probe and candidate side by side, scores, both examiners' decisions, the
    approval and the ledger entries behind it. Recorded (case.report, with its SHA-256)."""
    if fmt not in ("pdf", "html"):
        fail("--format must be pdf or html")
    with session(data_dir, as_user) as (fl, actor):
        data = fl.case_report(actor, case, fmt, search_id)
    write_out(out_file, data)
    out.print(
        f"lead report of case {escape(case)} written to {escape(str(out_file))} "
        f"({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})"
    )


@cases_app.command("export")
def cases_export(
    case: Annotated[str, typer.Argument(help="Case number.")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the zip.")],
    data_dir: DataDir = None,
    as_user: AsUser = None,
) -> None:
    """The case's disclosure export: every search and verification (also those with no
    lead) and every candidate shown, reviews, approvals, notes, the report, the case's
    ledger entries and head, and a manifest of SHA-256s. Recorded (case.export); check it
    with `faceledger cases verify-export`."""
    with session(data_dir, as_user) as (fl, actor):
        data, entry = fl.case_export(actor, case)
    write_out(out_file, data)
    out.print(
        f"export of case {escape(case)} written to {escape(str(out_file))}; its ledger entry "
        f"is {entry.seq}:{entry.hash}"
    )


@cases_app.command("verify-export")
def cases_verify_export(
    zip_file: Annotated[Path, typer.Argument(help="A case export (faceledger cases export).")],
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="SEQ:HASH of the export's ledger entry as the live ledger has it.",
        ),
    ] = None,
    as_json: JsonOut = False,
) -> None:
    """Check a case export offline (no data dir): every file against the manifest, the
    manifest against the export's ledger entry, that entry's hash and each case entry's
    hash; with --checkpoint, that the export entry is the ledger's. Exit 1 naming the file
    at fault."""
    from faceledger.cases.export import verify

    if not zip_file.is_file():
        fail(f"{escape(str(zip_file))}: no such file")
    result = verify(zip_file, checkpoint)
    if as_json:
        dump(result.as_dict())
    else:
        for p in result.problems:
            err.print(f"[bold red]FAIL[/] {escape(str(p))}")
        if result.ok:
            out.print(
                f"OK: case {escape(str(result.case_number))}, {result.files} files match the "
                f"manifest, the manifest matches export entry {result.export_seq}, whose hash "
                f"and those of the {result.entries} case entries are right"
                + (
                    f"; entry {result.export_seq} is the ledger's checkpoint"
                    if result.anchored
                    else ""
                )
            )
        for note in result.notes:
            out.print(escape(note))
    if not result.ok:
        raise typer.Exit(1)


def write_out(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        fail(f"{escape(str(path))}: cannot write ({exc.strerror or exc})")
