"""Logging in and out, and the overview a user lands on."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from faceledger.accounts.auth import PERMISSIONS, Actor, AuthError, LoginThrottled
from faceledger.core import RefusedError
from faceledger.http.context import ctx_of
from faceledger.http.errors import ApiError
from faceledger.http.sessions import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from faceledger.http.web.deps import PostUser, User
from faceledger.http.web.render import local_url, redirect, render

router = APIRouter(include_in_schema=False)


def landing(actor: Actor) -> str:
    if actor.can("search"):
        return "/search"
    if actor.can("decide_case"):
        return "/cases"
    if actor.can("read_ledger"):
        return "/audit"
    if actor.can("manage_users"):
        return "/admin"
    return "/"


def _login_page(
    request: Request, error: str = "", status: int = 200, retry_after: int | None = None
) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    resp = render(
        request,
        "login.html",
        None,
        status=status,
        login_csrf=token,
        error=error,
        next=local_url(request.query_params.get("next"), ""),
        bye=request.query_params.get("bye") == "1",
        uninitialised=not ctx_of(request).fl.has_users(),
    )
    resp.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=ctx_of(request).cookie_secure(request),
        path="/login",
        max_age=3600,
    )
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


@router.get("/login")
def login_form(request: Request) -> Response:
    ctx = ctx_of(request)
    if ctx.session_for(request.cookies.get(SESSION_COOKIE)) is not None:
        return redirect(local_url(request.query_params.get("next")))
    return _login_page(request)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    ctx = ctx_of(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, csrf_token):
        return _login_page(request, "The form expired; please try again.", 400)
    address = ctx.client_address(request)
    try:
        ctx.limit_login(address)
    except ApiError as exc:
        return _login_page(request, exc.message, 429, int(exc.headers["Retry-After"]))
    try:
        actor, sess = ctx.start_session(username.strip(), password, address)
    except LoginThrottled as exc:  # reads the same for every name, user or not
        return _login_page(request, _sentence(str(exc)), 429, exc.retry_after)
    except AuthError as exc:  # one message for unknown user, wrong password, disabled
        return _login_page(request, _sentence(str(exc).split(": ", 1)[-1]), 401)
    except RefusedError as exc:  # a name longer than any user's: nothing recorded
        return _login_page(request, _sentence(str(exc)), 400)
    resp = redirect(local_url(next, landing(actor)))
    resp.set_cookie(
        SESSION_COOKIE,
        sess.secret,
        httponly=True,
        samesite="strict",
        secure=ctx.cookie_secure(request),
        path="/",
    )
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return resp


@router.post("/logout")
def logout(request: Request, user: PostUser) -> Response:
    user.ctx.end_session(user.sess)
    resp = redirect("/login?bye=1")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# -- pages ------------------------------------------------------------------------------------


@router.get("/")
def home(request: Request, user: User) -> Response:
    stats = user.ctx.fl.stats(user.actor)
    return render(request, "home.html", user, stats=stats, permissions=PERMISSIONS)
