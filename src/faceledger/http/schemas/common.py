"""The error body and the error responses every operation documents; small shared bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    code: str = Field(description="Stable machine-readable code")
    message: str = Field(description="What went wrong, for people")
    fields: list[str] | None = Field(
        None,
        description="The request fields at fault (case_number, purpose, justification...), "
        "where the error is about some; absent otherwise",
    )
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "code": "missing-case-fields",
                    "message": "a search needs a case number; a justification of "
                    "at least 10 characters",
                    "fields": ["case_number", "justification"],
                },
                {
                    "code": "justification-too-short",
                    "message": "a search needs a justification of at least 10 characters "
                    "(this one has 5)",
                    "fields": ["justification"],
                },
            ]
        }
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Bad input, or a refusal by the search rules"},
    401: {"model": ErrorOut, "description": "Not authenticated"},
    403: {"model": ErrorOut, "description": "Not permitted (recorded in the ledger)"},
    404: {"model": ErrorOut, "description": "No such user, token, search, job, case request..."},
    409: {
        "model": ErrorOut,
        "description": "Conflicts with the current state (already exists or decided, "
        "policy changed outside faceledger, empty gallery...)",
    },
    429: {"model": ErrorOut, "description": "Rate limit or daily search quota"},
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    413: {"model": ErrorOut, "description": "Upload larger than the limit"},
    415: {"model": ErrorOut, "description": "Not an image content type"},
    422: {
        "model": ErrorOut,
        "description": "Not a usable image (code from the decoder), or no face",
    },
}

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {"content": {"image/jpeg": {}}, "description": "The image"},
    404: {"model": ErrorOut, "description": "No such search, or the face is not its candidate"},
    410: {"model": ErrorOut, "description": "The face was erased since the search"},
}


class CreatedOut(BaseModel):
    id: int
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": 7}]})


class OkOut(BaseModel):
    ok: bool = True
