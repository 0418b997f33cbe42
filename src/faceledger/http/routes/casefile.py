"""Case files, candidate reviews and case notes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from faceledger.http.deps import Ctx, CurrentActor, DbId
from faceledger.http.schemas.casefile import CaseFileOut, NoteIn, ReviewIn, ReviewQueueItemOut
from faceledger.http.schemas.common import ERRORS, CreatedOut
from faceledger.http.schemas.search import ReviewStateOut
from faceledger.http.searches import record_out
from faceledger.http.settings import API

router = APIRouter(prefix=API)

CaseNumber = Path(min_length=1, max_length=100, description="The case number")


@router.get("/cases/{case_number}", response_model=CaseFileOut, responses=ERRORS, tags=["cases"])
def get_case(ctx: Ctx, actor: CurrentActor, case_number: str = CaseNumber) -> dict[str, Any]:
    """The case file: every search (also those with no candidate) and verify in the case,
    approvals, reviews, notes and the case's ledger entries, as far as you may see them
    (the same rules as a single search record); recorded. 404 ``no-such-case`` when there is
    nothing in it for you."""
    file = ctx.fl.get_case(actor, case_number)
    return file | {"searches": [record_out(r) for r in file["searches"]]}


@router.post(
    "/cases/{case_number}/notes",
    status_code=201,
    response_model=CreatedOut,
    responses=ERRORS,
    tags=["cases"],
)
def add_case_note(
    ctx: Ctx, actor: CurrentActor, body: NoteIn, case_number: str = CaseNumber
) -> dict[str, int]:
    """A note on a case you work on (investigators, supervisors); recorded."""
    return {"id": ctx.fl.add_case_note(actor, case_number, body.text)}


@router.post(
    "/searches/{search_id}/faces/{face_id}/review",
    response_model=ReviewStateOut,
    responses=ERRORS,
    tags=["cases"],
)
def review_candidate(
    ctx: Ctx, actor: CurrentActor, search_id: DbId, face_id: DbId, body: ReviewIn
) -> dict[str, Any]:
    """Record your decision on a candidate: the first (by the investigator who searched) or,
    after a first possible-lead, the blind second by another investigator of the unit.
    A possible-lead is a lead only when both decided so. Decisions are final and recorded."""
    return ctx.fl.review(actor, search_id, face_id, body.decision, body.reason)


@router.get(
    "/reviews/queue", response_model=list[ReviewQueueItemOut], responses=ERRORS, tags=["cases"]
)
def review_queue(ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    """Candidates awaiting your blind second examination (never the first decision)."""
    return ctx.fl.review_queue(actor)
