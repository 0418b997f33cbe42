"""The request rate limits every server shares (``Faceledger.take_rate``, a token bucket row
in the gallery database): a burst, then the refill rate, and no take ever costs more than
one token, whatever order concurrent takes reach the row in.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from faceledger.core import Faceledger, shared


@pytest.fixture
def fl(tmp_path: Path) -> Faceledger:
    return Faceledger(tmp_path / "data")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(1_000_000.0)
    monkeypatch.setattr(shared, "time", c)
    return c


def test_a_burst_then_the_refill_rate(fl: Faceledger, clock: Clock) -> None:
    takes = [fl.take_rate("user:ivy", 60.0, 3) for _ in range(4)]
    assert takes[:3] == [0.0, 0.0, 0.0]
    assert takes[3] == pytest.approx(1.0)  # one a second: the next token in a second
    assert fl.take_rate("user:ivy", 60.0, 3, take=False) == pytest.approx(1.0)
    clock.now += 1.0
    assert fl.take_rate("user:ivy", 60.0, 3) == 0.0
    assert fl.take_rate("user:ivy", 60.0, 3) > 0.0
    assert fl.take_rate("user:ada", 60.0, 3) == 0.0  # another key, another bucket


def test_a_take_that_read_the_clock_before_the_last_one_costs_one_token(
    fl: Faceledger, clock: Clock
) -> None:
    """Each take reads the clock before it waits for the row, so under load a take can reach
    the row after a later one. CI saw three concurrent /detect calls at 100,000 a minute
    refused: 1 ms of negative elapsed time took 1.7 tokens away. Elapsed time is never
    negative now, and the row's clock never goes back."""
    rate = 100_000.0  # 1,667 a second
    assert fl.take_rate("k", rate, 10) == 0.0  # 9 left
    clock.now -= 0.05  # a take that read the clock 50 ms earlier reaches the row now
    assert fl.take_rate("k", rate, 10) == 0.0  # before: 9 - 83 tokens, refused
    assert fl.take_rate("k", rate, 10, take=False) == 0.0
    clock.now += 0.05
    for _ in range(8):  # 8 left: no time passed on the row's clock
        assert fl.take_rate("k", rate, 10) == 0.0
    assert fl.take_rate("k", rate, 10) > 0.0


def test_concurrent_takes_spend_the_burst_exactly(fl: Faceledger) -> None:
    """Eight threads, 40 takes, a burst of 10 at one a minute: exactly 10 allowed."""
    fl.take_rate("warm", 1.0, 1)  # the schema exists before the threads start
    results: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(5):
            wait = fl.take_rate("shared", 1.0, 10)
            with lock:
                results.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40
    assert results.count(0.0) == 10
