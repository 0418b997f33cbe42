"""Search records: reading a search back as it was shown, listing the searches one may
read, and the candidate files (crop, source image) a search shows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import case, exists, or_, select, true

from faceledger.accounts import auth
from faceledger.accounts.auth import Actor, PermissionDenied
from faceledger.cases.policy import Policy
from faceledger.core.searching import SearchDoor
from faceledger.core.shown import mark_chance_level
from faceledger.db.schema import case_requests, probes, reviews, searches, users
from faceledger.errors import PolicyTamperedError, RefusedError
from faceledger.vision.decode import decode_image
from faceledger.vision.probes import jpeg_thumbnail


def second_examinable(actor: Actor) -> Any:
    """The searches with a candidate ``actor`` may examine second, or already did: a first
    examiner's possible-lead, by someone else, on a search by an investigator of the
    actor's unit (or, for an actor without a unit, by one without a unit), with no second
    decision yet."""
    first, second = reviews.alias("first"), reviews.alias("second")
    searcher = users.alias("searcher")
    same_unit = searcher.c.unit == actor.unit if actor.unit else searcher.c.unit.is_(None)
    open_second = ~exists().where(
        (second.c.search_id == first.c.search_id)
        & (second.c.face_id == first.c.face_id)
        & (second.c.stage == "second")
    )
    awaiting = (
        select(first.c.search_id)
        .join(searches, searches.c.id == first.c.search_id)
        .join(searcher, searcher.c.id == searches.c.user_id)
        .where(
            (first.c.stage == "first")
            & (first.c.decision == "possible-lead")
            & (first.c.examiner_id != actor.user_id)
            & same_unit
            & open_second
        )
    )
    done = select(reviews.c.search_id).where(
        (reviews.c.stage == "second") & (reviews.c.examiner_id == actor.user_id)
    )
    return awaiting.union(done)


def results_view_ends(created_at: str, view_days: int) -> datetime:
    """When a search's candidates stop being viewable: the policy's ``result_view_days``
    after the search ran."""
    return auth.parse_ts(created_at) + timedelta(days=view_days)


class RecordsDoor(SearchDoor):
    # -- search records ---------------------------------------------------------------------
    @staticmethod
    def _visible_to(actor: Actor, table: Any = searches) -> Any:
        """Which searches (or, with ``table=verifications``, 1:1 comparisons) ``actor`` may
        read, as an SQL condition on the table joined with its user and case request: their
        own; a supervisor those of their unit and those run under approvals they gave;
        auditors all; and an investigator the searches with a candidate awaiting (or given)
        their second examination (:mod:`faceledger.core.reviews`). The one rule for a
        record, a list, a case file and a candidate file."""
        if "auditor" in actor.roles:
            return true()
        mine = [table.c.user_id == actor.user_id]
        if "supervisor" in actor.roles:
            if actor.unit:
                mine.append(users.c.unit == actor.unit)
            mine.append(case_requests.c.decided_by == actor.user_id)
        if table is searches and "investigator" in actor.roles:
            mine.append(searches.c.id.in_(second_examinable(actor)))
        return or_(*mine)

    @staticmethod
    def _rows_of(table: Any, *columns: Any) -> Any:
        return (
            select(table, users.c.username, users.c.unit, *columns)
            .join(users, users.c.id == table.c.user_id)
            .outerjoin(case_requests, case_requests.c.id == table.c.request_id)
        )

    def _search_rows(self, *columns: Any) -> Any:
        return self._rows_of(searches, *columns)

    def _readable_search(self, actor: Actor, search_id: int) -> Any:
        """The search row, if ``actor`` may read it (:meth:`_visible_to`)."""
        self.require(actor, "view_search", f"search {search_id}")
        visible = case((self._visible_to(actor), True), else_=False).label("visible")
        with self.store.engine.connect() as conn:
            row = (
                conn.execute(self._search_rows(visible).where(searches.c.id == search_id))
                .mappings()
                .first()
            )
        if row is None:
            raise RefusedError("no-such-search", f"no search {search_id}")
        if not row["visible"]:
            self.record(actor, "authz.denied", f"search {search_id}", permission="view_search")
            raise PermissionDenied("you may only view your own searches")
        return row

    def list_searches(
        self, actor: Actor, case_number: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """The searches ``actor`` may read, newest first (at most ``limit``): who, when, which
        case and purpose, how many faces and candidates; no candidate is named. Recorded
        (``search.list``) with the filter and how many were listed."""
        self.require(actor, "view_search", "searches")
        query = self._search_rows().where(self._visible_to(actor))
        if case_number:
            query = query.where(searches.c.case_number == case_number.strip())
        query = query.order_by(searches.c.id.desc()).limit(max(1, min(limit, 1000)))
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        out = [
            {
                "id": r["id"],
                "username": r["username"],
                "case_number": r["case_number"],
                "purpose": r["purpose"],
                "request_id": r["request_id"],
                "faces": r["faces"],
                "candidates": sum(len(f["candidates"]) for f in json.loads(r["result_json"])),
                "created_at": r["created_at"],
            }
            for r in rows
        ]
        self.record(
            actor, "search.list", case_number or "", case_number=case_number, listed=len(out)
        )
        return out

    def get_search(self, actor: Actor, search_id: int) -> dict[str, Any]:
        row = self._readable_search(actor, search_id)
        rec = self._record_of(row)
        self.record(
            actor,
            "search.view",
            f"search {search_id}",
            search_id=search_id,
            case_number=row["case_number"],
            candidates=[int(fid) for f in rec["results"] for fid, _score in f["candidates"]],
        )
        return rec

    def _record_of(self, row: Any) -> dict[str, Any]:
        """A search row as its record: what it showed, whether its candidates' files may
        still be opened and whether its probe photo is kept. Records nothing."""
        results = json.loads(row["result_json"])
        # The record shows whether its candidates' crops and images may still be opened
        # (:meth:`candidate_file` enforces it); a policy file tampered with hides nothing
        # here, so the defaults say how long.
        try:
            view_days = self.policy().result_view_days
        except PolicyTamperedError:
            view_days = Policy().result_view_days
        ends = results_view_ends(row["created_at"], view_days)
        return {
            k: row[k]
            for k in (
                "id",
                "username",
                "case_number",
                "purpose",
                "justification",
                "request_id",
                "probe_sha256",
                "faces",
                "created_at",
            )
        } | {
            "results": results,
            "result_view_days": view_days,
            "results_viewable": auth.utcnow() < ends,
            "shown": self._shown(row, results),
            "probe_kept": self._kept_probe(row["probe_sha256"]) is not None,
        }

    def _kept_probe(self, probe_sha256: str) -> Path | None:
        """The stored probe photo, while retention (``retain_probes_days``) keeps it."""
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(probes.c.stored_path, probes.c.expires_at).where(
                    probes.c.sha256 == probe_sha256
                )
            ).first()
        if row is None or auth.parse_ts(row.expires_at) <= auth.utcnow():
            return None
        path = self.data_dir / row.stored_path
        return path if path.is_file() else None

    def probe_thumbnail(self, actor: Actor, search_id: int, size: int = 480) -> bytes:
        """The search's probe photo as a JPEG of at most ``size`` pixels a side, for those
        who may read the search, while retention keeps the photo; recorded
        (``probe.view``)."""
        row = self._readable_search(actor, search_id)
        path = self._kept_probe(row["probe_sha256"])
        if path is None:
            raise RefusedError(
                "probe-not-kept",
                f"search {search_id}'s probe photo is not kept (policy retain_probes_days)",
            )
        self.record(
            actor,
            "probe.view",
            row["probe_sha256"],
            search_id=search_id,
            case_number=row["case_number"],
        )
        return jpeg_thumbnail(decode_image(path.read_bytes()).pixels, size)

    def _shown(self, row: Any, results: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The search as it was shown (None for searches stored before schema 3), each
        candidate marked ``erased`` when its face has since left the gallery."""
        if not row["shown_json"]:
            return None
        shown = dict(json.loads(row["shown_json"]))
        if "lead_max_expected_false" not in shown:  # stored before chance level was marked
            try:
                line = self.policy().lead_max_expected_false
            except PolicyTamperedError:
                line = Policy().lead_max_expected_false
            shown["lead_max_expected_false"] = line
            mark_chance_level(shown["faces"], line)
        ids = [int(fid) for f in results for fid, _score in f["candidates"]]
        present = set(self.store.candidates(ids)) if ids else set()
        for face in shown["faces"]:
            for c in face["candidates"]:
                c["erased"] = c["face_id"] not in present
        return shown

    def candidate_file(self, actor: Actor, search_id: int, face_id: int, what: str) -> Path:
        """A candidate's crop (``what="crop"``) or source image (``"image"``), served only
        as part of a search that returned that face, to those who may read the search, while
        the search is within the policy's ``result_view_days``.

        Thumbnails are not recorded one by one (the search, or the ``search.view`` of a
        record, lists the candidates shown); opening a source image is."""
        row = self._readable_search(actor, search_id)
        ends = results_view_ends(row["created_at"], self.policy().result_view_days)
        results = json.loads(row["result_json"])
        reason = None
        if auth.utcnow() >= ends:
            reason = "results-expired"
            message = f"search {search_id}'s results could be viewed until {ends:%Y-%m-%d}"
        elif face_id not in {int(fid) for f in results for fid, _ in f["candidates"]}:
            reason = "not-a-candidate"
            message = f"face {face_id} is not among the candidates of search {search_id}"
        if reason:
            self.record(
                actor,
                "authz.denied",
                f"search {search_id}",
                permission="view_candidate",
                reason=reason,
                face_id=face_id,
            )
            raise RefusedError(reason, message)
        rec = self.store.candidates([face_id]).get(face_id)
        if rec is None:
            raise RefusedError("erased", f"face {face_id} has since been erased from the gallery")
        if what == "image":
            self.record(
                actor,
                "image.view",
                rec.image_sha,
                search_id=search_id,
                face_id=face_id,
                case_number=row["case_number"],
            )
            return self.data_dir / rec.stored_path
        return self.data_dir / rec.crop_path
