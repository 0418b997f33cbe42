"""Score calibration: cosine score -> estimated false match rate (FMR).

A calibration is fitted on impostor (different-person) scores: the empirical survival
function ``FMR(s) = P(impostor score >= s)`` where there are enough impostor pairs above
``s`` to estimate it (at least ``MIN_TAIL_COUNT``), and beyond that an exponential tail
(a generalised Pareto with shape 0) anchored at the last trusted score and fitted by maximum
likelihood to the scores above it. Estimates from the fitted tail are flagged as
extrapolations.

Why the scores above the anchor and not more: the log of the impostor survival function
bends downwards over LFW's upper tail, so a rate fitted on a wider band (the top 5,000 pairs,
as until #17) decays too slowly where the extrapolation starts. Checked against the impostor
pairs of the people the calibration never saw (``tests/search/test_calibration.py``): with the top
5,000 the plain model's predicted FMR at 1e-6 was 2.7x the measured one; fitted above the
anchor, every prediction from 1e-2 down to 1e-7 is within 2x of the measured rate or inside
its 99% interval, for both shipped models. (The rule was chosen looking at the plain model's
unseen impostors; the mirror-image model's were looked at only afterwards, as a check.)
Below 1e-7 LFW cannot check it: its highest "impostor" scores are its own labelling errors
(one person under two names, two people in one photo), 5 to 7 pairs in 49 million, so
estimates under 1e-7 are unverified. A generalised Pareto with a free shape fits the band
better but bends the tail to an end point below what unseen impostors reach (predicting
1e-10 where 1e-7 was measured): it is never the safe error here.

Calibrations ship with the package as ``calibration/<model_id>.json``; they are produced
by ``faceledger calibrate lfw`` (see README) and never fitted on the evaluation split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

MIN_TAIL_COUNT = 100  # impostor pairs above a score needed to trust its empirical FMR
GRID_STEP = 0.002


@dataclass
class Estimate:
    fmr: float
    extrapolated: bool


@dataclass
class Calibration:
    model_id: str
    scores: np.ndarray  # ascending grid of scores
    fmrs: np.ndarray  # empirical FMR at each grid score
    tail_start: float  # highest score with an empirical estimate we trust
    tail_fmr: float  # FMR at tail_start
    tail_rate: float  # exponential decay rate of FMR above tail_start
    info: dict[str, Any]

    def estimate(self, score: float) -> Estimate:
        s = float(score)
        if s <= self.tail_start:
            if s <= self.scores[0]:
                return Estimate(float(self.fmrs[0]), False)
            log_fmr = np.interp(s, self.scores, np.log(self.fmrs))
            return Estimate(float(np.exp(log_fmr)), False)
        return Estimate(
            self.tail_fmr * float(np.exp(-self.tail_rate * (s - self.tail_start))), True
        )

    def threshold_for(self, fmr: float) -> float:
        """The lowest score whose estimated FMR is at most ``fmr``."""
        if fmr >= self.fmrs[0]:
            return float(self.scores[0])
        if fmr >= self.tail_fmr:
            log_f = np.log(self.fmrs)
            # fmrs decrease with score: search the first grid point at or below the target
            idx = int(np.argmax(log_f <= np.log(fmr)))
            return float(self.scores[idx])
        return float(self.tail_start + np.log(self.tail_fmr / fmr) / self.tail_rate)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "grid": {"scores": self.scores.round(6).tolist(), "fmrs": self.fmrs.tolist()},
            "tail": {
                "type": "exponential",
                "start": self.tail_start,
                "fmr_at_start": self.tail_fmr,
                "rate": self.tail_rate,
            },
            "info": self.info,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Calibration:
        return cls(
            model_id=doc["model_id"],
            scores=np.asarray(doc["grid"]["scores"], dtype=np.float64),
            fmrs=np.asarray(doc["grid"]["fmrs"], dtype=np.float64),
            tail_start=float(doc["tail"]["start"]),
            tail_fmr=float(doc["tail"]["fmr_at_start"]),
            tail_rate=float(doc["tail"]["rate"]),
            info=doc.get("info", {}),
        )

    @property
    def version(self) -> str:
        """A short fingerprint of the fit (first 16 hex digits of the SHA-256 of its
        canonical JSON): a search record names the calibration its estimates came from."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")


