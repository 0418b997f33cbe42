"""Erasures and erasure previews."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErasureOut(BaseModel):
    faces_erased: int
    face_ids: list[int]
    images_deleted: list[str]
    images_blurred: list[str]
    provenance_removed: int
    blocklisted: int
    preview_id: int | None = Field(None, description="The preview this erasure confirmed")


class ErasurePreviewFaceOut(BaseModel):
    face_id: int
    score: float
    est_fmr: float | None = Field(description="Estimated false match rate at this score")
    expected_false_matches: float | None = Field(
        description="Different people expected at or above this score: gallery size x FMR"
    )
    erased: bool = Field(description="Erased since the preview was made")
    image_sha256: str | None
    provenance: list[dict[str, Any]]
    crop_url: str | None = Field(description="Only for the admin who made the preview")


class ErasurePreviewOut(BaseModel):
    preview_id: int
    probe_sha256: str
    model_id: str | None
    threshold: float
    calibrated_threshold: float | None = Field(
        description="The score whose estimated FMR is calibrated_fmr (the default threshold)"
    )
    calibrated_fmr: float
    threshold_is_calibrated: bool
    threshold_fmr: float | None = Field(description="Estimated false match rate at threshold")
    gallery_faces: int
    expected_false_matches: float | None = Field(
        description="Faces of other people expected at or above the threshold: N x FMR"
    )
    truncated: bool = Field(description="More faces scored above the threshold than listed")
    created_at: str
    expires_at: str
    faces: list[ErasurePreviewFaceOut]
