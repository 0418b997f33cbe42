"""In-process token buckets (per user, per search, per login address)."""

from __future__ import annotations

import math
import threading
import time

from faceledger.http.errors import ApiError


class RateLimiter:
    """Token buckets in memory: ``rate_per_minute`` refill, up to ``burst`` at once."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, rate_per_minute: float, burst: int) -> float:
        """0 when allowed, else the seconds to wait."""
        if rate_per_minute <= 0:
            return 0.0
        now = time.monotonic()
        rate = rate_per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 50_000:  # forget idle keys (their buckets are full)
                horizon = now - burst / rate
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > horizon}
            return (1.0 - tokens) / rate

    def waiting(self, key: str, rate_per_minute: float, burst: int) -> float:
        """Like :meth:`take` but consumes nothing: 0 when a token is there, else the wait."""
        if rate_per_minute <= 0:
            return 0.0
        now = time.monotonic()
        rate = rate_per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

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
