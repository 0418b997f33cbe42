"""An ordered, bounded process-pool map shared by ingest and evaluation."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[Any], R],
    items: Iterable[tuple[T, Any]],
    workers: int,
    initializer: Callable[..., None],
    initargs: tuple[Any, ...] = (),
    window: int | None = None,
) -> Iterator[tuple[T, R]]:
    """Yield ``(tag, fn(arg))`` for each ``(tag, arg)``, in input order.

    With one worker everything runs in this process. Otherwise a spawn-context pool runs
    ``fn`` with at most ``window`` arguments in flight, so a long input stream is never
    held in memory.
    """
    if workers <= 1:
        initializer(*initargs)
        for tag, arg in items:
            yield tag, fn(arg)
        return
    window = window or 4 * workers
    pending: deque[tuple[T, Future[R]]] = deque()
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=initializer, initargs=initargs
    ) as pool:
        for tag, arg in items:
            pending.append((tag, pool.submit(fn, arg)))
            while len(pending) >= window or (pending and pending[0][1].done()):
                t, fut = pending.popleft()
                yield t, fut.result()
        while pending:
            t, fut = pending.popleft()
            yield t, fut.result()
