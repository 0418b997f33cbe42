"""The index of a gallery: built, saved, loaded and caught up from the database; local FAISS
or a Milvus collection."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss

from faceledger.db.store import Store, atomic_write, process_alive
from faceledger.gallery.index.faiss_index import FaceIndex
from faceledger.gallery.index.params import (
    DEFAULT_ANN_KIND,
    EXACT_MAX_FACES,
    FORMAT_VERSION,
    IVF_KINDS,
    IVF_RETRAIN_GROWTH,
    KINDS,
    SEARCH_PARAMS,
    AnnParams,
    choose_kind,
)
from faceledger.gallery.index.rowstore import RowStore, _atomic_path, _file_crc
from faceledger.gallery.index.tracking import _Meta, catch_up

if TYPE_CHECKING:
    # numpy's stubs give ndarray ``__buffer__`` only on Python >= 3.12, so on 3.11 an array
    # is not a ``Buffer`` to the type checker though it supports the buffer protocol.
    pass


class IndexManager:
    """Keeps the index in step with the database and on disk.

    ``kind="auto"`` picks exact or approximate by gallery size (``exact_max``, default
    :data:`EXACT_MAX_FACES`); ``uri`` (or ``$FACELEDGER_INDEX``) — ``milvus://host:port`` or
    a Milvus Lite ``*.db`` path — delegates to a Milvus collection instead.
    """

    def __init__(
        self,
        store: Store,
        uri: str | None = None,
        *,
        kind: str = "auto",
        exact_max: int | None = None,
        ann_kind: str = DEFAULT_ANN_KIND,
        params: AnnParams | None = None,
    ) -> None:
        self.store = store
        self.dir = store.data_dir / "index"
        self.path = self.dir / "faces.faiss"  # approximate structure (absent for flat)
        self.vectors_path = self.dir / "faces.f32"
        self.ids_path = self.dir / "faces.ids"
        self.meta_path = self.dir / "faces.json"
        self.lock_path = self.dir / ".lock"
        uri = uri if uri is not None else os.environ.get("FACELEDGER_INDEX")
        self.uri = None if uri in (None, "", "faiss", "local") else uri
        if kind != "auto" and kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}")
        self.kind = kind
        self.exact_max = EXACT_MAX_FACES if exact_max is None else exact_max
        self.ann_kind = ann_kind
        self.params = params or AnnParams()
        self._params_given = params is not None
        self.index: Any = None
        self.generation = -1
        self.delete_generation = -1
        self.max_id = 0
        self.token: str | None = None
        self._remote: Any = None
        if self.uri:
            from faceledger.gallery.index.milvus import MilvusIndexManager, is_milvus_uri

            if not is_milvus_uri(self.uri):
                raise ValueError(
                    f"unknown index URI {self.uri!r}: use milvus://host:port, a Milvus Lite "
                    "*.db path, or 'faiss' for the local index"
                )
            self._remote = MilvusIndexManager(store, self.uri)

    # helpers
    def _dim(self) -> int:
        dim = self.store.get_meta("dim")
        return int(dim) if dim else 128

    def _target_kind(self, n: int) -> str:
        return choose_kind(n, self.exact_max, self.ann_kind) if self.kind == "auto" else self.kind

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_meta(self) -> _Meta | None:
        try:
            raw = json.loads(self.meta_path.read_text())
            return _Meta(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def _load(self) -> bool:
        meta = self._read_meta()
        if meta is None or meta.format != FORMAT_VERSION:
            return False
        if meta.model_id != self.store.model_id() or meta.dim != self._dim():
            return False
        try:
            data = self.ids_path.read_bytes()
            if zlib.crc32(data) != meta.ids_crc:
                return False
            ids, alive = RowStore.parse_ids(data, meta.rows)
            rows = RowStore.open(self.vectors_path, meta.dim, ids, alive, meta.crcs)
            ann = None
            if meta.kind != "flat":
                if meta.ann_crc is None or _file_crc(self.path) != meta.ann_crc:
                    return False
                ann = faiss.read_index(str(self.path))
        except (OSError, ValueError, RuntimeError):
            return False
        params = replace(AnnParams(), **meta.params)
        if self._params_given:  # search-time settings asked of this manager win
            params = replace(params, **{f: getattr(self.params, f) for f in SEARCH_PARAMS})
        index = FaceIndex(rows, meta.kind, ann, params, meta.trained_rows)
        if len(index) != meta.count:
            return False
        self.index = index
        self.generation = meta.generation
        self.delete_generation = meta.delete_generation
        self.max_id = meta.max_id
        self.token = meta.token
        return True

    def _fresh_rows_path(self) -> Path:
        return self.dir / f".faces.f32.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"

    def _cleanup_tmp(self) -> None:
        for p in self.dir.glob(".faces.f32.*.tmp"):
            try:
                pid = int(p.name.split(".")[3])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not process_alive(pid):
                p.unlink(missing_ok=True)

    # public API
    def rebuild(self) -> Any:
        """Rebuild from the database (the source of truth), compacting erased faces away."""
        if self._remote is not None:
            return self._remote.rebuild()
        with self._locked():
            return self._rebuild_locked()

    def _rebuild_locked(self) -> FaceIndex:
        self._cleanup_tmp()
        gen, dgen = self.store.generations()
        rows = RowStore.create(self._fresh_rows_path(), self._dim())
        for ids, vecs in self.store.iter_vectors():
            rows.append(ids, vecs)
        index = FaceIndex(rows, "flat", None, replace(self.params))
        index.build_ann(self._target_kind(len(index)))
        self.index, self.generation, self.delete_generation = index, gen, dgen
        self.max_id = rows.max_id()
        self.token = None  # not saved yet
        return index

    def _compact_locked(self) -> None:
        """Drop erased rows and rebuild the approximate structure (no database read)."""
        assert self.index is not None
        old: FaceIndex = self.index
        rows = old.rows.compacted(self._fresh_rows_path())
        index = FaceIndex(rows, "flat", None, old.params)
        index.build_ann(self._target_kind(len(index)))
        self.index = index
        self.token = None

    def sync(self) -> Any:
        """Bring the index up to the database's generation, loading or rebuilding as needed."""
        if self._remote is not None:
            return self._remote.sync()
        with self._locked():
            meta = self._read_meta()
            disk_token = meta.token if meta else None
            # reload when another process saved since (an unsaved rebuild of ours is kept)
            stale = self.index is None or (self.token is not None and disk_token != self.token)
            if stale and not self._load():
                self._rebuild_locked()
                self._save_locked()
                return self.index
            index: FaceIndex = self.index
            changed = catch_up(self, index)
            if changed or self.token is None:
                target = self._target_kind(len(index))
                grown = (
                    index.kind in IVF_KINDS
                    and index.rows.rows > IVF_RETRAIN_GROWTH * max(index.trained_rows, 1)
                    and self.params.nlist is None
                )
                # switch kinds with hysteresis: back to exact only below half the threshold
                switch = target != index.kind and not (
                    target == "flat" and self.kind == "auto" and len(index) >= self.exact_max // 2
                )
                if index.needs_compaction() or switch or grown:
                    self._compact_locked()
                self._save_locked()
            return self.index

    def save(self) -> None:
        if self._remote is not None:
            self._remote.save()
            return
        with self._locked():
            self._save_locked()

    def _save_locked(self) -> None:
        index: FaceIndex | None = self.index
        if index is None:
            return
        rows = index.rows
        rows.flush()
        if rows.path != self.vectors_path:  # a freshly built or compacted file
            os.replace(rows.path, self.vectors_path)
            rows.path = self.vectors_path
        ids_data = rows.ids_bytes()
        atomic_write(self.ids_path, ids_data)
        ann_crc = None
        if index.ann is not None:
            with _atomic_path(self.path) as tmp:
                faiss.write_index(index.ann, str(tmp))
                ann_crc = _file_crc(tmp)
        else:
            self.path.unlink(missing_ok=True)
        self.token = uuid.uuid4().hex
        meta = _Meta(
            kind=index.kind,
            dim=index.dim,
            rows=rows.rows,
            n_dead=rows.n_dead,
            generation=self.generation,
            delete_generation=self.delete_generation,
            max_id=self.max_id,
            model_id=self.store.model_id(),
            trained_rows=index.trained_rows,
            params=asdict(index.params),
            crcs=rows.crcs,
            ids_crc=zlib.crc32(ids_data),
            ann_crc=ann_crc,
            token=self.token,
            count=len(index),
        )
        atomic_write(self.meta_path, json.dumps(asdict(meta)).encode())