def fit(
    impostor_scores: np.ndarray,
    model_id: str,
    info: dict[str, Any],
    weights: np.ndarray | None = None,
) -> Calibration:
    """Fit a calibration from impostor scores (any order).

    ``weights`` (one per score, positive; default all 1) make the fit estimate a weighted
    rate: ``FMR(s)`` is the weight of the scores at or above ``s`` over the total weight, the
    anchor is the highest score with ``MIN_TAIL_COUNT`` *effective* pairs at or above it
    (``(sum w)^2 / sum w^2``, Kish's effective sample size: the plain count when the weights
    are equal), and the tail's rate is the weighted mean excess's inverse. Used to count
    every gallery person once where the pairs would otherwise count each person once per
    photo (:mod:`faceledger.evaluation.fusion`, :mod:`faceledger.search.subjects`)."""
    if weights is not None:
        return _fit_weighted(np.asarray(impostor_scores), np.asarray(weights), model_id, info)
    s = np.sort(np.asarray(impostor_scores, dtype=np.float64))
    n = len(s)
    if n < 10 * MIN_TAIL_COUNT:
        raise ValueError(f"need at least {10 * MIN_TAIL_COUNT} impostor scores, got {n}")
    lo = np.floor(s[0] / GRID_STEP) * GRID_STEP
    # Trusted region: up to the score that still has MIN_TAIL_COUNT impostors at or above it.
    tail_start = float(s[n - MIN_TAIL_COUNT])
    grid = np.arange(lo, tail_start, GRID_STEP)
    grid = np.append(grid, tail_start)
    counts = n - np.searchsorted(s, grid, side="left")
    fmrs = counts / n
    # The exponential tail is memoryless: anchored at the last trusted empirical point, its
    # rate is the maximum-likelihood one of the scores beyond that point.
    excess = s[n - MIN_TAIL_COUNT + 1 :] - tail_start
    rate = 1.0 / max(float(excess.mean()), 1e-9)
    tail_fmr = float(fmrs[-1])
    info = dict(info)
    info.update(
        {
            "impostor_pairs": int(n),
            "min_reliable_fmr": MIN_TAIL_COUNT / n,
            "tail_fit_scores": len(excess),
            "tail_threshold": tail_start,
        }
    )
    return Calibration(model_id, grid, fmrs, tail_start, tail_fmr, rate, info)


def _fit_weighted(
    scores: np.ndarray, weights: np.ndarray, model_id: str, info: dict[str, Any]
) -> Calibration:
    """:func:`fit` with weights (see there); equal weights give the unweighted fit."""
    if scores.shape != weights.shape or scores.ndim != 1:
        raise ValueError("impostor scores and weights: one weight per score")
    if not np.all(np.isfinite(weights)) or (weights <= 0).any():
        raise ValueError("impostor score weights must be positive and finite")
    n = len(scores)
    if n < 10 * MIN_TAIL_COUNT:
        raise ValueError(f"need at least {10 * MIN_TAIL_COUNT} impostor scores, got {n}")
    order = np.argsort(scores, kind="stable")
    s = scores[order].astype(np.float64)
    w = weights[order].astype(np.float64)
    # weight and effective number of pairs at or above each sorted score, from the top
    top_w = np.cumsum(w[::-1])[::-1]
    top_w2 = np.cumsum((w * w)[::-1])[::-1]
    effective = top_w * top_w / top_w2
    if effective[0] < 10 * MIN_TAIL_COUNT:
        raise ValueError(
            f"need at least {10 * MIN_TAIL_COUNT} effective impostor scores, got {effective[0]:.0f}"
        )
    # the anchor: the highest score with MIN_TAIL_COUNT effective pairs at or above it
    anchor = int(np.flatnonzero(effective >= MIN_TAIL_COUNT)[-1])
    tail_start = float(s[anchor])
    lo = np.floor(s[0] / GRID_STEP) * GRID_STEP
    grid = np.append(np.arange(lo, tail_start, GRID_STEP), tail_start)
    above = np.append(top_w, 0.0)
    fmrs = above[np.searchsorted(s, grid, side="left")] / top_w[0]
    excess, excess_w = s[anchor + 1 :] - tail_start, w[anchor + 1 :]
    rate = 1.0 / max(float((excess * excess_w).sum() / excess_w.sum()), 1e-9)
    tail_fmr = float(fmrs[-1])
    info = dict(info)
    info.update(
        {
            "impostor_pairs": int(n),
            "effective_impostor_pairs": round(float(effective[0]), 1),
            "min_reliable_fmr": tail_fmr,
            "tail_fit_scores": len(excess),
            "tail_threshold": tail_start,
        }
    )
    return Calibration(model_id, grid, fmrs, tail_start, tail_fmr, rate, info)


def load(model_id: str) -> Calibration | None:
    """The packaged calibration for ``model_id``, or None if none ships."""
    try:
        text = (
            resources.files("faceledger.search.calibration")
            .joinpath(f"{model_id}.json")
            .read_text()
        )
    except (FileNotFoundError, OSError):
        return None
    return Calibration.from_json(json.loads(text))
