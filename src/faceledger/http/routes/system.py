"""``/health``, ``/me``, ``/stats``: the server and the caller."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from faceledger import __version__
from faceledger.http.deps import Ctx, CurrentActor
from faceledger.http.schemas.common import ERRORS
from faceledger.http.schemas.system import HealthOut, MeOut
from faceledger.http.settings import API

router = APIRouter(prefix=API)


@router.get("/health", response_model=HealthOut, tags=["server"])
def health(ctx: Ctx) -> dict[str, Any]:
    """Liveness and readiness (no authentication): the database answers."""
    return {"status": "ok", "version": __version__, "initialised": ctx.fl.has_users()}


@router.get("/me", response_model=MeOut, responses=ERRORS, tags=["server"])
def me(actor: CurrentActor) -> dict[str, Any]:
    """Who the credentials belong to."""
    return {
        "username": actor.username,
        "roles": sorted(actor.roles),
        "unit": actor.unit,
        "via": actor.via,
        "token_id": actor.token_id,
    }


@router.get("/stats", responses=ERRORS, tags=["server"])
def stats(ctx: Ctx, actor: CurrentActor) -> dict[str, Any]:
    """What the gallery holds (any role)."""
    return ctx.fl.stats(actor)
