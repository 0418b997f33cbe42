"""Distributed ingest: decode/detect/embed on a pool of long-lived Ray actors.

``RayIngestor`` is an :class:`~faceledger.gallery.ingest.Ingestor` whose analysis step runs on a Ray
cluster instead of a local process pool. Everything else is the local engine's: the parent
(the Ray driver) reads the sources and skips images it already holds, so archives and
manifests work unchanged and the image bytes travel to the cluster with the work; and it
writes files and database rows through the same store, in input order, so a gallery built
with Ray is the one the local engine builds from the same photos, face ids included.

One pool of actors (:class:`RayAnalyser`) is started per ingest run; each loads the models
once and analyses batches of ``batch_size`` images for the whole run; they are killed at its
end, also when it fails or is interrupted. At most ``chunk_size`` images (``chunk_bytes`` of
image data) are in flight or waiting to be stored, plus one batch: a folder of any size thus
never sits in memory, here or in the object store. Each batch reports the node and actor that
ran it; the run's summary (``IngestSummary.ray``) counts the photos per node, the actors and
how often models were loaded.

On a cluster (``address="host:6379"`` from a node of it, ``ray://head:10001`` from
elsewhere, or ``auto``), every node needs faceledger and its models installed, as on this
machine (``pip install 'faceledger[scale]'``); with ``--model-dir`` the directory must exist
at the same path on the nodes. Ray is optional: the embedded default needs none of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from faceledger.db.store import Store
from faceledger.gallery.ingest import (
    Analysed,
    Ingestor,
    IngestSummary,
    PipelineSettings,
    ProgressHook,
    _analyse_safe,
    _init_worker,
)
from faceledger.gallery.sources import SourceItem

INSTALL_HINT = "pip install 'faceledger[scale]'"
DEFAULT_CHUNK = 256  # images in flight (sent to the actors, not yet stored)
DEFAULT_CHUNK_BYTES = 256 << 20  # image bytes in flight
DEFAULT_BATCH = 4  # images per actor call: small, so that slow photos do not pile up
CALLS_PER_ACTOR = 2  # batches queued on an actor: the next one is there when one ends
PROBE_TIMEOUT = 5.0  # seconds to wait for the cluster's port to answer
START_TIMEOUT = 600.0  # seconds for the pool's actors to be placed and load their models


class RayEngineError(RuntimeError):
    """The Ray engine cannot run: ray is not installed, the cluster cannot be reached, or
    its actors cannot start or keep dying."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or a :class:`RayEngineError` saying what to install."""
    try:
        import ray
    except ImportError as exc:
        raise RayEngineError(
            f"the ray engine needs Ray, which is not installed ({exc}): run `{INSTALL_HINT}`"
        ) from exc
    return ray


class RayAnalyser:
    """The actor: one process holding the models for the run, analysing batches of images.

    A restarted actor (its process died) runs ``__init__`` again and so loads the models
    again, under a new ``load_id``: the driver counts the loads it sees.
    """

    def __init__(self, settings: PipelineSettings) -> None:
        import ray

        _init_worker(settings)  # an actor is a process of its own: the worker's globals
        ctx = ray.get_runtime_context()
        self.where = (ctx.get_node_id(), ctx.get_actor_id() or "", uuid.uuid4().hex)

    def ready(self) -> tuple[str, str, str]:
        """(node id, actor id, load id): the models are loaded."""
        return self.where

    def analyse(self, datas: list[bytes]) -> tuple[tuple[str, str, str], list[Any]]:
        """Where it ran, and ``_analyse_safe``'s result (an ``Analysed`` or ``(reason,
        message)``) for each image."""
        return self.where, [_analyse_safe(data) for data in datas]


@dataclass
class RayRunStats:
    """Where one run's work went: photos per node, batches per actor, model loads."""

    actors: int = 0
    photos: Counter[str] = field(default_factory=Counter)  # node id -> images analysed
    batches: Counter[str] = field(default_factory=Counter)  # actor id -> batches run
    loads: set[str] = field(default_factory=set)  # load ids seen (one per actor start)

    def note(self, where: tuple[str, str, str], images: int) -> None:
        node, actor, load = where
        self.loads.add(load)
        self.photos[node] += images
        self.batches[actor] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": dict(self.photos),
            "actors": self.actors,
            "model_loads": len(self.loads),
            "batches": dict(self.batches),
        }


