"""The search policy as a dict of its fields."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from faceledger.cases.policy import Policy


def policy_dict(p: Policy) -> dict[str, Any]:
    return {f.name: getattr(p, f.name) for f in fields(p)}
