"""The faceledger core: every entry point (CLI, HTTP API, web UI) goes through here.

:class:`Faceledger` answers the three questions for every operation: who is this
(authentication), may they do this (:data:`faceledger.accounts.auth.PERMISSIONS`), and record that
they did (the ledger). Refusals are recorded too. Rules about searches (case number,
purpose, justification, supervisor approval, quotas, probe quality, candidate limits) are
checked here before any face is compared, so no interface can skip them.
"""

from __future__ import annotations

from faceledger.core.base import (
    LEDGER_TARGET_MAX,
    LEDGER_TEXT_MAX,
    MAX_CASE_NUMBER,
    MAX_JUSTIFICATION,
    MAX_NOTE,
    MAX_PURPOSE,
    MAX_TOKEN_NAME,
    MAX_UNIT,
    SYSTEM,
    SearchRequest,
    bounded,
    case_details,
    check_length,
    text_sha256,
)
from faceledger.core.compare import CompareDoor
from faceledger.core.disclosure import DisclosureDoor
from faceledger.core.migration import MigrationDoor, MigrationResult
from faceledger.core.multiphoto import MAX_PROBE_PHOTOS, MultiPhotoDoor
from faceledger.core.shared import SharedStateDoor, WebSession
from faceledger.core.subjects import SubjectsDoor
from faceledger.errors import PolicyTamperedError, RefusedError

__all__ = [
    "LEDGER_TARGET_MAX",
    "LEDGER_TEXT_MAX",
    "MAX_CASE_NUMBER",
    "MAX_JUSTIFICATION",
    "MAX_NOTE",
    "MAX_PROBE_PHOTOS",
    "MAX_PURPOSE",
    "MAX_TOKEN_NAME",
    "MAX_UNIT",
    "SYSTEM",
    "Faceledger",
    "MigrationResult",
    "PolicyTamperedError",
    "RefusedError",
    "SearchRequest",
    "WebSession",
    "bounded",
    "case_details",
    "check_length",
    "text_sha256",
]


class Faceledger(
    CompareDoor, DisclosureDoor, SubjectsDoor, MultiPhotoDoor, SharedStateDoor, MigrationDoor
):
    """The one door: every entry point holds one of these and calls its methods. Its parts
    are stacked by what they build on (see ARCHITECTURE.md): :class:`CoreBase` (state,
    ``require``, ``record``), accounts, cases, searching, records, reviews, case file,
    gallery, ledger, disclosure; the side-by-side comparison (``core/compare.py``), subjects'
    duplicates and merges (``core/subjects.py``), video probes (``core/video.py``) and
    multi-photo probes (``core/multiphoto.py``); what several API servers share: web
    sessions and rate limits (``core/shared.py``); moving the gallery from SQLite to
    PostgreSQL (``core/migration.py``)."""
