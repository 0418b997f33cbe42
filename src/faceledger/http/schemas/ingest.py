"""Ingest jobs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobOut(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued, counting, running, done, failed or cancelled")
    created_by: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    total: int | None
    done: int
    progress: float | None
    args: dict[str, Any]
    summary: dict[str, Any] | None
    error: dict[str, str] | None
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f9a0c1d2b4e",
                    "kind": "ingest",
                    "status": "running",
                    "created_by": "root",
                    "created_at": "2026-01-02T10:11:12+00:00",
                    "started_at": "2026-01-02T10:11:12+00:00",
                    "finished_at": None,
                    "total": 1200,
                    "done": 311,
                    "progress": 0.2592,
                    "args": {"source": "press-archive", "legal_basis": "licence 17/2019"},
                    "summary": None,
                    "error": None,
                }
            ]
        }
    )
