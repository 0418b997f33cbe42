"""How errors answer over HTTP: :class:`ApiError`, the status and stable ``code`` of each
exception the core raises (:func:`error_for`), and the JSON error body."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from faceledger.accounts.auth import AuthError, LoginThrottled, PermissionDenied
from faceledger.core import PolicyTamperedError, RefusedError
from faceledger.errors import BadTextError, ModelMismatchError
from faceledger.gallery.sources import SourceError
from faceledger.search.searcher import NoFaceError
from faceledger.vision.decode import DecodeError


class ApiError(Exception):
    """An error this module raises itself (the core raises its own exceptions)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


REFUSAL_STATUS = {
    "quota-exceeded": 429,
    "not-approved": 403,
    "self-approval": 403,
    "other-unit": 403,
    "no-unit": 403,
    "impersonation": 403,
    "self-roles": 403,
    "self-unit": 403,
    "results-expired": 403,
    "not-a-candidate": 404,
    "erased": 410,
    "probe-not-kept": 410,
    "bad-decision": 400,
    "already-reviewed": 409,
    "no-such-case": 404,
    "missing-note": 400,
    "missing-case-fields": 400,
    "justification-too-short": 400,
    "bad-report": 400,
    "bad-format": 400,
    "low-quality": 422,
    "already-decided": 409,
    "already-initialised": 409,
    "user-exists": 409,
    "self-disable": 409,
    "empty-gallery": 409,
    "bad-username": 400,
    "bad-expiry": 400,
    "missing-reason": 400,
    "no-calibration": 400,
    "not-in-preview": 400,
    "nothing-confirmed": 400,
    "preview-used": 409,
    "preview-expired": 410,
    "bad-unit": 400,
    "wrong-password": 403,
    "same-password": 400,
    "path-not-allowed": 403,
    "no-such-path": 400,
    "same-subject": 409,
    "label-needed": 400,
    "bad-subject": 400,
    "bad-threshold": 400,
    "no-such-track": 400,
}

HTTP_CODES = {
    400: "bad-request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    429: "rate-limited",
}


def refusal_status(code: str) -> int:
    if code in REFUSAL_STATUS:
        return REFUSAL_STATUS[code]
    return 404 if code.startswith("no-such-") else 400


def error_for(exc: Exception) -> tuple[int, str, str, dict[str, str]]:
    """(status, code, message, headers) for an exception the API knows; 500 otherwise."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message, exc.headers
    if isinstance(exc, LoginThrottled):
        wait = str(exc.retry_after)
        return 429, "login-throttled", str(exc), {"Retry-After": wait}
    if isinstance(exc, AuthError):
        return 401, "unauthenticated", str(exc), {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, PermissionDenied):
        return 403, "permission-denied", str(exc), {}
    if isinstance(exc, RefusedError):
        return refusal_status(exc.code), exc.code, str(exc), {}
    if isinstance(exc, DecodeError):
        return 422, exc.reason, str(exc), {}
    if isinstance(exc, NoFaceError):
        return 422, "no-face", str(exc), {}
    if isinstance(exc, PolicyTamperedError):
        return 409, "policy-tampered", str(exc), {}
    if isinstance(exc, ModelMismatchError):
        return 409, "model-mismatch", str(exc), {}
    if isinstance(exc, SourceError):
        return 400, "source-error", str(exc), {}
    if isinstance(exc, HTTPException):
        code = HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code
        return exc.status_code, code, message, dict(exc.headers or {})
    if isinstance(exc, BadTextError):
        return 400, "bad-text", str(exc), {}
    if isinstance(exc, UnicodeEncodeError) and "surrogates" in exc.reason:
        # JSON allows "\ud800" escapes; such text cannot be stored, hashed or logged as UTF-8
        return 400, "bad-text", "text must be valid Unicode (no lone surrogates)", {}
    return 500, "internal-error", "internal error; see the server log", {}


KNOWN_ERRORS = (
    ApiError,
    AuthError,
    PermissionDenied,
    RefusedError,
    DecodeError,
    NoFaceError,
    PolicyTamperedError,
    ModelMismatchError,
    SourceError,
    BadTextError,
)


@contextmanager
def invalid_input(code: str) -> Iterator[None]:
    """Turn the core's ValueErrors (bad roles, weak password, bad policy...) into 400s."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, code, str(exc)) from exc


# -- body size limit, security headers ----------------------------------------------------------


def json_error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str],
    fields: tuple[str, ...] = (),
) -> JSONResponse:
    """The error body; ``fields`` (the inputs at fault) only where the error names some."""
    body: dict[str, object] = {"code": code, "message": message}
    if fields:
        body["fields"] = list(fields)
    return JSONResponse(body, status_code=status, headers=headers)
