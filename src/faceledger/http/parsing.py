"""Form and query fields read into values the core takes (ids, dates, face boxes); bad
input is a 400 with a stable code."""

from __future__ import annotations

import re
from datetime import date

from faceledger.http.errors import ApiError
from faceledger.ledger import audit
from faceledger.vision import probes

MAX_ID = 2**63 - 1  # database ids are signed 64-bit integers


def parse_box(text: str, field_name: str = "face_box") -> list[int] | None:
    """A face box form field, or None; a bad one is a 400 ``bad-face-box``."""
    try:
        return probes.parse_box(text, field_name)
    except probes.BadBoxError as exc:
        raise ApiError(400, "bad-face-box", str(exc)) from exc


def parse_boxes(text: str, photos: int) -> list[list[int] | None]:
    """One face box (or None) per photo from ``a;b;...`` (empty: no box for any); a wrong
    count or a bad box is a 400 ``bad-face-box``."""
    if not text.strip():
        return [None] * photos
    parts = text.split(";")
    if len(parts) != photos:
        raise ApiError(
            400,
            "bad-face-box",
            f"face_boxes has {len(parts)} entries for {photos} photos: give one per photo "
            "(empty for a photo with one face)",
        )
    return [parse_box(p, f"face_boxes[{i}]") for i, p in enumerate(parts, 1)]


def parse_request_id(text: str) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
        raise ApiError(400, "bad-request-id", "request_id must be a number")
    return int(text)


def parse_day(text: str | None, name: str) -> date:
    try:
        return date.fromisoformat((text or "").strip())
    except ValueError as exc:
        raise ApiError(400, "bad-date", f"{name} must be a date like 2026-01-31") from exc


def day_bound(text: str | None, name: str, end: bool = False) -> str | None:
    """A ledger timestamp bound from a date (whole days; ``end`` is inclusive) or a time."""
    if text and len(text.strip()) == 10:
        parse_day(text, name)  # the date's own message
    try:
        return audit.time_bound(text, end)
    except ValueError as exc:
        raise ApiError(400, "bad-date", f"{name} must be a date or an ISO 8601 time") from exc


def parse_face_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]
        if any(abs(i) > MAX_ID for i in ids):
            raise ValueError("out of range")
    except ValueError as exc:
        raise ApiError(400, "bad-face-ids", "face_ids are numbers, comma-separated") from exc
    return ids
