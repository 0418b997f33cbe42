"""Subjects (#14 item 4): duplicate identities in the gallery, and merging two subjects."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from faceledger.http.deps import Ctx, CurrentActor
from faceledger.http.schemas.common import ERRORS
from faceledger.http.schemas.subjects import DuplicatesOut, MergeIn, MergeOut
from faceledger.http.settings import API

router = APIRouter(prefix=API)


@router.get(
    "/subjects/duplicates", response_model=DuplicatesOut, responses=ERRORS, tags=["gallery"]
)
def subject_duplicates(
    ctx: Ctx,
    actor: CurrentActor,
    max_expected_false: Annotated[
        float,
        Query(
            ge=1e-6,
            le=10,
            description="The threshold: the calibrated score at which the whole gallery "
            "expects at most this many false pairs",
        ),
    ] = 0.1,
) -> dict[str, Any]:
    """Pairs of subjects (labels, or faces without one) whose templates match above a strict
    calibrated threshold, for an admin to merge or correct (admin; recorded)."""
    return ctx.fl.subject_duplicates(actor, max_expected_false)


@router.post("/subjects/merges", response_model=MergeOut, responses=ERRORS, tags=["gallery"])
def merge_subjects(ctx: Ctx, actor: CurrentActor, body: MergeIn) -> dict[str, Any]:
    """Make two subjects one (admin): relabels, never deletes; a ledger entry."""
    return ctx.fl.merge_subjects(actor, body.a, body.b, body.reason, body.label)
