"""Subjects: duplicate identities and merges (#14 item 4), and a search's subjects."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SubjectOut(BaseModel):
    """A subject ranked for one probe face by its template's score."""

    rank: int
    subject: str = Field(description="The subject's label, or face:<id> for a subject of one")
    label: str | None = Field(description="The subject label; null for a subject of one")
    face_ids: list[int] = Field(description="The gallery faces the template averages")
    size: int = Field(description="How many faces")
    score: float = Field(
        description="Cosine of the probe face with the subject's template (the L2-normalised "
        "mean of its faces' vectors)"
    )
    est_fmr: float | None = Field(
        description="Estimated false match rate at this score, calibrated for templates of "
        "this size (1, 2, 3+); null without a calibration"
    )
    est_fmr_extrapolated: bool | None
    expected_false_subjects: float | None = Field(
        description="Different people expected to score at least this high among the "
        "gallery's subjects (gallery subjects x est_fmr)"
    )
    chance_level: bool = Field(
        False,
        description="Expected false subjects reach the policy's lead_max_expected_false",
    )


class SubjectSideOut(BaseModel):
    subject: str = Field(description="Label, or face:<id> for a subject of one")
    label: str | None
    face_ids: list[int]
    size: int


class DuplicatePairOut(BaseModel):
    a: SubjectSideOut
    b: SubjectSideOut
    score: float = Field(description="Cosine of the two subjects' templates")
    est_fmr: float
    est_fmr_extrapolated: bool
    expected_false_pairs: float = Field(
        description="Different-person pairs expected at or above this score in the gallery"
    )


class DuplicatesOut(BaseModel):
    gallery_subjects: int
    gallery_faces: int
    max_expected_false: float
    fmr_limit: float = Field(
        description="The FMR at which the gallery expects max_expected_false false pairs: "
        "max_expected_false / (S (S - 1) / 2)"
    )
    thresholds: dict[str, float] = Field(
        description="Score threshold per pair of template sizes (1x1 ... 3+x3+)"
    )
    calibration: str = Field(description="Version of the subject calibration")
    pairs: list[DuplicatePairOut]
    seconds: float


class MergeIn(BaseModel):
    a: str = Field(description="A subject: its label, or face:<id>")
    b: str = Field(description="The other subject (its label is kept unless label is given)")
    reason: str = ""
    label: str | None = Field(None, description="The merged subject's label")
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"a": "J. Smith", "b": "John Smith", "reason": "same booking number"}]
        }
    )


class MoveOut(BaseModel):
    kind: str = Field(description="label (every face of a label) or face (one face)")
    source: str


class MergeOut(BaseModel):
    label: str
    face_ids: list[int]
    moves: list[MoveOut]
    ledger_seq: int
