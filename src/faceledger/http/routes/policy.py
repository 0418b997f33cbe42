"""The search policy: read it (any role), replace or change it (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from faceledger.cases.policy import Policy
from faceledger.http.deps import Ctx, CurrentActor
from faceledger.http.errors import invalid_input
from faceledger.http.policy import policy_dict
from faceledger.http.schemas.common import ERRORS
from faceledger.http.schemas.policy import PolicyIn, PolicyPatch
from faceledger.http.settings import API

router = APIRouter(prefix=API)


@router.get("/policy", response_model=PolicyIn, responses=ERRORS, tags=["admin"])
def get_policy(ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    """The search policy in force (any role: purposes, quota, limits)."""
    return policy_dict(ctx.fl.policy())


@router.put("/policy", response_model=PolicyIn, responses=ERRORS, tags=["admin"])
def put_policy(ctx: Ctx, actor: CurrentActor, body: PolicyIn) -> dict[str, Any]:  # type: ignore[valid-type]
    """Replace the policy (admin); the change is recorded with old and new values."""
    with invalid_input("invalid-policy"):
        new = Policy(**body.model_dump())  # type: ignore[attr-defined]
        ctx.fl.save_policy(actor, new)
    return policy_dict(new)


@router.patch("/policy", response_model=PolicyIn, responses=ERRORS, tags=["admin"])
def patch_policy(ctx: Ctx, actor: CurrentActor, body: PolicyPatch) -> dict[str, Any]:  # type: ignore[valid-type]
    """Change some policy settings (admin)."""
    changes = {k: v for k, v in body.model_dump().items() if v is not None}  # type: ignore[attr-defined]
    with invalid_input("invalid-policy"):
        return policy_dict(ctx.fl.update_policy(actor, changes))
