"""Case requests: ask, and (supervisors) decide or withdraw."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from faceledger.cases.policy import Policy
from faceledger.core import PolicyTamperedError
from faceledger.http.web.deps import PostUser, User
from faceledger.http.web.render import flash, redirect, render
from faceledger.http.web.responses import attempt

router = APIRouter(include_in_schema=False)


@router.get("/cases")
def cases_page(request: Request, user: User) -> Response:
    fl, actor = user.ctx.fl, user.actor
    rows = fl.list_case_requests(actor)
    try:
        pol = fl.policy()
    except PolicyTamperedError:
        pol = Policy()
    pending = [r for r in rows if r["status"] == "pending"]
    return render(
        request,
        "cases.html",
        user,
        rows=list(reversed(rows)),
        pending=pending,
        policy=pol,
        can_request=actor.can("request_case"),
        can_decide=actor.can("decide_case"),
    )


@router.post("/cases")
def cases_request(
    request: Request,
    user: PostUser,
    case_number: Annotated[str, Form()] = "",
    purpose: Annotated[str, Form()] = "",
    justification: Annotated[str, Form()] = "",
) -> Response:
    return attempt(
        user,
        "/cases",
        lambda: user.ctx.fl.request_case(user.actor, case_number, purpose, justification),
        "Request {result} sent; it is pending a supervisor's decision.",
    )


@router.post("/cases/{request_id}/decide")
def cases_decide(
    request: Request,
    user: PostUser,
    request_id: int,
    decision: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    search_limit: Annotated[str, Form()] = "",
) -> Response:
    if decision not in ("approve", "deny"):
        flash(user, "error", "Choose approve or deny.")
        return redirect("/cases")
    limit = search_limit.strip()
    if limit and not (limit.isascii() and limit.isdigit()):
        flash(user, "error", "The search limit is a whole number of searches.")
        return redirect("/cases")
    approve = decision == "approve"
    return attempt(
        user,
        "/cases",
        lambda: user.ctx.fl.decide_case(
            user.actor, request_id, approve, note.strip(), int(limit) if limit else None
        ),
        f"Request {request_id} {'approved' if approve else 'denied'}.",
    )


@router.post("/cases/{request_id}/withdraw")
def cases_withdraw(
    request: Request, user: PostUser, request_id: int, note: Annotated[str, Form()] = ""
) -> Response:
    return attempt(
        user,
        "/cases",
        lambda: user.ctx.fl.withdraw_case(user.actor, request_id, note),
        f"The approval of request {request_id} is withdrawn.",
    )
