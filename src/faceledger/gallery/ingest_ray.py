"""Distributed ingest: decode/detect/embed as Ray Data batch inference.

``RayIngestor`` is an :class:`~faceledger.gallery.ingest.Ingestor` whose analysis step runs on a Ray
cluster instead of a local process pool. Everything else is the local engine's: the parent
(the Ray driver) reads the sources and skips images it already holds, so archives and
manifests work unchanged and the image bytes travel to the cluster with the work; and it
writes files and database rows through the same store, in input order, so a gallery built
with Ray is the one the local engine builds from the same photos, face ids included.

The item stream is cut into chunks (``chunk_size`` images, at most ``chunk_bytes`` of image
data); each chunk is one Ray Dataset mapped with ``map_batches`` over a pool of actors that
each build the models once (:class:`RayAnalyser`). A folder of any size thus never sits in
memory, here or in the object store.

On a remote cluster (``address="ray://head:10001"`` or ``"auto"``), every node needs
faceledger and its models installed, as on this machine (``pip install
'faceledger[scale]'``); with ``--model-dir`` the directory must exist at the same path on the
nodes. Ray is optional: the embedded default needs none of it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import pickle
import warnings
from collections.abc import Iterable, Iterator
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
DEFAULT_CHUNK = 256  # images per Ray Dataset
DEFAULT_CHUNK_BYTES = 256 << 20  # image bytes per Ray Dataset
DEFAULT_BATCH = 4  # images per actor call: small, so that slow photos do not pile up


class RayEngineError(RuntimeError):
    """The Ray engine cannot run: ray is not installed, or the cluster cannot be reached."""


def require_ray() -> ModuleType:
    """The ``ray`` module (with Ray Data), or a :class:`RayEngineError` saying what to
    install."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayEngineError(
            f"the ray engine needs Ray Data, which is not installed ({exc}): run `{INSTALL_HINT}`"
        ) from exc
    return ray


class RayAnalyser:
    """Ray Data callable class: one per actor, holding the models for its lifetime.

    Takes a batch with ``idx`` and ``data`` (image bytes) columns and returns ``idx`` and
    ``result``: the pickled ``Analysed`` or ``(reason, message)`` of the local engine's
    ``_analyse_safe``.
    """

    def __init__(self, settings: PipelineSettings) -> None:
        _init_worker(settings)  # an actor is a process of its own: the worker's globals

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        results = [
            pickle.dumps(_analyse_safe(data), protocol=pickle.HIGHEST_PROTOCOL)
            for data in batch.column("data").to_pylist()
        ]
        return pa.table({"idx": batch.column("idx"), "result": pa.array(results, pa.binary())})


class _DropProgressNotice(logging.Filter):
    """Ray Data warns that its progress bars are off: we turned them off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


@contextlib.contextmanager
def _quiet(ray: ModuleType) -> Iterator[None]:
    """Ray Data without progress bars or per-dataset INFO lines; warnings and errors still
    show. The caller's settings are restored afterwards."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.enable_auto_log_stats)
    ctx.enable_progress_bars = False  # our own progress bar counts the images
    ctx.enable_auto_log_stats = False
    log = logging.getLogger("ray.data")
    level = log.level
    if log.getEffectiveLevel() < logging.WARNING:
        log.setLevel(logging.WARNING)
    notice = _DropProgressNotice()
    progress_log = logging.getLogger("ray.data._internal.progress")
    progress_log.addFilter(notice)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.enable_auto_log_stats = saved
        log.setLevel(level)
        progress_log.removeFilter(notice)


def _map_batches(ds: Any, fn: type, retries: int, **kwargs: Any) -> Any:
    """``ds.map_batches(fn, ...)`` with bounded actor restarts and task retries.

    Ray Data's default restarts a dead actor and retries its batch for ever, so a photo that
    kills its worker would stall the ingest; these are remote args, which Ray 2.5x still
    takes (with a deprecation warning, silenced here) and a later Ray may not.
    """
    params = inspect.signature(ds.map_batches).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        kwargs |= {"max_restarts": retries, "max_task_retries": retries}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        return ds.map_batches(fn, **kwargs)


def _analyse_stream(
    ray: ModuleType,
    datas: list[bytes],
    settings: PipelineSettings,
    *,
    actors: int,
    num_cpus: float,
    num_gpus: float,
    batch_size: int,
    retries: int,
) -> Iterator[tuple[int, bytes]]:
    """``(index, pickled result)`` for each image of ``datas``, as they complete: one Ray
    Dataset mapped over a pool of :class:`RayAnalyser` actors."""
    calls = math.ceil(len(datas) / batch_size)
    ds = ray.data.from_items(
        [{"idx": i, "data": data} for i, data in enumerate(datas)],
        override_num_blocks=calls,  # one block per call, so that every actor gets work
    )
    out = _map_batches(
        ds,
        RayAnalyser,
        retries,
        fn_constructor_kwargs={"settings": settings},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, calls))),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )
    for batch in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from zip(
            batch.column("idx").to_pylist(), batch.column("result").to_pylist(), strict=True
        )


