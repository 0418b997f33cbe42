"""The policy and case requests: approvals a search needs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, update

from faceledger.accounts import auth
from faceledger.accounts.auth import Actor
from faceledger.cases.policy import Policy
from faceledger.core.accounts import AccountsDoor
from faceledger.core.base import (
    MAX_CASE_NUMBER,
    MAX_JUSTIFICATION,
    MAX_NOTE,
    MAX_PURPOSE,
    case_details,
    check_length,
)
from faceledger.db.schema import (
    case_requests,
    users,
)
from faceledger.db.store import now_iso
from faceledger.errors import RefusedError
from faceledger.ledger import audit

# The shortest justification a search or a case request may give (after trimming).
MIN_JUSTIFICATION = 10


class CasesDoor(AccountsDoor):
    # -- policy ----------------------------------------------------------------------------
    # -- case requests ---------------------------------------------------------------------
    def request_case(self, actor: Actor, case_number: str, purpose: str, justification: str) -> int:
        self._check_case_lengths(case_number, purpose, justification)
        self.require(actor, "request_case", case_number)
        self._check_case_fields(actor, case_number, purpose, justification)
        case_number, justification = case_number.strip(), justification.strip()
        with self.store.writer.begin() as conn:
            pk = conn.execute(
                insert(case_requests).values(
                    case_number=case_number,
                    purpose=purpose,
                    justification=justification,
                    requested_by=actor.user_id,
                    status="pending",
                    created_at=now_iso(),
                )
            ).inserted_primary_key
            assert pk is not None  # a single-row INSERT always reports its key
            rid = pk[0]
            audit.append(
                conn,
                actor.username,
                "case.request",
                case_number,
                {"request_id": int(rid), **case_details(case_number, purpose, justification)},
            )
        return int(rid)

    def _decider_check(self, actor: Actor, permission: str, request_id: int) -> Any:
        """The request, if ``actor`` (a supervisor) may decide on it: requests of their own
        unit only, never their own request; a supervisor without a unit decides none."""
        self.require(actor, permission, f"request {request_id}")
        req = users.alias("req")
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(case_requests, req.c.unit.label("unit"))
                .join(req, req.c.id == case_requests.c.requested_by)
                .where(case_requests.c.id == request_id)
            ).first()
        if row is None:
            raise RefusedError("no-such-request", f"no case request {request_id}")
        reason = None
        if row.requested_by == actor.user_id:
            reason, message = "self-approval", "you cannot decide your own request"
        elif not actor.unit:
            reason = "no-unit"
            message = "supervisors without a unit decide no requests; an admin must set yours"
        elif row.unit != actor.unit:
            reason = "other-unit"
            message = f"request {request_id} comes from another unit than yours ({actor.unit})"
        if reason:  # refused, and recorded like a denial
            self.record(
                actor,
                "authz.denied",
                f"request {request_id}",
                permission=permission,
                reason=reason,
            )
            raise RefusedError(reason, message)
        return row

    def decide_case(
        self,
        actor: Actor,
        request_id: int,
        approve: bool,
        note: str = "",
        search_limit: int | None = None,
    ) -> None:
        """Approve or deny a pending request. An approval lasts the policy's
        ``approval_days`` and, with ``search_limit``, that many searches and verifications."""
        check_length("note", note, MAX_NOTE)
        if search_limit is not None and not 1 <= search_limit <= 100_000:
            raise RefusedError("bad-search-limit", "a search limit is 1 to 100,000 searches")
        self._decider_check(actor, "decide_case", request_id)
        pol = self.policy()
        with self.store.writer.begin() as conn:
            row = conn.execute(
                select(case_requests).where(case_requests.c.id == request_id)
            ).first()
            assert row is not None  # requests are never deleted
            if row.status != "pending":
                raise RefusedError("already-decided", f"request {request_id} is {row.status}")
            status = "approved" if approve else "denied"
            expires = (
                (auth.utcnow() + timedelta(days=pol.approval_days)).isoformat(timespec="seconds")
                if approve
                else None
            )
            conn.execute(
                update(case_requests)
                .where(case_requests.c.id == request_id)
                .values(
                    status=status,
                    decided_by=actor.user_id,
                    decided_at=now_iso(),
                    decision_note=note,
                    expires_at=expires,
                    search_limit=search_limit if approve else None,
                )
            )
            details: dict[str, Any] = {
                "request_id": request_id,
                "case_number": row.case_number,
                "purpose": row.purpose,
                "note": note,
            }
            if approve:
                details |= {"expires_at": expires, "search_limit": search_limit}
            audit.append(
                conn,
                actor.username,
                f"case.{'approve' if approve else 'deny'}",
                row.case_number,
                details,
            )

    def withdraw_case(self, actor: Actor, request_id: int, note: str) -> None:
        """End an approval before its time (a supervisor of the requester's unit)."""
        check_length("note", note, MAX_NOTE)
        self._decider_check(actor, "decide_case", request_id)
        if len(note.strip()) < 3:
            raise RefusedError("missing-note", "say why the approval is withdrawn")
        with self.store.writer.begin() as conn:
            row = conn.execute(
                select(case_requests).where(case_requests.c.id == request_id)
            ).first()
            assert row is not None  # requests are never deleted
            if row.status != "approved":
                raise RefusedError(
                    "not-approved", f"request {request_id} is {row.status}, not approved"
                )
            conn.execute(
                update(case_requests)
                .where(case_requests.c.id == request_id)
                .values(
                    status="withdrawn",
                    withdrawn_by=actor.user_id,
                    withdrawn_at=now_iso(),
                    withdrawal_note=note.strip(),
                )
            )
            audit.append(
                conn,
                actor.username,
                "case.withdraw",
                row.case_number,
                {
                    "request_id": request_id,
                    "case_number": row.case_number,
                    "purpose": row.purpose,
                    "note": note.strip(),
                },
            )

    def list_case_requests(
        self, actor: Actor, status: str | None = None, case_number: str | None = None
    ) -> list[dict[str, Any]]:
        self.require(actor, "list_cases")
        req, dec, wdr = users.alias("req"), users.alias("dec"), users.alias("wdr")
        q = (
            select(
                case_requests,
                req.c.username.label("requested_by_name"),
                req.c.unit.label("unit"),
                dec.c.username.label("decided_by_name"),
                wdr.c.username.label("withdrawn_by_name"),
            )
            .join(req, req.c.id == case_requests.c.requested_by)
            .outerjoin(dec, dec.c.id == case_requests.c.decided_by)
            .outerjoin(wdr, wdr.c.id == case_requests.c.withdrawn_by)
        )
        if status:
            q = q.where(case_requests.c.status == status)
        if case_number is not None:
            q = q.where(case_requests.c.case_number == case_number)
        if not (actor.roles & {"admin", "auditor"}):
            mine = case_requests.c.requested_by == actor.user_id
            if "supervisor" in actor.roles and actor.unit:
                q = q.where(mine | (req.c.unit == actor.unit))
            else:  # investigators, and supervisors without a unit: their own requests
                q = q.where(mine)
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(case_requests.c.id)).mappings()]

    @staticmethod
    def _check_case_lengths(case: str, purpose: str, why: str) -> None:
        check_length("case number", case, MAX_CASE_NUMBER)
        check_length("purpose", purpose, MAX_PURPOSE)
        check_length("justification", why, MAX_JUSTIFICATION)

    def _check_case_fields(self, actor: Actor, case: str, purpose: str, why: str) -> Policy:
        """The case number, a purpose of the policy and a justification of at least
        ``MIN_JUSTIFICATION`` characters. Missing fields are refused together
        (``missing-case-fields``); a justification that is there but too short on its own
        (``justification-too-short``). The refusal names the fields at fault; its message
        names no interface's spelling of them (no command-line options, no form labels)."""
        pol = self.policy()
        needs: list[tuple[str, str]] = []  # (field at fault, what a search needs)
        if not case or not case.strip():
            needs.append(("case_number", "a case number"))
        if purpose not in pol.purposes:
            needs.append(
                (
                    "purpose",
                    f"a purpose from the policy list ({', '.join(pol.purposes)})"
                    + (f"; {purpose!r} is not one" if purpose else ""),
                )
            )
        given = len((why or "").strip())
        if given < MIN_JUSTIFICATION:
            needs.append(
                (
                    "justification",
                    f"a justification of at least {MIN_JUSTIFICATION} characters"
                    + (f" (this one has {given})" if given else ""),
                )
            )
        if not needs:
            return pol
        fields = tuple(f for f, _ in needs)
        code = "justification-too-short" if fields == ("justification",) and given else ""
        code = code or "missing-case-fields"
        self.record(actor, "search.refused", case or "", reason=code, purpose=purpose)
        raise RefusedError(code, "a search needs " + "; ".join(n for _, n in needs), fields)
