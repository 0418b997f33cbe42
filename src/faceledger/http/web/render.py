"""Rendering pages: the templates, the navigation, flash messages and redirects."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from faceledger import __version__
from faceledger.accounts.auth import Actor
from faceledger.http.sessions import Flash
from faceledger.http.web.deps import WebUser
from faceledger.search.searcher import LEADS_NOTICE

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def _when(ts: str | None, empty: str = "—") -> str:
    """'2026-01-02T10:11:12+00:00' -> '2026-01-02 10:11 UTC' (the ledger keeps UTC)."""
    if not ts:
        return empty
    text = str(ts).replace("T", " ")
    return f"{text[:16]} UTC" if len(text) >= 16 and text[10] == " " else text


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _sci(x: float) -> str:
    mantissa, exp = f"{x:.1e}".split("e")
    return f"{mantissa}×10{str(int(exp)).translate(SUPERSCRIPT)}"


def _rate(x: float | None) -> str:
    """A false match rate as the pages show it (search.js formats the same way)."""
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.3f}" if x >= 0.01 else _sci(x)


def _count(x: float | None) -> str:
    """An expected count of false candidates."""
    if x is None:
        return "n/a"
    if x >= 10:
        return f"{x:.0f}"
    if x >= 0.01:
        return f"{x:.2f}"
    return "0" if x == 0 else _sci(x)


def _basename(path: str | None) -> str:
    """The last part of a provenance path (folders, archive members: a/b.zip!c/d.jpg)."""
    return re.split(r"[\\/!]", path or "")[-1]


templates.env.filters["when"] = _when
templates.env.filters["basename"] = _basename
templates.env.filters["rate"] = _rate
templates.env.filters["count"] = _count


def nav_for(actor: Actor | None) -> list[tuple[str, str]]:
    if actor is None:
        return []
    items = [("/", "Overview")]
    if actor.can("search"):
        items.append(("/search", "Search"))
    if actor.can("verify"):
        items.append(("/verify", "Verify"))
    if actor.can("view_search"):
        items.append(("/searches", "Searches"))
    items.append(("/cases", "Cases"))
    if actor.can("review_candidate"):
        items.append(("/reviews", "Reviews"))
    if actor.can("read_ledger") or actor.can("report") or actor.can("verify_ledger"):
        items.append(("/audit", "Audit"))
    if actor.can("manage_users"):
        items.append(("/admin", "Admin"))
    items.append(("/account", "Account"))
    return items


class FormState:
    """What a form's section shows after a refused submission: the message next to the
    first input at fault, every input at fault marked, the values it held."""

    def __init__(self, section: str, flashes: list[Flash]) -> None:
        bound = next((f for f in flashes if f.fields), None)
        self.general = [f for f in flashes if f is not bound]
        self.fields: tuple[str, ...] = bound.fields if bound else ()
        self.first_field = self.fields[0] if self.fields else ""
        self.message = bound.message if bound else ""
        self.error_id = f"{section}-error"
        self.values: dict[str, str] = {}
        for f in flashes:
            self.values |= f.values

    def value(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)


class FlashBox:
    """The flashes of one page view. A section takes those aimed at it (``take``); the
    rest show at the top of the page, so none is lost."""

    def __init__(self, flashes: list[Flash]) -> None:
        self._left = list(flashes)

    def take(self, section: str) -> list[Flash]:
        mine = [f for f in self._left if f.section == section]
        self._left = [f for f in self._left if f.section != section]
        return mine

    def form(self, section: str) -> FormState:
        return FormState(section, self.take(section))

    def rest(self) -> list[Flash]:
        left, self._left = self._left, []
        return left


def render(
    request: Request,
    name: str,
    user: WebUser | None = None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    flashes: list[Flash] = []
    if user is not None:
        flashes = user.ctx.take_flashes(user.sess)
    actor = user.actor if user else None
    base = {
        "actor": actor,
        "roles": sorted(actor.roles) if actor else [],
        "csrf": user.sess.csrf if user else "",
        "flashes": FlashBox(flashes),
        "nav": nav_for(actor),
        "path": request.url.path,
        "notice": LEADS_NOTICE,
        "version": __version__,
    }
    return templates.TemplateResponse(request, name, base | context, status_code=status)


def flash(
    user: WebUser,
    kind: str,
    message: str,
    section: str = "",
    fields: tuple[str, ...] = (),
    values: dict[str, str] | None = None,
) -> None:
    """A message for the next page, in its ``section`` (see :class:`Flash`)."""
    user.ctx.add_flash(user.sess, Flash(kind, message, section, tuple(fields), dict(values or {})))


def section_of(url: str) -> str:
    """The page section a redirect aims at: its ``#fragment``."""
    return url.partition("#")[2]


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def local_url(url: str | None, default: str = "/") -> str:
    """Only same-site paths: never an open redirect."""
    if url and url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return default
