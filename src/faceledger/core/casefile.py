"""The case file (#13 item 2): everything done under one case number that the reader may
see: searches (also those with no candidate) and 1:1 verifications as they were shown,
case requests and approvals, candidate reviews, notes, and the case's ledger entries (who
did what, when), with the ledger head at the time of reading.

What a reader sees follows the same rules as a single record (:meth:`RecordsDoor.
_visible_to`): writing a case number on a search gives nobody access to other people's work
under it. Auditors see all of it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from faceledger.accounts.auth import Actor
from faceledger.core.base import MAX_CASE_NUMBER, MAX_NOTE, check_length, text_sha256
from faceledger.core.reviews import ReviewsDoor
from faceledger.db.schema import case_notes, ledger, searches, users, verifications
from faceledger.errors import RefusedError
from faceledger.ledger import audit

MIN_NOTE = 3


class CaseFileDoor(ReviewsDoor):
    def get_case(self, actor: Actor, case_number: str) -> dict[str, Any]:
        """The case file of ``case_number`` as ``actor`` may see it; recorded
        (``case.view``). ``no-such-case`` when there is nothing in it ``actor`` may see
        (also when the case does not exist: the two are not told apart)."""
        case_number = self._case_number(actor, case_number)
        file = self._case_file(actor, case_number)
        self.record(
            actor,
            "case.view",
            case_number,
            case_number=case_number,
            searches=[s["id"] for s in file["searches"]],
            verifications=[v["id"] for v in file["verifications"]],
        )
        with self.store.engine.connect() as conn:
            head = conn.execute(
                select(ledger.c.seq, ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1)
            ).one()
        return file | {"head": {"seq": int(head.seq), "hash": str(head.hash)}}

    def _case_number(self, actor: Actor, case_number: str) -> str:
        self.require(actor, "view_case", case_number)
        case_number = (case_number or "").strip()
        check_length("case number", case_number, MAX_CASE_NUMBER)
        if not case_number:
            raise RefusedError("missing-case-fields", "a case number", fields=("case_number",))
        return case_number

    def _case_file(self, actor: Actor, case_number: str) -> dict[str, Any]:
        with self.store.engine.connect() as conn:
            search_rows = conn.execute(
                self._search_rows()
                .where((searches.c.case_number == case_number) & self._visible_to(actor))
                .order_by(searches.c.id)
            ).mappings()
            recs = self._with_reviews(actor, [self._record_of(r) for r in search_rows])
            verify_rows = (
                conn.execute(
                    self._rows_of(verifications)
                    .where(
                        (verifications.c.case_number == case_number)
                        & self._visible_to(actor, verifications)
                    )
                    .order_by(verifications.c.id)
                )
                .mappings()
                .all()
            )
            notes = [
                dict(r)
                for r in conn.execute(
                    select(
                        case_notes.c.id,
                        case_notes.c.text,
                        case_notes.c.created_at,
                        case_notes.c.ledger_seq,
                        users.c.username,
                    )
                    .join(users, users.c.id == case_notes.c.user_id)
                    .where(
                        (case_notes.c.case_number == case_number) & self._notes_visible_to(actor)
                    )
                    .order_by(case_notes.c.id)
                ).mappings()
            ]
        requests = self.list_case_requests(actor, case_number=case_number)
        if not (recs or verify_rows or notes or requests):
            raise RefusedError("no-such-case", f"no case {case_number!r} that you may see")
        entries = self._case_entries(actor, case_number, recs, verify_rows, requests, notes)
        hashes = {e["seq"]: e["hash"] for e in entries}
        verify_est = {
            e["details"].get("verify_id"): e["details"].get("est_fmr")
            for e in entries
            if e["action"] == "verify"
        }
        return {
            "case_number": case_number,
            "searches": recs,
            "verifications": [
                {
                    k: v[k]
                    for k in (
                        "id",
                        "username",
                        "purpose",
                        "justification",
                        "request_id",
                        "photo_a_sha256",
                        "photo_b_sha256",
                        "outcome",
                        "score",
                        "created_at",
                    )
                }
                | {"est_fmr": verify_est.get(v["id"])}
                for v in verify_rows
            ],
            "requests": requests,
            "reviews": [
                {"search_id": rec["id"], "face_id": c["face_id"], "stage": stage}
                | c["review"][stage]
                | {"ledger_hash": hashes.get(c["review"][stage]["ledger_seq"])}
                for rec in recs
                for face in (rec["shown"] or {}).get("faces", [])
                for c in face["candidates"]
                for stage in ("first", "second")
                if c["review"][stage]
            ],
            "candidates": [
                {
                    "search_id": rec["id"],
                    "probe_face_index": face["face_index"],
                    "face_id": c["face_id"],
                    "rank": c["rank"],
                    "score": c["score"],
                    "est_fmr": c.get("est_fmr"),
                    "expected_false": c.get("expected_false_candidates"),
                    "erased": c.get("erased", False),
                    "status": c["review"]["status"],
                    "first": c["review"]["first"],
                    "second": c["review"]["second"],
                }
                for rec in recs
                for face in (rec["shown"] or {}).get("faces", [])
                for c in face["candidates"]
            ],
            "notes": notes,
            "entries": entries,
        }

    @staticmethod
    def _notes_visible_to(actor: Actor) -> Any:
        """Notes are read by their author, the people of the author's unit, and auditors."""
        if "auditor" in actor.roles:
            return users.c.id.is_not(None)
        if actor.unit:
            return (case_notes.c.user_id == actor.user_id) | (users.c.unit == actor.unit)
        return case_notes.c.user_id == actor.user_id

    def _case_entries(
        self,
        actor: Actor,
        case_number: str,
        recs: list[dict[str, Any]],
        verify_rows: Any,
        requests: list[dict[str, Any]],
        notes: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """The case's ledger entries that ``actor`` may see: an auditor all of them; anyone
        else their own and those about the searches, verifications, requests and notes
        they may see, except a first examiner's decision they must not see yet (blind
        second examination)."""
        search_ids = {r["id"] for r in recs}
        hidden = {
            (rec["id"], c["face_id"])
            for rec in recs
            for face in (rec["shown"] or {}).get("faces", [])
            for c in face["candidates"]
            if c["review"]["blind"]
        }
        visible = {
            "search_id": search_ids,
            "verify_id": {v["id"] for v in verify_rows},
            "request_id": {r["id"] for r in requests},
            "note_id": {n["id"] for n in notes},
        }
        auditor = "auditor" in actor.roles
        out = []
        for e in audit.iter_entries(self.store, case=case_number):
            d = e.details
            key = (d.get("search_id"), d.get("face_id"))
            if e.action == "candidate.review" and d.get("stage") == "first" and key in hidden:
                continue
            mine = e.actor == actor.username
            about = any(d.get(key) in ids for key, ids in visible.items() if key in d)
            if auditor or mine or about:
                out.append(
                    {
                        "seq": e.seq,
                        "ts": e.ts,
                        "actor": e.actor,
                        "action": e.action,
                        "target": e.target,
                        "details": d,
                        "prev_hash": e.prev_hash,
                        "hash": e.hash,
                    }
                )
        return out

    def add_case_note(self, actor: Actor, case_number: str, text: str) -> int:
        """A note on a case by someone working it (who may see something in it); recorded
        (``case.note``, with the note's SHA-256)."""
        self.require(actor, "note_case", case_number)
        case_number = self._case_number(actor, case_number)
        text = (text or "").strip()
        check_length("note", text, MAX_NOTE)
        if len(text) < MIN_NOTE:
            raise RefusedError("missing-note", "the note is empty", fields=("text",))
        self._case_file(actor, case_number)  # no-such-case unless they work on it
        with self.store.writer.begin() as conn:
            return self._insert_recorded(
                conn,
                actor,
                case_notes,
                {"case_number": case_number, "user_id": actor.user_id, "text": text},
                "case.note",
                case_number,
                "note_id",
                {"case_number": case_number, "text_sha256": text_sha256(text)},
            )
