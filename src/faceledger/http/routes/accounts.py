"""Users (admin) and API tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from faceledger.http.deps import Ctx, CurrentActor, DbId
from faceledger.http.errors import ApiError, invalid_input
from faceledger.http.schemas.accounts import (
    TokenCreatedOut,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
    UserPatch,
)
from faceledger.http.schemas.common import ERRORS, CreatedOut, OkOut
from faceledger.http.settings import API

router = APIRouter(prefix=API)


@router.get("/users", response_model=list[UserOut], responses=ERRORS, tags=["admin"])
def list_users(ctx: Ctx, actor: CurrentActor) -> list[dict[str, Any]]:
    """All users (admin)."""
    return ctx.fl.list_users(actor)


@router.post("/users", status_code=201, response_model=CreatedOut, responses=ERRORS, tags=["admin"])
def add_user(ctx: Ctx, actor: CurrentActor, body: UserIn) -> dict[str, int]:
    """Add a user (admin)."""
    with invalid_input("invalid-user"):
        uid = ctx.fl.add_user(actor, body.username, body.password, body.roles, body.unit)
    return {"id": uid}


@router.patch("/users/{username}", response_model=OkOut, responses=ERRORS, tags=["admin"])
def patch_user(ctx: Ctx, actor: CurrentActor, username: str, body: UserPatch) -> dict[str, bool]:
    """Disable or enable a user, set their roles or their unit (admin; not your own roles
    or unit)."""
    if body.disabled is None and body.roles is None and body.unit is None:
        raise ApiError(400, "nothing-to-change", "give disabled, roles and/or unit")
    with invalid_input("invalid-user"):
        if body.roles is not None:
            ctx.fl.set_roles(actor, username, body.roles)
        if body.unit is not None:
            ctx.fl.set_unit(actor, username, body.unit)
        if body.disabled is not None:
            ctx.fl.set_disabled(actor, username, body.disabled)
    return {"ok": True}


@router.post("/users/{username}/unlock", response_model=OkOut, responses=ERRORS, tags=["admin"])
def unlock_user(ctx: Ctx, actor: CurrentActor, username: str) -> dict[str, bool]:
    """Clear a user's login back-off from every address (admin)."""
    ctx.fl.unlock_user(actor, username)
    return {"ok": True}


@router.get("/tokens", response_model=list[TokenOut], responses=ERRORS, tags=["admin"])
def list_tokens(ctx: Ctx, actor: CurrentActor, user: str | None = None) -> list[dict[str, Any]]:
    """Your tokens, or (admin) another user's."""
    return ctx.fl.list_tokens(actor, user or None)


@router.post(
    "/tokens", status_code=201, response_model=TokenCreatedOut, responses=ERRORS, tags=["admin"]
)
def create_token(ctx: Ctx, actor: CurrentActor, body: TokenIn) -> dict[str, Any]:
    """A new API token for yourself (nobody, admins included, creates one for another
    user); the secret is shown once."""
    user = body.user or actor.username
    tid, secret = ctx.fl.create_token(actor, user, body.name.strip() or "api", body.days)
    return {"id": tid, "user": user, "secret": secret}


@router.delete("/tokens/{token_id}", response_model=OkOut, responses=ERRORS, tags=["admin"])
def revoke_token(ctx: Ctx, actor: CurrentActor, token_id: DbId) -> dict[str, bool]:
    """Revoke a token (your own; admins any)."""
    ctx.fl.revoke_token(actor, token_id)
    return {"ok": True}
