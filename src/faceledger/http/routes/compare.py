"""Side-by-side comparison of a search's probe face and one of its candidates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile

from faceledger.http.compare import compare_out
from faceledger.http.deps import Ctx, CurrentActor, DbId
from faceledger.http.schemas.common import UPLOAD_ERRORS, ErrorOut
from faceledger.http.schemas.compare import CompareOut
from faceledger.http.settings import API
from faceledger.http.uploads import read_upload

router = APIRouter(prefix=API)

COMPARE_ERRORS: dict[int | str, dict[str, Any]] = {
    **UPLOAD_ERRORS,
    400: {
        "model": ErrorOut,
        "description": "not-the-probe: the photo sent is not the one the search searched",
    },
    403: {"model": ErrorOut, "description": "Not your search, or results-expired (recorded)"},
    404: {"model": ErrorOut, "description": "No such search, or not-a-candidate of it"},
    410: {
        "model": ErrorOut,
        "description": "erased: the face left the gallery; probe-not-kept: retention no longer "
        "keeps the probe, POST it again",
    },
}
PATH = "/searches/{search_id}/faces/{face_id}/compare"


@router.get(PATH, response_model=CompareOut, responses=COMPARE_ERRORS, tags=["search"])
def compare(ctx: Ctx, actor: CurrentActor, search_id: DbId, face_id: DbId) -> dict[str, Any]:
    """The search's probe face and this candidate side by side: both aligned by the model
    (same-size chips, with the five landmarks on each), both full images with the faces'
    boxes, and the candidate's score, est. FMR and expected false candidates as the search
    showed them. Needs the probe that retention keeps (410 probe-not-kept otherwise: POST
    it). The candidate rules of its crop apply; each comparison is recorded
    (candidate.compare)."""
    return compare_out(ctx.fl.compare_candidate(actor, search_id, face_id))


@router.post(PATH, response_model=CompareOut, responses=COMPARE_ERRORS, tags=["search"])
def compare_with_probe(
    ctx: Ctx,
    actor: CurrentActor,
    search_id: DbId,
    face_id: DbId,
    probe: Annotated[
        UploadFile | None,
        File(
            description="The photo that was searched, again: accepted only if its SHA-256 is "
            "the search's probe_sha256 (or, where a face was picked, its photo_sha256); kept "
            "nowhere"
        ),
    ] = None,
) -> dict[str, Any]:
    """As GET, with the probe photo supplied again (for when retention no longer keeps it).
    A different photo is refused (400 not-the-probe, recorded)."""
    ctx.limit_search(actor)
    data = read_upload(probe, "probe")
    return compare_out(ctx.fl.compare_candidate(actor, search_id, face_id, data))
