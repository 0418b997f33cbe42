"""Users and API tokens."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class UserIn(BaseModel):
    username: str
    password: str = Field(description="At least 10 characters")
    roles: list[str] = Field(description="admin, investigator, supervisor, auditor")
    unit: str | None = None
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "username": "ivy",
                    "password": "a long passphrase",
                    "roles": ["investigator"],
                    "unit": "north",
                }
            ]
        }
    )


class UserPatch(BaseModel):
    disabled: bool | None = None
    roles: list[str] | None = None
    unit: str | None = Field(None, description="The user's unit ('' to clear it)")
    model_config = ConfigDict(json_schema_extra={"examples": [{"disabled": True}]})


class UserOut(BaseModel):
    id: int
    username: str
    roles: list[str]
    unit: str | None
    disabled: bool
    locked_until: str | None
    created_at: str


class TokenIn(BaseModel):
    user: str | None = Field(
        None,
        description="Optional check: must be your own user name (nobody creates tokens for "
        "another user)",
    )
    name: str = "api"
    days: int = 90
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "case-tool", "days": 30}]})


class TokenCreatedOut(BaseModel):
    id: int
    user: str
    secret: str = Field(description="Shown once; store it now")
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": 4, "user": "ivy", "secret": "flt_Xq...9w"}]}
    )


class TokenOut(BaseModel):
    id: int
    name: str
    created_at: str
    expires_at: str
    revoked_at: str | None
    last_used_at: str | None
