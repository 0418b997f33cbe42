"""Search policy: a small JSON file in the data dir, changed only through faceledger.

Every change is written to the ledger with the new file's SHA-256. At load the file's hash
is compared with the last one the ledger recorded: a file edited behind faceledger's back is
refused (searches stop) until an admin sets the policy again, which is itself logged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Opt-out matching errs towards dropping: a face goes if it matches an opted-out subject at a
# score that an unrelated person reaches once in 10,000 comparisons.
OPTOUT_FMR = 1e-4
# Retention settings above this (100 years) are refused: expiry dates must stay computable.
MAX_RETENTION_DAYS = 36_500
MAX_PURPOSE_LENGTH = 64

DEFAULT_PURPOSES = [
    "violent-crime",
    "missing-person",
    "identity-fraud",
    "child-exploitation",
    "counter-terrorism",
]


@dataclass
class Policy:
    purposes: list[str] = field(default_factory=lambda: list(DEFAULT_PURPOSES))
    approval_required: list[str] = field(default_factory=lambda: ["identity-fraud"])
    daily_quota: int = 50  # searches per user per UTC day
    min_probe_quality: float = 0.0  # 0..1, see quality.py
    max_candidates: int = 20
    retain_probes_days: int = 0  # 0: probe photos are never stored
    # Cosine score at which a face matches the opt-out list; 0 means "the score whose
    # calibrated false match rate is OPTOUT_FMR for the gallery's model".
    optout_threshold: float = 0.0
    image_retention_days: int = 0  # 0: gallery images never expire unless a source sets it
    approval_days: int = 30  # how long a supervisor's approval of a case request lasts
    # how long the searcher (and those who may read the search) can open its candidates'
    # crops and source images; afterwards the record keeps ids and scores only
    result_view_days: int = 30
    daily_detect_quota: int = 200  # face detections (and clips' people listed) per user per UTC day
    # Candidates whose expected false candidates at the gallery's size is at least this are
    # at chance level: shown apart, collapsed, under a sentence saying chance matches are
    # expected at their scores (they can still be reviewed).
    lead_max_expected_false: float = 1.0

    def validate(self) -> None:
        if not self.purposes:
            raise ValueError("policy needs at least one purpose")
        unknown = set(self.approval_required) - set(self.purposes)
        if unknown:
            raise ValueError(f"approval_required names unknown purposes: {sorted(unknown)}")
        if self.daily_quota < 0 or self.max_candidates < 1 or self.daily_detect_quota < 0:
            raise ValueError(
                "daily_quota and daily_detect_quota must be >= 0 and max_candidates >= 1"
            )
        too_long = [p for p in self.purposes if len(p) > MAX_PURPOSE_LENGTH]
        if too_long:
            raise ValueError(f"purposes are at most {MAX_PURPOSE_LENGTH} characters")
        if not (1 <= self.approval_days <= 366 and 1 <= self.result_view_days <= 3660):
            raise ValueError("approval_days must be 1 to 366, result_view_days 1 to 3660")
        if not 0.0 <= self.min_probe_quality <= 1.0:
            raise ValueError("min_probe_quality must be between 0 and 1")
        if not (
            0 <= self.retain_probes_days <= MAX_RETENTION_DAYS
            and 0 <= self.image_retention_days <= MAX_RETENTION_DAYS
        ):
            raise ValueError(f"retention days must be between 0 and {MAX_RETENTION_DAYS}")
        if not 0.0 < self.lead_max_expected_false <= 1e6:
            raise ValueError("lead_max_expected_false must be above 0 and at most 1000000")
        if not 0.0 <= self.optout_threshold <= 1.0:
            raise ValueError("optout_threshold is a cosine score between 0 and 1 (0: calibrated)")

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def parse_value(self, key: str, raw: str) -> Any:
        """``key``'s value from its text form (command line, web form): lists separated by
        commas or lines, booleans as 1/true/yes/on, numbers as numbers."""
        if key not in self.field_names():
            raise ValueError(f"unknown policy key {key!r}; keys: {', '.join(self.field_names())}")
        current = getattr(self, key)
        raw = raw.strip()
        if isinstance(current, list):
            return [v.strip() for v in raw.replace("\n", ",").split(",") if v.strip()]
        if isinstance(current, bool):
            return raw.lower() in ("1", "true", "yes", "on")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        return raw

    def with_changes(self, changes: dict[str, Any]) -> Policy:
        """A validated copy with ``changes`` (typed values) applied."""
        unknown = set(changes) - set(self.field_names())
        if unknown:
            raise ValueError(
                f"unknown policy key {sorted(unknown)[0]!r}; keys: {', '.join(self.field_names())}"
            )
        new = Policy(**(asdict(self) | changes))
        new.validate()
        return new

    def with_value(self, key: str, raw: str) -> Policy:
        """A validated copy with ``key`` set from its text form."""
        return self.with_changes({key: self.parse_value(key, raw)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Policy:
        doc = json.loads(data)
        known = {f.name for f in fields(cls)}
        extra = set(doc) - known
        if extra:
            raise ValueError(f"unknown policy keys {sorted(extra)}")
        p = cls(**doc)
        p.validate()
        return p


def policy_path(data_dir: Path) -> Path:
    return Path(data_dir) / "policy.json"


def optout_threshold(policy: Policy, model_id: str | None) -> float:
    """The cosine score at which ingest drops a face matching the opt-out list."""
    if policy.optout_threshold > 0:
        return policy.optout_threshold
    from faceledger.search import calibration

    calib = calibration.load(model_id) if model_id else None
    if calib is None:
        raise ValueError(
            f"no calibration for model {model_id!r}: set policy optout_threshold explicitly"
        )
    return calib.threshold_for(OPTOUT_FMR)
