"""The API (``/api/v1``), one module per domain, each with its own ``APIRouter``.

Routes translate HTTP to calls of :class:`faceledger.core.Faceledger` and back; the core
authenticates, decides permissions, applies the rules and writes the ledger.
"""

from __future__ import annotations

from fastapi import APIRouter

from faceledger.http.routes import (
    accounts,
    audit,
    casefile,
    cases,
    compare,
    disclosure,
    erasure,
    ingest,
    policy,
    search,
    subjects,
    system,
)

ROUTERS = (
    system.router,
    search.router,
    compare.router,
    ingest.router,
    erasure.router,
    subjects.router,
    cases.router,
    disclosure.router,  # before casefile: /cases/{case_number:path}/report, /export
    audit.router,
    accounts.router,
    policy.router,
    casefile.router,  # last: /cases/{case_number:path} takes what is left
)

# All of the API in one router, its routes as the domain routers made them (full paths, in
# this order): what the app serves and what the API fuzz test walks.
router = APIRouter(routes=[route for r in ROUTERS for route in r.routes])
