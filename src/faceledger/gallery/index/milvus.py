"""Milvus backend: the gallery's vectors in a Milvus collection instead of local FAISS files.

Selected by an index URI: ``milvus://host:port`` (a Milvus server; ``milvuss://`` for TLS,
``?token=user:password`` and ``?collection=NAME`` may follow) or a path ending in ``.db``
(Milvus Lite, embedded, no server). One collection per gallery and dimension, one partition
per embedding model id, an HNSW index with inner-product metric over the L2-normalised float
vectors (each row also carries its ``model`` id, which counts and filters rely on).
:class:`MilvusIndex` has the interface search uses (``add``, ``remove``, ``search``,
``len``, ``kind``); :class:`MilvusIndexManager` keeps the partition in step with the database
like :class:`faceledger.gallery.index.IndexManager` does for FAISS: new faces are inserted, erased
faces (tombstones) deleted, and the partition is rebuilt when it does not match.

Errors: a server URI that nothing answers on, and a server lost in mid-use, raise
:class:`MilvusUnavailableError` naming the URI (a ``ValueError``, so every interface reports
it as the bad setting it is, and a ``ConnectionError``); the index object keeps working once
the server is back (the client reconnects, and a collection the restarted server has not
loaded yet is loaded again).

Re-rank: Milvus' HNSW keeps the float32 vectors and scores every candidate it returns with
the exact inner product, so asking for ``max(k * 10, 1000)`` candidates (with ``ef`` at least
that) and keeping the best ``k`` gives the exact top-k whenever the true neighbours were
among the candidates — the same guarantee and candidate count as the FAISS path. With 200
candidates, 104 of LFW's 1:N mates in the exact top 10 were lost among 100k faces; with
1000, none (p50 10.1 ms against 4.6; ``benchmarks/realscale.py --milvus-server``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from faceledger.db.store import Store, atomic_write
from faceledger.gallery.index.tracking import catch_up

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 256
CANDIDATE_FACTOR = 10
CANDIDATES_MIN = 1000  # as FAISS's re-rank: fewer lost real mates (see above)
CONSISTENCY = "auto"
# Milvus' Bounded reads lag up to its gracefulTime (5 s by default): Strong for twice that
SELF_WRITE_STRONG_S = 10.0
INSERT_BATCH = 5_000
MODEL_ID_MAX = 128
DELETE_BATCH = 10_000
CONNECT_PROBE_S = 5.0  # TCP connect to a server URI when a data dir opens
INDEX_WAIT_S = 3600.0  # flush(wait=True): the longest wait for the HNSW build


class MilvusUnavailableError(ConnectionError, ValueError):
    """The Milvus server of an index URI does not answer (never started, stopped, gone)."""

    def __init__(self, uri: str, detail: str) -> None:
        super().__init__(
            f"the Milvus index at {uri} is unreachable ({detail}); start the server or point "
            "--index / $FACELEDGER_INDEX at one that runs (what the gallery database holds is "
            "unchanged: the index catches up once it is back)"
        )
        self.uri = uri


def _unreachable(exc: BaseException) -> str | None:
    """What a pymilvus / gRPC error says about a lost server, or None if it is another error."""
    import grpc
    from pymilvus.client.types import Status

    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return f"gRPC {code.name}"
        return None
    code = getattr(exc, "code", None)
    if code == Status.CONNECT_FAILED or code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        return str(getattr(exc, "message", "") or exc)
    return None


def _not_loaded(exc: BaseException) -> bool:
    """A restarted server answers before it has loaded the collection again."""
    return "not loaded" in str(getattr(exc, "message", "") or exc)


def _quiet_pymilvus() -> None:
    # pymilvus logs every failed call at ERROR with a full traceback (through logging's
    # last-resort handler when nothing is configured, i.e. onto the command line's stderr);
    # the error reaches the caller as MilvusUnavailableError or the original exception anyway
    log = logging.getLogger("pymilvus.decorators")
    if log.level == logging.NOTSET:
        log.setLevel(logging.CRITICAL)


def probe(uri: str, timeout_s: float = CONNECT_PROBE_S) -> None:
    """Raise :class:`MilvusUnavailableError` unless something accepts TCP connections at a
    server URI's host and port (a Milvus Lite path is not probed)."""
    target = parse_uri(uri)
    if target.lite:
        return
    parsed = urlparse(target.client_uri)
    host, port = parsed.hostname or "", parsed.port or 19530
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise MilvusUnavailableError(uri, f"no server at {host}:{port}: {e}") from e


