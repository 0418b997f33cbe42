"""Comparing faces: 1:N search, 1:1 verification, detection, and reading results back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select

from faceledger.accounts import auth
from faceledger.accounts.auth import Actor
from faceledger.cases.policy import Policy
from faceledger.core.base import (
    MAX_CASE_NUMBER,
    SearchRequest,
    _count_comparisons,
    case_details,
    check_length,
)
from faceledger.core.cases import CasesDoor
from faceledger.core.shown import face_doc, shown_search
from faceledger.db.schema import (
    blocklist,
    case_requests,
    searches,
    verifications,
)
from faceledger.db.schema import probes as probe_table
from faceledger.db.store import atomic_write, insert_or_ignore, now_iso
from faceledger.errors import RefusedError
from faceledger.ledger import audit
from faceledger.search.searcher import LEADS_NOTICE, NoFaceError, Searcher
from faceledger.search.subjects import attach_subjects
from faceledger.timing import span, timed
from faceledger.types import Face
from faceledger.vision import probes
from faceledger.vision.analysis import FaceAnalyzer
from faceledger.vision.decode import DecodeError, decode_probe
from faceledger.vision.detection import create_detector

# A face_box picks the detected face it overlaps by at least this (intersection over union);
# where none does, the box itself is the face, marked by hand.
PICK_MIN_IOU = 0.3


def picked_face(boxes: list[list[int]], face_box: list[int]) -> int | None:
    """The index of the detected face ``face_box`` picks, or None where it overlaps none
    enough (:data:`PICK_MIN_IOU`): then it marks a face by hand."""
    overlaps = [probes.iou(b, face_box) for b in boxes]
    near = max(range(len(boxes)), key=overlaps.__getitem__, default=None)
    return near if near is not None and overlaps[near] >= PICK_MIN_IOU else None


class SearchDoor(CasesDoor):
    # -- search ----------------------------------------------------------------------------
    def set_analyzer_factory(self, factory: Callable[[], FaceAnalyzer]) -> None:
        self._analyzer_factory = factory
        self._searcher = None

    def searcher(self) -> Searcher:
        if self._searcher is None:
            if self._analyzer_factory is None:
                from faceledger.vision.routing import create_embedder_for_model

                model = self.store.model_id()
                if model is None:
                    raise RefusedError("empty-gallery", "the gallery is empty: ingest first")
                from faceledger.gallery.ingest import PipelineSettings

                embedder = create_embedder_for_model(
                    model, model_dir=self.model_dir, device=self.device
                )
                settings = PipelineSettings(
                    min_face=20, model_dir=self.model_dir, device=self.device
                )
                # Probes: HOG, then dlib's MMOD CNN (on ONNX Runtime) where HOG finds no
                # face: a turned or blurred face is still searched, and a probe HOG reads
                # costs no more (benchmarks/detect.py: HOG 30 ms, the CNN 100 ms an LFW photo).
                detector = (
                    settings.analyzer().detector
                    if self.model_dir
                    else create_detector("hog+cnn", device=self.device)
                )
                self._searcher = Searcher(
                    self.store, FaceAnalyzer(detector=detector, embedder=embedder)
                )
            else:
                self._searcher = Searcher(self.store, self._analyzer_factory())
        return self._searcher

    def warm_up(self) -> None:
        """Load the probe models, the vector index and the subject count before the first
        search asks for them (a server calls this at start: at 1M faces the first search
        otherwise waits about 23 s). Reads nothing out and records nothing; an empty gallery
        has nothing to load."""
        try:
            searcher = self.searcher()
        except RefusedError:
            return
        with self.analysis_lock:
            searcher.warm_up()

    def comparisons_today(self, user_id: int) -> int:
        """Searches and 1:1 verifications by ``user_id`` since 00:00 UTC (the daily quota)."""
        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since = start.isoformat(timespec="seconds")
        with self.store.engine.connect() as conn:
            return _count_comparisons(
                conn, lambda t: (t.c.user_id == user_id, t.c.created_at >= since)
            )

    def _approval_problem(self, actor: Actor, req: SearchRequest, pol: Policy) -> str | None:
        """Why the approval this search relies on (or lacks) does not cover it, or None.

        A quoted request must be the searcher's own, approved, for this very case and
        purpose, not expired, withdrawn or used up. Without one, the purpose must not need
        approval and no request for this case may have been denied."""
        case = req.case_number.strip()
        rid = req.request_id
        with self.store.engine.connect() as conn:
            row = (
                None
                if rid is None
                else conn.execute(select(case_requests).where(case_requests.c.id == rid)).first()
            )
            denied = conn.execute(
                select(case_requests.c.id)
                .where(case_requests.c.case_number == case, case_requests.c.status == "denied")
                .limit(1)
            ).scalar()
            used = (
                0 if row is None else _count_comparisons(conn, lambda t: (t.c.request_id == rid,))
            )
        if rid is None:
            if req.purpose in pol.approval_required:
                return (
                    f"purpose {req.purpose!r} needs a supervisor-approved case request; "
                    "quote its request id"
                )
            if denied is not None:
                return (
                    f"a request for case {case!r} was denied (request {denied}); the case "
                    "can be searched again only under a newly approved request"
                )
            return None
        if row is None:
            return f"there is no case request {rid}"
        if row.requested_by != actor.user_id:
            return f"request {rid} was made by another user"
        if row.case_number != case or row.purpose != req.purpose:
            return (
                f"request {rid} approves case {row.case_number!r} for {row.purpose!r}, "
                f"not case {case!r} for {req.purpose!r}"
            )
        if row.status != "approved":
            return f"request {rid} is {row.status}, not approved"
        if row.expires_at and auth.parse_ts(row.expires_at) <= auth.utcnow():
            return f"the approval of request {rid} expired at {row.expires_at}"
        if row.search_limit is not None and used >= int(row.search_limit):
            return f"the approval of request {rid} covered {row.search_limit} searches, all used"
        return None

    @timed("checks")
    def authorise_search(self, actor: Actor, req: SearchRequest) -> Policy:
        """All the rules, before any face is compared. Raises RefusedError/PermissionDenied."""
        self._check_case_lengths(req.case_number, req.purpose, req.justification)
        self.require(actor, "search", req.case_number)
        pol = self._check_case_fields(actor, req.case_number, req.purpose, req.justification)
        reason = self._approval_problem(actor, req, pol)
        if reason:
            self.record(
                actor,
                "search.refused",
                req.case_number,
                reason="not-approved",
                purpose=req.purpose,
                request_id=req.request_id,
                detail=reason,
            )
            raise RefusedError("not-approved", reason)
        if pol.daily_quota and self.comparisons_today(actor.user_id) >= pol.daily_quota:
            self.record(
                actor,
                "search.quota_refused",
                req.case_number,
                purpose=req.purpose,
                quota=pol.daily_quota,
            )
            raise RefusedError(
                "quota-exceeded",
                f"daily quota of {pol.daily_quota} searches and verifications reached",
            )
        return pol

    @timed("decode")
    def _decode_probe(self, actor: Actor, data: bytes, action: str, case: str, **what: Any) -> Any:
        """Decode a probe photo (bounded in pixels and in how many decode at once); a photo
        that cannot be decoded is recorded as ``action`` before the error goes up."""
        try:
            return decode_probe(data)
        except DecodeError as exc:
            self.record(actor, action, case, **what, error=exc.reason)
            raise

    def _check_face_box(
        self, actor: Actor, case: str, field_name: str, box: list[int], img: Any
    ) -> None:
        """Refuse (``bad-face-box``, recorded as ``search.refused``) a face box that is not a
        face-sized box inside the decoded photo."""
        problem = probes.box_problem(box, img.width, img.height)
        if problem is None:
            return
        message = f"{field_name}: {problem}"
        self.record(
            actor, "search.refused", case, reason="bad-face-box", box=list(box), detail=message
        )
        raise RefusedError("bad-face-box", message, (field_name,))

    def _face_in_photo(
        self, img: Any, box: list[int] | None
    ) -> tuple[list[Face], int | None, Face | None]:
        """(the faces found, which one ``box`` picks (:func:`picked_face`), the face): with a
        box that picks none, the box itself is the face, marked by hand (then the index is
        None and the face is not among those found); without a box, the face is None."""
        with self.analysis_lock:
            analyzer = self.searcher().analyzer
            found = analyzer.analyze(img.pixels)
            if box is None:
                return found, None, None
            near = picked_face([f.detection.bbox.as_list() for f in found], box)
            if near is not None:
                return found, near, found[near]
            # no detected face is the one asked for: the box itself is the face
            return found, None, analyzer.face_in_box(img.pixels, box)

    def _insert_comparison(
        self,
        conn: Any,
        actor: Actor,
        req: SearchRequest,
        table: Any,
        row: dict[str, Any],
        details: dict[str, Any],
    ) -> int:
        """Store a search or a 1:1 verification with its case fields, and its ledger entry
        (``search`` / ``verify``: its id, the case fields and the justification's SHA-256,
        which ``audit verify`` checks the row against), inside the caller's transaction."""
        case, why = req.case_number.strip(), req.justification.strip()
        pk = conn.execute(
            insert(table).values(
                user_id=actor.user_id,
                case_number=case,
                purpose=req.purpose,
                justification=why,
                request_id=req.request_id,
                created_at=now_iso(),
                **row,
            )
        ).inserted_primary_key
        assert pk is not None  # a single-row INSERT always reports its key
        rid = int(pk[0])
        action, id_key = ("search", "search_id") if table is searches else ("verify", "verify_id")
        entry = {
            id_key: rid,
            **case_details(case, req.purpose, why),
            "request_id": req.request_id,
            **details,
        }
        if actor.token_id:
            entry["token_id"] = actor.token_id
        audit.append(conn, actor.username, action, case, entry)
        return rid

    def _store_search(
        self,
        conn: Any,
        actor: Actor,
        req: SearchRequest,
        pol: Policy,
        probe_sha: str,
        probe: bytes | None,
        faces: int,
        summary: list[dict[str, Any]],
        shown_json: str,
        details: dict[str, Any],
    ) -> int:
        """Write a search's row (what it showed, ``shown_json``) and its ledger entry
        (``details``) in the caller's transaction, and keep the probe (``probe``: the bytes
        compared) while the policy's ``retain_probes_days`` says so. Returns the search id."""
        sid = self._insert_comparison(
            conn,
            actor,
            req,
            searches,
            {
                "probe_sha256": probe_sha,
                "faces": faces,
                "result_json": json.dumps(summary),
                "shown_json": shown_json,
            },
            details,
        )
        if pol.retain_probes_days > 0 and probe:
            rel = f"probes/{probe_sha}.bin"
            atomic_write(self.data_dir / rel, probe)
            expires = (auth.utcnow() + timedelta(days=pol.retain_probes_days)).isoformat(
                timespec="seconds"
            )
            conn.execute(
                insert_or_ignore(probe_table, conn),
                {"sha256": probe_sha, "stored_path": rel, "search_id": sid, "expires_at": expires},
            )
        return sid

    @timed("ledger")
    def _record_search(
        self,
        actor: Actor,
        req: SearchRequest,
        pol: Policy,
        probe_faces: list[dict[str, Any]],
        compared: tuple[Any, int, str],
        probe: bytes | None,
        details: dict[str, Any],
        **shown_fields: Any,
    ) -> dict[str, Any]:
        """Store a search (of a photo, a video or several photos) as it was shown and return
        its result: ``compared`` is (calibration, gallery faces, model), ``probe`` the bytes
        kept under retention, ``details`` what the ledger entry adds for this kind of probe,
        ``shown_fields`` what the record and the result add (``probe_sha256`` first among
        them; see :func:`shown_search`)."""
        calib, gallery_faces, model_id = compared
        summary, shown, shown_json = shown_search(
            probe_faces, pol, calib, gallery_faces, model_id, **shown_fields
        )
        probe_sha = shown_fields["probe_sha256"]
        entry = details | {
            "probe_sha256": probe_sha,
            "faces": len(probe_faces),
            "results": summary,
            "shown_sha256": hashlib.sha256(shown_json.encode()).hexdigest(),
        }
        with self.store.writer.begin() as conn:
            sid = self._store_search(
                conn,
                actor,
                req,
                pol,
                probe_sha,
                probe,
                len(probe_faces),
                summary,
                shown_json,
                entry,
            )
        return {
            "search_id": sid,
            **shown_fields,
            "case_number": req.case_number,
            "purpose": req.purpose,
            "gallery_faces": gallery_faces,
            "model_id": model_id,
            "calibration": shown["calibration"],
            "policy_sha256": shown["policy_sha256"],
            "faces": probe_faces,
            "notice": LEADS_NOTICE,
        }

    @timed("core")
    def search(
        self,
        actor: Actor,
        photo: bytes,
        req: SearchRequest,
        face_box: list[int] | None = None,
    ) -> dict[str, Any]:
        """Search the gallery with every face in ``photo``, or with the one in ``face_box``.

        With ``face_box`` the probe is the region around that face with any other face found
        there painted out, so the other people in the photo are not compared; the ledger
        entry names the whole photo's hash and the region used. Where the box picks none of
        the faces the detector finds (:func:`picked_face`), the box itself is the face:
        landmarks fitted inside it, aligned and embedded as usual, and the result
        (``picked.marked_by_hand``), the stored record and the ledger entry say it was
        marked by hand. A box under 20 px a side or outside the photo is refused
        (``bad-face-box``, recorded)."""
        pol = self.authorise_search(actor, req)
        top_k = max(1, min(req.top_k, pol.max_candidates))
        photo_sha = hashlib.sha256(photo).hexdigest()
        img = self._decode_probe(
            actor, photo, "search.bad_probe", req.case_number, probe_sha256=photo_sha
        )
        if face_box is not None:
            self._check_face_box(actor, req.case_number, "face_box", face_box, img)
        region: list[int] | None = None
        picked: dict[str, Any] | None = None
        by_hand = False
        probe = photo
        with self.analysis_lock:
            searcher = self.searcher()
            pixels = img.pixels
            if face_box is not None:
                with span("detect"):
                    found = searcher.analyzer.detector.detect(pixels)
                boxes = [d.bbox.as_list() for d in found]
                overlaps = [probes.iou(b, face_box) for b in boxes]
                # which of the photo's faces (as detect lists them) was picked, if any
                near = picked_face(boxes, face_box)
                by_hand = near is None
                others = [
                    b
                    for b, o in zip(boxes, overlaps, strict=True)
                    if o < PICK_MIN_IOU and not (by_hand and probes.contains_centre(face_box, b))
                ]
                picked = {
                    "box": list(face_box),
                    "face_index": near,
                    "faces_in_photo": len(boxes),
                    "marked_by_hand": by_hand,
                }
                region = probes.region_around(face_box, img.width, img.height)
                pixels = probes.masked_region(pixels, region, others)
                probe = probes.png_bytes(pixels)
            if by_hand:
                # no detected face is the one asked for: the box itself is the face
                assert face_box is not None and region is not None
                x0, y0 = region[0], region[1]
                inside = [face_box[0] - x0, face_box[1] - y0, face_box[2] - x0, face_box[3] - y0]
                faces = [searcher.analyzer.face_in_box(pixels, inside)]
            else:
                faces = searcher.analyzer.analyze(pixels)
            searchable = [f for f in faces if f.quality >= pol.min_probe_quality]
            results = searcher.search_faces(searchable, top_k) if searchable else []
            with span("index"):
                gallery_faces = len(searcher.indexes.sync())
            model_id = searcher.analyzer.model_id
            calib = searcher.calibration
        probe_sha = hashlib.sha256(probe).hexdigest()
        by_index = {id(f): r for f, r in zip(searchable, results, strict=True)}
        probe_faces = [face_doc(i, f, by_index.get(id(f))) for i, f in enumerate(faces)]
        with self.analysis_lock:  # each searched face's subjects, by template (#14)
            subjects = attach_subjects(
                searcher, faces, probe_faces, top_k, pol.lead_max_expected_false
            )
        if region is not None:
            x0, y0 = region[0], region[1]
            for pf in probe_faces:
                b = pf["bbox"]
                pf["bbox"] = [b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0]
                if pf.get("landmarks"):
                    pf["landmarks"] = [[p[0] + x0, p[1] + y0] for p in pf["landmarks"]]
            assert face_box is not None
            best = max(probe_faces, key=lambda pf: probes.iou(pf["bbox"], face_box), default=None)
            for pf in probe_faces:
                pf["selected"] = pf is best
        details: dict[str, Any] = {}
        if region is not None:
            details |= {"photo_sha256": photo_sha, "probe_region": region}
        if by_hand:
            details["marked_by_hand"] = True
        result = self._record_search(
            actor,
            req,
            pol,
            probe_faces,
            (calib, gallery_faces, model_id),
            probe,
            details,
            probe_sha256=probe_sha,
            photo_sha256=photo_sha,
            probe_region=region,
            picked=picked,
            **subjects,
        )
        if not faces:
            raise NoFaceError(
                f"no face found in the probe photo (search {result['search_id']} recorded)"
            )
        return result

    def verify(
        self,
        actor: Actor,
        photo_a: bytes,
        photo_b: bytes,
        req: SearchRequest,
        box_a: list[int] | None = None,
        box_b: list[int] | None = None,
    ) -> dict[str, Any]:
        """1:1 comparison of one face in each photo, under the same rules as a search.

        Investigators only, with case, purpose, justification, approval and the daily quota
        (shared with searches) checked by :meth:`authorise_search`; the probe-quality minimum
        applies to both faces. Every comparison, also one that finds no face, is stored in
        ``verifications`` and the ledger (hashes and score, no image). The face is the one
        ``box_*`` picks (see :func:`picked_face`), the box itself where it picks no detected
        face (marked by hand: the result and the ledger say so), or else the largest."""
        self._check_case_lengths(req.case_number, req.purpose, req.justification)
        self.require(actor, "verify", req.case_number)
        pol = self.authorise_search(actor, req)
        shas = [hashlib.sha256(p).hexdigest() for p in (photo_a, photo_b)]
        chosen: list[Face | None] = []
        counts: list[int] = []
        hand: list[str] = []  # the photos whose face was marked by hand
        for label, data, sha, box in (
            ("A", photo_a, shas[0], box_a),
            ("B", photo_b, shas[1], box_b),
        ):
            img = self._decode_probe(
                actor, data, "verify.bad_photo", req.case_number, photo=label, photo_sha256=sha
            )
            if box is not None:
                self._check_face_box(actor, req.case_number, f"face_box_{label.lower()}", box, img)
            found, near, face = self._face_in_photo(img, box)
            if box is not None and near is None:
                hand.append(label)
            if face is None:  # no box: the largest face
                face = max(found, key=lambda f: f.size) if found else None
            chosen.append(face)
            del img
            counts.append(len(found))
        searcher = self.searcher()
        calib, model_id = searcher.calibration, searcher.analyzer.model_id
        missing = [label for label, f in zip("AB", chosen, strict=True) if f is None]
        low = [
            label
            for label, f in zip("AB", chosen, strict=True)
            if f is not None and f.quality < pol.min_probe_quality
        ]
        score = est = None
        if missing:
            outcome = "no-face"
        elif low:
            outcome = "low-quality"
        else:
            outcome = "compared"
            fa, fb = chosen
            assert fa is not None and fb is not None
            score = float(np.dot(fa.embedding, fb.embedding))
            est = calib.estimate(score) if calib else None
        rounded = None if score is None else round(score, 4)
        with self.store.writer.begin() as conn:
            hashes = {"photo_a_sha256": shas[0], "photo_b_sha256": shas[1]}
            vid = self._insert_comparison(
                conn,
                actor,
                req,
                verifications,
                {**hashes, "outcome": outcome, "score": rounded},
                {
                    **hashes,
                    "faces_a": counts[0],
                    "faces_b": counts[1],
                    "outcome": outcome,
                    "score": rounded,
                    "est_fmr": None if est is None else est.fmr,
                    **({"marked_by_hand": hand} if hand else {}),
                },
            )
        if missing:
            raise NoFaceError(f"no face found in photo {' and '.join(missing)}")
        if low:
            raise RefusedError(
                "low-quality",
                f"the face in photo {' and '.join(low)} is below the policy's minimum quality "
                f"({pol.min_probe_quality})",
            )
        assert score is not None
        return {
            "verify_id": vid,
            "case_number": req.case_number,
            "purpose": req.purpose,
            "model_id": model_id,
            "score": round(score, 5),
            "est_fmr": None if est is None else est.fmr,
            "est_fmr_extrapolated": None if est is None else est.extrapolated,
            "faces": [
                {
                    "photo": label,
                    "photo_sha256": sha,
                    "faces_in_photo": n,
                    "bbox": f.detection.bbox.as_list(),
                    "quality": f.quality,
                    "warnings": probes.quality_warnings(f.size, f.sharpness, f.yaw),
                    "marked_by_hand": label in hand,
                }
                for label, sha, n, f in zip("AB", shas, counts, chosen, strict=True)
                if f is not None
            ],
            "notice": LEADS_NOTICE,
        }

    def _detects_today(self, actor: Actor) -> int:
        from faceledger.db.schema import ledger

        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with self.store.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(ledger)
                    .where(
                        # a clip's people listed (thumbnails, nothing compared) is a detection
                        ledger.c.action.in_(("probe.detect", "search.video_tracks")),
                        ledger.c.actor == actor.username,
                        ledger.c.ts >= start.isoformat(timespec="seconds"),
                    )
                ).scalar_one()
            )

    def _check_detect_quota(self, actor: Actor, pol: Policy, case: str, **what: Any) -> None:
        """Refuse (``quota-exceeded``, recorded) once ``actor`` has used the policy's
        ``daily_detect_quota`` (face detections and video people listed today)."""
        if pol.daily_detect_quota and self._detects_today(actor) >= pol.daily_detect_quota:
            self.record(actor, "search.quota_refused", case, quota=pol.daily_detect_quota, **what)
            raise RefusedError(
                "quota-exceeded",
                f"daily quota of {pol.daily_detect_quota} face detections reached (listing the "
                "people in a clip counts as one)",
            )

    def detect(self, actor: Actor, photo: bytes, case_number: str = "") -> dict[str, Any]:
        """The faces in a photo (boxes, quality), for picking one before a search.

        Investigators only; compares nothing and stores nothing; recorded in the ledger with
        the photo's hash, the number of faces and the case it serves (when given), and
        counted against the policy's ``daily_detect_quota``."""
        check_length("case number", case_number, MAX_CASE_NUMBER)
        case = case_number.strip()
        self.require(actor, "search", case or "detect")
        pol = self.policy()
        self._check_detect_quota(actor, pol, case)
        sha = hashlib.sha256(photo).hexdigest()
        img = self._decode_probe(actor, photo, "search.bad_probe", case, probe_sha256=sha)
        with self.analysis_lock:
            found = self.searcher().analyzer.analyze(img.pixels)
        self.record(
            actor,
            "probe.detect",
            case or sha[:16],
            photo_sha256=sha,
            faces=len(found),
            case_number=case or None,
        )
        out = []
        for i, f in enumerate(found):
            warnings = probes.quality_warnings(f.size, f.sharpness, f.yaw)
            out.append(
                {
                    "face_index": i,
                    "bbox": f.detection.bbox.as_list(),
                    "quality": f.quality,
                    "size": f.size,
                    "sharpness": round(f.sharpness, 2),
                    "yaw": round(f.yaw, 3),
                    "warnings": warnings,
                    "warning_text": [probes.QUALITY_HINTS[w] for w in warnings],
                    "below_min_quality": f.quality < pol.min_probe_quality,
                }
            )
        return {
            "photo_sha256": sha,
            "width": img.width,
            "height": img.height,
            "faces": out,
            "min_probe_quality": pol.min_probe_quality,
        }

    def add_blocklist_embeddings(
        self, conn: Any, model_id: str, vectors: np.ndarray, reference: str
    ) -> int:
        rows = [
            {
                "model_id": model_id,
                "embedding": np.asarray(v, "<f4").tobytes(),
                "reference": reference,
                "created_at": now_iso(),
            }
            for v in vectors
        ]
        if rows:
            conn.execute(insert(blocklist), rows)
        return len(rows)
