"""The case workflow's pages: a candidate decision (from a search record), the review
queue, and the case file with its notes."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from faceledger.http.web.deps import PostUser, User
from faceledger.http.web.render import redirect, render
from faceledger.http.web.responses import attempt

router = APIRouter(include_in_schema=False)


def case_url(case_number: str) -> str:
    return "/cases/" + quote(case_number, safe="")


@router.post("/searches/{search_id}/faces/{face_id}/review")
def review_candidate(
    request: Request,
    user: PostUser,
    search_id: int,
    face_id: int,
    decision: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    back = f"/searches/{search_id}#review-{face_id}"
    return attempt(
        user,
        back,
        lambda: user.ctx.fl.review(user.actor, search_id, face_id, decision, reason),
        "Decision recorded: candidate {result[status]}.",
        values={"decision": decision, "reason": reason},
    )


@router.get("/reviews")
def reviews_page(request: Request, user: User) -> Response:
    """Candidates awaiting this investigator's blind second examination."""
    rows = user.ctx.fl.review_queue(user.actor)
    return render(request, "reviews.html", user, rows=rows)


@router.post("/case-notes")
def add_note(
    request: Request,
    user: PostUser,
    case_number: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
) -> Response:
    return attempt(
        user,
        case_url(case_number) + "#notes",
        lambda: user.ctx.fl.add_case_note(user.actor, case_number, text),
        "Note added.",
        values={"text": text},
    )


@router.get("/case")
def open_case(request: Request, user: User) -> Response:
    """The case-number box of the cases page: to that case's file."""
    return redirect(case_url(request.query_params.get("number", "").strip()[:100]))


@router.get("/cases/{case_number:path}")
def case_page(request: Request, user: User, case_number: str) -> Response:
    file = user.ctx.fl.get_case(user.actor, case_number)
    disagreements = [c for c in file["candidates"] if c["status"] == "disagreement"]
    return render(
        request,
        "case.html",
        user,
        file=file,
        case=file,
        case_number=file["case_number"],
        disagreements=disagreements,
        reviewed=[c for c in file["candidates"] if c["status"] != "unreviewed"],
        can_note=user.actor.can("note_case"),
    )
