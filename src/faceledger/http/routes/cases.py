"""Case requests: ask, list, approve, deny, withdraw."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from faceledger.http.deps import Ctx, CurrentActor, DbId
from faceledger.http.schemas.cases import (
    CaseDecisionIn,
    CaseRequestIn,
    CaseRequestOut,
    CaseWithdrawIn,
)
from faceledger.http.schemas.common import ERRORS, CreatedOut, OkOut
from faceledger.http.settings import API

router = APIRouter(prefix=API)


@router.get("/cases", response_model=list[CaseRequestOut], responses=ERRORS, tags=["cases"])
def list_cases(
    ctx: Ctx,
    actor: CurrentActor,
    status: Annotated[str | None, Query(pattern="^(pending|approved|denied|withdrawn)$")] = None,
) -> list[dict[str, Any]]:
    """Case requests you may see: your own; supervisors their unit's; admins, auditors all."""
    return ctx.fl.list_case_requests(actor, status)


@router.post("/cases", status_code=201, response_model=CreatedOut, responses=ERRORS, tags=["cases"])
def request_case(ctx: Ctx, actor: CurrentActor, body: CaseRequestIn) -> dict[str, int]:
    """Ask a supervisor to approve searches for a case and purpose (investigators)."""
    rid = ctx.fl.request_case(actor, body.case_number, body.purpose, body.justification)
    return {"id": rid}


@router.post("/cases/{request_id}/approve", response_model=OkOut, responses=ERRORS, tags=["cases"])
def approve_case(
    ctx: Ctx, actor: CurrentActor, request_id: DbId, body: CaseDecisionIn | None = None
) -> dict[str, bool]:
    """Approve a pending request (supervisors of the requester's unit; not your own). The
    approval lasts the policy's approval_days and, with search_limit, that many searches."""
    body = body or CaseDecisionIn()
    ctx.fl.decide_case(actor, request_id, True, body.note, body.search_limit)
    return {"ok": True}


@router.post("/cases/{request_id}/deny", response_model=OkOut, responses=ERRORS, tags=["cases"])
def deny_case(
    ctx: Ctx, actor: CurrentActor, request_id: DbId, body: CaseDecisionIn | None = None
) -> dict[str, bool]:
    """Deny a pending request (supervisors of the requester's unit)."""
    ctx.fl.decide_case(actor, request_id, False, (body or CaseDecisionIn()).note)
    return {"ok": True}


@router.post("/cases/{request_id}/withdraw", response_model=OkOut, responses=ERRORS, tags=["cases"])
def withdraw_case(
    ctx: Ctx, actor: CurrentActor, request_id: DbId, body: CaseWithdrawIn
) -> dict[str, bool]:
    """End an approval now (supervisors of the requester's unit)."""
    ctx.fl.withdraw_case(actor, request_id, body.note)
    return {"ok": True}
