"""What leaves the system about a case (#13 items 7 and 8): the lead report (HTML or PDF) and
the disclosure export (a zip checked offline by ``faceledger cases verify-export``).

Both read the case file as its reader may see it (:meth:`CaseFileDoor.get_case`: the same
visibility, recorded as ``case.view``), show a candidate's crop only while the search's
results are viewable (through :meth:`RecordsDoor.candidate_file`) and the probe face only
while retention keeps the probe, and are ledger entries themselves: ``case.report`` with the
SHA-256 of the file made, ``case.export`` with the SHA-256 of the export's manifest."""

from __future__ import annotations

import hashlib
from typing import Any

from faceledger.accounts.auth import Actor
from faceledger.cases import export as case_export
from faceledger.cases import report as lead_report
from faceledger.core.base import LEDGER_TARGET_MAX, bounded
from faceledger.core.ledger import LedgerDoor
from faceledger.db.store import now_iso
from faceledger.errors import RefusedError
from faceledger.ledger import audit
from faceledger.vision.decode import DecodeError, decode_image
from faceledger.vision.probes import jpeg_thumbnail

# The statuses whose pictures a report shows (leads, and the NOT-leads listed after them).
REPORTED = frozenset(status for status, _title, _meaning in lead_report.SECTIONS)
PROBE_MARGIN = 0.25  # the probe face's crop: its box and this much of its size around it
PICTURE_SIZE = 320  # pixels a side, at most, of a picture in a report


