"""Uploaded image (and video probe) parts: content-type check and bytes."""

from __future__ import annotations

from fastapi import UploadFile

from faceledger.http.errors import ApiError
from faceledger.timing import timed

IMAGE_TYPES = ("image/",)
VIDEO_TYPES = ("image/", "video/")  # a probe: a photo or a clip (told apart by content)
GENERIC_TYPES = ("application/octet-stream", "")


@timed("upload")
def read_upload(
    upload: UploadFile | None, field_name: str, allowed: tuple[str, ...] = IMAGE_TYPES
) -> bytes:
    """The bytes of an uploaded file part, after a content-type check."""
    if upload is None or (not upload.filename and upload.size in (None, 0)):
        raise ApiError(400, "missing-file", f"send the photo as the multipart file '{field_name}'")
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if not (ctype in GENERIC_TYPES or any(ctype.startswith(a) for a in allowed)):
        raise ApiError(
            415,
            "unsupported-media-type",
            f"'{field_name}' is {ctype}; send an image (image/jpeg, image/png, ...)"
            + (" or a video (video/mp4, ...)" if allowed == VIDEO_TYPES else ""),
        )
    return upload.file.read()