@dataclass(frozen=True)
class MilvusTarget:
    """Where the vectors go: a client URI (server URL or Lite path) and names."""

    client_uri: str
    token: str
    collection: str | None  # None: derived from the gallery

    @property
    def lite(self) -> bool:
        return not self.client_uri.startswith(("http://", "https://"))


def is_milvus_uri(uri: str | None) -> bool:
    if not uri:
        return False
    return uri.startswith(("milvus://", "milvuss://")) or urlparse(uri).path.endswith(".db")


def parse_uri(uri: str) -> MilvusTarget:
    """``milvus://host:port[?token=..&collection=..]`` or ``/path/to/file.db[?collection=..]``."""
    parsed = urlparse(uri)
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    if parsed.scheme in ("milvus", "milvuss"):
        if not parsed.hostname:
            raise ValueError(f"no host in Milvus URI {uri!r}")
        scheme = "https" if parsed.scheme == "milvuss" else "http"
        port = parsed.port or 19530
        return MilvusTarget(
            f"{scheme}://{parsed.hostname}:{port}", query.get("token", ""), query.get("collection")
        )
    path = parsed.path if parsed.scheme in ("", "file") else uri
    if not path.endswith(".db"):
        raise ValueError(f"not a Milvus URI (milvus://host:port or a *.db path): {uri!r}")
    return MilvusTarget(str(Path(path).expanduser().resolve()), "", query.get("collection"))


def _name(text: str, prefix: str) -> str:
    """A Milvus-safe name (letters, digits, underscores; starts with a letter)."""
    clean = re.sub(r"[^0-9A-Za-z_]", "_", text)
    return f"{prefix}{clean}"[:255]


