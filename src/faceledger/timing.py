"""Where a request's time goes: named stages timed with ``perf_counter`` into the record of
the request in progress, and written out as a W3C ``Server-Timing`` header.

The search path marks its stages with :func:`span` (decode, detect, embed, index search,
database reads, the ledger append...); an interface that wants the figures opens a
:func:`recording` around the request (the HTTP API does for ``POST /api/v1/searches``) and
reads them back. Without a recording open a span costs one context-variable lookup.

Spans may nest: each stage is charged its own time only (a span's time less the spans
inside it), so the stages of one request never overlap and their sum is at most its wall
time. A request runs in one thread at a time (the API's threadpool copies the context into
it), so a record needs no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from time import perf_counter
from typing import ParamSpec, TypeVar

# The stages of a search, in the order a request meets them (Server-Timing names):
SEARCH_STAGES = (
    "upload",  # the request body read by the server, and the probe's bytes out of it
    "auth",  # the caller's token checked
    "checks",  # role, case fields, policy, approval, daily quota
    "decode",  # the probe photo decoded (waiting for a decoder slot included)
    "detect",  # faces found in the photo
    "embed",  # landmarks, alignment, embedding, quality (and a crop) per face
    "index",  # the vector index brought up to date and searched
    "db",  # database reads: candidates with provenance, subjects and their vectors
    "ledger",  # the search record and its ledger entry written (one transaction)
    # the rest of the core's search: scoring subjects, hashing, the result document, and
    # under concurrent searches the wait for the analysis lock
    "core",
)
TOTAL = "total"  # the server's time from the request's arrival to its response's start

P = ParamSpec("P")
R = TypeVar("R")


class Timings:
    """The stages of one request: seconds by name (each its own time, nesting excluded)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # per open span: time spent in the spans inside it

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def ms(self, stage: str) -> float:
        return 1000.0 * self.seconds.get(stage, 0.0)

    def header(self, stages: tuple[str, ...] = SEARCH_STAGES, total: float | None = None) -> str:
        """The ``Server-Timing`` value: every one of ``stages`` (0 where it did not run),
        then any other stage timed, then ``total`` (seconds) where given; durations in ms."""
        names = [*stages, *(s for s in self.seconds if s not in stages)]
        parts = [f"{name};dur={self.ms(name):.3f}" for name in names]
        if total is not None:
            parts.append(f"{TOTAL};dur={1000.0 * total:.3f}")
        return ", ".join(parts)


_current: ContextVar[Timings | None] = ContextVar("faceledger_timings", default=None)


def current() -> Timings | None:
    """The record of the request in progress, or None where nobody is recording."""
    return _current.get()


@contextmanager
def recording(record: Timings | None = None) -> Iterator[Timings]:
    """Record the spans run inside this block (in this context and the threads it is
    copied into) in ``record`` (a new one by default)."""
    rec = Timings() if record is None else record
    token = _current.set(rec)
    try:
        yield rec
    finally:
        _current.reset(token)


@contextmanager
def span(stage: str) -> Iterator[None]:
    """Charge the time of this block, less that of the spans inside it, to ``stage``."""
    rec = _current.get()
    if rec is None:
        yield
        return
    rec._inner.append(0.0)
    t0 = perf_counter()
    try:
        yield
    finally:
        elapsed = perf_counter() - t0
        inner = rec._inner.pop()
        rec.add(stage, elapsed - inner)
        if rec._inner:
            rec._inner[-1] += elapsed


def timed(stage: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that each call is a :func:`span` of ``stage``."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with span(stage):
                return fn(*args, **kwargs)

        return inner

    return wrap


def parse_header(value: str) -> dict[str, float]:
    """A ``Server-Timing`` header back into milliseconds by name (the ``dur`` of each metric;
    a metric without one is 0)."""
    out: dict[str, float] = {}
    for metric in value.split(","):
        name, *params = (p.strip() for p in metric.split(";"))
        if not name:
            continue
        dur = 0.0
        for p in params:
            key, _, val = p.partition("=")
            if key.strip().lower() == "dur":
                dur = float(val.strip().strip('"'))
        out[name] = out.get(name, 0.0) + dur
    return out
