"""The gallery database: the source of truth for images, provenance, faces and vectors.

SQLAlchemy Core over SQLite (WAL, foreign keys on) by default, or PostgreSQL
(``--db postgresql://...``, see :func:`resolve_database`); the vector index is derived
from the ``faces`` table and can always be rebuilt from it. Every face write bumps a
``generation`` counter (and every delete also ``delete_generation``), which lets an index
notice that it is stale and catch up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, event, func, insert, select, update
from sqlalchemy.engine import Connection

from faceledger.db.schema import (
    SCHEMA_VERSION,
    face_tombstones,
    faces,
    images,
    ingest_runs,
    meta,
    metadata,
    provenance,
    sources,
)
from faceledger.errors import BadTextError, DatabaseBindingError, ModelMismatchError
from faceledger.types import Face, Provenance

log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _refuse_nul(
    _conn: Any, _cursor: Any, _statement: str, parameters: Any, _context: Any, many: bool
) -> None:
    rows = parameters if isinstance(parameters, list) and many else [parameters]
    for row in rows:
        if isinstance(row, dict):
            values: Any = row.values()
        else:
            values = row if isinstance(row, (tuple, list)) else (row,)
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise BadTextError("text must not contain NUL characters")


SQLITE_FILE = "gallery.db"
BINDING_FILE = "database.json"  # where a data dir keeps its server database's URL
# Any writer transaction on PostgreSQL takes this advisory lock first: the equivalent of
# SQLite's BEGIN IMMEDIATE, so read-then-write units (ledger appends) are serialised.
PG_WRITER_LOCK = 0x46414345  # "FACE"


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean PostgreSQL through psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redact_url(url: str) -> str:
    """The URL without its password, for messages and the ledger."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


def resolve_database(data_dir: Path, url: str | None) -> tuple[str, dict[str, Any] | None]:
    """The database of ``data_dir`` and its binding record (None for the SQLite default).

    The database is chosen when a data dir is created: ``url`` (``--db``, else
    ``$FACELEDGER_DB``) names a server database, which the data dir records in
    ``database.json`` (mode 0600: the URL may hold a password). From then on that record
    decides (edit it to move the database), and a data dir whose gallery is in SQLite is
    never silently switched to another database.
    """
    binding_path = data_dir / BINDING_FILE
    if binding_path.is_file():
        binding: dict[str, Any] = json.loads(binding_path.read_text())
        recorded = str(binding["url"])
        if url and normalise_url(url) != recorded:
            log.warning(
                "%s uses the database it was created with, %s, not %s (edit %s to move it)",
                data_dir,
                redact_url(recorded),
                redact_url(normalise_url(url)),
                binding_path,
            )
        return recorded, binding
    sqlite_url = f"sqlite:///{data_dir / SQLITE_FILE}"
    if not url or normalise_url(url).startswith("sqlite"):
        return normalise_url(url) if url else sqlite_url, None
    url = normalise_url(url)
    if (data_dir / SQLITE_FILE).exists():
        raise DatabaseBindingError(
            f"{data_dir} keeps its gallery in SQLite ({SQLITE_FILE}); refusing to use "
            f"{redact_url(url)} instead (to move the gallery there, run `faceledger migrate "
            "--to URL` without --db/$FACELEDGER_DB; or use a new data dir)"
        )
    # recorded by the Store once the database has accepted this data dir
    return url, {"url": url, "data_dir_id": uuid.uuid4().hex}


def read_meta(conn: Connection, key: str) -> str | None:
    """A ``meta`` value in ``conn``'s database (None when unset)."""
    return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()


def write_meta(conn: Connection, key: str, value: str) -> None:
    """Set a ``meta`` value in ``conn``'s transaction."""
    done = conn.execute(update(meta).where(meta.c.key == key).values(value=value)).rowcount
    if not done:
        conn.execute(insert(meta).values(key=key, value=value))


