"""The lead report of a case (or of one search in it), as HTML and as PDF.

A report is made from a case file (:meth:`faceledger.core.Faceledger.get_case`'s document)
and the pictures the core may show (the probe face while retention keeps the probe, each
candidate's crop while the search's results are viewable), so it says no more than the
case file does. It states first, in plain words, that its results are investigative leads
and not identifications; then, per lead (a candidate two examiners independently called a
possible lead), the probe face and the candidate side by side with the score, the estimated
false match rate and the expected number of false candidates at that gallery size, both
examiners' decisions and reasons, the approval the search ran under, the model and gallery
size, and the ledger entries (``seq:hash``) behind it. Possible leads still awaiting a second
examiner and candidates the examiners disagree on are listed after, labelled as NOT leads.
It ends with every search and 1:1 verification of the case, those without a lead too.

The HTML is one self-contained page (pictures as ``data:`` URIs, styles inline) with a
print stylesheet; the PDF is WeasyPrint's rendering of the same page for print.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from faceledger.ledger import audit

FORMATS = ("html", "pdf")
MEDIA_TYPES = {"html": "text/html; charset=utf-8", "pdf": "application/pdf"}

LEADS_STATEMENT = (
    "The results in this report are investigative leads, not identifications. A face "
    "recognition lead is not probable cause for an arrest, and it is not enough to place "
    "anyone in a line-up or photo array: it must be corroborated by independent evidence "
    "before any action is taken. Similar-looking people are found by chance, and more often "
    "the larger the gallery."
)

# The candidate statuses a report lists, in order, with their headings and what they mean.
SECTIONS = (
    (
        "lead",
        "Leads",
        "Two examiners, each without seeing the other's decision, called these candidates "
        "possible leads.",
    ),
    (
        "awaiting-second",
        "NOT leads: possible leads awaiting a second examiner",
        "One examiner called these candidates possible leads; no second examiner has decided "
        "yet. They are not leads and must not be acted on.",
    ),
    (
        "disagreement",
        "NOT leads: the examiners disagree",
        "The two examiners reached different decisions on these candidates; a supervisor "
        "must look at them. They are not leads and must not be acted on.",
    ),
)

_TEMPLATES = Path(__file__).with_name("templates")
_env = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _sci(x: float) -> Markup:
    mantissa, exp = f"{x:.1e}".split("e")
    return Markup("{}×10<sup>{}</sup>").format(mantissa, int(exp))


def rate(x: float | None) -> str | Markup:
    """A false match rate as the pages show it."""
    if x is None:
        return "n/a (no calibration)"
    if x == 0:
        return "0"
    return f"{x:.3f}" if x >= 0.01 else _sci(x)


def count(x: float | None) -> str | Markup:
    """An expected number of false candidates."""
    if x is None:
        return "n/a"
    if x >= 10:
        return f"{x:.0f}"
    if x >= 0.01:
        return f"{x:.2f}"
    return "0" if x == 0 else _sci(x)


def when(ts: Any) -> str:
    """'2026-01-02T10:11:12+00:00' -> '2026-01-02 10:11:12 UTC' (faceledger keeps UTC)."""
    text = str(ts or "—").replace("T", " ")
    return text[: -len("+00:00")] + " UTC" if text.endswith("+00:00") else text


_env.filters["rate"] = rate
_env.filters["count"] = count
_env.filters["when"] = when


def probe_key(search_id: int, face_index: int) -> str:
    """The key of a probe face's picture in :class:`Pictures`."""
    return f"probe:{search_id}:{face_index}"


def crop_key(search_id: int, face_id: int) -> str:
    """The key of a candidate's crop in :class:`Pictures`."""
    return f"crop:{search_id}:{face_id}"


@dataclass
class Pictures:
    """What the core may show: JPEG bytes by key (:func:`probe_key`, :func:`crop_key`), and
    for a picture it may not show, why (e.g. "not kept (retention policy)")."""

    jpegs: dict[str, bytes]
    missing: dict[str, str]

    def show(self, key: str) -> dict[str, str]:
        if key in self.jpegs:
            data = base64.b64encode(self.jpegs[key]).decode()
            return {"src": f"data:image/jpeg;base64,{data}"}
        return {"missing": self.missing.get(key, "not available")}


def _entry_ref(e: audit.Entry | dict[str, Any]) -> dict[str, Any]:
    d = e if isinstance(e, dict) else e.__dict__
    return {"seq": d["seq"], "hash": d["hash"], "action": d["action"], "ts": d["ts"]}


