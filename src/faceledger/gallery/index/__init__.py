"""Vector index behind a small interface, derived from the gallery database.

Two layers, one machine:

* :class:`RowStore` keeps every face's float32 vector in a file that is memory-mapped (the
  page cache holds it, not the heap), plus the face id and a live/erased flag per row.
  It is both the exact index for small galleries and the source of exact scores for the
  re-rank of large ones.
* :class:`FaceIndex` searches a ``RowStore``. Below :data:`EXACT_MAX_FACES` faces it scans
  all vectors exactly (``kind="flat"``). From there on an approximate FAISS index proposes
  a generous candidate set (:data:`CANDIDATES_MIN` rows) which is re-ranked exactly against
  the float32 vectors, so the top-k shown is the exact top-k, with exact scores, whenever
  the true neighbours were among the candidates. The default approximate kind is
  ``"ivf_pqfs"``: an inverted file (``nlist`` ~ sqrt(n) k-means lists, 7.8% of them probed)
  over 4-bit fast-scan product-quantisation codes; ``"ivf_sq8"`` (8-bit scalar codes) and
  ``"hnsw_sq8"`` (HNSW graph) can be asked for. See the constants below for how each
  parameter was measured.

Memory per 128-d face: 512 B of float32 vector in the mapped file (on disk; the page cache
holds what search touches: the candidates' rows), 9 B of id + live flag in RAM, and for
``ivf_pqfs`` 32 B of code + 8 B of list id in RAM (plus the centroids), measured 50 B of RAM
per face at 1M. 10M faces: ~0.5 GB of heap and 5.1 GB of file (``ivf_sq8``: 136 B/face of
codes; ``hnsw_sq8``: ~400 B/face of codes and graph).

The index is a cache of the ``faces`` table. :class:`IndexManager` saves it (small files with
:func:`faceledger.db.store.atomic_write`, the large ones by the same write-to-temp + fsync +
rename pattern, the metadata file last), catches up incrementally: new faces (id > max id) are
appended; erased faces (``Store.tombstones_after``) are dropped at once — their vectors are
zeroed in the file, their codes removed from the IVF lists (or masked out of the HNSW graph)
and a live-row mask filters them from every search — and compacted away later, when erased
rows pass :data:`COMPACT_DEAD_FRACTION` or on :meth:`IndexManager.rebuild`. It rebuilds from
the database when the files are missing, fail their checksums, or belong to another model.

``IndexManager(store, uri=...)`` (or ``$FACELEDGER_INDEX``) selects a Milvus backend instead
(``milvus://host:port`` or a Milvus Lite ``*.db`` path), see :mod:`faceledger.gallery.index.milvus`.
"""

from faceledger.gallery.index.faiss_index import FaceIndex, FlatIndex, VectorIndex
from faceledger.gallery.index.manager import IndexManager
from faceledger.gallery.index.params import (
    DEFAULT_ANN_KIND,
    EXACT_MAX_FACES,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    IVF_KINDS,
    KINDS,
    AnnParams,
    auto_nlist,
    auto_nprobe,
    choose_kind,
)
from faceledger.gallery.index.rowstore import RowStore
from faceledger.gallery.index.tracking import catch_up

__all__ = [
    "DEFAULT_ANN_KIND",
    "EXACT_MAX_FACES",
    "HNSW_EF_CONSTRUCTION",
    "HNSW_M",
    "IVF_KINDS",
    "KINDS",
    "AnnParams",
    "FaceIndex",
    "FlatIndex",
    "IndexManager",
    "RowStore",
    "VectorIndex",
    "auto_nlist",
    "auto_nprobe",
    "catch_up",
    "choose_kind",
]
