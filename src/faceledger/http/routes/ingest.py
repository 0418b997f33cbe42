"""Ingest jobs: start one (a server-side path or uploads), follow it, cancel it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from faceledger.http.deps import Ctx, CurrentActor
from faceledger.http.ingest import start_ingest
from faceledger.http.schemas.common import ERRORS, UPLOAD_ERRORS
from faceledger.http.schemas.ingest import JobOut
from faceledger.http.settings import API

router = APIRouter(prefix=API)


@router.post(
    "/ingest", status_code=202, response_model=JobOut, responses=UPLOAD_ERRORS, tags=["gallery"]
)
def ingest(
    ctx: Ctx,
    actor: CurrentActor,
    source: Annotated[str, Form(description="Source name recorded as provenance")] = "",
    legal_basis: Annotated[str, Form(description="Why you may hold these photos")] = "",
    expires_at: Annotated[str, Form(description="Retention: delete after this ISO date")] = "",
    path: Annotated[
        str, Form(description="A server-side file, folder or archive under FACELEDGER_INGEST_ROOTS")
    ] = "",
    files: Annotated[
        list[UploadFile] | None, File(description="Photos or zip/tar archives")
    ] = None,
) -> dict[str, Any]:
    """Start an ingest job (admin); poll GET /api/v1/jobs/{id} for its progress."""
    return start_ingest(ctx, actor, source, legal_basis, expires_at, path, files or [])


@router.get("/jobs", response_model=list[JobOut], responses=ERRORS, tags=["gallery"])
def list_jobs(ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    """Ingest jobs of every server on this gallery (admin)."""
    return [j.as_dict() for j in ctx.jobs.list(actor)]


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS, tags=["gallery"])
def get_job(ctx: Ctx, actor: CurrentActor, job_id: str) -> dict[str, Any]:
    """An ingest job's progress and, once done, its summary (admin)."""
    return ctx.jobs.get(actor, job_id).as_dict()


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS, tags=["gallery"])
def cancel_job(ctx: Ctx, actor: CurrentActor, job_id: str) -> dict[str, Any]:
    """Stop a job after its current image; what it already stored stays (admin)."""
    return ctx.jobs.cancel(actor, job_id).as_dict()