def _probe(address: str | None) -> None:
    """Fail fast, with a clear error, when nothing listens at a ``host:port`` address
    (``ray.init`` would retry for minutes); ``auto`` and no address are left to Ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayEngineError(
            f"--address {address!r}: give the cluster as host:port (the head's GCS port, "
            "e.g. 10.0.0.5:6379), ray://host:10001 (Ray Client) or auto"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise RayEngineError(
            f"no Ray cluster answers at {address} ({why}): start one with `ray start --head` "
            "or give its address"
        ) from exc


Batch = list[tuple[SourceItem, str, bytes]]


class RayIngestor(Ingestor):
    """An ingest whose decode/detect/embed runs on a pool of Ray actors.

    A Ray already initialised in this process is used as it is (and left running);
    otherwise ``address`` names the cluster to connect to (``host:port``, ``ray://host:10001``,
    ``auto``), or, without one, a local Ray is started; either is shut down (disconnected)
    at the end.

    ``concurrency``: actors (default: the cluster's CPUs / ``num_cpus``, or its GPUs /
    ``num_gpus`` on ``cuda``); ``num_cpus``: CPUs per actor (default: the settings'
    inference threads); ``num_gpus``: GPUs per actor, used when ``settings.device ==
    "cuda"`` (default 1). ``chunk_size`` / ``chunk_bytes``: images / image bytes in flight
    at most (plus one batch); ``batch_size``: images per actor call.
    ``retries``: how often a dead actor is restarted and its batches retried (a node lost)
    before the ingest stops with the error; bounded, so that a photo that kills its worker
    cannot loop for ever.
    """

    def __init__(
        self,
        store: Store,
        settings: PipelineSettings | None = None,
        *,
        address: str | None = None,
        concurrency: int | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        batch_size: int = DEFAULT_BATCH,
        retries: int = 2,
    ) -> None:
        super().__init__(store, settings, workers=max(1, concurrency or 1))
        self.ray = require_ray()  # fail before anything is recorded
        self.address = address
        self.concurrency = concurrency if concurrency and concurrency > 0 else None
        self.num_cpus = num_cpus if num_cpus is not None else float(max(1, self.settings.threads))
        self.num_gpus = (num_gpus if num_gpus is not None else 1.0) if self.uses_gpu else 0.0
        self.chunk_size = max(1, chunk_size)
        self.chunk_bytes = max(1, chunk_bytes)
        self.batch_size = max(1, batch_size)
        self.retries = max(0, retries)

    @property
    def uses_gpu(self) -> bool:
        return self.settings.device == "cuda"

    # -- cluster ------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Connect to (or start) Ray; whether we started it (and so must shut it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        _probe(self.address)
        try:
            ray.init(
                address=self.address,
                log_to_driver=False,  # actors' console output; their errors still raise here
                logging_level=logging.WARNING,
                include_dashboard=False,
            )
        except Exception as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise RayEngineError(f"cannot start or reach {where}: {exc}") from exc
        return True

    def _actors(self) -> int:
        """How many actors to start; a clear error when the cluster cannot hold them."""
        res = self.ray.cluster_resources()
        kind, need = ("GPU", self.num_gpus) if self.uses_gpu else ("CPU", self.num_cpus)
        have = float(res.get(kind, 0))
        fits = int(have // need) if need else 0
        if self.concurrency is None and fits < 1:
            raise RayEngineError(
                f"device {self.settings.device}: the Ray cluster has {have:g} {kind}s, each "
                f"actor needs {need:g}"
            )
        n = self.concurrency or fits
        if need and n * need > have:
            raise RayEngineError(
                f"{n} actors need {n * need:g} {kind}s; the Ray cluster has {have:g}"
            )
        return n

    def _start_pool(self, n: int, stats: RayRunStats, pool: list[Any]) -> None:
        """Start ``n`` actors into ``pool`` (so that the caller kills whatever started) and
        wait until each has loaded its models."""
        ray = self.ray
        actor_cls = ray.remote(RayAnalyser).options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus or None,
            max_restarts=self.retries,
            max_task_retries=self.retries,
        )
        pool.extend(actor_cls.remote(self.settings) for _ in range(n))
        refs = [a.ready.remote() for a in pool]
        done, waiting = ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT)
        if waiting:
            raise RayEngineError(
                f"{len(waiting)} of {n} Ray actors did not start within {START_TIMEOUT:g} s "
                f"(each needs {self.num_cpus:g} CPUs"
                + (f" and {self.num_gpus:g} GPUs" if self.num_gpus else "")
                + "): is the cluster busy?"
            )
        for ref in done:
            try:
                stats.loads.add(ray.get(ref)[2])
            except ray.exceptions.RayActorError as exc:
                raise RayEngineError(f"a Ray actor could not start: {exc}") from exc
        stats.actors = n

    # -- the run ----------------------------------------------------------------------------
    def _run_items(
        self, items: Iterable[SourceItem], summary: IngestSummary, advance: ProgressHook
    ) -> None:
        started = self._connect()
        stats = RayRunStats()
        pool: list[Any] = []
        try:
            self._start_pool(self._actors(), stats, pool)
            self._stream(self._read(items, summary, advance), pool, stats, summary, advance)
        finally:
            summary.ray = stats.as_dict()
            for actor in pool:  # also on error and Ctrl-C: no actor outlives its run
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)
            if started:
                self.ray.shutdown()

    def _batches(self, work: Iterator[tuple[SourceItem, str, bytes]]) -> Iterator[Batch]:
        batch: Batch = []
        for entry in work:
            batch.append(entry)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _stream(
        self,
        work: Iterator[tuple[SourceItem, str, bytes]],
        pool: list[Any],
        stats: RayRunStats,
        summary: IngestSummary,
        advance: ProgressHook,
    ) -> None:
        """Send batches round-robin to the actors (``CALLS_PER_ACTOR`` queued on each, at
        most ``chunk_size`` images / ``chunk_bytes`` in flight) and store the results in
        input order as they come back."""
        ray = self.ray
        batches = self._batches(work)
        queued = [0] * len(pool)  # calls waiting or running on each actor
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (batch number, actor)
        order: deque[Batch] = deque()  # batches sent and not yet stored, in input order
        ready: dict[int, list[Analysed | tuple[str, str]]] = {}
        sent = stored = images = nbytes = 0  # batches sent / stored; images, bytes in flight
        turn = 0
        exhausted = False
        while True:
            while not exhausted and images < self.chunk_size and nbytes < self.chunk_bytes:
                free = [i for i in range(len(pool)) if queued[i] < CALLS_PER_ACTOR]
                if not free:
                    break
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                actor = min(free, key=lambda i: (queued[i], (i - turn) % len(pool)))
                turn = actor + 1
                ref = pool[actor].analyse.remote([data for _, _, data in batch])
                pending[ref] = (sent, actor)
                queued[actor] += 1
                order.append(batch)
                sent += 1
                images += len(batch)
                nbytes += sum(len(data) for _, _, data in batch)
            if not pending:
                break
            done, _ = ray.wait(list(pending), num_returns=1)
            number, actor = pending.pop(done[0])
            queued[actor] -= 1
            try:
                where, results = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                raise RayEngineError(
                    f"a Ray actor died and was restarted {self.retries} times; the ingest "
                    f"stops (images stored so far are kept): {exc}"
                ) from exc
            stats.note(where, len(results))
            ready[number] = results
            while stored in ready:  # results come in any order: store them in input order
                batch = order.popleft()
                results = ready.pop(stored)
                if len(results) != len(batch):  # never store a partial batch as if whole
                    raise RuntimeError(
                        f"a Ray actor returned {len(results)} results for {len(batch)} images"
                    )
                for (item, sha, data), res in zip(batch, results, strict=True):
                    self._handle(item, sha, data, res, summary)
                    advance(1)
                stored += 1
                images -= len(batch)
                nbytes -= sum(len(data) for _, _, data in batch)
