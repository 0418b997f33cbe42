"""Request rate limits (per user, per search, per login address): token buckets kept in the
gallery database (:meth:`faceledger.core.Faceledger.take_rate`), so every server on one
gallery counts against the same allowance."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from faceledger.http.errors import ApiError

if TYPE_CHECKING:
    from faceledger.core import Faceledger


class RateLimiter:
    """Token buckets: ``rate_per_minute`` refill, up to ``burst`` at once."""

    def __init__(self, fl: Faceledger) -> None:
        self.fl = fl

    def take(self, key: str, rate_per_minute: float, burst: int) -> float:
        """0 when allowed, else the seconds to wait."""
        return self.fl.take_rate(key, rate_per_minute, burst)

    def waiting(self, key: str, rate_per_minute: float, burst: int) -> float:
        """Like :meth:`take` but consumes nothing: 0 when a token is there, else the wait."""
        return self.fl.take_rate(key, rate_per_minute, burst, take=False)

    def check(self, key: str, rate_per_minute: float, burst: int, what: str) -> None:
        wait = self.take(key, rate_per_minute, burst)
        if wait:
            raise ApiError(
                429,
                "rate-limited",
                f"too many {what}; try again in {math.ceil(wait)} s",
                {"Retry-After": str(math.ceil(wait))},
            )


# -- the application context --------------------------------------------------------------------
