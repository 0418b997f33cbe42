"""Ledger entries filtered as the API and the audit page ask (dates are whole days)."""

from __future__ import annotations

from faceledger.accounts.auth import Actor
from faceledger.core import Faceledger
from faceledger.http.parsing import day_bound
from faceledger.ledger import audit


def ledger_page(
    fl: Faceledger,
    actor: Actor,
    actor_name: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
    case: str | None = None,
) -> list[audit.Entry]:
    return fl.audit_entries(
        actor,
        actor=actor_name or None,
        action=action or None,
        since=day_bound(since, "from"),
        until=day_bound(until, "to", end=True),
        case=case or None,
    )
