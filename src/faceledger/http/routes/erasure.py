"""Erasure (by ids, image, source, or by the subject's photo through a preview) and the
retention purge."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse

from faceledger.http.deps import Ctx, CurrentActor, DbId
from faceledger.http.erasure import erase_request, erasure_preview_request, preview_out
from faceledger.http.files import file_response
from faceledger.http.schemas.common import ERRORS, IMAGE_RESPONSES, UPLOAD_ERRORS
from faceledger.http.schemas.erasure import ErasureOut, ErasurePreviewOut
from faceledger.http.settings import API

router = APIRouter(prefix=API)


@router.post(
    "/erasures/previews",
    response_model=ErasurePreviewOut,
    responses=UPLOAD_ERRORS,
    tags=["gallery"],
)
def erasure_preview(
    ctx: Ctx,
    actor: CurrentActor,
    probe: Annotated[UploadFile | None, File(description="The subject's photo")] = None,
    threshold: Annotated[
        float | None,
        Form(ge=-1, le=1, description="Cosine score; default: the calibrated score of FMR 1e-6"),
    ] = None,
) -> dict[str, Any]:
    """Erasure by photo, step 1 (admin): the gallery faces scoring at or above the threshold
    against the subject's photo, with scores and estimated FMRs; recorded, valid for one
    hour, for you only. Confirm the right faces with POST /api/v1/erasures."""
    return erasure_preview_request(ctx, actor, probe, threshold)


@router.get(
    "/erasures/previews/{preview_id}",
    response_model=ErasurePreviewOut,
    responses=ERRORS,
    tags=["gallery"],
)
def get_erasure_preview(ctx: Ctx, actor: CurrentActor, preview_id: DbId) -> dict[str, Any]:
    """Your open (unused, unexpired) erasure preview (admin)."""
    return preview_out(ctx.fl.get_erase_preview(actor, preview_id))


@router.get(
    "/erasures/previews/{preview_id}/faces/{face_id}/crop",
    responses=IMAGE_RESPONSES,
    tags=["gallery"],
)
def erasure_preview_crop(
    ctx: Ctx, actor: CurrentActor, preview_id: DbId, face_id: DbId
) -> FileResponse:
    """The crop of a face in your open erasure preview (admin; the only way an admin sees a
    gallery face)."""
    path = ctx.fl.erase_preview_crop(actor, preview_id, face_id)
    return file_response(path, f"face-{face_id}.jpg")


@router.post("/erasures", response_model=ErasureOut, responses=UPLOAD_ERRORS, tags=["gallery"])
def erase(
    ctx: Ctx,
    actor: CurrentActor,
    face_ids: Annotated[
        str, Form(description="Face ids, comma-separated (with preview_id: the confirmed ones)")
    ] = "",
    image_sha: Annotated[str, Form(description="An image's SHA-256")] = "",
    source: Annotated[str, Form(description="Every image only held from this source")] = "",
    preview_id: Annotated[
        str, Form(description="An erasure preview of yours: erase the face_ids confirmed from it")
    ] = "",
    optout_reference: Annotated[
        str, Form(description="With preview_id: keep the subject out of future ingests")
    ] = "",
    reason: Annotated[
        str, Form(description="Why (e.g. the erasure request number); required")
    ] = "",
) -> dict[str, Any]:
    """Erase faces for good (admin): by face ids, image, source, or the faces you confirm
    from an erasure preview (erasure by the subject's photo)."""
    return erase_request(
        ctx, actor, face_ids, image_sha, source, preview_id, optout_reference, reason
    )


@router.post("/purge", responses=ERRORS, tags=["gallery"])
def purge(ctx: Ctx, actor: CurrentActor) -> dict[str, int]:
    """Delete gallery images and retained probes past their retention date (admin)."""
    return ctx.fl.purge(actor)
