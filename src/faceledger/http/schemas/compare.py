"""Side-by-side comparison of a search's probe face and one of its candidates."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from faceledger.search.searcher import LEADS_NOTICE


class ComparedFaceOut(BaseModel):
    chip_png: str = Field(
        description="The face as the model aligned it (its own 5-landmark alignment), a "
        "base64 PNG of chip_size x chip_size pixels; both sides have the same size"
    )
    chip_size: int
    chip_landmarks: list[list[float]] = Field(
        description="The five landmarks (x, y) on the chip, in chip pixels (dlib's order: "
        "outer and inner corner of the image-right eye, of the image-left eye, nose base)"
    )
    image_jpeg: str | None = Field(
        description="The full image, a base64 JPEG of at most 1024 pixels a side (the probe: "
        "as searched, with a picked face the region around it)"
    )
    image_width: int = Field(description="Width of the full image that bbox refers to")
    image_height: int
    bbox: list[int] = Field(description="The face in the full image: left, top, right, bottom")
    landmarks: list[list[float]] = Field(description="The five landmarks in the full image")


class CompareOut(BaseModel):
    search_id: int
    face_id: int
    case_number: str
    purpose: str
    probe_source: str = Field(
        description="kept: the probe retention still keeps; supplied: the photo sent again "
        "(checked against the recorded SHA-256, kept nowhere)"
    )
    probe_face_index: int = Field(description="Which probe face this candidate was found for")
    rank: int | None
    score: float = Field(description="Cosine score, as the search showed it")
    est_fmr: float | None
    est_fmr_extrapolated: bool | None
    expected_false_candidates: float | None = Field(
        description="Different people expected at this score in a gallery of gallery_faces"
    )
    gallery_faces: int = Field(description="Gallery size when the search ran")
    quality: float | None
    image_sha256: str | None
    provenance: list[dict[str, Any]] | None
    model_id: str
    notice: str = Field(examples=[LEADS_NOTICE])
    probe: ComparedFaceOut
    candidate: ComparedFaceOut
