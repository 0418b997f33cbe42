"""Erasure requests (by ids, image, source or a confirmed preview) and previews, as the
API and the admin page send them."""

from __future__ import annotations

import typing
from typing import Any

from fastapi import UploadFile

from faceledger.accounts.auth import Actor
from faceledger.http.context import AppContext
from faceledger.http.errors import ApiError, invalid_input
from faceledger.http.parsing import MAX_ID, parse_face_ids
from faceledger.http.settings import API
from faceledger.http.uploads import read_upload


def erase_request(
    ctx: AppContext,
    actor: Actor,
    face_ids: str,
    image_sha: str,
    source: str,
    preview_id: str,
    optout_reference: str,
    reason: str,
) -> dict[str, Any]:
    """An erasure by face ids, image or source, or the faces confirmed from a preview
    (``preview_id`` with ``face_ids`` the confirmed subset, which may be empty). Who may
    erase is asked first: a non-admin learns nothing from the form's errors."""
    ctx.fl.require(actor, "erase")
    preview: int | None = None
    if preview_id.strip():
        if not (preview_id.strip().isascii() and preview_id.strip().isdigit()):
            raise ApiError(400, "bad-preview-id", "preview_id is a number")
        preview = int(preview_id.strip())
        if preview > MAX_ID:
            raise ApiError(400, "bad-preview-id", "preview_id is a number")
    ids = parse_face_ids(face_ids) if face_ids.strip() or preview is not None else None
    with invalid_input("invalid-erasure"):
        report = ctx.fl.erase(
            actor,
            face_ids=ids,
            image_sha=image_sha.strip() or None,
            source=source.strip() or None,
            preview_id=preview,
            optout_reference=optout_reference.strip() or None,
            reason=reason.strip(),
        )
    return typing.cast(dict[str, Any], report.as_dict())


def erasure_preview_request(
    ctx: AppContext, actor: Actor, probe: UploadFile | None, threshold: float | str | None
) -> dict[str, Any]:
    """Make an erasure preview from the subject's uploaded photo; ``threshold``: a cosine
    score, as a number or as typed in a form (blank: the default). Who may erase is asked
    before the upload is read."""
    ctx.fl.require(actor, "erase")
    if isinstance(threshold, str):
        try:
            threshold = float(threshold) if threshold.strip() else None
        except ValueError as exc:
            raise ApiError(400, "bad-threshold", "threshold is a cosine score") from exc
    photo = read_upload(probe, "probe")
    with invalid_input("invalid-erasure"):
        doc = ctx.fl.erase_preview(actor, photo, threshold)
    return preview_out(doc)


def preview_crop_url(preview_id: int, face_id: int) -> str:
    return f"{API}/erasures/previews/{preview_id}/faces/{face_id}/crop"


def preview_out(doc: dict[str, Any]) -> dict[str, Any]:
    """A preview with each face's crop URL (served to the preview's admin only)."""
    out = dict(doc)
    out["faces"] = [
        f | {"crop_url": None if f["erased"] else preview_crop_url(doc["preview_id"], f["face_id"])}
        for f in doc["faces"]
    ]
    return out
