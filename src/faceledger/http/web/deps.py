"""Who is logged in: the page dependencies (the session cookie; CSRF on forms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, Request

from faceledger.accounts.auth import Actor, AuthError
from faceledger.core import WebSession
from faceledger.http.context import AppContext, ctx_of
from faceledger.http.sessions import SESSION_COOKIE


class LoginRequired(AuthError):
    """No valid session: the page sends the browser to the login form."""


@dataclass
class WebUser:
    ctx: AppContext
    sess: WebSession
    actor: Actor


def current_web_user(request: Request) -> WebUser:
    ctx = ctx_of(request)
    sess = ctx.session_for(request.cookies.get(SESSION_COOKIE))
    if sess is None:
        raise LoginRequired()
    try:
        actor = ctx.session_actor(sess)
    except AuthError as exc:
        raise LoginRequired() from exc
    ctx.limit_user(actor)
    return WebUser(ctx, sess, actor)


def web_user(request: Request) -> WebUser:
    return current_web_user(request)


def web_user_csrf(request: Request, csrf_token: Annotated[str, Form()] = "") -> WebUser:
    ctx = ctx_of(request)
    sess = ctx.session_for(request.cookies.get(SESSION_COOKIE))
    if sess is None:
        raise LoginRequired()
    ctx.check_csrf(sess, csrf_token, request.url.path)
    return current_web_user(request)


User = Annotated[WebUser, Depends(web_user)]
PostUser = Annotated[WebUser, Depends(web_user_csrf)]
