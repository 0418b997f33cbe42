"""The ledger for auditors: transparency reports, verification, checkpoints, entries."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from faceledger.http.deps import Ctx, CurrentActor
from faceledger.http.errors import ApiError
from faceledger.http.ledger_query import ledger_page
from faceledger.http.parsing import day_bound, parse_day
from faceledger.http.schemas.audit import CheckpointOut, LedgerPageOut, LedgerVerifyOut
from faceledger.http.schemas.common import ERRORS
from faceledger.http.settings import API
from faceledger.ledger import reports

router = APIRouter(prefix=API)


@router.get(
    "/audit/report",
    responses={
        **ERRORS,
        200: {
            "description": "The report as JSON, CSV or a self-contained HTML page",
            "content": {
                "application/json": {
                    "example": {
                        "from": "2026-01-01",
                        "to": "2026-01-31",
                        "searches": 42,
                        "searches_per_user": {"ivy": 30, "ian": 12},
                        "searches_per_purpose": {"violent-crime": 40, "missing-person": 2},
                        "searches_per_case": {"CASE-1": 20},
                        "searches_per_week": {"2026-W02": {"violent-crime": 12}},
                        "ledger_head": "1204:c0ffee...",
                        "generated_at": "2026-02-01T09:00:00+00:00",
                        "generated_by": "ada",
                        "verifications": 3,
                        "verifications_per_user": {"ivy": 3},
                        "verifications_per_purpose": {"violent-crime": 3},
                        "verifications_per_case": {"CASE-1": 3},
                        "verifications_per_outcome": {"compared": 3},
                        "detections_per_user": {"ivy": 5},
                        "account_changes": [
                            {
                                "when": "2026-01-05T10:00:00+00:00",
                                "by": "root",
                                "action": "user.set_roles",
                                "user": "ivy",
                                "change": "roles investigator -> investigator, supervisor",
                            }
                        ],
                        "case_requests": {"requested": 3, "approved": 2, "denied": 1},
                        "refusals": {"quota": 1},
                        "erasure": {
                            "erasures": 1,
                            "faces_erased": 2,
                            "images_deleted": 1,
                            "purges": 0,
                        },
                    }
                },
                "text/csv": {},
                "text/html": {},
            },
        },
    },
    tags=["audit"],
)
def audit_report(
    ctx: Ctx,
    actor: CurrentActor,
    date_from: Annotated[str, Query(alias="from", examples=["2026-01-01"])],
    date_to: Annotated[str, Query(alias="to", examples=["2026-01-31"])],
    fmt: Annotated[str, Query(alias="format", pattern="^(json|csv|html)$")] = "json",
) -> Response:
    """Transparency report from the ledger (auditors; supervisors: their unit)."""
    start, end = parse_day(date_from, "from"), parse_day(date_to, "to")
    if end < start:
        raise ApiError(400, "bad-date", "'to' is before 'from'")
    rep = ctx.fl.audit_report(actor, start, end)
    name = f"faceledger-report-{start}-{end}"
    if fmt == "csv":
        return Response(
            reports.to_csv(rep),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    if fmt == "html":
        return Response(
            reports.to_html(rep),
            media_type="text/html",
            headers={
                # the report is self-contained: inline style and a data: chart, nothing else
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                "img-src data:",
                "Content-Disposition": f'inline; filename="{name}.html"',
            },
        )
    return JSONResponse(rep)


@router.get("/audit/verify", response_model=LedgerVerifyOut, responses=ERRORS, tags=["audit"])
def audit_verify(
    ctx: Ctx,
    actor: CurrentActor,
    checkpoint: Annotated[str | None, Query(description="seq:hash kept elsewhere")] = None,
) -> dict[str, Any]:
    """Recompute the ledger's hash chain and every search, verification and case request
    against it (auditors, admins); ``checkpoint`` may be a transparency report's
    ``ledger_head``. The check is itself recorded."""
    res = ctx.fl.audit_verify(actor, checkpoint or None)
    return res.__dict__


@router.post("/audit/checkpoint", response_model=CheckpointOut, responses=ERRORS, tags=["audit"])
def audit_checkpoint(ctx: Ctx, actor: CurrentActor) -> dict[str, str]:
    """The head of the chain (seq:hash), to keep outside this machine (auditors, admins)."""
    return {"checkpoint": ctx.fl.audit_checkpoint(actor)}


@router.get(
    "/audit/entries",
    response_model=LedgerPageOut,
    responses={
        **ERRORS,
        200: {
            "description": "A page of entries (JSON), or with format=csv|jsonl the whole "
            "filtered ledger in seq order, streamed (re-verifiable: seq, ts, actor, action, "
            "target, details, prev_hash, hash)",
            "content": {"application/json": {}, "text/csv": {}, "application/x-ndjson": {}},
        },
    },
    tags=["audit"],
)
def audit_entries(
    ctx: Ctx,
    actor: CurrentActor,
    actor_name: Annotated[str | None, Query(alias="actor")] = None,
    action: str | None = None,
    since: Annotated[str | None, Query(alias="from", description="Date or ISO time")] = None,
    until: Annotated[
        str | None, Query(alias="to", description="Date (inclusive) or ISO time")
    ] = None,
    case: Annotated[
        str | None,
        Query(description="Entries about this case number (target or details.case_number)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    fmt: Annotated[str, Query(alias="format", pattern="^(json|csv|jsonl)$")] = "json",
) -> Any:
    """Ledger entries with filters (auditors), newest first by default; ``format=csv`` or
    ``jsonl`` exports the whole filtered ledger (the export is recorded)."""
    if fmt != "json":
        lines = ctx.fl.audit_export(
            actor,
            fmt,
            actor=actor_name or None,
            action=action or None,
            since=day_bound(since, "from"),
            until=day_bound(until, "to", end=True),
            case=case or None,
        )
        media = "text/csv" if fmt == "csv" else "application/x-ndjson"
        return StreamingResponse(
            iter(lines),
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="faceledger-ledger.{fmt}"'},
        )
    entries = ledger_page(ctx.fl, actor, actor_name, action, since, until, case)
    if order == "desc":
        entries.reverse()
    return {
        "total": len(entries),
        "offset": offset,
        "limit": limit,
        "entries": [e.__dict__ for e in entries[offset : offset + limit]],
    }
