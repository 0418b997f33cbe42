"""Erasure on the admin page: by ids, image or source; by photo through a preview; the
retention purge."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from faceledger.http.erasure import erase_request, erasure_preview_request, preview_out
from faceledger.http.web.deps import PostUser, User
from faceledger.http.web.render import redirect, render
from faceledger.http.web.responses import attempt

router = APIRouter(include_in_schema=False)


def _erased_message(rep: dict[str, Any]) -> str:
    return (
        f"Erased {rep['faces_erased']} face(s); {len(rep['images_deleted'])} image(s) "
        f"deleted, {len(rep['images_blurred'])} blurred; {rep['blocklisted']} opt-out "
        "embedding(s) added."
    )


@router.post("/admin/erase")
def admin_erase(
    request: Request,
    user: PostUser,
    face_ids: Annotated[str, Form()] = "",
    image_sha: Annotated[str, Form()] = "",
    source: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    """Erasure by face ids, image or source (by photo: the preview below)."""

    def erase() -> str:
        rep = erase_request(user.ctx, user.actor, face_ids, image_sha, source, "", "", reason)
        return _erased_message(rep)

    return attempt(user, "/admin#erase", erase, "{result}")


@router.post("/admin/erase/preview")
def admin_erase_preview(
    request: Request,
    user: PostUser,
    threshold: Annotated[str, Form()] = "",
    probe: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """Erasure by photo, step 1: make the preview, then show it."""
    made: dict[str, Any] = {}

    def preview() -> None:
        made.update(erasure_preview_request(user.ctx, user.actor, probe, threshold))

    back = attempt(user, "/admin#erase", preview)
    if made:
        return redirect(f"/admin/erasures/previews/{made['preview_id']}")
    return back


@router.get("/admin/erasures/previews/{preview_id}")
def admin_erase_preview_page(request: Request, user: User, preview_id: int) -> Response:
    """The preview: crops, scores, estimated FMRs, and a checkbox per face."""
    preview = preview_out(user.ctx.fl.get_erase_preview(user.actor, preview_id))
    return render(request, "erase_preview.html", user, preview=preview)


@router.post("/admin/erasures/previews/{preview_id}/confirm")
def admin_erase_confirm(
    request: Request,
    user: PostUser,
    preview_id: int,
    face_ids: Annotated[list[str] | None, Form()] = None,
    optout_reference: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
) -> Response:
    """Erasure by photo, step 2: erase only the faces ticked in the preview."""

    def confirm() -> str:
        faces = ",".join(face_ids or [])
        rep = erase_request(
            user.ctx, user.actor, faces, "", "", str(preview_id), optout_reference, reason
        )
        return _erased_message(rep)

    return attempt(
        user, f"/admin/erasures/previews/{preview_id}", confirm, "{result}", done="/admin#erase"
    )


@router.post("/admin/purge")
def admin_purge(request: Request, user: PostUser) -> Response:
    return attempt(
        user,
        "/admin#erase",
        lambda: user.ctx.fl.purge(user.actor),
        "Retention purge done: {result}.",
    )
