"""Vector index behind a small interface, derived from the gallery database.

:class:`VectorIndex` is what search needs: add, remove, search, save, load. The embedded
default is exact inner-product search with FAISS (``IndexFlatIP`` keyed by face id). The
index is a cache of the ``faces`` table: :class:`IndexManager` saves it atomically with the
database generation it reflects, catches up incrementally when faces were added, and
rebuilds it from the database when it is missing, corrupt, or faces were deleted.
"""

from __future__ import annotations

import json
from typing import Protocol

import faiss
import numpy as np

from faceledger.store import Store, atomic_write


class VectorIndex(Protocol):
    kind: str
    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k); missing slots have id -1."""
        ...

    def to_bytes(self) -> bytes: ...


class FlatIndex:
    """Exact cosine (inner product of L2-normalised vectors) search."""

    kind = "flat"

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self._index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids: np.ndarray) -> int:
        return int(self._index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, len(self))) if len(self) else 1
        if len(self) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        scores, ids = self._index.search(q, k)
        return scores, ids

    def max_id(self) -> int:
        if len(self) == 0:
            return 0
        return int(faiss.vector_to_array(self._index.id_map).max())

    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self._index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> FlatIndex:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index.d, index)


class IndexManager:
    """Keeps a :class:`FlatIndex` in step with the database and on disk."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.data_dir / "index"
        self.path = self.dir / "faces.faiss"
        self.meta_path = self.dir / "faces.json"
        self.index: FlatIndex | None = None
        self.generation = -1
        self.delete_generation = -1
        self.max_id = 0

    def _dim(self) -> int:
        dim = self.store.get_meta("dim")
        return int(dim) if dim else 128

    def _load(self) -> bool:
        if not (self.path.is_file() and self.meta_path.is_file()):
            return False
        try:
            info = json.loads(self.meta_path.read_text())
            index = FlatIndex.from_bytes(self.path.read_bytes())
        except (OSError, ValueError, RuntimeError):
            return False
        if len(index) != info.get("count") or info.get("model_id") != self.store.model_id():
            return False
        self.index = index
        self.generation = int(info["generation"])
        self.delete_generation = int(info["delete_generation"])
        self.max_id = int(info["max_id"])
        return True

    def rebuild(self) -> FlatIndex:
        gen, dgen = self.store.generations()
        index = FlatIndex(self._dim())
        max_id = 0
        for ids, vecs in self.store.iter_vectors():
            index.add(ids, vecs)
            max_id = int(ids[-1])
        self.index, self.generation, self.delete_generation, self.max_id = index, gen, dgen, max_id
        return index

    def sync(self) -> FlatIndex:
        """Bring the index up to the database's generation, loading or rebuilding as needed."""
        if self.index is None and not self._load():
            self.rebuild()
            self.save()
        gen, dgen = self.store.generations()
        assert self.index is not None
        if dgen != self.delete_generation:
            self.rebuild()
            self.save()
        elif gen != self.generation:
            for ids, vecs in self.store.iter_vectors(min_id=self.max_id):
                self.index.add(ids, vecs)
                self.max_id = int(ids[-1])
            self.generation = gen
            self.save()
        return self.index

    def save(self) -> None:
        if self.index is None:
            return
        atomic_write(self.path, self.index.to_bytes())
        info = {
            "kind": self.index.kind,
            "count": len(self.index),
            "generation": self.generation,
            "delete_generation": self.delete_generation,
            "max_id": self.max_id,
            "model_id": self.store.model_id(),
        }
        atomic_write(self.meta_path, json.dumps(info).encode())