class MilvusIndex:
    """Cosine search over one partition (one model id) of a Milvus collection."""

    kind = "milvus_hnsw"

    def __init__(
        self,
        uri: str,
        dim: int,
        model_id: str,
        collection: str = "faceledger_faces",
        *,
        client: Any = None,
        hnsw_m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int = HNSW_EF_SEARCH,
        candidate_factor: int = CANDIDATE_FACTOR,
        candidates_min: int = CANDIDATES_MIN,
    ) -> None:
        from pymilvus import MilvusClient

        _quiet_pymilvus()
        target = parse_uri(uri) if is_milvus_uri(uri) else MilvusTarget(uri, "", None)
        if target.lite:
            Path(target.client_uri).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        if client is None:
            try:
                client = MilvusClient(uri=target.client_uri, token=target.token)
            except Exception as e:
                if (detail := _unreachable(e)) is None:
                    raise
                raise MilvusUnavailableError(uri, detail) from e
        self.client = client
        self.dim = dim
        self.model_id = model_id
        self.collection = target.collection or collection
        self.partition = _name(model_id, "m_")
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.candidate_factor = candidate_factor
        self.candidates_min = candidates_min
        # "auto": Strong for SELF_WRITE_STRONG_S after this client's own insert or delete,
        # else Bounded. Strong waits for the server's next time tick (391 ms of a search's
        # p50 at 100k faces; Bounded: a few ms, benchmarks/realscale.py --milvus-server).
        # Before each search the manager applies the database's tombstones and new faces
        # through this client (tracking.catch_up), so an erasure is gone from the very next
        # search (tests/gallery/test_milvus_server.py); a face erased by another process
        # that this one has not caught up with yet may stay in Milvus' Bounded reads for up
        # to its gracefulTime (5 s), and is never shown: candidates are read back from the
        # database, where its row is gone. ("Session" would suit, but pymilvus 3.0 against
        # a 2.3.5 server did not see its own deletes at Session: measured, the tests failed.)
        self.consistency = CONSISTENCY
        self._wrote = -math.inf  # time.monotonic() of this client's last insert or delete
        self._count: int | None = None
        self._ensure()

    # calls to the server
    def _rpc(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.client.<method>(...)`` with a lost server turned into
        :class:`MilvusUnavailableError` and a not-yet-reloaded collection loaded again."""
        call: Callable[..., Any] = getattr(self.client, method)
        try:
            return call(*args, **kwargs)
        except Exception as e:
            if (detail := _unreachable(e)) is not None:
                raise MilvusUnavailableError(self.uri, detail) from e
            if not _not_loaded(e) or method == "load_collection":
                raise
        self._rpc("load_collection", self.collection)
        return self._rpc(method, *args, **kwargs)

    # schema
    def _ensure(self) -> None:
        from pymilvus import DataType, MilvusClient

        c = self.client
        if not self._rpc("has_collection", self.collection):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("model", DataType.VARCHAR, max_length=MODEL_ID_MAX)
            schema.add_field("vec", DataType.FLOAT_VECTOR, dim=self.dim)
            index_params = c.prepare_index_params()
            index_params.add_index(
                field_name="vec",
                index_type="HNSW",
                metric_type="IP",
                params={"M": self.hnsw_m, "efConstruction": self.ef_construction},
            )
            self._rpc(
                "create_collection",
                self.collection,
                schema=schema,
                index_params=index_params,
                consistency_level="Strong",
            )
        else:
            desc = self._rpc("describe_collection", self.collection)
            fields = {f["name"]: f for f in desc["fields"]}
            vec = fields.get("vec")
            if "model" not in fields or not vec or int(vec["params"]["dim"]) != self.dim:
                raise ValueError(
                    f"Milvus collection {self.collection!r} is not a faceledger collection of "
                    f"{self.dim}-d vectors"
                )
        if not self._rpc("has_partition", self.collection, self.partition):
            self._rpc("create_partition", self.collection, self.partition)
        self._rpc("load_collection", self.collection)

    def drop(self) -> None:
        """Remove this model's partition (all its vectors) and create it empty."""
        if self.count() == 0:  # already empty: spare the release and reload (~4 s)
            return
        self._rpc("release_collection", self.collection)
        if self._rpc("has_partition", self.collection, self.partition):
            self._rpc("drop_partition", self.collection, self.partition)
        self._rpc("create_partition", self.collection, self.partition)
        self._rpc("load_collection", self.collection)
        self._count = 0

    def flush(self, wait_index: bool = True, timeout_s: float = INDEX_WAIT_S) -> dict[str, Any]:
        """Seal the inserted rows into segments and (``wait_index``) wait until the server has
        built the vector index over all of them; the index's description (type, parameters,
        ``indexed_rows``, ``total_rows``). Rows not flushed are searched by brute force from
        the growing segments (as exact, slower at scale) until the server seals them itself."""
        self._rpc("flush", self.collection)
        deadline = time.monotonic() + timeout_s
        while True:
            info: dict[str, Any] = self._rpc("describe_index", self.collection, "vec")
            done = int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0))
            if not wait_index or (done and not int(info.get("pending_index_rows", 0))):
                return info
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Milvus at {self.uri} indexed {info.get('indexed_rows')} of "
                    f"{info.get('total_rows')} rows in {timeout_s:.0f} s"
                )
            time.sleep(0.5)

    # interface
    def level(self) -> str:
        """The consistency level of the next read (see ``consistency``)."""
        if self.consistency != "auto":
            return self.consistency
        recent = time.monotonic() - self._wrote < SELF_WRITE_STRONG_S
        return "Strong" if recent else "Bounded"

    def count(self) -> int:
        # counted by the model field: Milvus Lite ignores partition_names in count(*) queries
        rows = self._rpc(
            "query",
            self.collection,
            filter=f"model == {json.dumps(self.model_id)}",
            output_fields=["count(*)"],
            partition_names=[self.partition],
            consistency_level=self.level(),
        )
        self._count = int(rows[0]["count(*)"])
        return self._count

    def __len__(self) -> int:
        return self.count() if self._count is None else self._count

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        for s in range(0, len(ids), INSERT_BATCH):
            rows = [
                {"id": int(i), "model": self.model_id, "vec": v}
                for i, v in zip(ids[s : s + INSERT_BATCH], vecs[s : s + INSERT_BATCH], strict=True)
            ]
            self._rpc("insert", self.collection, rows, partition_name=self.partition)
            self._wrote = time.monotonic()
        self._count = None

    def remove(self, ids: np.ndarray) -> int:
        id_list = [int(i) for i in np.asarray(ids, np.int64)]
        if not id_list:
            return 0
        before = len(self)
        for s in range(0, len(id_list), DELETE_BATCH):
            self._rpc(
                "delete",
                self.collection,
                ids=id_list[s : s + DELETE_BATCH],
                partition_name=self.partition,
            )
            self._wrote = time.monotonic()
        return before - self.count()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(self)
        if n == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, n)
        c = min(max(k * self.candidate_factor, self.candidates_min), n, 16_384)
        hits = self._rpc(
            "search",
            self.collection,
            data=list(q),
            limit=c,
            anns_field="vec",
            search_params={"metric_type": "IP", "params": {"ef": max(self.ef_search, c)}},
            partition_names=[self.partition],
            output_fields=["id"],
            consistency_level=self.level(),
        )
        scores = np.full((len(q), k), -1.0, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for qi, row in enumerate(hits):
            got = sorted(((float(h["distance"]), int(h["id"])) for h in row), reverse=True)[:k]
            for j, (s, i) in enumerate(got):
                scores[qi, j], ids[qi, j] = s, i
        return scores, ids


class MilvusIndexManager:
    """Keeps one model's Milvus partition in step with the gallery database.

    The state (database generations and highest face id it reflects) is kept in
    ``<data dir>/index/milvus.json``; a partition whose size does not match it is rebuilt.
    """

    def __init__(self, store: Store, uri: str) -> None:
        self.store = store
        self.uri = uri
        self.target = parse_uri(uri)
        probe(uri)  # a URI that nothing answers on: a clear error when the data dir opens
        self.state_path = store.data_dir / "index" / "milvus.json"
        digest = hashlib.sha1(str(store.data_dir.resolve()).encode()).hexdigest()[:10]
        self.collection_base = self.target.collection or f"faceledger_{digest}"
        self.index: MilvusIndex | None = None
        self.generation = -1
        self.delete_generation = -1
        self.max_id = 0

    def _dim(self) -> int:
        dim = self.store.get_meta("dim")
        return int(dim) if dim else 128

    def _open(self) -> MilvusIndex:
        if self.index is None:
            dim = self._dim()
            self.index = MilvusIndex(
                self.uri,
                dim,
                self.store.model_id() or "unbound",
                collection=self.target.collection or f"{self.collection_base}_d{dim}",
            )
        return self.index

    def _load_state(self) -> bool:
        index = self._open()
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return False
        if (
            state.get("uri") != self.uri
            or state.get("collection") != index.collection
            or state.get("model_id") != self.store.model_id()
            or state.get("count") != index.count()
        ):
            return False
        self.generation = int(state["generation"])
        self.delete_generation = int(state["delete_generation"])
        self.max_id = int(state["max_id"])
        return True

    def rebuild(self) -> MilvusIndex:
        index = self._open()
        gen, dgen = self.store.generations()
        index.drop()
        max_id = 0
        for ids, vecs in self.store.iter_vectors():
            index.add(ids, vecs)
            max_id = int(ids[-1])
        if max_id:  # sealed and indexed now, not when the server gets round to it
            index.flush(wait_index=False)
        index.count()
        self.generation, self.delete_generation, self.max_id = gen, dgen, max_id
        return index

    def sync(self) -> MilvusIndex:
        index = self._open()
        if self.generation < 0 and not self._load_state():
            self.rebuild()
            self.save()
            return index
        if catch_up(self, index):
            index.count()
            self.save()
        return index

    def save(self) -> None:
        index = self._open()
        state = {
            "uri": self.uri,
            "collection": index.collection,
            "partition": index.partition,
            "model_id": self.store.model_id(),
            "generation": self.generation,
            "delete_generation": self.delete_generation,
            "max_id": self.max_id,
            "count": len(index),
        }
        atomic_write(self.state_path, json.dumps(state).encode())
