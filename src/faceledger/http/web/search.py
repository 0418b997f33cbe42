"""The search page (its JavaScript calls the API) and a recorded search."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response

from faceledger.accounts.auth import parse_ts, utcnow
from faceledger.cases.policy import Policy
from faceledger.core import PolicyTamperedError
from faceledger.http.web.deps import User
from faceledger.http.web.render import render

router = APIRouter(include_in_schema=False)


@router.get("/search")
def search_page(request: Request, user: User) -> Response:
    fl, actor = user.ctx.fl, user.actor
    fl.require(actor, "search", "search page")
    try:
        pol = fl.policy()
        policy_problem = ""
    except PolicyTamperedError as exc:
        pol, policy_problem = Policy(), str(exc)
    approved = [
        r for r in fl.list_case_requests(actor, "approved") if r["requested_by"] == actor.user_id
    ]
    return render(
        request,
        "search.html",
        user,
        policy=pol,
        policy_problem=policy_problem,
        approved=approved,
        max_upload_mb=round(user.ctx.settings.max_upload_bytes / (1024 * 1024)),
        gallery_faces=fl.gallery_size(actor),
    )


@router.get("/searches/{search_id}")
def search_record(request: Request, user: User, search_id: int) -> Response:
    fl = user.ctx.fl
    rec = fl.get_search(user.actor, search_id)
    try:
        view_days = fl.policy().result_view_days
    except PolicyTamperedError:
        view_days = Policy().result_view_days
    ends = parse_ts(rec["created_at"]) + timedelta(days=view_days)
    return render(
        request,
        "search_record.html",
        user,
        rec=rec,
        can_view_candidates=utcnow() < ends,
        view_days=view_days,
    )
