"""Searches as the API and the pages show them: candidates with their crop and source image
URLs (through the search that returned them), never a server path."""

from __future__ import annotations

from typing import Any

from faceledger.http.settings import API


def candidate_out(search_id: int, c: dict[str, Any]) -> dict[str, Any]:
    """A candidate as the API shows it: no server paths, and its crop and source image only
    through the search that returned it."""
    doc = {k: v for k, v in c.items() if k not in ("crop_path", "image_path")}
    doc["crop_url"] = f"{API}/searches/{search_id}/faces/{c['face_id']}/crop"
    doc["image_url"] = f"{API}/searches/{search_id}/faces/{c['face_id']}/image"
    return doc


def faces_out(search_id: int, faces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for f in faces:
        face = dict(f)
        face["candidates"] = [candidate_out(search_id, c) for c in f["candidates"]]
        face.setdefault("selected", None)
        out.append(face)
    return out


def search_out(result: dict[str, Any]) -> dict[str, Any]:
    """A search's response."""
    return dict(result) | {"faces": faces_out(result["search_id"], result["faces"])}


def record_out(rec: dict[str, Any]) -> dict[str, Any]:
    """A search record, with what it showed (where stored) in the response's shape."""
    if rec.get("probe_kept"):
        rec = rec | {"probe_url": f"{API}/searches/{rec['id']}/probe"}
    shown = rec.get("shown")
    if shown is None:
        return rec
    return rec | {"shown": shown | {"faces": faces_out(rec["id"], shown["faces"])}}
