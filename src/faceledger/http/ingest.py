"""Ingest jobs started over HTTP (API and admin page): a server-side path under the
allowed roots, or uploaded photos and archives saved for the job (the rules are the core's
:class:`~faceledger.core.jobs.JobManager`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from faceledger.accounts.auth import Actor
from faceledger.http.context import AppContext
from faceledger.http.errors import ApiError
from faceledger.http.uploads import GENERIC_TYPES

ARCHIVE_TYPES = (
    "application/zip",
    "application/x-zip-compressed",
    "application/x-tar",
    "application/gzip",
    "application/x-gzip",
    "application/x-gtar",
    "application/x-bzip2",
    "application/x-xz",
)


def safe_filename(name: str) -> str:
    base = Path(name.replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[:120]


def start_ingest(
    ctx: AppContext,
    actor: Actor,
    source: str,
    legal_basis: str,
    expires_at: str,
    server_path: str,
    uploads: list[UploadFile],
) -> dict[str, Any]:
    """Queue an ingest job from a server-side path or uploads; the core's job manager
    holds the rules (who may, provenance, allowed roots), this saves the uploaded parts."""
    uploads = [u for u in uploads if u.filename or (u.size or 0) > 0]

    def save(folder: Path) -> list[str]:
        names: list[str] = []
        for i, up in enumerate(uploads):
            ctype = (up.content_type or "").split(";")[0].strip().lower()
            if not (ctype in GENERIC_TYPES or ctype.startswith("image/") or ctype in ARCHIVE_TYPES):
                raise ApiError(
                    415,
                    "unsupported-media-type",
                    f"{up.filename}: {ctype} is neither an image nor a zip/tar archive",
                )
            name = safe_filename(up.filename or f"file{i}")
            if name in names:
                name = f"{i}_{name}"
            names.append(name)
            with open(folder / name, "wb") as out:
                while chunk := up.file.read(1 << 20):
                    out.write(chunk)
        return names

    job = ctx.jobs.start_ingest(
        actor, source, legal_basis, expires_at, server_path, save if uploads else None
    )
    return job.as_dict()
