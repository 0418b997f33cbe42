"""Ledger verification, checkpoints and entries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RecordMismatchOut(BaseModel):
    table: str = Field(description="searches, verifications or case_requests")
    row_id: int
    seq: int | None = Field(description="The ledger entry it disagrees with; null if none")
    problem: str


class LedgerVerifyOut(BaseModel):
    ok: bool
    entries: int
    head_hash: str
    head_seq: int
    first_bad_seq: int | None
    problem: str | None
    records_checked: int = Field(
        description="Rows of searches, verifications and case_requests recomputed against "
        "their ledger entries"
    )
    mismatches: list[RecordMismatchOut] = Field(description="The first 100 records that disagree")
    mismatch_count: int
    guard_restorations: list[int] = Field(
        description="Seqs of ledger.guard_restored entries: the append-only guard was found "
        "missing or disabled when the database was opened, and restored"
    )
    warnings: list[str]
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ok": True,
                    "entries": 1204,
                    "head_hash": "c0ffee...",
                    "head_seq": 1204,
                    "first_bad_seq": None,
                    "problem": None,
                    "records_checked": 310,
                    "mismatches": [],
                    "mismatch_count": 0,
                    "guard_restorations": [],
                    "warnings": [],
                }
            ]
        }
    )


class CheckpointOut(BaseModel):
    checkpoint: str = Field(description="seq:hash; keep it outside this machine")


class LedgerEntryOut(BaseModel):
    seq: int
    ts: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class LedgerPageOut(BaseModel):
    total: int
    offset: int
    limit: int
    entries: list[LedgerEntryOut]
