"""Who is which subject: the gallery's faces grouped by the person their photos show (#14).

**The rule.** A face belongs to the subject named by its image's provenance
``subject_label`` (a manifest's ``subject_label``/``subject`` column, or ``faceledger ingest
--subject``) when it is the only face found in that image (``images.face_count == 1``).
Otherwise it is a *subject of one*:

* a face in a group photo: the photo's label says who is in it, not which of its faces that
  person is, so each of its faces is a subject of one (an admin can place one face with
  :func:`add_relabel`, kind ``face``);
* a face whose image carries no label;
* a face whose image was ingested more than once under different labels (a conflict: the
  sources disagree about who it is; merging the two labels resolves it).

**Merges** (``faceledger subjects merge``) relabel and never delete: a row of
``subject_relabels`` moves every face of a label to another label (kind ``label``), or one
face to a label (kind ``face``). The provenance rows keep what their sources said; the latest
relabel of a label or face wins, and labels resolve through chains (A merged into B, B into
C: A's faces are C's).

A subject is named by a :data:`SubjectKey`: its label, or the face id of a subject of one
(:func:`subject_name` writes ``face:<id>``).

**Kept in step with ingest and erasure by reading the database**, never a copy: a search
asks for the subjects of the faces its index search returned (:func:`face_subjects`) and then
for every face of those subjects (:func:`members`), a few indexed queries whatever the
gallery's size. Only :func:`membership` (duplicates, the subject count) reads every face row,
without vectors; the count is cached per gallery state (:func:`subject_count`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from faceledger.db.schema import faces, images, provenance, subject_relabels
from faceledger.db.store import Store, now_iso

SubjectKey = str | int  # a label, or the face id of a subject of one
FACE_PREFIX = "face:"
MAX_LABEL = 200  # characters of a subject label
_CHUNK = 500  # ids per IN (...) query


def subject_name(key: SubjectKey) -> str:
    """How a subject is written: its label, or ``face:<id>`` for a subject of one."""
    return f"{FACE_PREFIX}{key}" if isinstance(key, int) else key


def parse_subject(text: str) -> SubjectKey:
    """The subject ``text`` names: ``face:<id>`` a face's subject of one, anything else a
    label (stripped). ValueError for an empty name or a bad face id."""
    text = text.strip()
    if not text:
        raise ValueError("a subject is a label or face:<id>")
    if text.startswith(FACE_PREFIX):
        rest = text[len(FACE_PREFIX) :]
        if not rest.isdigit():
            raise ValueError(f"{text!r}: a face is named face:<id>, e.g. face:12")
        return int(rest)
    return text


def clean_label(label: str | None) -> str | None:
    """A label as stored: stripped, None when blank. ValueError when over
    :data:`MAX_LABEL` characters."""
    if label is None:
        return None
    label = label.strip()
    if len(label) > MAX_LABEL:
        raise ValueError(f"a subject label has at most {MAX_LABEL} characters")
    return label or None


@dataclass
class Relabels:
    """The admins' merges, latest first-class: label -> label and face -> label."""

    labels: dict[str, str] = field(default_factory=dict)
    faces: dict[int, str] = field(default_factory=dict)
    version: int = 0  # the latest relabel's id (0: none)

    def label(self, name: str) -> str:
        """Where ``name`` resolves through merges (itself if never merged)."""
        seen = {name}
        while name in self.labels:
            name = self.labels[name]
            if name in seen:  # merges never make a cycle; a hand-edited database might
                break
            seen.add(name)
        return name

    def sources_of(self, targets: Iterable[str]) -> set[str]:
        """Every label that resolves to one of ``targets``, ``targets`` included."""
        want = set(targets)
        return want | {raw for raw in self.labels if self.label(raw) in want}

    def subject(self, face_id: int, face_count: int, raw_labels: Iterable[str]) -> SubjectKey:
        """The rule of the module docstring, for one face."""
        if face_id in self.faces:
            return self.label(self.faces[face_id])
        if face_count == 1:
            resolved = {self.label(r) for r in raw_labels}
            if len(resolved) == 1:
                return resolved.pop()
        return face_id


def load_relabels(conn: Connection) -> Relabels:
    rel = Relabels()
    for row in conn.execute(select(subject_relabels).order_by(subject_relabels.c.id)):
        if row.kind == "face":
            rel.faces[int(row.source)] = row.target_label
        else:
            rel.labels[row.source] = row.target_label
        rel.version = int(row.id)
    return rel


def relabels(store: Store) -> Relabels:
    with store.engine.connect() as conn:
        return load_relabels(conn)


def add_relabel(
    conn: Connection,
    kind: str,
    source: SubjectKey,
    target_label: str,
    reason: str,
    user_id: int,
    ledger_seq: int | None,
) -> None:
    """Record one merge inside the caller's transaction (the core writes its ledger entry)."""
    if kind not in ("label", "face"):
        raise ValueError(f"unknown relabel kind {kind!r}")
    conn.execute(
        insert(subject_relabels).values(
            kind=kind,
            source=str(source),
            target_label=target_label,
            reason=reason,
            user_id=user_id,
            ledger_seq=ledger_seq,
            created_at=now_iso(),
        )
    )


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def _face_rows(conn: Connection, where: object) -> dict[int, tuple[int, set[str]]]:
    """face id -> (its image's face count, the labels of its image's provenance rows)."""
    q = (
        select(faces.c.id, images.c.face_count, provenance.c.subject_label)
        .join(images, images.c.sha256 == faces.c.image_sha)
        .outerjoin(
            provenance,
            (provenance.c.image_sha == faces.c.image_sha) & provenance.c.subject_label.isnot(None),
        )
        .where(where)  # type: ignore[arg-type]
    )
    out: dict[int, tuple[int, set[str]]] = {}
    for fid, count, label in conn.execute(q):
        entry = out.setdefault(int(fid), (int(count), set()))
        if label:
            entry[1].add(label)
    return out


