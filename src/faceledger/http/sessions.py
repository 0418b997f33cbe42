"""The web UI's session cookie, CSRF header and page messages. The sessions themselves are in
the gallery database (:mod:`faceledger.core.shared`), shared by every server: the cookie is
the session token's secret, whose hash alone is stored."""

from __future__ import annotations

from dataclasses import dataclass, field

SESSION_COOKIE = "faceledger_session"
LOGIN_CSRF_COOKIE = "faceledger_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class Flash:
    """A message for the next page: ``section`` is the id of the page part it belongs to
    (the redirect's ``#fragment``), where the page shows it, in view; ``fields`` the form
    inputs at fault, marked there; ``values`` what the form held, to fill it in again."""

    kind: str
    message: str
    section: str = ""
    fields: tuple[str, ...] = ()
    values: dict[str, str] = field(default_factory=dict)
