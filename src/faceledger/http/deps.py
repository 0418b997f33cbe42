"""The API's FastAPI dependencies: the context, the caller (bearer token or session
cookie with CSRF) and the annotated parameter types the routes share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from faceledger.accounts.auth import Actor, AuthError
from faceledger.http.context import AppContext, ctx_of
from faceledger.http.parsing import MAX_ID
from faceledger.http.sessions import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE
from faceledger.timing import span

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API token (`faceledger tokens create`, or POST /api/v1/tokens).",
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description="The web UI's session; other than GET, requests also need the "
    "X-CSRF-Token header with the session's CSRF token.",
)


def current_actor(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    sid: Annotated[str | None, Depends(cookie_scheme)],
) -> Actor:
    """Who is calling: a bearer token, else the session cookie (with CSRF on writes)."""
    ctx = ctx_of(request)
    if creds is not None:
        client = ctx.client_address(request)
        ctx.check_failed_auth(client)
        try:
            with span("auth"):
                actor = ctx.fl.authenticate_token(creds.credentials)
        except AuthError:
            ctx.note_failed_auth(client)
            raise
    else:
        sess = ctx.session_for(sid)
        if sess is None:
            client = ctx.client_address(request)
            reason = "no credentials" if not sid else "session ended"
            ctx.record_anonymous(client, request.method, request.url.path, reason)
            raise AuthError(
                "authentication required: send 'Authorization: Bearer <token>' or log in"
                if not sid
                else "your session has ended; log in again"
            )
        if request.method not in SAFE_METHODS:
            ctx.check_csrf(sess, request.headers.get(CSRF_HEADER), request.url.path)
        with span("auth"):
            actor = ctx.session_actor(sess)
    ctx.limit_user(actor)
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


def ctx_dep(request: Request) -> AppContext:
    return ctx_of(request)


Ctx = Annotated[AppContext, Depends(ctx_dep)]

FormStr = Annotated[str, Form()]
DbId = Annotated[int, PathParam(ge=1, le=MAX_ID)]  # ids in paths (larger: 422, not a crash)
