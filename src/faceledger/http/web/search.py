"""The search page (its JavaScript calls the API) and a recorded search."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

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
    rec = user.ctx.fl.get_search(user.actor, search_id)
    return render(
        request,
        "search_record.html",
        user,
        rec=rec,
        can_view_candidates=rec["results_viewable"],
        view_days=rec["result_view_days"],
    )
