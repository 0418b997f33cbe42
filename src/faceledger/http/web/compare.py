"""The side-by-side comparison pages: a search's probe face and one candidate, and the
1:1 verification (its JavaScript calls the API)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from faceledger.core import RefusedError
from faceledger.http.compare import compare_out
from faceledger.http.web.deps import User
from faceledger.http.web.render import render
from faceledger.http.web.search import case_form

router = APIRouter(include_in_schema=False)


@router.get("/searches/{search_id}/compare/{face_id}")
def compare_page(request: Request, user: User, search_id: int, face_id: int) -> Response:
    """The comparison, while retention keeps the probe; else a form to supply the photo
    searched again (the candidate's rules are checked first, so the form shows only where
    the comparison may be made)."""
    try:
        data = compare_out(user.ctx.fl.compare_candidate(user.actor, search_id, face_id))
    except RefusedError as exc:
        if exc.code != "probe-not-kept":
            raise
        data = None
    return render(
        request,
        "compare.html",
        user,
        search_id=search_id,
        face_id=face_id,
        data=data,
        max_upload_mb=round(user.ctx.settings.max_upload_bytes / (1024 * 1024)),
    )


@router.get("/verify")
def verify_page(request: Request, user: User) -> Response:
    """Two photos, the case fields, and the two faces side by side."""
    fl, actor = user.ctx.fl, user.actor
    fl.require(actor, "verify", "verify page")
    return render(request, "verify.html", user, **case_form(user))
