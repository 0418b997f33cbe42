"""The policy's models, made from the :class:`~faceledger.cases.policy.Policy` dataclass
(all fields for PUT, each optional for PATCH)."""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from faceledger.cases.policy import Policy
from faceledger.http.policy import policy_dict


def _policy_models() -> tuple[type[BaseModel], type[BaseModel]]:
    hints = typing.get_type_hints(Policy)
    example = policy_dict(Policy())
    full: dict[str, Any] = {}
    partial: dict[str, Any] = {}
    for f in fields(Policy):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        full[f.name] = (hints[f.name], default)
        partial[f.name] = (hints[f.name] | None, None)
    cfg = ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})
    pin = create_model("PolicyIn", __config__=cfg, **full)
    pcfg = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"daily_quota": 20}]})
    ppatch = create_model("PolicyPatch", __config__=pcfg, **partial)
    return pin, ppatch


PolicyIn, PolicyPatch = _policy_models()
