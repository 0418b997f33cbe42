"""Case requests and their decisions."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CaseRequestIn(BaseModel):
    case_number: str = ""
    purpose: str = ""
    justification: str = ""
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "case_number": "FRAUD-9",
                    "purpose": "identity-fraud",
                    "justification": "passport application photo does not match the holder",
                }
            ]
        }
    )


class CaseDecisionIn(BaseModel):
    note: str = ""
    search_limit: int | None = Field(
        default=None, description="Approvals: at most this many searches and verifications under it"
    )
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"note": "grounds documented", "search_limit": 5}]}
    )


class CaseWithdrawIn(BaseModel):
    note: str = Field(description="Why the approval ends now")
    model_config = ConfigDict(json_schema_extra={"examples": [{"note": "suspect identified"}]})


class CaseRequestOut(BaseModel):
    id: int
    case_number: str
    purpose: str
    justification: str
    requested_by: int
    requested_by_name: str
    unit: str | None
    status: str
    decided_by: int | None
    decided_at: str | None
    decision_note: str | None
    created_at: str
    expires_at: str | None = Field(None, description="When an approval ends")
    search_limit: int | None = None
    withdrawn_by: int | None = None
    withdrawn_at: str | None = None
    withdrawal_note: str | None = None
    decided_by_name: str | None = Field(None, description="Who approved or denied it")
    withdrawn_by_name: str | None = Field(None, description="Who withdrew the approval")