class DisclosureDoor(LedgerDoor):
    # -- pictures ---------------------------------------------------------------------------
    def _pictures(
        self, actor: Actor, case: dict[str, Any], wanted: set[tuple[int, int]] | None
    ) -> lead_report.Pictures:
        """The probe faces and candidate crops of ``case`` that may be shown: the candidates
        ``wanted`` ((search id, face id); None: every candidate shown), each probe face of
        their searches."""
        pics = lead_report.Pictures({}, {})
        for rec in case["searches"]:
            shown = rec.get("shown") or {}
            faces = shown.get("faces", [])
            cands = [
                (face, c)
                for face in faces
                for c in face.get("candidates", [])
                if wanted is None or (rec["id"], c["face_id"]) in wanted
            ]
            if not cands:
                continue
            self._probe_faces(rec, faces if wanted is None else [f for f, _ in cands], pics)
            for _face, c in cands:
                key = lead_report.crop_key(rec["id"], c["face_id"])
                if key in pics.jpegs or key in pics.missing:
                    continue
                if c.get("erased"):
                    pics.missing[key] = "erased from the gallery since the search"
                elif not rec.get("results_viewable"):
                    pics.missing[key] = (
                        f"no longer viewable (results are viewable for "
                        f"{rec.get('result_view_days')} days after the search)"
                    )
                else:
                    try:
                        path = self.candidate_file(actor, rec["id"], c["face_id"], "crop")
                        pics.jpegs[key] = path.read_bytes()
                    except (RefusedError, OSError) as exc:
                        pics.missing[key] = f"not available ({exc})"
        return pics

    def _probe_faces(
        self, rec: dict[str, Any], faces: list[dict[str, Any]], pics: lead_report.Pictures
    ) -> None:
        """Each probe face of ``faces`` cut from the kept probe (its box with a margin), or
        why it cannot be shown."""
        keys = {lead_report.probe_key(rec["id"], int(f["face_index"])): f for f in faces}
        path = self._kept_probe(rec["probe_sha256"])
        if path is None:
            pics.missing.update(dict.fromkeys(keys, "not kept (retention policy)"))
            return
        try:
            pixels = decode_image(path.read_bytes()).pixels
        except (DecodeError, OSError) as exc:
            pics.missing.update(dict.fromkeys(keys, f"cannot be read ({exc})"))
            return
        # a search of one marked face keeps the region around it; boxes are in the photo's
        # coordinates
        region = (rec.get("shown") or {}).get("probe_region") or [0, 0]
        h, w = pixels.shape[:2]
        for key, face in keys.items():
            x0, y0, x1, y1 = (int(v) for v in face["bbox"])
            x0, x1, y0, y1 = x0 - region[0], x1 - region[0], y0 - region[1], y1 - region[1]
            m = int(max(x1 - x0, y1 - y0) * PROBE_MARGIN)
            crop = pixels[max(0, y0 - m) : min(h, y1 + m), max(0, x0 - m) : min(w, x1 + m)]
            if crop.size == 0:
                pics.missing[key] = "outside the kept probe"
                continue
            pics.jpegs[key] = jpeg_thumbnail(crop, PICTURE_SIZE)

    def _report_doc(
        self, actor: Actor, case: dict[str, Any], search_id: int | None, all_pictures: bool
    ) -> tuple[dict[str, Any], lead_report.Pictures]:
        if search_id is not None and search_id not in {s["id"] for s in case["searches"]}:
            raise RefusedError(
                "no-such-search",
                f"no search {search_id} in case {case['case_number']!r} that you may see",
            )
        wanted = None
        if not all_pictures:
            wanted = {
                (c["search_id"], c["face_id"])
                for c in case["candidates"]
                if c.get("status") in REPORTED and search_id in (None, c["search_id"])
            }
        pics = self._pictures(actor, case, wanted)
        doc = lead_report.build(
            case, pics, made_by=actor.username, made_at=now_iso(), search_id=search_id
        )
        return doc, pics

    # -- item 7: the lead report ------------------------------------------------------------
    def case_report(
        self, actor: Actor, case_number: str, fmt: str = "pdf", search_id: int | None = None
    ) -> bytes:
        """The lead report of a case, or of one of its searches (``search_id``), as ``fmt``
        (``pdf`` or ``html``), for those who may read the case file; recorded
        (``case.report``, with the file's SHA-256 and the ledger head it names)."""
        if fmt not in lead_report.FORMATS:
            raise RefusedError(
                "bad-format", f"report format must be pdf or html, not {fmt!r}", fields=("format",)
            )
        case = self.get_case(actor, case_number)
        doc, _pics = self._report_doc(actor, case, search_id, all_pictures=False)
        data = lead_report.render(doc, fmt)
        self.record(
            actor,
            "case.report",
            case["case_number"],
            case_number=case["case_number"],
            search_id=search_id,
            format=fmt,
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
            ledger_head=doc["ledger_head"],
            leads=doc["leads"],
        )
        return data

    # -- item 8: the disclosure export ------------------------------------------------------
    def case_export(self, actor: Actor, case_number: str) -> tuple[bytes, audit.Entry]:
        """The case's disclosure export as zip bytes (:mod:`faceledger.cases.export`), for
        those who may read the case file, and its ledger entry (``case.export``, whose
        details hold the SHA-256 of the export's manifest; the zip carries it as
        ``export-entry.json``)."""
        case = self.get_case(actor, case_number)
        number = case["case_number"]
        doc, pics = self._report_doc(actor, case, None, all_pictures=True)
        html = lead_report.to_html(doc)
        files: dict[str, bytes] = {
            "report.html": html.encode(),
            "report.pdf": lead_report.to_pdf(html),
            "verifications.json": case_export.json_bytes(case["verifications"]),
            "reviews.json": case_export.json_bytes(case["reviews"]),
            "candidates.json": case_export.json_bytes(case["candidates"]),
            "approvals.json": case_export.json_bytes(case["requests"]),
            "notes.json": case_export.json_bytes(case["notes"]),
            case_export.ENTRIES: case_export.entries_jsonl(case["entries"]),
            case_export.HEAD: case_export.json_bytes(case["head"]),
        }
        pictures: dict[str, str] = {}
        for rec in case["searches"]:
            sid = rec["id"]
            files[f"searches/search-{sid}.json"] = case_export.json_bytes(rec)
            for face in (rec.get("shown") or {}).get("faces", []):
                key = lead_report.probe_key(sid, int(face["face_index"]))
                name = f"searches/search-{sid}/probe-face-{face['face_index']}.jpg"
                if key in pics.jpegs:
                    files[name] = pics.jpegs[key]
                else:
                    pictures[name] = pics.missing.get(key, "not available")
                for c in face.get("candidates", []):
                    key = lead_report.crop_key(sid, c["face_id"])
                    name = f"searches/search-{sid}/candidate-{c['face_id']}.jpg"
                    if key in pics.jpegs:
                        files[name] = pics.jpegs[key]
                    else:
                        pictures[name] = pics.missing.get(key, "not available")
        head = case["head"]
        made_at = now_iso()
        about = {
            "case_number": number,
            "made_by": actor.username,
            "made_at": made_at,
            "ledger_head": f"{head['seq']}:{head['hash']}",
            "searches": [s["id"] for s in case["searches"]],
            "verifications": [v["id"] for v in case["verifications"]],
            "entries": len(case["entries"]),
            # pictures the export could not hold, and why (not kept, no longer viewable...)
            "pictures_left_out": pictures,
        }
        files["case.json"] = case_export.json_bytes(about)
        manifest = case_export.manifest(files, about)
        details: dict[str, Any] = {
            "case_number": number,
            "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
            "files": len(files),
            "entries": len(case["entries"]),
            "ledger_head": about["ledger_head"],
            "report_pdf_sha256": hashlib.sha256(files["report.pdf"]).hexdigest(),
        }
        if actor.token_id is not None:
            details["token_id"] = actor.token_id
        with self.store.writer.begin() as conn:
            entry = audit.append(
                conn,
                bounded(actor.username, LEDGER_TARGET_MAX),
                case_export.EXPORT_ACTION,
                bounded(number, LEDGER_TARGET_MAX),
                bounded(details),
            )
        return case_export.write_zip(files, manifest, entry), entry
