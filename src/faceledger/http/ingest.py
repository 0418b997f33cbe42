"""Ingest jobs started over HTTP (API and admin page): a server-side path under the
allowed roots, or uploaded photos and archives saved for the job."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from faceledger.accounts.auth import Actor
from faceledger.gallery.sources import ItemError, parse_when
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
    """Queue an ingest job from a server-side path (under the allowed roots) or uploads."""
    fl = ctx.fl
    fl.require(actor, "ingest", source)
    uploads = [u for u in uploads if u.filename or (u.size or 0) > 0]
    source = source.strip()
    if not source or len(source) > 200:
        raise ApiError(400, "missing-source", "name the source of these photos (source)")
    if len(legal_basis.strip()) < 3:
        raise ApiError(
            400, "missing-legal-basis", "legal_basis is required: why you may hold these photos"
        )
    if bool(server_path.strip()) == bool(uploads):
        raise ApiError(400, "nothing-to-ingest", "give either a server-side path or files")
    try:
        expiry = parse_when(expires_at, "expires_at")
    except ItemError as exc:
        raise ApiError(400, "bad-date", str(exc)) from exc
    if server_path.strip():
        raw = Path(server_path.strip())
        resolved = raw.resolve()
        roots = ctx.settings.ingest_roots
        if not raw.is_absolute() or not any(resolved.is_relative_to(r) for r in roots):
            fl.record(actor, "ingest.path_refused", str(raw), roots=[str(r) for r in roots])
            raise ApiError(
                403,
                "path-not-allowed",
                "server-side paths must be absolute and inside an allowed root "
                "(FACELEDGER_INGEST_ROOTS)" + ("; none is configured" if not roots else ""),
            )
        if not resolved.exists():
            raise ApiError(400, "no-such-path", f"{raw} does not exist on the server")
        job = ctx.jobs.submit_ingest(actor, [resolved], source, legal_basis.strip(), expiry)
        return job.as_dict()
    job_id, folder = ctx.jobs.new_upload_dir()
    try:
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
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    job = ctx.jobs.submit_ingest(
        actor,
        [folder / n for n in names],  # each file: archives are opened, not skipped
        source,
        legal_basis.strip(),
        expiry,
        upload_dir=folder,
        job_id=job_id,
        shown_paths=[f"upload:{n}" for n in names],
    )
    return job.as_dict()


def job_for(ctx: AppContext, actor: Actor, job_id: str) -> dict[str, Any]:
    ctx.fl.require(actor, "ingest", f"job {job_id}")
    job = ctx.jobs.get(job_id)
    if job is None:
        raise ApiError(404, "no-such-job", f"no job {job_id} (jobs are kept until a restart)")
    return job.as_dict()
