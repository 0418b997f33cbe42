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

Re-rank: Milvus' HNSW keeps the float32 vectors and scores every candidate it returns with
the exact inner product, so asking for ``max(k * 10, 200)`` candidates (with ``ef`` at least
that) and keeping the best ``k`` gives the exact top-k whenever the true neighbours were
among the candidates — the same guarantee as the FAISS path.
"""

from __future__ import annotations

import hashlib
import json
import re
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
CANDIDATES_MIN = 200
INSERT_BATCH = 5_000
MODEL_ID_MAX = 128
DELETE_BATCH = 10_000


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

        target = parse_uri(uri) if is_milvus_uri(uri) else MilvusTarget(uri, "", None)
        if target.lite:
            Path(target.client_uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = client or MilvusClient(uri=target.client_uri, token=target.token)
        self.dim = dim
        self.model_id = model_id
        self.collection = target.collection or collection
        self.partition = _name(model_id, "m_")
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.candidate_factor = candidate_factor
        self.candidates_min = candidates_min
        self._count: int | None = None
        self._ensure()

    # schema
    def _ensure(self) -> None:
        from pymilvus import DataType, MilvusClient

        c = self.client
        if not c.has_collection(self.collection):
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
            c.create_collection(
                self.collection,
                schema=schema,
                index_params=index_params,
                consistency_level="Strong",
            )
        else:
            fields = {f["name"]: f for f in c.describe_collection(self.collection)["fields"]}
            vec = fields.get("vec")
            if "model" not in fields or not vec or int(vec["params"]["dim"]) != self.dim:
                raise ValueError(
                    f"Milvus collection {self.collection!r} is not a faceledger collection of "
                    f"{self.dim}-d vectors"
                )
        if not c.has_partition(self.collection, self.partition):
            c.create_partition(self.collection, self.partition)
        c.load_collection(self.collection)

    def drop(self) -> None:
        """Remove this model's partition (all its vectors) and create it empty."""
        c = self.client
        c.release_collection(self.collection)
        if c.has_partition(self.collection, self.partition):
            c.drop_partition(self.collection, self.partition)
        c.create_partition(self.collection, self.partition)
        c.load_collection(self.collection)
        self._count = 0

    # interface
    def count(self) -> int:
        # counted by the model field: Milvus Lite ignores partition_names in count(*) queries
        rows = self.client.query(
            self.collection,
            filter=f"model == {json.dumps(self.model_id)}",
            output_fields=["count(*)"],
            partition_names=[self.partition],
            consistency_level="Strong",
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
            self.client.insert(self.collection, rows, partition_name=self.partition)
        self._count = None

    def remove(self, ids: np.ndarray) -> int:
        id_list = [int(i) for i in np.asarray(ids, np.int64)]
        if not id_list:
            return 0
        before = len(self)
        for s in range(0, len(id_list), DELETE_BATCH):
            self.client.delete(
                self.collection, ids=id_list[s : s + DELETE_BATCH], partition_name=self.partition
            )
        return before - self.count()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = len(self)
        if n == 0 or k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        k = min(k, n)
        c = min(max(k * self.candidate_factor, self.candidates_min), n, 16_384)
        hits = self.client.search(
            self.collection,
            data=list(q),
            limit=c,
            anns_field="vec",
            search_params={"metric_type": "IP", "params": {"ef": max(self.ef_search, c)}},
            partition_names=[self.partition],
            output_fields=["id"],
            consistency_level="Strong",
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
