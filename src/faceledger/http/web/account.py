"""The account page: your tokens, your password."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from faceledger.http.web.deps import PostUser, User
from faceledger.http.web.render import flash, redirect, render
from faceledger.http.web.responses import attempt

router = APIRouter(include_in_schema=False)


@router.get("/account")
def account_page(request: Request, user: User) -> Response:
    tokens = user.ctx.fl.list_tokens(user.actor)
    return render(request, "account.html", user, tokens=tokens)


@router.post("/account/password")
def account_password(
    request: Request,
    user: PostUser,
    current: Annotated[str, Form()] = "",
    new: Annotated[str, Form()] = "",
    confirm: Annotated[str, Form()] = "",
) -> Response:
    """Change one's own password (any role), given the current one."""
    if new != confirm:
        flash(
            user, "error", "The new password and its confirmation differ.", "password", ("confirm",)
        )
        return redirect("/account#password")
    address = user.ctx.client_address(request)

    def change() -> str:
        ended = user.ctx.fl.change_password(user.actor, current, new, address)
        return f" {len(ended)} other web session(s) ended." if ended else ""

    return attempt(user, "/account#password", change, "Password changed.{result}")
