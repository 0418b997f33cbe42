"""The search page (its JavaScript calls the API) and a recorded search."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from faceledger.cases.policy import Policy
from faceledger.core import MAX_PROBE_PHOTOS, PolicyTamperedError
from faceledger.core.searching import PICK_MIN_IOU
from faceledger.http.searches import record_out
from faceledger.http.web.deps import User, WebUser
from faceledger.http.web.render import render
from faceledger.vision.probes import MIN_BOX_SIDE

router = APIRouter(include_in_schema=False)


def case_form(user: WebUser) -> dict[str, Any]:
    """What a page with the case fields shows (search, verify): the policy in force (its
    defaults and the problem, where the file was tampered with), the user's approved
    requests, the upload limit."""
    fl, actor = user.ctx.fl, user.actor
    try:
        pol, policy_problem = fl.policy(), ""
    except PolicyTamperedError as exc:
        pol, policy_problem = Policy(), str(exc)
    approved = [
        r for r in fl.list_case_requests(actor, "approved") if r["requested_by"] == actor.user_id
    ]
    return {
        "policy": pol,
        "policy_problem": policy_problem,
        "approved": approved,
        "max_upload_mb": round(user.ctx.settings.max_upload_bytes / (1024 * 1024)),
    }


@router.get("/search")
def search_page(request: Request, user: User) -> Response:
    fl, actor = user.ctx.fl, user.actor
    fl.require(actor, "search", "search page")
    return render(
        request,
        "search.html",
        user,
        **case_form(user),
        gallery_faces=fl.gallery_size(actor),
        min_box_side=MIN_BOX_SIDE,
        pick_min_iou=PICK_MIN_IOU,
        max_photos=MAX_PROBE_PHOTOS,
    )


@router.get("/searches")
def searches_page(request: Request, user: User) -> Response:
    """The searches this user may read: their own; a supervisor's unit's and those under
    their approvals; all for auditors."""
    case_number = request.query_params.get("case", "").strip()[:64]
    rows = user.ctx.fl.list_searches(user.actor, case_number or None)
    return render(request, "searches.html", user, rows=rows, case_number=case_number)


@router.get("/searches/{search_id}")
def search_record(request: Request, user: User, search_id: int) -> Response:
    rec = record_out(user.ctx.fl.get_search(user.actor, search_id))
    shown = rec["shown"]
    faces = []
    if shown is not None:
        # the face that was picked first (a search with face_box compares that one only)
        faces = sorted(shown["faces"], key=lambda f: not f.get("selected"))
    return render(
        request,
        "search_record.html",
        user,
        rec=rec,
        shown=shown,
        faces=faces,
        can_view_candidates=rec["results_viewable"],
        view_days=rec["result_view_days"],
    )