def _details(e: audit.Entry | dict[str, Any]) -> dict[str, Any]:
    d = e.details if isinstance(e, audit.Entry) else e.get("details")
    return d if isinstance(d, dict) else {}


def _action(e: audit.Entry | dict[str, Any]) -> str:
    return e.action if isinstance(e, audit.Entry) else str(e.get("action"))


def _candidate_shown(
    search: dict[str, Any], face_id: int, probe_face: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(probe face, candidate) of ``face_id`` as the search showed it (for probe face
    ``probe_face`` where given, else the first that showed it)."""
    shown = search.get("shown") or {}
    for face in shown.get("faces", []):
        if probe_face is not None and face.get("face_index") != probe_face:
            continue
        for c in face.get("candidates", []):
            if c.get("face_id") == face_id:
                return face, c
    return None if probe_face is None else _candidate_shown(search, face_id)


def _first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


def _approval(search: dict[str, Any], requests: list[dict[str, Any]]) -> dict[str, Any] | None:
    rid = search.get("request_id")
    if rid is None:
        return None
    return next((r for r in requests if r.get("id") == rid), {"id": rid})


APPROVAL_ACTIONS = ("case.request", "case.approve", "case.withdraw")
REVIEW_ACTIONS = ("candidate.review",)


def _behind(
    entries: list[Any],
    search_id: int,
    face_id: int,
    approval: dict[str, Any] | None,
    decisions: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The ledger entries behind a candidate, in seq order: the search, the approval it ran
    under (request, decision, withdrawal), and both examiners' decisions."""
    refs: dict[int, dict[str, Any]] = {}
    for e in entries:
        action, d = _action(e), _details(e)
        if (
            (action == "search" and d.get("search_id") == search_id)
            or (
                approval is not None
                and action in APPROVAL_ACTIONS
                and d.get("request_id") == approval.get("id")
            )
            or (
                action in REVIEW_ACTIONS
                and d.get("search_id") == search_id
                and d.get("face_id") == face_id
            )
        ):
            ref = _entry_ref(e)
            refs[ref["seq"]] = ref
    for r in decisions:
        seq = r.get("ledger_seq")
        if seq is not None and seq not in refs:
            refs[seq] = {
                "seq": seq,
                "hash": r.get("ledger_hash") or "?",
                "action": f"review ({r.get('stage')})",
                "ts": r.get("created_at") or "",
            }
    return [refs[k] for k in sorted(refs)]


def build(
    case: dict[str, Any],
    pictures: Pictures,
    *,
    made_by: str,
    made_at: str,
    search_id: int | None = None,
) -> dict[str, Any]:
    """The report's content from a case file: the leads (and the NOT-leads) with what is
    behind each, the searches and verifications, and when, by whom and at which ledger head
    (the case file's) it was made. ``search_id``: only that search of the case."""
    searches = [
        s for s in case.get("searches", []) if search_id is None or s.get("id") == search_id
    ]
    by_id = {s["id"]: s for s in searches}
    entries = case.get("entries", [])
    requests = case.get("requests", [])
    reviews = case.get("reviews", [])
    sections = []
    for status, title, meaning in SECTIONS:
        items = []
        seen: set[tuple[int, int]] = set()
        for cand in case.get("candidates", []):
            if cand.get("status") != status or cand.get("search_id") not in by_id:
                continue
            sid, fid = cand["search_id"], cand["face_id"]
            if (sid, fid) in seen:  # shown for two probe faces: one review, listed once
                continue
            seen.add((sid, fid))
            search = by_id[sid]
            found = _candidate_shown(search, fid, cand.get("probe_face_index"))
            face, shown = found if found else ({}, {})
            # one row per decision (a candidate shown for two probe faces is listed twice)
            decisions = sorted(
                {
                    (r.get("stage"), r.get("ledger_seq"), r.get("examiner")): r
                    for r in reviews
                    if r.get("search_id") == sid and r.get("face_id") == fid
                }.values(),
                key=lambda r: (r.get("stage") != "first", r.get("created_at") or ""),
            )
            approval = _approval(search, requests)
            refs = _behind(entries, sid, fid, approval, decisions)
            shown_data = search.get("shown") or {}
            items.append(
                {
                    "search": search,
                    "face_id": fid,
                    "rank": _first(cand.get("rank"), shown.get("rank")),
                    "score": _first(cand.get("score"), shown.get("score")),
                    "est_fmr": _first(cand.get("est_fmr"), shown.get("est_fmr")),
                    "expected_false": _first(
                        cand.get("expected_false"), shown.get("expected_false_candidates")
                    ),
                    "extrapolated": shown.get("est_fmr_extrapolated"),
                    "provenance": shown.get("provenance") or [],
                    "probe_face": face,
                    "probe": pictures.show(probe_key(sid, int(face.get("face_index", 0)))),
                    "crop": pictures.show(crop_key(sid, fid)),
                    "decisions": decisions,
                    "approval": approval,
                    "model_id": shown_data.get("model_id"),
                    "calibration": shown_data.get("calibration"),
                    "gallery_faces": shown_data.get("gallery_faces"),
                    "entries": refs,
                }
            )
        sections.append({"status": status, "title": title, "meaning": meaning, "cands": items})
    leads_per_search: dict[int, int] = {}
    for cand in case.get("candidates", []):
        if cand.get("status") == "lead":
            leads_per_search[cand["search_id"]] = leads_per_search.get(cand["search_id"], 0) + 1
    head = case.get("head") or {}
    return {
        "case_number": case["case_number"],
        "search_id": search_id,
        "statement": LEADS_STATEMENT,
        "made_by": made_by,
        "made_at": made_at,
        "ledger_head": f"{head.get('seq', 0)}:{head.get('hash', audit.GENESIS)}",
        "head_seq": head.get("seq", 0),
        "head_hash": head.get("hash", audit.GENESIS),
        "sections": sections,
        "leads": len(sections[0]["cands"]),
        "searches": [
            {
                "id": s["id"],
                "username": s.get("username"),
                "created_at": s.get("created_at"),
                "purpose": s.get("purpose"),
                "request_id": s.get("request_id"),
                "faces": s.get("faces"),
                "probe": probe_text(s),
                "candidates": sum(
                    len(f.get("candidates", [])) for f in (s.get("shown") or {}).get("faces", [])
                )
                if s.get("shown")
                else sum(len(f.get("candidates", [])) for f in s.get("results", [])),
                "leads": leads_per_search.get(s["id"], 0),
            }
            for s in searches
        ],
        "verifications": [] if search_id is not None else case.get("verifications", []),
        "requests": requests,
    }


def probe_text(search: dict[str, Any]) -> str:
    """What a search compared, in words, with the SHA-256 of everything it was made from: a
    photo (or a region of one, or a face marked by hand), several photos of one person fused,
    or a video track's faces fused."""
    shown = search.get("shown") or {}
    if shown.get("photos"):
        photos = shown["photos"]
        used = [str(p["photo"]) for p in photos if p.get("fused")]
        return (
            f"{len(photos)} photos the investigator said show one person; the faces of photos "
            f"{', '.join(used) or 'none'} fused. SHA-256: "
            + "; ".join(f"{p['photo']}: {p['sha256']}" for p in photos)
        )
    video = shown.get("video")
    if video:
        if video.get("track") is None:
            return f"video {video['sha256']} (no person searched)"
        frames = ", ".join(str(n) for n in video.get("frames_used") or []) or "none"
        return (
            f"video {video['sha256']}: person (track) {video['track']} of {video['tracks']}, "
            f"the faces of frames {frames} fused"
        )
    picked = shown.get("picked") or {}
    sha = shown.get("photo_sha256") or search.get("probe_sha256")
    how = "; face marked by hand" if picked.get("marked_by_hand") else ""
    return f"photo {sha}{how}"


def to_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page with a print stylesheet."""
    return _env.get_template("lead_report.html").render(r=report)


def to_pdf(html: str) -> bytes:
    """The report page printed to PDF by WeasyPrint (the print stylesheet applies)."""
    import logging

    from PIL import ImageFile
    from weasyprint import HTML

    # WeasyPrint turns on Pillow's process-wide LOAD_TRUNCATED_IMAGES at import; faceledger
    # refuses truncated photos (vision.decode), so it is turned off again at once. The
    # report's own pictures are whole JPEGs it made.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return bytes(HTML(string=html).write_pdf())


def render(report: dict[str, Any], fmt: str) -> bytes:
    """The report as ``fmt`` (html or pdf) bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"report format must be one of {', '.join(FORMATS)}")
    html = to_html(report)
    return html.encode() if fmt == "html" else to_pdf(html)
