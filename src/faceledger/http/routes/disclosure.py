"""What leaves the system about a case: the lead report (PDF or HTML) and the disclosure
export (zip), for those who may read the case file."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import Response

from faceledger.http.deps import Ctx, CurrentActor
from faceledger.http.parsing import MAX_ID
from faceledger.http.schemas.common import ERRORS
from faceledger.http.settings import API

router = APIRouter(prefix=API)

CaseNumber = Annotated[str, PathParam(min_length=1, max_length=100, description="The case number")]
# A report page is self-contained: its own styles, pictures as data: URIs, no script at all.
REPORT_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "The lead report: a PDF, or a self-contained HTML page to print",
        "content": {"application/pdf": {}, "text/html": {}},
    },
}
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {
        "description": "The case's disclosure export (check it with `faceledger cases "
        "verify-export`); X-Faceledger-Export-Entry names its ledger entry (seq:hash)",
        "content": {"application/zip": {}},
    },
}


def file_stem(case_number: str) -> str:
    """A case number as part of a download's file name (letters, digits, . _ -)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", case_number).strip("._") or "case"


@router.get("/cases/{case_number:path}/report", responses=REPORT_RESPONSES, tags=["cases"])
def case_report(
    ctx: Ctx,
    actor: CurrentActor,
    case_number: CaseNumber,
    fmt: Annotated[str, Query(alias="format", pattern="^(pdf|html)$")] = "pdf",
    search_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> Response:
    """The lead report of a case, or of one of its searches (investigators, supervisors and
    auditors who may read the case file): leads, not identifications; per lead the probe and
    candidate side by side, score, est. FMR, expected false candidates, both examiners'
    decisions, the approval and the ledger entries behind it. Recorded (``case.report``)."""
    data = ctx.fl.case_report(actor, case_number, fmt, search_id)
    name = f"lead-report-{file_stem(case_number)}" + (f"-search-{search_id}" if search_id else "")
    headers = {"Cache-Control": "private, no-store"}
    if fmt == "html":
        headers |= {
            "Content-Security-Policy": REPORT_CSP,
            "Content-Disposition": f'inline; filename="{name}.html"',
        }
        return Response(data, media_type="text/html; charset=utf-8", headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{name}.pdf"'
    return Response(data, media_type="application/pdf", headers=headers)


@router.get("/cases/{case_number:path}/export", responses=EXPORT_RESPONSES, tags=["cases"])
def case_export(ctx: Ctx, actor: CurrentActor, case_number: CaseNumber) -> Response:
    """The case's disclosure export as a zip (investigators, supervisors and auditors who
    may read the case file): every search and verification, also those without a lead, every
    candidate shown, reviews, approvals, notes, the report, the case's ledger entries with
    the head, a manifest of SHA-256s and the export's own ledger entry (``case.export``)."""
    data, entry = ctx.fl.case_export(actor, case_number)
    return Response(
        data,
        media_type="application/zip",
        headers={
            "Cache-Control": "private, no-store",
            "Content-Disposition": f'attachment; filename="case-{file_stem(case_number)}'
            f'-export-{entry.seq}.zip"',
            "X-Faceledger-Export-Entry": f"{entry.seq}:{entry.hash}",
        },
    )
