"""How pages answer what went wrong: a form's refusal as a message on the page it came
from, an error as an error page (or the login form)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from faceledger.accounts.auth import PermissionDenied
from faceledger.errors import fields_at_fault
from faceledger.http.errors import KNOWN_ERRORS, error_for
from faceledger.http.web.deps import LoginRequired, WebUser, current_web_user
from faceledger.http.web.render import flash, redirect, render, section_of


def error_page(request: Request, exc: Exception, status: int, code: str, message: str) -> Response:
    """How the exception handlers answer a page request."""
    if isinstance(exc, LoginRequired) or status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/"
        return redirect("/login?" + urlencode({"next": target}))
    user = None
    try:
        user = current_web_user(request)
    except Exception:
        user = None
    return render(
        request,
        "error.html",
        user,
        status=status,
        status_code=status,
        code=code,
        message=message,
        title={403: "Not permitted", 404: "Not found"}.get(status, "Something went wrong"),
    )


def attempt(
    user: WebUser,
    back: str,
    fn: Any,
    success: str | None = None,
    done: str | None = None,
    values: dict[str, str] | None = None,
) -> RedirectResponse:
    """Run a core call for a form. A refusal goes back to ``back`` with its message in the
    section ``back``'s ``#fragment`` names (in view after the redirect), the inputs at fault
    marked and the form's ``values`` kept; success goes to ``done`` (else ``back``)."""
    try:
        result = fn()
    except PermissionDenied:
        raise
    except (*KNOWN_ERRORS, ValueError) as exc:
        if isinstance(exc, ValueError):
            code, message = "invalid", str(exc)
        else:
            _status, code, message, _headers = error_for(exc)
        flash(
            user,
            "error",
            f"{message} ({code})",
            section_of(back),
            fields_at_fault(exc),
            values,
        )
        return redirect(back)
    target = done or back
    if success:
        flash(user, "ok", success.format(result=result), section_of(target))
    return redirect(target)
