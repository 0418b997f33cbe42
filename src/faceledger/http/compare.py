"""Comparisons as the API and the pages show them: the core's chips and images (bytes) as
base64 text in JSON."""

from __future__ import annotations

import base64
from typing import Any

BINARY_FIELDS = ("chip_png", "image_jpeg")


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


def face_view_out(face: dict[str, Any]) -> dict[str, Any]:
    """One side of a comparison with its chip and image as base64."""
    return face | {k: _b64(face[k]) for k in BINARY_FIELDS if k in face}


def compare_out(result: dict[str, Any]) -> dict[str, Any]:
    """A candidate comparison's response."""
    return result | {
        "probe": face_view_out(result["probe"]),
        "candidate": face_view_out(result["candidate"]),
    }


def verify_out(result: dict[str, Any]) -> dict[str, Any]:
    """A 1:1 verification's response (with chips, where asked for)."""
    return result | {"faces": [face_view_out(f) for f in result["faces"]]}
