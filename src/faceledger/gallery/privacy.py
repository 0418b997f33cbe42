"""Erasure, opt-out and retention.

* **Erasure** removes faces for good: the vector rows, the crops and (through tombstones)
  the index entries; the stored image goes too when no other face remains in it, and where
  other people's faces remain the erased face is blurred out of the stored copy and the
  other faces' crops are made again from the blurred copy. The database part is one
  transaction together with its ledger entry (hashes and ids only); file removals and
  replacements are journalled in ``pending_files`` in that same transaction and carried out
  after it commits, or at the next start after a crash, so an erasure either happened fully
  or not at all. Right after it commits, the erased vectors are taken out of the files
  that held them: zeroed in the saved index and, on SQLite (``secure_delete`` on), the WAL
  checkpointed and truncated. The SHA-256 of every erased image is kept (hash only, in
  ``erased_images``) and ingest refuses that file again. Every erasure needs a reason.
* **Erasure by photo** is two steps: :func:`erase_preview` lists the gallery faces scoring
  at or above a threshold (by default the calibrated score of FMR 1e-6) against the
  subject's photo, bound to the admin who asked, for an hour, once; :func:`erase` with that
  preview erases only the faces the admin confirms from it.
* **Opt-out**: embeddings of erased subjects (never their photo) on a blocklist; matching
  faces are dropped at ingest (blurred out of a group photo that is kept).
* **Retention**: gallery images past ``expires_at`` and retained probes past their expiry
  are purged by ``faceledger purge`` (also run at ingest and server start).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from sqlalchemy import delete, insert, select, update

from faceledger.accounts.auth import Actor, PermissionDenied
from faceledger.db.schema import (
    blocklist,
    erased_images,
    erasure_previews,
    faces,
    images,
    pending_files,
    probes,
    provenance,
    sources,
)
from faceledger.db.store import Store, atomic_write, insert_or_ignore, now_iso, process_alive
from faceledger.errors import RefusedError
from faceledger.gallery.index import IndexManager
from faceledger.ledger import audit

if TYPE_CHECKING:
    from faceledger.core import Faceledger

log = logging.getLogger(__name__)

# Blurred copies of images (pid.sha.random.blurred) and the crops made again from them
# (pid.sha.random.FACE_ID.crop) wait here for their erasure to commit
PENDING_DIR = "pending"
# Erasure by photo: the default threshold is the calibrated score of this estimated FMR
PREVIEW_FMR = 1e-6
PREVIEW_TTL = timedelta(hours=1)
PREVIEW_MAX_FACES = 1000  # the most faces one preview lists (the best-scoring ones)
# How long the WAL checkpoint after an erasure waits for readers of older snapshots
CHECKPOINT_WAIT_MS = 5000


@dataclass
class ErasureReport:
    faces: list[int] = field(default_factory=list)
    images_deleted: list[str] = field(default_factory=list)
    images_blurred: list[str] = field(default_factory=list)
    provenance_removed: int = 0
    blocklisted: int = 0
    preview_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "faces_erased": len(self.faces),
            "face_ids": self.faces,
            "images_deleted": self.images_deleted,
            "images_blurred": self.images_blurred,
            "provenance_removed": self.provenance_removed,
            "blocklisted": self.blocklisted,
            "preview_id": self.preview_id,
        }


def finish_pending_files(store: Store) -> int:
    """Carry out journalled file operations (after commit, or after a crash)."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(pending_files).order_by(pending_files.c.id)).all()
    for r in rows:
        path = store.data_dir / r.path
        if r.action == "delete":
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        elif r.action == "replace" and r.tmp_path:
            # gone: carried out already (by another process, or before a crash)
            with contextlib.suppress(FileNotFoundError):
                os.replace(store.data_dir / r.tmp_path, path)
        with store.writer.begin() as conn:
            conn.execute(delete(pending_files).where(pending_files.c.id == r.id))
    _remove_orphan_copies(store)
    return len(rows)


def _remove_orphan_copies(store: Store) -> None:
    """Delete blurred copies whose erasure never committed (its process died first).

    A copy is written before its transaction commits; its name starts with the writer's
    pid, and it is removed once no journal row names it and that process is gone.
    """
    folder = store.data_dir / PENDING_DIR
    if not folder.is_dir():
        return
    with store.engine.connect() as conn:
        named = {r[0] for r in conn.execute(select(pending_files.c.tmp_path))}
    for p in folder.iterdir():
        try:
            pid = int(p.name.lstrip(".").split(".")[0])
        except ValueError:
            continue
        if f"{PENDING_DIR}/{p.name}" in named or pid == os.getpid():
            continue
        if not process_alive(pid):
            p.unlink(missing_ok=True)