def insert_or_ignore(table: Any, conn: Connection) -> Any:
    """INSERT that does nothing where the row's key already exists (both databases)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def _pg_writer_begin(conn: Connection) -> None:
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITER_LOCK})")


@dataclass
class CandidateRecord:
    face_id: int
    image_sha: str
    bbox: list[int]
    quality: float
    crop_path: str
    stored_path: str
    width: int
    height: int
    provenance: list[dict[str, Any]]


@dataclass
class NewImage:
    """An image for :meth:`Store.add_images`, with what :meth:`Store.add_image` takes."""

    sha: str
    width: int
    height: int
    fmt: str
    byte_size: int
    stored_path: str
    prov: Provenance
    faces: list[tuple[Face, str]]  # each face with its crop's path


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # transactions are begun explicitly (see _begin_*)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    # Deleted rows (an erased face's vector) are overwritten with zeros, not left in free
    # space; set explicitly because the compile-time default differs between builds.
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


class Store:
    """Gallery database plus the files (images, crops) kept beside it in the data dir."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if url is None:
            url = os.environ.get("FACELEDGER_DB") or None
        self.url, binding = resolve_database(self.data_dir, url)
        if binding is None and self.url == f"sqlite:///{self.data_dir / SQLITE_FILE}":
            db_file = self.data_dir / SQLITE_FILE
            if not db_file.exists():  # SQLite gives its -wal and -shm files the same mode
                with contextlib.suppress(FileExistsError):  # another process was first
                    os.close(os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # Two engines on one database: ``engine`` for reads (deferred transactions) and
        # ``writer`` whose transactions take the write lock up front (BEGIN IMMEDIATE on
        # SQLite, an advisory lock on PostgreSQL), so read-then-write units such as ledger
        # appends are serialised without deadlocks.
        self.engine: Engine = create_engine(self.url, future=True, pool_pre_ping=True)
        self.writer: Engine = create_engine(self.url, future=True, pool_pre_ping=True)
        self.dialect = self.engine.dialect.name
        for eng in (self.engine, self.writer):  # the same refusal on both databases
            event.listen(eng, "before_cursor_execute", _refuse_nul)
        if self.dialect == "sqlite":
            for eng, begin in ((self.engine, "BEGIN"), (self.writer, "BEGIN IMMEDIATE")):
                event.listen(eng, "connect", _sqlite_pragmas)
                event.listen(eng, "begin", lambda c, b=begin: c.exec_driver_sql(b))
        elif self.dialect == "postgresql":
            event.listen(self.writer, "begin", _pg_writer_begin)
        else:
            raise DatabaseBindingError(
                f"unsupported database {self.dialect!r}: use SQLite (default) or PostgreSQL"
            )
        with self.writer.begin() as conn:
            metadata.create_all(conn)
            add_missing_columns(conn)
        with self.writer.begin() as conn:
            version = self._get_meta(conn, "schema_version")
            # a database faceledger had opened before: a missing ledger guard there was
            # removed, not yet installed (ledger.guards.install_ledger_guards)
            self.known = version is not None
            if version is None:
                self._set_meta(conn, "schema_version", str(SCHEMA_VERSION))
                self._set_meta(conn, "generation", "0")
                self._set_meta(conn, "delete_generation", "0")
            elif int(version) > SCHEMA_VERSION:
                raise RuntimeError(f"data dir was written by a newer faceledger (schema {version})")
            elif int(version) < SCHEMA_VERSION:
                self._set_meta(conn, "schema_version", str(SCHEMA_VERSION))
            if binding is not None:
                self._check_binding(conn, binding, fresh=version is None)
        path = self.data_dir / BINDING_FILE
        if binding is not None and not path.exists():
            atomic_write(path, json.dumps(binding).encode())

    def _check_binding(self, conn: Connection, binding: dict[str, Any], fresh: bool) -> None:
        """A server database belongs to one data dir (its images and crops live there)."""
        owner = self._get_meta(conn, "data_dir_id")
        if owner is None and fresh:
            self._set_meta(conn, "data_dir_id", binding["data_dir_id"])
        elif owner != binding["data_dir_id"]:
            raise DatabaseBindingError(
                f"database {redact_url(self.url)} holds the gallery of another data dir "
                f"(id {owner}), not of {self.data_dir} (id {binding['data_dir_id']}); "
                "give each data dir its own database"
            )

    def close(self) -> None:
        self.engine.dispose()
        self.writer.dispose()

    # -- meta ---------------------------------------------------------------------------
    _get_meta = staticmethod(read_meta)
    _set_meta = staticmethod(write_meta)

    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            return self._get_meta(conn, key)

    def model_id(self) -> str | None:
        return self.get_meta("model_id")

    def bind_model(self, model_id: str, dim: int) -> None:
        """Fix the gallery's embedding model on first use; refuse a different one later."""
        with self.writer.begin() as conn:
            current = self._get_meta(conn, "model_id")
            if current is None:
                self._set_meta(conn, "model_id", model_id)
                self._set_meta(conn, "dim", str(dim))
            elif current != model_id:
                raise ModelMismatchError(
                    f"this gallery holds vectors of model {current!r}; refusing to mix in "
                    f"{model_id!r}. Use another data dir, or re-embed the gallery."
                )

    def generations(self) -> tuple[int, int]:
        with self.engine.connect() as conn:
            gen = int(self._get_meta(conn, "generation") or 0)
            dgen = int(self._get_meta(conn, "delete_generation") or 0)
        return gen, dgen

    def _bump(self, conn: Connection, deleted: bool = False) -> None:
        for key in ("generation", "delete_generation") if deleted else ("generation",):
            self._set_meta(conn, key, str(int(self._get_meta(conn, key) or 0) + 1))

    # -- ingest -------------------------------------------------------------------------
    def start_run(self, args: dict[str, Any]) -> int:
        with self.writer.begin() as conn:
            # A run still marked running was interrupted (crash, kill): say so.
            conn.execute(
                update(ingest_runs)
                .where(ingest_runs.c.status == "running")
                .values(status="interrupted")
            )
            res = conn.execute(
                insert(ingest_runs).values(
                    started_at=now_iso(), status="running", args_json=json.dumps(args)
                )
            )
            pk = res.inserted_primary_key
            assert pk is not None  # a single-row INSERT always reports its key
            return int(pk[0])

    def finish_run(self, run_id: int, summary: dict[str, Any], status: str = "done") -> None:
        with self.writer.begin() as conn:
            conn.execute(
                update(ingest_runs)
                .where(ingest_runs.c.id == run_id)
                .values(finished_at=now_iso(), status=status, summary_json=json.dumps(summary))
            )

    def has_image(self, sha: str) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(select(images.c.sha256).where(images.c.sha256 == sha)).first()
                is not None
            )

    def _source_id(self, conn: Connection, name: str) -> int:
        sid = conn.execute(select(sources.c.id).where(sources.c.name == name)).scalar()
        if sid is None:
            pk = conn.execute(
                insert(sources).values(name=name, created_at=now_iso())
            ).inserted_primary_key
            assert pk is not None  # a single-row INSERT always reports its key
            sid = pk[0]
        return int(sid)

    def add_provenance(self, sha: str, prov: Provenance, run_id: int | None) -> bool:
        """Record another provenance for a known image; False if it was already recorded."""
        with self.writer.begin() as conn:
            return self._add_provenance(conn, sha, prov, run_id)

    def _add_provenance(
        self, conn: Connection, sha: str, prov: Provenance, run_id: int | None
    ) -> bool:
        sid = self._source_id(conn, prov.source)
        exists = conn.execute(
            select(provenance.c.id).where(
                provenance.c.image_sha == sha,
                provenance.c.source_id == sid,
                provenance.c.original_path == prov.original_path,
            )
        ).first()
        if exists:
            return False
        conn.execute(insert(provenance).values(_provenance_values(sha, sid, prov, run_id)))
        return True

    def add_image(
        self,
        sha: str,
        width: int,
        height: int,
        fmt: str,
        byte_size: int,
        stored_path: str,
        prov: Provenance,
        face_rows: list[tuple[Face, str]],
        run_id: int | None,
    ) -> list[int]:
        """Insert an image, its provenance and its faces in one transaction; face ids out."""
        ids: list[int] = []
        created = now_iso()
        with self.writer.begin() as conn:
            conn.execute(
                insert(images).values(
                    _image_values(
                        sha, width, height, fmt, byte_size, stored_path, prov, len(face_rows)
                    )
                    | {"created_at": created}
                )
            )
            self._add_provenance(conn, sha, prov, run_id)
            for i, (face, crop_path) in enumerate(face_rows):
                res = conn.execute(
                    insert(faces).values(_face_values(sha, i, face, crop_path, created))
                )
                pk = res.inserted_primary_key
                assert pk is not None  # a single-row INSERT always reports its key
                ids.append(int(pk[0]))
            if face_rows:
                self._bump(conn)
        return ids

    def delete_faces(self, conn: Connection, face_ids: list[int]) -> None:
        """Delete faces inside the caller's transaction, leaving tombstones for indexes."""
        if not face_ids:
            return
        self._bump(conn, deleted=True)
        dgen = int(self._get_meta(conn, "delete_generation") or 0)
        conn.execute(faces.delete().where(faces.c.id.in_(face_ids)))
        conn.execute(
            insert(face_tombstones),
            [{"face_id": f, "delete_generation": dgen, "deleted_at": now_iso()} for f in face_ids],
        )

    def tombstones_after(self, delete_generation: int) -> np.ndarray:
        """Ids of faces deleted after ``delete_generation`` (for index catch-up)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(face_tombstones.c.face_id).where(
                    face_tombstones.c.delete_generation > delete_generation
                )
            ).all()
        return np.array([r[0] for r in rows], dtype=np.int64)

    # -- reads --------------------------------------------------------------------------
    def face_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(faces)).scalar_one())

    def iter_vectors(
        self, min_id: int = 0, batch: int = 50_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in id order, in batches, for faces with id > ``min_id``."""
        last = min_id
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(faces.c.id, faces.c.embedding)
                    .where(faces.c.id > last)
                    .order_by(faces.c.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vecs = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32)
            yield ids, vecs
            last = int(ids[-1])

    def candidates(self, face_ids: list[int]) -> dict[int, CandidateRecord]:
        if not face_ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    faces.c.id,
                    faces.c.image_sha,
                    faces.c.bbox_json,
                    faces.c.quality,
                    faces.c.crop_path,
                    images.c.stored_path,
                    images.c.width,
                    images.c.height,
                )
                .join(images, images.c.sha256 == faces.c.image_sha)
                .where(faces.c.id.in_(face_ids))
            ).all()
            shas = list({r.image_sha for r in rows})
            provs: dict[str, list[dict[str, Any]]] = {s: [] for s in shas}
            for p in conn.execute(
                select(provenance, sources.c.name.label("source"))
                .join(sources, sources.c.id == provenance.c.source_id)
                .where(provenance.c.image_sha.in_(shas))
                .order_by(provenance.c.id)
            ).mappings():
                provs[p["image_sha"]].append(
                    {
                        "source": p["source"],
                        "original_path": p["original_path"],
                        "source_url": p["source_url"],
                        "captured_at": p["captured_at"],
                        "legal_basis": p["legal_basis"],
                        "subject_label": p["subject_label"],
                        "ingested_at": p["created_at"],
                    }
                )
        return {
            r.id: CandidateRecord(
                face_id=r.id,
                image_sha=r.image_sha,
                bbox=json.loads(r.bbox_json),
                quality=r.quality,
                crop_path=r.crop_path,
                stored_path=r.stored_path,
                width=r.width,
                height=r.height,
                provenance=provs.get(r.image_sha, []),
            )
            for r in rows
        }

    def stats(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            n_images = conn.execute(select(func.count()).select_from(images)).scalar_one()
            n_faces = conn.execute(select(func.count()).select_from(faces)).scalar_one()
            no_face = conn.execute(
                select(func.count()).select_from(images).where(images.c.face_count == 0)
            ).scalar_one()
            per_source = {
                name: n
                for name, n in conn.execute(
                    select(sources.c.name, func.count(func.distinct(provenance.c.image_sha)))
                    .join(provenance, provenance.c.source_id == sources.c.id)
                    .group_by(sources.c.name)
                ).all()
            }
            runs = conn.execute(
                select(ingest_runs.c.status, func.count()).group_by(ingest_runs.c.status)
            ).all()
        disk = sum(f.stat().st_size for f in self.data_dir.rglob("*") if f.is_file())
        return {
            "images": int(n_images),
            "images_without_faces": int(no_face),
            "faces": int(n_faces),
            "model_id": self.model_id(),
            "sources": per_source,
            "ingest_runs": {status: int(n) for status, n in runs},
            "data_dir": str(self.data_dir),
            "disk_bytes": disk,
        }

    # -- bulk load ----------------------------------------------------------------------
    def add_images(self, batch: Sequence[NewImage], run_id: int | None) -> int:
        """Insert many new images, their provenance and their faces in one transaction,
        one statement per table for the whole batch: what :meth:`add_image` writes for
        one photo, at tens of thousands of faces a second, for loading a gallery in bulk
        (a benchmark's synthetic gallery, an import from another system). Every image must
        be new (an image already stored fails the whole batch, which then writes nothing).
        Face ids are not returned: read them back by image. Returns the faces added."""
        if not batch:
            return 0
        created = now_iso()
        face_rows = [
            _face_values(img.sha, i, face, crop, created)
            for img in batch
            for i, (face, crop) in enumerate(img.faces)
        ]
        with self.writer.begin() as conn:
            source_ids = {
                name: self._source_id(conn, name) for name in {b.prov.source for b in batch}
            }
            conn.execute(
                insert(images),
                [
                    _image_values(
                        b.sha,
                        b.width,
                        b.height,
                        b.fmt,
                        b.byte_size,
                        b.stored_path,
                        b.prov,
                        len(b.faces),
                    )
                    | {"created_at": created}
                    for b in batch
                ],
            )
            conn.execute(
                insert(provenance),
                [
                    _provenance_values(b.sha, source_ids[b.prov.source], b.prov, run_id)
                    | {"created_at": created}
                    for b in batch
                ],
            )
            if face_rows:
                conn.execute(insert(faces), face_rows)
                self._bump(conn)
        return len(face_rows)


# The rows of one new image, as add_image and add_images write them.
def _image_values(
    sha: str,
    width: int,
    height: int,
    fmt: str,
    byte_size: int,
    stored_path: str,
    prov: Provenance,
    face_count: int,
) -> dict[str, Any]:
    return {
        "sha256": sha,
        "width": width,
        "height": height,
        "format": fmt,
        "byte_size": byte_size,
        "stored_path": stored_path,
        "face_count": face_count,
        "expires_at": prov.expires_at,
    }


def _provenance_values(
    sha: str, source_id: int, prov: Provenance, run_id: int | None
) -> dict[str, Any]:
    return {
        "image_sha": sha,
        "source_id": source_id,
        "original_path": prov.original_path,
        "source_url": prov.source_url,
        "captured_at": prov.captured_at,
        "legal_basis": prov.legal_basis,
        "subject_label": prov.subject_label,
        "ingest_run_id": run_id,
        "created_at": now_iso(),
    }


def _face_values(sha: str, index: int, face: Face, crop_path: str, created: str) -> dict[str, Any]:
    det = face.detection
    return {
        "image_sha": sha,
        "face_index": index,
        "bbox_json": json.dumps(det.bbox.as_list()),
        "landmarks_json": json.dumps([] if det.landmarks is None else det.landmarks.tolist()),
        "det_score": det.score,
        "detector": det.detector,
        "quality": face.quality,
        "size": face.size,
        "sharpness": face.sharpness,
        "yaw": face.yaw,
        "model_id": face.model_id,
        "embedding": np.asarray(face.embedding, dtype="<f4").tobytes(),
        "crop_path": crop_path,
        "created_at": created,
    }


def add_missing_columns(conn: Connection) -> list[str]:
    """Bring an older database up to the current schema: ``create_all`` makes new tables,
    this adds the nullable columns that later versions gave existing tables."""
    from sqlalchemy import inspect
    from sqlalchemy.schema import CreateColumn

    insp = inspect(conn)
    added = []
    for table in metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            if not col.nullable:
                raise RuntimeError(f"cannot add NOT NULL column {table.name}.{col.name}")
            ddl = CreateColumn(col).compile(dialect=conn.dialect)
            conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN {ddl}')
            added.append(f"{table.name}.{col.name}")
        # indexes later versions gave existing columns (provenance.subject_label)
        have_idx = {i["name"] for i in insp.get_indexes(table.name)}
        for idx in table.indexes:
            if idx.name not in have_idx:
                idx.create(conn)
                added.append(f"{table.name}.{idx.name}")
    return added


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (so temp files it names may still be in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file.

    Files are created readable by their owner only (``mode``): the data dir holds photos,
    face vectors and the policy, none of them for other accounts on the machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a leftover of this pid would keep its old mode
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode))
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no partial file left (a full disk stays no fuller)
        raise
