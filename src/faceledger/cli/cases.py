"""Searches' authority: the ``cases`` group (requests and a supervisor's decision) and the
``policy`` group (the search policy)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from faceledger.cli.common import AsUser, DataDir, dump, out
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
