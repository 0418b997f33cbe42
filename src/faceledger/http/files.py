"""Gallery files (crops, source images) served to whoever the core lets see them."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import FileResponse

from faceledger.http.errors import ApiError

MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".gif": "image/gif",
}

# -- settings ---------------------------------------------------------------------------------


def file_response(path: Path, filename: str) -> FileResponse:
    if not path.is_file():
        raise ApiError(404, "file-missing", "the file is gone (erased or purged)")
    media = MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return FileResponse(
        path,
        media_type=media,
        headers={
            "Cache-Control": "private, no-store",
            "Content-Disposition": f'inline; filename="{filename}"',
        },
    )
