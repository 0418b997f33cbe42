"""The memory-mapped float32 vector file with face ids and live flags: the exact index of
small galleries and the source of exact scores for the re-rank of large ones."""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from faceledger.gallery.index.params import BLOCK_ROWS

if TYPE_CHECKING:
    # numpy's stubs give ndarray ``__buffer__`` only on Python >= 3.12, so on 3.11 an array
    # is not a ``Buffer`` to the type checker though it supports the buffer protocol.
    from typing_extensions import Buffer


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temp path to write a large file to; fsynced and renamed over ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o600)  # vectors are biometric data: the owner's only
        _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _file_crc(path: Path, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


class RowStore:
    """Float32 vectors in a memory-mapped file, row by row, with face ids and live flags.

    Rows are appended in increasing face-id order (ids of new faces only grow), so an id's row
    is found by binary search. Erasing a face zeroes its vector in the file and clears its
    live flag; the row stays until compaction rewrites the file.
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self.rows = 0
        self._ids = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self.n_dead = 0
        self.crcs: list[int] = []
        self.vectors: np.ndarray = np.zeros((0, dim), np.float32)

    # construction
    @classmethod
    def create(cls, path: Path, dim: int) -> RowStore:
        store = cls(path, dim)
        store.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(store.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.chmod(store.path, 0o600)  # an existing file keeps its mode through O_TRUNC
        return store

    @classmethod
    def open(
        cls, path: Path, dim: int, ids: np.ndarray, alive: np.ndarray, crcs: list[int]
    ) -> RowStore:
        """Map an existing vector file; ValueError when it does not match ``crcs``."""
        store = cls(path, dim)
        rows = len(ids)
        need = rows * dim * 4
        size = store.path.stat().st_size
        if size < need:
            raise ValueError(f"vector file holds {size} bytes, expected {need}")
        if size > need:  # rows appended by a writer that died before saving its metadata
            os.truncate(store.path, need)
        store.rows = rows
        store._ids = np.array(ids, np.int64)
        store._alive = np.array(alive, bool)
        store.n_dead = int(rows - store._alive.sum())
        store._remap()
        if store._block_crcs(0) != list(crcs):
            raise ValueError("vector file checksum mismatch")
        store.crcs = list(crcs)
        return store

    def _remap(self) -> None:
        if self.rows == 0:
            self.vectors = np.zeros((0, self.dim), np.float32)
        else:
            self.vectors = np.memmap(
                self.path, dtype=np.float32, mode="r+", shape=(self.rows, self.dim)
            )

    def _block_crcs(self, first_block: int) -> list[int]:
        out = []
        for start in range(first_block * BLOCK_ROWS, self.rows, BLOCK_ROWS):
            block = np.ascontiguousarray(self.vectors[start : start + BLOCK_ROWS])
            out.append(zlib.crc32(cast("Buffer", block)))
        return out

    # views
    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.rows]

    @property
    def alive(self) -> np.ndarray:
        return self._alive[: self.rows]

    @property
    def n_alive(self) -> int:
        return self.rows - self.n_dead

    def max_id(self) -> int:
        return int(self._ids[self.rows - 1]) if self.rows else 0

    def alive_bitmap(self) -> np.ndarray:
        return np.packbits(self.alive, bitorder="little")

    # mutation
    def append(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Append rows (ids increasing and above every stored id); their row numbers out."""
        ids = np.asarray(ids, np.int64)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if len(ids) == 0:
            return np.zeros(0, np.int64)
        if np.any(np.diff(ids) <= 0) or (self.rows and ids[0] <= self.max_id()):
            raise ValueError("ids must be increasing and above the stored ones")
        start = self.rows
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view = memoryview(cast("Buffer", vecs)).cast("B")
            off, pos = start * self.dim * 4, 0
            while pos < len(view):
                pos += os.pwrite(fd, view[pos : pos + (1 << 26)], off + pos)
        finally:
            os.close(fd)
        end = start + len(ids)
        if end > len(self._ids):
            cap = max(end, 2 * len(self._ids), 1024)
            self._ids = np.concatenate(
                [self._ids[: self.rows], np.zeros(cap - self.rows, np.int64)]
            )
            self._alive = np.concatenate(
                [self._alive[: self.rows], np.zeros(cap - self.rows, bool)]
            )
        self._ids[start:end] = ids
        self._alive[start:end] = True
        self.rows = end
        self._remap()
        first = start // BLOCK_ROWS
        self.crcs = self.crcs[:first] + self._block_crcs(first)
        return np.arange(start, end, dtype=np.int64)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of those ``ids`` that are stored (erased or not)."""
        ids = np.asarray(ids, np.int64)
        if self.rows == 0 or len(ids) == 0:
            return np.zeros(0, np.int64)
        return _matching(self.ids, ids)

    def kill(self, ids: np.ndarray) -> np.ndarray:
        """Erase the live rows of ``ids``: zero their vectors, clear their flags; rows out."""
        rows = self.rows_of(ids)
        rows = rows[self._alive[rows]]
        if len(rows) == 0:
            return rows
        self.vectors[rows] = 0.0
        self._alive[rows] = False
        self.n_dead += len(rows)
        for b in np.unique(rows // BLOCK_ROWS):
            start = int(b) * BLOCK_ROWS
            block = np.ascontiguousarray(self.vectors[start : start + BLOCK_ROWS])
            self.crcs[b] = zlib.crc32(cast("Buffer", block))
        return rows

    def flush(self) -> None:
        if isinstance(self.vectors, np.memmap):
            self.vectors.flush()
        _fsync_path(self.path)

    def compacted(self, path: Path, chunk: int = 1 << 18) -> RowStore:
        """A new store at ``path`` holding only the live rows."""
        out = RowStore.create(path, self.dim)
        for start in range(0, self.rows, chunk):
            keep = self.alive[start : start + chunk]
            if keep.any():
                out.append(
                    self.ids[start : start + chunk][keep], self.vectors[start : start + chunk][keep]
                )
        return out

    def ids_bytes(self) -> bytes:
        return self.ids.astype("<i8").tobytes() + self.alive.astype(np.uint8).tobytes()

    @staticmethod
    def parse_ids(data: bytes, rows: int) -> tuple[np.ndarray, np.ndarray]:
        if len(data) != rows * 9:
            raise ValueError("id file has the wrong size")
        ids = np.frombuffer(data, dtype="<i8", count=rows).astype(np.int64)
        alive = np.frombuffer(data, dtype=np.uint8, offset=rows * 8).astype(bool)
        return ids, alive


def _matching(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_ids, ids)
    ok = pos < len(sorted_ids)
    pos = pos[ok]
    return pos[sorted_ids[pos] == ids[ok]].astype(np.int64)


# --- the index -----------------------------------------------------------------------------
