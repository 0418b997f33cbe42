"""Catching an index up with the database's changes (new faces, erased ones)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from faceledger.db.store import Store
from faceledger.gallery.index.params import FORMAT_VERSION

if TYPE_CHECKING:
    # numpy's stubs give ndarray ``__buffer__`` only on Python >= 3.12, so on 3.11 an array
    # is not a ``Buffer`` to the type checker though it supports the buffer protocol.
    pass


# --- the manager ---------------------------------------------------------------------------
@dataclass
class _Meta:
    kind: str
    dim: int
    rows: int
    n_dead: int
    generation: int
    delete_generation: int
    max_id: int
    model_id: str | None
    trained_rows: int
    params: dict[str, Any]
    crcs: list[int]
    ids_crc: int
    ann_crc: int | None
    token: str
    format: int = FORMAT_VERSION
    count: int = 0


class _Tracked(Protocol):
    store: Store
    generation: int
    delete_generation: int
    max_id: int


def catch_up(state: _Tracked, index: Any) -> bool:
    """Apply the database's changes since ``state``'s generations to ``index``.

    Erased faces (tombstones) are removed, faces with ids above ``max_id`` added, and the
    generations and ``max_id`` on ``state`` advanced. True if anything changed.
    """
    gen, dgen = state.store.generations()
    changed = False
    if dgen != state.delete_generation:
        index.remove(state.store.tombstones_after(state.delete_generation))
        state.delete_generation = dgen
        changed = True
    if gen != state.generation:
        for ids, vecs in state.store.iter_vectors(min_id=state.max_id):
            index.add(ids, vecs)
            state.max_id = int(ids[-1])
        state.generation = gen
        changed = True
    return changed