def face_subjects(
    store: Store, face_ids: Iterable[int], rel: Relabels | None = None
) -> dict[int, SubjectKey]:
    """The subject of each face that still exists."""
    ids = sorted({int(f) for f in face_ids})
    out: dict[int, SubjectKey] = {}
    with store.engine.connect() as conn:
        rel = rel if rel is not None else load_relabels(conn)
        for chunk in _chunks(ids):
            for fid, (count, labels) in _face_rows(conn, faces.c.id.in_(chunk)).items():
                out[fid] = rel.subject(fid, count, labels)
    return out


def members(
    store: Store, labels: Iterable[str], rel: Relabels | None = None
) -> dict[str, list[int]]:
    """Every face of each labelled subject in ``labels`` (face ids ascending); a label
    without faces maps to an empty list."""
    wanted = sorted(set(labels))
    out: dict[str, list[int]] = {label: [] for label in wanted}
    if not wanted:
        return out
    with store.engine.connect() as conn:
        rel = rel if rel is not None else load_relabels(conn)
        raw = sorted(rel.sources_of(wanted))
        candidates: set[int] = {f for f, t in rel.faces.items() if rel.label(t) in out}
        for i in range(0, len(raw), _CHUNK):
            labelled = (
                select(provenance.c.image_sha)
                .where(provenance.c.subject_label.in_(raw[i : i + _CHUNK]))
                .scalar_subquery()
            )
            candidates.update(
                int(r[0])
                for r in conn.execute(
                    select(faces.c.id)
                    .join(images, images.c.sha256 == faces.c.image_sha)
                    .where(images.c.face_count == 1, faces.c.image_sha.in_(labelled))
                )
            )
        for chunk in _chunks(sorted(candidates)):
            for fid, (count, labs) in _face_rows(conn, faces.c.id.in_(chunk)).items():
                key = rel.subject(fid, count, labs)
                if isinstance(key, str) and key in out:
                    out[key].append(fid)
    for ids in out.values():
        ids.sort()
    return out


def vectors_of(store: Store, face_ids: Iterable[int]) -> dict[int, np.ndarray]:
    """The stored (L2-normalised) vector of each face that still exists."""
    ids = sorted({int(f) for f in face_ids})
    out: dict[int, np.ndarray] = {}
    with store.engine.connect() as conn:
        for chunk in _chunks(ids):
            for fid, blob in conn.execute(
                select(faces.c.id, faces.c.embedding).where(faces.c.id.in_(chunk))
            ):
                out[int(fid)] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    return out


@dataclass
class Membership:
    """Every face's subject: ``face_ids`` ascending, ``subject[i]`` the position in
    ``keys`` of face ``face_ids[i]``'s subject."""

    face_ids: np.ndarray  # int64
    subject: np.ndarray  # int64, index into keys
    keys: list[SubjectKey]

    def groups(self) -> list[list[int]]:
        """Each subject's rows of ``face_ids`` (in the order of ``keys``)."""
        out: list[list[int]] = [[] for _ in self.keys]
        for row, s in enumerate(self.subject.tolist()):
            out[s].append(row)
        return out

    def __len__(self) -> int:
        return len(self.keys)


def membership(store: Store, batch: int = 50_000) -> Membership:
    """Every face's subject, in one pass over the face rows (no vectors)."""
    ids: list[int] = []
    subject: list[int] = []
    keys: list[SubjectKey] = []
    position: dict[SubjectKey, int] = {}
    with store.engine.connect() as conn:
        rel = load_relabels(conn)
        last = 0
        while True:
            page = conn.execute(
                select(faces.c.id).where(faces.c.id > last).order_by(faces.c.id).limit(batch)
            ).all()
            if not page:
                break
            lo, hi = int(page[0][0]), int(page[-1][0])
            rows = _face_rows(conn, faces.c.id.between(lo, hi))
            for fid in sorted(rows):
                count, labels = rows[fid]
                key = rel.subject(fid, count, labels)
                if key not in position:
                    position[key] = len(keys)
                    keys.append(key)
                ids.append(fid)
                subject.append(position[key])
            last = hi
    return Membership(np.array(ids, np.int64), np.array(subject, np.int64), keys)


def _state(store: Store) -> tuple[int, ...]:
    """What the subjects depend on: face writes and deletes, provenance rows, merges."""
    with store.engine.connect() as conn:
        prov = conn.execute(select(func.max(provenance.c.id))).scalar() or 0
        merges = conn.execute(select(func.max(subject_relabels.c.id))).scalar() or 0
    return (*store.generations(), int(prov), int(merges))


_count_lock = threading.Lock()
_counts: dict[str, tuple[tuple[int, ...], int]] = {}


def subject_count(store: Store) -> int:
    """How many subjects the gallery holds (every subject of one counted), cached per
    database until a face is added or erased, a provenance row added or a merge made."""
    state = _state(store)
    with _count_lock:
        hit = _counts.get(store.url)
    if hit is not None and hit[0] == state:
        return hit[1]
    n = len(membership(store))
    with _count_lock:
        _counts[store.url] = (state, n)
    return n
