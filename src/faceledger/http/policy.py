"""The search policy as a dict of its fields, and the policy an admin edits."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from faceledger.cases.policy import Policy, policy_path
from faceledger.core import Faceledger, PolicyTamperedError


def current_policy_for_edit(fl: Faceledger) -> Policy:
    """The policy to change: the valid current one, else (tampered or missing) the file's
    contents or the defaults, as ``faceledger policy set`` does."""
    try:
        return fl.policy()
    except PolicyTamperedError:
        path = policy_path(fl.data_dir)
        try:
            return Policy.from_bytes(path.read_bytes()) if path.is_file() else Policy()
        except ValueError:
            return Policy()


def policy_dict(p: Policy) -> dict[str, Any]:
    return {f.name: getattr(p, f.name) for f in fields(p)}