def blur_regions(data: bytes, boxes: list[list[int]]) -> bytes:
    """Pixelate and blur the given boxes (with a margin) out of an image; JPEG/PNG kept.

    Boxes are in the orientation-corrected pixels that detection saw, so the EXIF
    orientation is applied first (the copy written is upright, without the tag).
    """
    img: Image.Image = Image.open(io.BytesIO(data))
    fmt = img.format or "PNG"
    with contextlib.suppress(Exception):  # corrupt EXIF: as decode_image, keep the pixels
        img = ImageOps.exif_transpose(img)
    img = img.convert("RGB")
    for left, top, right, bottom in boxes:
        w, h = right - left, bottom - top
        box = (
            max(0, left - w // 4),
            max(0, top - h // 4),
            min(img.width, right + w // 4),
            min(img.height, bottom + h // 4),
        )
        region = img.crop(box)
        small = region.resize((max(1, region.width // 12), max(1, region.height // 12)))
        region = small.resize(region.size, Image.Resampling.NEAREST).filter(
            ImageFilter.GaussianBlur(radius=max(2, w // 10))
        )
        img.paste(region, box)
    buf = io.BytesIO()
    img.save(buf, format=fmt if fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF") else "PNG")
    return buf.getvalue()


def crops_from(data: bytes, boxes: list[list[int]]) -> list[bytes]:
    """Review crops of the faces at ``boxes``, made from ``data`` the way ingest makes them
    (after a blur, so that no crop shows a face blurred out of its photo)."""
    from faceledger.types import BBox, Detection
    from faceledger.vision.analysis import face_crop_jpeg
    from faceledger.vision.decode import decode_image

    pixels = decode_image(data, max_pixels=1 << 40).pixels  # a stored image: already checked
    return [face_crop_jpeg(pixels, Detection(BBox(*b), 0.0, "stored")) for b in boxes]


def _erase_faces_tx(conn: Any, store: Store, face_ids: list[int], report: ErasureReport) -> None:
    """Inside a write transaction: delete faces; delete or blur their images; journal files."""
    if not face_ids:
        return
    rows = conn.execute(
        select(faces.c.id, faces.c.image_sha, faces.c.bbox_json, faces.c.crop_path).where(
            faces.c.id.in_(face_ids)
        )
    ).all()
    by_image: dict[str, list[Any]] = {}
    for r in rows:
        by_image.setdefault(r.image_sha, []).append(r)
    journal: list[dict[str, Any]] = []
    for sha, erased in by_image.items():
        remaining = conn.execute(
            select(faces.c.id, faces.c.bbox_json, faces.c.crop_path).where(
                faces.c.image_sha == sha, faces.c.id.not_in([r.id for r in erased])
            )
        ).all()
        stored = conn.execute(select(images.c.stored_path).where(images.c.sha256 == sha)).scalar()
        journal.extend({"action": "delete", "path": r.crop_path, "tmp_path": None} for r in erased)
        if not remaining:
            report.images_deleted.append(sha)
            if stored:
                journal.append({"action": "delete", "path": stored, "tmp_path": None})
        elif stored:
            report.images_blurred.append(sha)
            # Blur the newest copy: an earlier erasure's blurred copy may still be waiting
            # to replace the stored image (its process died, or has not got there yet).
            waiting = conn.execute(
                select(pending_files.c.tmp_path)
                .where(pending_files.c.path == stored, pending_files.c.action == "replace")
                .order_by(pending_files.c.id.desc())
            ).scalar()
            try:
                original = (store.data_dir / (waiting or stored)).read_bytes()
            except FileNotFoundError:  # it replaced the stored image meanwhile
                original = (store.data_dir / stored).read_bytes()
            blurred = blur_regions(original, [json.loads(r.bbox_json) for r in erased])
            tag = f"{PENDING_DIR}/{os.getpid()}.{sha}.{uuid.uuid4().hex[:8]}"
            atomic_write(store.data_dir / f"{tag}.blurred", blurred)  # on disk before the commit
            journal.append({"action": "replace", "path": stored, "tmp_path": f"{tag}.blurred"})
            # The other faces' crops may show the erased face (their margins overlap it):
            # made again from the blurred copy, and replaced with it.
            new_crops = crops_from(blurred, [json.loads(r.bbox_json) for r in remaining])
            for r, crop in zip(remaining, new_crops, strict=True):
                tmp_crop = f"{tag}.{r.id}.crop"
                atomic_write(store.data_dir / tmp_crop, crop)
                journal.append({"action": "replace", "path": r.crop_path, "tmp_path": tmp_crop})
    store.delete_faces(conn, [r.id for r in rows])
    for sha in report.images_deleted:
        conn.execute(delete(images).where(images.c.sha256 == sha))
    if journal:
        conn.execute(insert(pending_files), journal)
    report.faces.extend(int(r.id) for r in rows)


def _delete_faceless_images(conn: Any, shas: list[str], report: ErasureReport) -> None:
    """Delete image rows (and journal their files) for images that hold no faces."""
    for sha in shas:
        if sha in report.images_deleted:
            continue
        if conn.execute(select(faces.c.id).where(faces.c.image_sha == sha)).first():
            continue
        stored = conn.execute(select(images.c.stored_path).where(images.c.sha256 == sha)).scalar()
        conn.execute(delete(images).where(images.c.sha256 == sha))
        if stored:
            conn.execute(
                insert(pending_files), [{"action": "delete", "path": stored, "tmp_path": None}]
            )
        report.images_deleted.append(sha)


def erase(
    fl: Faceledger,
    actor: Actor,
    face_ids: list[int] | None = None,
    image_sha: str | None = None,
    source: str | None = None,
    preview_id: int | None = None,
    optout_reference: str | None = None,
    reason: str = "",
) -> ErasureReport:
    """Erase by face id(s), image, source, or the faces confirmed from an erasure preview.

    With ``preview_id`` (see :func:`erase_preview`), ``face_ids`` are the faces the admin
    confirms from that preview (any subset of it; ids not in it are refused), and with
    ``optout_reference`` the subject's embedding kept in the preview (never their photo) is
    added to the opt-out list. ``reason`` is required.
    """

    fl.require(actor, "erase")
    if preview_id is None:
        if sum(x is not None for x in (face_ids, image_sha, source)) != 1:
            raise ValueError(
                "give exactly one of: face ids, an image, a source, or an erasure preview "
                "(erasure by the subject's photo shows a preview first)"
            )
        if optout_reference:
            raise ValueError(
                "opting a subject out needs their photo: make an erasure preview with it"
            )
    elif image_sha is not None or source is not None:
        raise ValueError("an erasure preview is confirmed with face ids only")
    reason = (reason or "").strip()
    if not reason:
        raise RefusedError(
            "missing-reason", "every erasure needs a reason (e.g. the erasure request number)"
        )
    store = fl.store
    report = ErasureReport(preview_id=preview_id)
    targets: list[int] = []
    probe_vectors = np.zeros((0, 0), np.float32)
    target_desc = ""
    preview_details: dict[str, Any] = {}
    if preview_id is not None:
        row = _usable_preview(fl, actor, preview_id)
        listed = [int(f) for f, _s in json.loads(row.face_ids_json)]
        targets = sorted(set(face_ids or []))
        outside = sorted(set(targets) - set(listed))
        if outside:
            raise RefusedError(
                "not-in-preview",
                f"face(s) {', '.join(map(str, outside))} are not in erasure preview {preview_id}",
            )
        if not targets and not optout_reference:
            raise RefusedError(
                "nothing-confirmed",
                "confirm the faces of the preview to erase (or give an opt-out reference)",
            )
        if optout_reference and row.embedding is not None:
            probe_vectors = np.frombuffer(row.embedding, "<f4")[None, :].astype(np.float32)
        target_desc = f"preview {preview_id}"
        preview_details = {
            "preview_id": preview_id,
            "probe_sha256": row.probe_sha256,
            "threshold": row.threshold,
            "preview_faces": len(listed),
        }
    elif face_ids is not None:
        targets = list(face_ids)
        target_desc = f"faces {face_ids}"
    elif image_sha is not None:
        with store.engine.connect() as conn:
            targets = [
                r[0] for r in conn.execute(select(faces.c.id).where(faces.c.image_sha == image_sha))
            ]
            if (
                conn.execute(select(images.c.sha256).where(images.c.sha256 == image_sha)).first()
                is None
            ):
                raise ValueError(f"no image {image_sha}")
        target_desc = f"image {image_sha}"
    else:
        target_desc = f"source {source}"
    with store.writer.begin() as conn:
        _expire_previews(conn)
        if preview_id is not None:
            # single use: the first confirmation wins, and the subject's vector goes now
            taken = conn.execute(
                update(erasure_previews)
                .where(erasure_previews.c.id == preview_id, erasure_previews.c.used_at.is_(None))
                .values(used_at=now_iso(), embedding=None)
            ).rowcount
            if taken != 1:
                raise RefusedError("preview-used", f"erasure preview {preview_id} was used")
        if source is not None:
            sid = conn.execute(select(sources.c.id).where(sources.c.name == source)).scalar()
            if sid is None:
                raise ValueError(f"no source {source!r}")
            shas = [
                r[0]
                for r in conn.execute(
                    select(provenance.c.image_sha).where(provenance.c.source_id == sid).distinct()
                )
            ]
            only_here = []
            for sha in shas:
                others = conn.execute(
                    select(provenance.c.id).where(
                        provenance.c.image_sha == sha, provenance.c.source_id != sid
                    )
                ).first()
                if others is None:
                    only_here.append(sha)
            report.provenance_removed = conn.execute(
                delete(provenance).where(provenance.c.source_id == sid)
            ).rowcount
            targets = [
                r[0]
                for r in conn.execute(select(faces.c.id).where(faces.c.image_sha.in_(only_here)))
            ]
            _delete_faceless_images(conn, only_here, report)
        _erase_faces_tx(conn, store, targets, report)
        erased_at = now_iso()
        for sha in dict.fromkeys(report.images_deleted + report.images_blurred):
            conn.execute(
                insert_or_ignore(erased_images, conn),
                {"sha256": sha, "erased_at": erased_at, "reason": reason},
            )
        if optout_reference and len(probe_vectors):
            model = store.model_id() or ""
            report.blocklisted = fl.add_blocklist_embeddings(
                conn, model, probe_vectors, optout_reference
            )
        audit.append(
            conn,
            actor.username,
            "erase",
            target_desc,
            {
                **report.as_dict(),
                **preview_details,
                "reason": reason,
                "optout_reference": optout_reference,
                **({"token_id": actor.token_id} if actor.token_id else {}),
            },
        )
    finish_pending_files(store)
    if report.faces:
        scrub_erased_vectors(fl)
    return report


def scrub_erased_vectors(fl: Faceledger) -> None:
    """Take erased vectors out of every file at once, not at the next search or compaction.

    The index catches up and saves (erased rows are zeroed in the vector file, their codes
    dropped from the approximate structure); on SQLite the deleted rows were zeroed
    (``secure_delete``) and the WAL, which still holds the pages as they were, is
    checkpointed and truncated.
    """
    searcher = fl._searcher
    manager = searcher.indexes if searcher is not None else IndexManager(fl.store)
    manager.sync()
    checkpoint_wal(fl.store)


def checkpoint_wal(store: Store) -> bool:
    """Copy the WAL into the database and truncate it (SQLite); False if readers of an
    older snapshot kept it from finishing (it completes at a later checkpoint)."""
    if store.dialect != "sqlite":
        return True
    raw = store.writer.raw_connection()
    try:
        cur = raw.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = cur.fetchone()
        finally:
            cur.execute("PRAGMA busy_timeout=30000")  # as every connection has it
            cur.close()
    finally:
        raw.close()
    busy = bool(row and row[0])
    if busy:
        log.warning(
            "erasure: a reader kept the WAL from being truncated; the erased rows' old pages "
            "stay in %s-wal until the next checkpoint",
            store.data_dir / "gallery.db",
        )
    return not busy


def erased_reason(store: Store, sha: str) -> str | None:
    """The reason an image with this SHA-256 was erased, or None if it never was."""
    with store.engine.connect() as conn:
        return conn.execute(
            select(erased_images.c.reason).where(erased_images.c.sha256 == sha)
        ).scalar()


# -- erasure by photo: the preview ------------------------------------------------------------


def _expire_previews(conn: Any) -> None:
    """Forget the subject's vector of every preview past its expiry (inside a write tx)."""
    p = erasure_previews.c
    conn.execute(
        update(erasure_previews)
        .where(p.expires_at <= now_iso(), p.embedding.is_not(None))
        .values(embedding=None)
    )


def _usable_preview(fl: Faceledger, actor: Actor, preview_id: int) -> Any:
    """The preview row, if it is ``actor``'s own, unused and unexpired; else a refusal."""

    fl.require(actor, "erase", f"erasure preview {preview_id}")
    with fl.store.engine.connect() as conn:
        row = conn.execute(
            select(erasure_previews).where(erasure_previews.c.id == preview_id)
        ).first()
    if row is None:
        raise RefusedError("no-such-preview", f"no erasure preview {preview_id}")
    if row.user_id != actor.user_id:
        fl.record(
            actor,
            "authz.denied",
            f"erasure preview {preview_id}",
            permission="erase",
            reason="another admin's preview",
        )
        raise PermissionDenied(f"erasure preview {preview_id} belongs to another admin")
    if row.used_at:
        raise RefusedError("preview-used", f"erasure preview {preview_id} was used")
    if row.expires_at <= now_iso():
        raise RefusedError(
            "preview-expired", f"erasure preview {preview_id} expired; make a new one"
        )
    return row


def _preview_doc(fl: Faceledger, row: Any) -> dict[str, Any]:
    """What an admin sees of a preview: the threshold, its FMR, and per face the score,
    its estimated FMR, the expected false matches N x FMR, and the face's metadata."""
    from faceledger.search import calibration

    model = fl.store.model_id()
    cal = calibration.load(model) if model else None
    n = int(row.gallery_faces or 0)
    listed = [(int(f), float(s)) for f, s in json.loads(row.face_ids_json)]
    records = fl.store.candidates([f for f, _ in listed])

    def fmr(score: float) -> float | None:
        return None if cal is None else cal.estimate(score).fmr

    suggested = None if cal is None else round(cal.threshold_for(PREVIEW_FMR), 5)
    out_faces = []
    for fid, score in listed:
        rec = records.get(fid)
        f = fmr(score)
        out_faces.append(
            {
                "face_id": fid,
                "score": score,
                "est_fmr": f,
                "expected_false_matches": None if f is None else n * f,
                "erased": rec is None,  # erased since the preview was made
                "image_sha256": None if rec is None else rec.image_sha,
                "provenance": [] if rec is None else rec.provenance,
            }
        )
    t_fmr = fmr(row.threshold)
    return {
        "preview_id": int(row.id),
        "probe_sha256": row.probe_sha256,
        "model_id": model,
        "threshold": float(row.threshold),
        "calibrated_threshold": suggested,
        "calibrated_fmr": PREVIEW_FMR,
        "threshold_is_calibrated": suggested is not None and abs(row.threshold - suggested) < 1e-9,
        "threshold_fmr": t_fmr,
        "gallery_faces": n,
        "expected_false_matches": None if t_fmr is None else n * t_fmr,
        "truncated": len(listed) >= PREVIEW_MAX_FACES,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "faces": out_faces,
    }


def erase_preview(
    fl: Faceledger, actor: Actor, probe: bytes, threshold: float | None = None
) -> dict[str, Any]:
    """The gallery faces an erasure by this photo would take, for the admin to confirm.

    The subject is the largest face in the photo. Faces scoring at least ``threshold``
    (default: the calibrated score whose estimated FMR is :data:`PREVIEW_FMR`) are listed,
    best first, with their scores and estimated FMRs. The preview is recorded (ledger entry
    ``erase.preview``: probe hash, threshold, face ids and scores, no image) and kept, bound
    to ``actor``, for :data:`PREVIEW_TTL`, with the subject's embedding (for an opt-out;
    never the photo).
    """
    from faceledger.search.searcher import NoFaceError
    from faceledger.vision.decode import decode_probe

    fl.require(actor, "erase")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError("the threshold is a cosine score, from -1 to 1")
    searcher = fl.searcher()
    if threshold is None:
        if searcher.calibration is None:
            raise RefusedError(
                "no-calibration",
                f"no score calibration ships for model {searcher.analyzer.model_id!r}; "
                "give a threshold",
            )
        threshold = round(searcher.calibration.threshold_for(PREVIEW_FMR), 5)
    probe_sha = hashlib.sha256(probe).hexdigest()
    pixels = decode_probe(probe).pixels  # a probe: the probe pixel budget and decoder pool
    with fl.analysis_lock:
        probe_faces = searcher.analyzer.analyze(pixels)
    del pixels
    if not probe_faces:
        raise NoFaceError("no face found in the subject's photo")
    subject = max(probe_faces, key=lambda f: f.size)  # their face is the largest one in it
    index = searcher.indexes.sync()
    n = len(index)
    found: list[tuple[int, float]] = []
    if n:
        scores, ids = index.search(subject.embedding[None, :], min(n, PREVIEW_MAX_FACES))
        found = [
            (int(i), round(float(s), 5))
            for s, i in zip(scores.ravel(), ids.ravel(), strict=True)
            if i >= 0 and s >= threshold
        ]
    now = datetime.now(UTC)
    with fl.store.writer.begin() as conn:
        _expire_previews(conn)
        pk = conn.execute(
            insert(erasure_previews).values(
                user_id=actor.user_id,
                probe_sha256=probe_sha,
                threshold=threshold,
                face_ids_json=json.dumps([[f, s] for f, s in found]),
                embedding=np.asarray(subject.embedding, "<f4").tobytes(),
                gallery_faces=n,
                created_at=now.isoformat(timespec="seconds"),
                expires_at=(now + PREVIEW_TTL).isoformat(timespec="seconds"),
            )
        ).inserted_primary_key
        assert pk is not None  # a single-row INSERT always reports its key
        preview_id = int(pk[0])
        row = conn.execute(
            select(erasure_previews).where(erasure_previews.c.id == preview_id)
        ).one()
        doc = _preview_doc(fl, row)
        audit.append(
            conn,
            actor.username,
            "erase.preview",
            f"probe {probe_sha}",
            {
                "preview_id": preview_id,
                "probe_sha256": probe_sha,
                "threshold": threshold,
                "threshold_is_calibrated": doc["threshold_is_calibrated"],
                "threshold_fmr": doc["threshold_fmr"],
                "gallery_faces": n,
                "expected_false_matches": doc["expected_false_matches"],
                "faces": [[f, s] for f, s in found],
                **({"token_id": actor.token_id} if actor.token_id else {}),
            },
        )
    return doc


def get_preview(fl: Faceledger, actor: Actor, preview_id: int) -> dict[str, Any]:
    """An unused, unexpired preview, to its own admin (to show it again before confirming)."""
    return _preview_doc(fl, _usable_preview(fl, actor, preview_id))


def preview_crop_path(fl: Faceledger, actor: Actor, preview_id: int, face_id: int) -> Path:
    """The crop of a face listed in a preview: only to the admin who made the preview, only
    before it expires or is used. (The preview's ledger entry names every face it shows.)"""

    row = _usable_preview(fl, actor, preview_id)
    if face_id not in {int(f) for f, _s in json.loads(row.face_ids_json)}:
        raise RefusedError(
            "no-such-preview-face", f"face {face_id} is not in erasure preview {preview_id}"
        )
    rec = fl.store.candidates([face_id]).get(face_id)
    if rec is None:
        raise RefusedError("no-such-face", f"face {face_id} was erased")
    return fl.data_dir / rec.crop_path


def load_blocklist(store: Store) -> np.ndarray:
    model = store.model_id()
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(blocklist.c.embedding).where(blocklist.c.model_id == model)
        ).all()
    if not rows:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.frombuffer(r[0], "<f4") for r in rows]).astype(np.float32)


def purge_expired(fl: Faceledger, actor: Actor, now: str | None = None) -> dict[str, int]:
    """Delete gallery images past ``expires_at`` and retained probes past their expiry."""
    now = now or now_iso()
    store = fl.store
    with store.writer.begin() as conn:
        _expire_previews(conn)
    with store.engine.connect() as conn:
        expired = [
            r[0]
            for r in conn.execute(
                select(images.c.sha256).where(
                    images.c.expires_at.is_not(None), images.c.expires_at <= now
                )
            )
        ]
        old_probes = conn.execute(
            select(probes.c.sha256, probes.c.stored_path).where(probes.c.expires_at <= now)
        ).all()
    if not expired and not old_probes:
        return {"images": 0, "probes": 0}
    report = ErasureReport()
    with store.writer.begin() as conn:
        fids = [
            r[0] for r in conn.execute(select(faces.c.id).where(faces.c.image_sha.in_(expired)))
        ]
        _erase_faces_tx(conn, store, fids, report)
        _delete_faceless_images(conn, expired, report)
        for p in old_probes:
            conn.execute(delete(probes).where(probes.c.sha256 == p.sha256))
            conn.execute(
                insert(pending_files),
                [{"action": "delete", "path": p.stored_path, "tmp_path": None}],
            )
        audit.append(
            conn,
            actor.username,
            "purge",
            "retention",
            {
                "images": expired,
                "faces": len(report.faces),
                "probes": [p.sha256 for p in old_probes],
            },
        )
    finish_pending_files(store)
    return {"images": len(expired), "probes": len(old_probes)}
