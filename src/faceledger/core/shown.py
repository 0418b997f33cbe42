"""What a search showed, as its record keeps it: each probe face with its candidates (no
server paths), the chance-level line, and the canonical JSON whose SHA-256 the ledger keeps.
Shared by photo, video and multi-photo searches (:mod:`faceledger.core.searching`,
:mod:`faceledger.core.video`, :mod:`faceledger.core.multiphoto`) and by reading records back
(:mod:`faceledger.core.records`)."""

from __future__ import annotations

import json
from typing import Any

from faceledger.cases.policy import Policy
from faceledger.search.searcher import LEADS_NOTICE
from faceledger.types import Face
from faceledger.vision import probes

SERVER_PATHS = ("crop_path", "image_path")  # where files live on this server: never shown


def face_doc(index: int, face: Face, searched: Any | None) -> dict[str, Any]:
    """A probe face as a search shows it: ``searched`` (its
    :class:`~faceledger.search.searcher.ProbeFace`, with candidates) or, where it was not
    compared (below the policy's minimum quality), its box and quality alone."""
    if searched is None:
        d = face.detection
        doc: dict[str, Any] = {
            "face_index": index,
            "bbox": d.bbox.as_list(),
            "quality": face.quality,
            "size": face.size,
            "sharpness": round(face.sharpness, 2),
            "yaw": round(face.yaw, 3),
            "below_min_quality": True,
            "candidates": [],
        }
    else:
        doc = searched.__dict__ | {"face_index": index, "below_min_quality": False}
        doc["candidates"] = [c.__dict__ for c in searched.candidates]
    doc["warnings"] = probes.quality_warnings(face.size, face.sharpness, face.yaw)
    return doc


def shown_face(face: dict[str, Any]) -> dict[str, Any]:
    """A probe face as a search record keeps it: everything shown, no server paths."""
    doc = dict(face)
    doc["candidates"] = [
        {k: v for k, v in c.items() if k not in SERVER_PATHS} for c in face["candidates"]
    ]
    return doc


def shown_search(
    probe_faces: list[dict[str, Any]],
    pol: Policy,
    calib: Any,
    gallery_faces: int,
    model_id: str,
    **probe: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """What a search (of a photo or a video) showed, as its record keeps it: ``probe`` (the
    probe's hashes, region, picked face, video...), the gallery size, model, calibration and
    policy versions, and every probe face with its candidates, each marked at chance level
    or not. Returns the per-face summary (candidate ids and scores: the ledger's
    ``results``), the document and its canonical JSON (whose SHA-256 the ledger keeps)."""
    mark_chance_level(probe_faces, pol.lead_max_expected_false)
    summary = [
        {
            "face": pf["face_index"],
            "candidates": [[c["face_id"], round(c["score"], 4)] for c in pf["candidates"]],
        }
        for pf in probe_faces
    ]
    shown = probe | {
        "gallery_faces": gallery_faces,
        "model_id": model_id,
        "calibration": calib.version if calib else None,
        "policy_sha256": pol.sha256(),
        "min_probe_quality": pol.min_probe_quality,
        "lead_max_expected_false": pol.lead_max_expected_false,
        "notice": LEADS_NOTICE,
        "faces": [shown_face(pf) for pf in probe_faces],
    }
    return summary, shown, canonical_json(shown)


def mark_chance_level(faces: list[dict[str, Any]], lead_max_expected_false: float) -> None:
    """Mark each candidate ``chance_level`` when its expected false candidates at the
    gallery's size reaches the policy's ``lead_max_expected_false``: at that score a
    different person is expected among the candidates by chance. Without a calibration
    nothing can be said (False; the page says the scores are uncalibrated)."""
    for face in faces:
        for c in face["candidates"]:
            expected = c.get("expected_false_candidates")
            c["chance_level"] = expected is not None and expected >= lead_max_expected_false


def canonical_json(doc: Any) -> str:
    """The one text form of a stored document, so its SHA-256 can be recomputed."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
