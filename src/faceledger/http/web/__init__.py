"""The web UI: server-rendered pages (Jinja2) with a little vanilla JavaScript.

Pages call the same core (:class:`faceledger.core.Faceledger`) and the same shared helpers as
the API (the modules of :mod:`faceledger.http`, never its routes); the search page's JavaScript
calls the API itself with the session cookie and the CSRF header. Every form that changes
something carries the session's CSRF token. Pages a role may not use answer 403, and the core
records the denial.
"""

from __future__ import annotations

from fastapi import APIRouter

from faceledger.http.web import (
    account,
    admin,
    audit,
    casefile,
    cases,
    compare,
    erasure,
    login,
    search,
)

ROUTERS = (
    login.router,
    search.router,
    compare.router,
    cases.router,
    casefile.router,  # after cases: its /cases/{case_number:path} takes what is left
    audit.router,
    admin.router,
    erasure.router,
    account.router,
)

# Every page in one router, in this order (none is in the OpenAPI schema).
router = APIRouter(routes=[route for r in ROUTERS for route in r.routes], include_in_schema=False)
