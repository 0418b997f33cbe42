"""Erasure's file and database mechanics under the core's rules (:mod:`faceledger.core.erasure`):
the pending-file journal, blurring an erased face out of a kept photo, the erased-image
hashes ingest refuses, the opt-out blocklist, and the WAL checkpoint that takes erased
vectors out of the database files."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from sqlalchemy import delete, insert, select, update

from faceledger.db.schema import (
    blocklist,
    erased_images,
    erasure_previews,
    faces,
    images,
    pending_files,
)
from faceledger.db.store import Store, atomic_write, now_iso, process_alive

log = logging.getLogger(__name__)

# Blurred copies of images (pid.sha.random.blurred) and the crops made again from them
# (pid.sha.random.FACE_ID.crop) wait here for their erasure to commit
PENDING_DIR = "pending"
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


def load_blocklist(store: Store) -> np.ndarray:
    model = store.model_id()
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(blocklist.c.embedding).where(blocklist.c.model_id == model)
        ).all()
    if not rows:
        return np.zeros((0, 0), np.float32)
    return np.stack([np.frombuffer(r[0], "<f4") for r in rows]).astype(np.float32)
