"""Candidate review with a second examiner (#13 item 3).

The investigator who ran a search marks each candidate ``excluded``, ``inconclusive`` or
``possible-lead``, with a reason. A possible-lead becomes a **lead** only when a second
investigator (of the searcher's unit, never the first examiner) records an independent
decision without seeing the first one's: until both are recorded, the first decision is
hidden from every other investigator (blind verification). Disagreement is flagged for the
supervisor. Decisions are final, and each is a ledger entry (``candidate.review``) whose
sequence number the review row keeps."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select

from faceledger.accounts.auth import Actor, PermissionDenied
from faceledger.core.base import MAX_NOTE, check_length, text_sha256
from faceledger.core.records import RecordsDoor, second_examinable
from faceledger.db.schema import reviews, searches, users
from faceledger.errors import RefusedError

DECISIONS = ("excluded", "inconclusive", "possible-lead")
MIN_REASON = 3


def candidate_status(first: str | None, second: str | None) -> str:
    """Where a candidate stands: unreviewed, excluded, inconclusive, awaiting-second (a
    possible-lead without its second decision), lead (both possible-lead) or
    disagreement (the second examiner decided otherwise)."""
    if first is None:
        return "unreviewed"
    if first != "possible-lead":
        return first
    if second is None:
        return "awaiting-second"
    return "lead" if second == "possible-lead" else "disagreement"


class ReviewsDoor(RecordsDoor):
    def review(
        self, actor: Actor, search_id: int, face_id: int, decision: str, reason: str
    ) -> dict[str, Any]:
        """Record ``actor``'s decision on candidate ``face_id`` of search ``search_id``: the
        first examination (by whoever may read the search: its investigator) or, after a
        first possible-lead, the blind second one by another investigator. Returns the
        candidate's review state as ``actor`` may now see it."""
        self.require(actor, "review_candidate", f"search {search_id}")
        if decision not in DECISIONS:
            raise RefusedError(
                "bad-decision",
                f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}",
                fields=("decision",),
            )
        reason = reason.strip()
        check_length("reason", reason, MAX_NOTE)
        if len(reason) < MIN_REASON:
            raise RefusedError(
                "missing-reason",
                "every review decision needs a reason (what in the faces decided it)",
                fields=("reason",),
            )
        row = self._readable_search(actor, search_id)
        candidates = {
            int(fid) for f in json.loads(row["result_json"]) for fid, _ in f["candidates"]
        }
        if face_id not in candidates:
            raise RefusedError(
                "not-a-candidate",
                f"face {face_id} is not among the candidates of search {search_id}",
            )
        with self.store.engine.connect() as conn:
            stage = self._next_stage(conn, actor, search_id, face_id)
        if stage == "first" and row["user_id"] != actor.user_id:
            stage = "not-the-searcher"
        if stage in ("same-examiner", "not-the-searcher"):
            self.record(
                actor,
                "authz.denied",
                f"search {search_id}",
                permission="review_candidate",
                reason=stage,
                face_id=face_id,
            )
            raise PermissionDenied(
                "the second examination must be made by another investigator, not the first"
                if stage == "same-examiner"
                else "the first decision on a candidate is made by the investigator who searched"
            )
        with self.store.writer.begin() as conn:
            # decided again under the write lock: another examiner may have been quicker
            if self._next_stage(conn, actor, search_id, face_id) != stage or stage == "done":
                raise RefusedError(
                    "already-reviewed",
                    f"candidate {face_id} of search {search_id} has all the decisions it needs",
                )
            self._insert_recorded(
                conn,
                actor,
                reviews,
                {
                    "search_id": search_id,
                    "face_id": face_id,
                    "stage": stage,
                    "examiner_id": actor.user_id,
                    "decision": decision,
                    "reason": reason,
                },
                "candidate.review",
                row["case_number"],
                "review_id",
                {
                    "search_id": search_id,
                    "face_id": face_id,
                    "stage": stage,
                    "decision": decision,
                    "reason_sha256": text_sha256(reason),
                    "case_number": row["case_number"],
                },
            )
        return self._review_states(actor, [search_id])[(search_id, face_id)]

    @staticmethod
    def _next_stage(conn: Any, actor: Actor, search_id: int, face_id: int) -> str:
        """Which decision ``actor`` would record on the candidate: ``first``, ``second``,
        ``done`` (it has all it needs: a first that is not a possible-lead, or two) or
        ``same-examiner`` (the first examiner may not give the second)."""
        done = {
            r.stage: r
            for r in conn.execute(
                select(reviews.c.stage, reviews.c.examiner_id, reviews.c.decision).where(
                    (reviews.c.search_id == search_id) & (reviews.c.face_id == face_id)
                )
            )
        }
        first = done.get("first")
        if first is None:
            return "first"
        if "second" in done or first.decision != "possible-lead":
            return "done"
        if first.examiner_id == actor.user_id:
            return "same-examiner"
        return "second"

    def _review_rows(self, search_ids: Iterable[int]) -> list[dict[str, Any]]:
        ids = sorted(set(search_ids))
        if not ids:
            return []
        with self.store.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    select(reviews, users.c.username.label("examiner"))
                    .join(users, users.c.id == reviews.c.examiner_id)
                    .where(reviews.c.search_id.in_(ids))
                    .order_by(reviews.c.id)
                ).mappings()
            ]

    def _review_states(
        self, actor: Actor, search_ids: Iterable[int]
    ) -> dict[tuple[int, int], dict[str, Any]]:
        """Per reviewed candidate (search id, face id): its status and the decisions
        ``actor`` may see. While a possible-lead awaits its second decision, the first is
        shown only to its own examiner, supervisors and auditors; to any other investigator
        the candidate is ``awaiting-second`` with no decision (blind verification), and
        ``yours`` says whether they may give the second."""
        rows = self._review_rows(search_ids)
        by: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        for r in rows:
            by.setdefault((r["search_id"], r["face_id"]), {})[r["stage"]] = r
        overseer = bool(actor.roles & {"supervisor", "auditor"})
        states: dict[tuple[int, int], dict[str, Any]] = {}
        for key, stages in by.items():
            first, second = stages.get("first"), stages.get("second")
            status = candidate_status(
                first["decision"] if first else None, second["decision"] if second else None
            )
            blind = (
                status == "awaiting-second"
                and not overseer
                and first is not None
                and first["examiner_id"] != actor.user_id
            )
            states[key] = {
                "status": status,
                "first": None if blind else _decision(first),
                "second": _decision(second),
                "blind": blind,
            }
        return states

    def get_search(self, actor: Actor, search_id: int) -> dict[str, Any]:
        """The search record (:meth:`RecordsDoor.get_search`) with each candidate's review
        state as ``actor`` may see it (:meth:`_with_reviews`)."""
        rec = super().get_search(actor, search_id)
        return self._with_reviews(actor, [rec])[0]

    def _with_reviews(self, actor: Actor, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each shown candidate of the records gets ``review``: its status, the decisions
        ``actor`` may see and whether ``actor`` may record one now (``can_decide``)."""
        states = self._review_states(actor, [r["id"] for r in recs])
        may_review = actor.can("review_candidate")
        for rec in recs:
            for face in rec["shown"]["faces"] if rec.get("shown") else []:
                for c in face["candidates"]:
                    state = states.get((rec["id"], c["face_id"])) or {
                        "status": "unreviewed",
                        "first": None,
                        "second": None,
                        "blind": False,
                    }
                    state["can_decide"] = may_review and self._may_decide(actor, rec, state)
                    c["review"] = state
        return recs

    @staticmethod
    def _may_decide(actor: Actor, rec: dict[str, Any], state: dict[str, Any]) -> bool:
        if state["status"] == "unreviewed":
            return rec["username"] == actor.username
        if state["status"] == "awaiting-second":
            return state["blind"]
        return False

    def review_queue(self, actor: Actor) -> list[dict[str, Any]]:
        """The candidates awaiting ``actor``'s second examination: search, face, case and
        when the search ran, never the first decision."""
        self.require(actor, "review_candidate", "review queue")
        first, second = reviews.alias("first"), reviews.alias("second")
        query = (
            select(
                first.c.search_id,
                first.c.face_id,
                searches.c.case_number,
                searches.c.created_at,
                users.c.username,
            )
            .join(searches, searches.c.id == first.c.search_id)
            .join(users, users.c.id == searches.c.user_id)
            .outerjoin(
                second,
                (second.c.search_id == first.c.search_id)
                & (second.c.face_id == first.c.face_id)
                & (second.c.stage == "second"),
            )
            .where(
                (first.c.stage == "first")
                & (first.c.decision == "possible-lead")
                & (first.c.examiner_id != actor.user_id)
                & second.c.id.is_(None)
                & first.c.search_id.in_(second_examinable(actor))
            )
            .order_by(first.c.id)
        )
        with self.store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def _decision(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "examiner": row["examiner"],
        "decision": row["decision"],
        "reason": row["reason"],
        "created_at": row["created_at"],
        "ledger_seq": row["ledger_seq"],
    }
