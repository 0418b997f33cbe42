"""Server health and the caller's identity."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class HealthOut(BaseModel):
    status: str
    version: str
    initialised: bool
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ok", "version": "0.1.0", "initialised": True}]}
    )


class MeOut(BaseModel):
    username: str
    roles: list[str]
    unit: str | None
    via: str
    token_id: int | None
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "username": "ivy",
                    "roles": ["investigator"],
                    "unit": "north",
                    "via": "token",
                    "token_id": 3,
                }
            ]
        }
    )