def _analyse_on_cluster(
    datas: list[bytes], settings: PipelineSettings, options: dict[str, Any]
) -> list[bytes]:
    """A Ray task that drives :func:`_analyse_stream` from inside the cluster: Ray Data
    does not run through Ray Client (``ray://``), whose driver is only a proxy. Returns the
    pickled results in input order."""
    import ray

    with _quiet(ray):
        results = dict(_analyse_stream(ray, datas, settings, **options))
    return [results[i] for i in range(len(datas))]


Chunk = list[tuple[SourceItem, str, bytes]]


def _chunks(
    work: Iterable[tuple[SourceItem, str, bytes]], size: int, max_bytes: int
) -> Iterator[Chunk]:
    chunk: Chunk = []
    nbytes = 0
    for entry in work:
        chunk.append(entry)
        nbytes += len(entry[2])
        if len(chunk) >= size or nbytes >= max_bytes:
            yield chunk
            chunk, nbytes = [], 0
    if chunk:
        yield chunk


class RayIngestor(Ingestor):
    """An ingest whose decode/detect/embed runs as Ray Data batch inference.

    A Ray already initialised in this process is used as it is (and left running);
    otherwise ``address`` names the cluster to connect to (``ray://host:10001``, ``auto``),
    or, without one, a local Ray is started; either is shut down (disconnected) at the end.

    ``concurrency``: actors (default: the cluster's CPUs / ``num_cpus``, or its GPUs /
    ``num_gpus`` on ``cuda``); ``num_cpus``: CPUs per actor (default: the settings'
    inference threads); ``num_gpus``: GPUs per actor, used when ``settings.device ==
    "cuda"`` (default 1).
    ``retries``: how often a dead actor is restarted and its batch retried (a node lost)
    before the ingest stops with the error; bounded, so that a photo that kills its worker
    cannot loop for ever. ``on_cluster``: run each chunk's Ray Dataset from a task on the
    cluster rather than from this process (default: when connected through Ray Client,
    ``ray://``, which Ray Data does not support); results then come back a chunk at a time.
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
        on_cluster: bool | None = None,
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
        self.on_cluster = on_cluster

    @property
    def uses_gpu(self) -> bool:
        return self.settings.device == "cuda"

    # -- cluster ------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Connect to (or start) Ray; whether we started it (and so must shut it down)."""
        ray = self.ray
        if ray.is_initialized():
            return False
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
        if self.concurrency:
            return self.concurrency
        res = self.ray.cluster_resources()
        if self.uses_gpu:
            gpus = float(res.get("GPU", 0))
            if gpus < self.num_gpus:
                raise RayEngineError(
                    f"device cuda: the Ray cluster has {gpus:g} GPUs, each actor needs "
                    f"{self.num_gpus:g}"
                )
            return max(1, int(gpus // self.num_gpus))
        return max(1, int(float(res.get("CPU", 1)) // self.num_cpus))

    # -- the run ----------------------------------------------------------------------------
    def _run_items(
        self, items: Iterable[SourceItem], summary: IngestSummary, advance: ProgressHook
    ) -> None:
        started = self._connect()
        try:
            on_cluster = self.on_cluster
            if on_cluster is None:  # Ray Client (ray://): drive Ray Data from inside
                from ray.util.client import ray as client

                on_cluster = client.is_connected()
            with _quiet(self.ray):
                actors = self._actors()
                work = self._read(items, summary, advance)
                for chunk in _chunks(work, self.chunk_size, self.chunk_bytes):
                    self._run_chunk(chunk, actors, on_cluster, summary, advance)
        finally:
            if started:
                self.ray.shutdown()

    def _run_chunk(
        self,
        chunk: Chunk,
        actors: int,
        on_cluster: bool,
        summary: IngestSummary,
        advance: ProgressHook,
    ) -> None:
        ray = self.ray
        datas = [data for _, _, data in chunk]
        options: dict[str, Any] = {
            "actors": actors,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "batch_size": self.batch_size,
            "retries": self.retries,
        }
        stream: Iterable[tuple[int, bytes]]
        if on_cluster:
            task = ray.remote(num_cpus=0)(_analyse_on_cluster)
            stream = enumerate(ray.get(task.remote(datas, self.settings, options)))
        else:
            stream = _analyse_stream(ray, datas, self.settings, **options)
        # Results come back in any order: store them in input order, as the local engine
        # does, so ids come out the same; at most one chunk waits here.
        ready: dict[int, Analysed | tuple[str, str]] = {}
        nxt = 0
        for idx, blob in stream:
            ready[int(idx)] = pickle.loads(blob)
            while nxt in ready:
                item, sha, data = chunk[nxt]
                self._handle(item, sha, data, ready.pop(nxt), summary)
                advance(1)
                nxt += 1
        if nxt != len(chunk):  # lost rows: never store a partial chunk as if it were whole
            raise RuntimeError(f"the Ray engine returned {nxt} of {len(chunk)} results in order")
