"""Case files, candidate reviews and case notes."""

from __future__ import annotations

from pydantic import BaseModel, Field

from faceledger.http.schemas.audit import LedgerEntryOut
from faceledger.http.schemas.cases import CaseRequestOut
from faceledger.http.schemas.search import DecisionOut, SearchRecordOut


class ReviewIn(BaseModel):
    decision: str = Field(description="excluded | inconclusive | possible-lead")
    reason: str = Field(description="What in the two faces decided it (required)")


class ReviewQueueItemOut(BaseModel):
    search_id: int
    face_id: int
    case_number: str
    created_at: str
    username: str = Field(description="Who ran the search")


class NoteIn(BaseModel):
    text: str


class VerificationOut(BaseModel):
    id: int
    username: str
    purpose: str
    justification: str
    request_id: int | None
    photo_a_sha256: str
    photo_b_sha256: str
    outcome: str = Field(description="compared | no-face | low-quality")
    score: float | None
    est_fmr: float | None
    created_at: str


class CaseReviewOut(DecisionOut):
    search_id: int
    face_id: int
    stage: str = Field(description="first | second")
    ledger_hash: str | None


class CaseCandidateOut(BaseModel):
    search_id: int
    probe_face_index: int
    face_id: int
    rank: int
    score: float
    est_fmr: float | None
    expected_false: float | None = Field(
        description="Different people expected to score this high in the gallery then"
    )
    erased: bool
    status: str
    first: DecisionOut | None
    second: DecisionOut | None


class CaseNoteOut(BaseModel):
    id: int
    username: str
    text: str
    created_at: str
    ledger_seq: int | None


class LedgerHeadOut(BaseModel):
    seq: int
    hash: str


class CaseFileOut(BaseModel):
    case_number: str
    searches: list[SearchRecordOut] = Field(
        description="Every search in the case you may read, also those with no candidate"
    )
    verifications: list[VerificationOut]
    requests: list[CaseRequestOut]
    reviews: list[CaseReviewOut] = Field(
        description="Decisions you may see (a first decision stays hidden from the investigator "
        "who may still give the blind second one)"
    )
    candidates: list[CaseCandidateOut] = Field(description="Every candidate shown, with its status")
    notes: list[CaseNoteOut]
    entries: list[LedgerEntryOut] = Field(description="The case's ledger entries you may see")
    head: LedgerHeadOut = Field(description="The ledger head when the case file was read")
