"""Erasure, opt-out and retention.

* **Erasure** removes faces for good: the vector rows, the crops and (through tombstones)
  the index entries; the stored image goes too when no other face remains in it, and where
  other people's faces remain the erased face is blurred out of the stored copy. The
  database part is one transaction together with its ledger entry (hashes and ids only);
  file removals are journalled in ``pending_files`` in that same transaction and carried out
  after it commits, or at the next start after a crash, so an erasure either happened fully
  or not at all.
* **Opt-out**: embeddings of erased subjects (never their photo) on a blocklist; matching
  faces are dropped at ingest.
* **Retention**: gallery images past ``expires_at`` and retained probes past their expiry
  are purged by ``faceledger purge`` (also run at ingest and server start).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter
from sqlalchemy import delete, insert, select

from faceledger import audit
from faceledger.auth import Actor
from faceledger.schema import blocklist, faces, images, pending_files, probes, provenance, sources
from faceledger.store import Store, atomic_write, now_iso, process_alive

if TYPE_CHECKING:
    from faceledger.service import Faceledger

# Blurred copies of images wait here (named pid.sha.random.blurred) for their erasure to commit
PENDING_DIR = "pending"


@dataclass
class ErasureReport:
    faces: list[int] = field(default_factory=list)
    images_deleted: list[str] = field(default_factory=list)
    images_blurred: list[str] = field(default_factory=list)
    provenance_removed: int = 0
    blocklisted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "faces_erased": len(self.faces),
            "face_ids": self.faces,
            "images_deleted": self.images_deleted,
            "images_blurred": self.images_blurred,
            "provenance_removed": self.provenance_removed,
            "blocklisted": self.blocklisted,
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
    """Pixelate and blur the given boxes (with a margin) out of an image; JPEG/PNG kept."""
    img: Image.Image = Image.open(io.BytesIO(data))
    fmt = img.format or "PNG"
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
            select(faces.c.id).where(
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
            tmp_rel = f"{PENDING_DIR}/{os.getpid()}.{sha}.{uuid.uuid4().hex[:8]}.blurred"
            atomic_write(store.data_dir / tmp_rel, blurred)  # on disk before the commit
            journal.append({"action": "replace", "path": stored, "tmp_path": tmp_rel})
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
    probe: bytes | None = None,
    threshold: float | None = None,
    optout_reference: str | None = None,
    reason: str = "",
) -> ErasureReport:
    """Erase by face id(s), image, source, or every gallery face matching a probe photo.

    With ``probe``, the subject is the largest face in the photo; every gallery face scoring
    at least ``threshold`` against it is erased, and with ``optout_reference`` its embedding
    (not the photo) is added to the opt-out list.
    """
    fl.require(actor, "erase")
    chosen = sum(x is not None for x in (face_ids, image_sha, source, probe))
    if chosen != 1:
        raise ValueError("give exactly one of --face, --image, --source, --probe")
    if optout_reference and probe is None:
        raise ValueError("opting a subject out needs their photo (--probe)")
    store = fl.store
    report = ErasureReport()
    targets: list[int] = []
    probe_vectors = np.zeros((0, 0), np.float32)
    target_desc = ""
    if face_ids is not None:
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
    elif source is not None:
        target_desc = f"source {source}"
    else:
        if threshold is None:
            raise ValueError("--probe needs --threshold (cosine score)")
        assert probe is not None  # exactly one of the selectors is given (checked above)
        from faceledger.decode import decode_image

        searcher = fl.searcher()
        probe_faces = searcher.analyzer.analyze(decode_image(probe).pixels)
        if not probe_faces:
            raise ValueError("no face found in the erasure photo")
        # The subject's photo: their face is the largest one in it; others are ignored.
        subject = max(probe_faces, key=lambda f: f.size)
        probe_vectors = subject.embedding[None, :]
        index = searcher.indexes.sync()
        k = min(len(index), 1000)
        if k:
            scores, ids = index.search(probe_vectors, k)
            targets = sorted(
                {
                    int(i)
                    for s, i in zip(scores.ravel(), ids.ravel(), strict=True)
                    if i >= 0 and s >= threshold
                }
            )
        target_desc = f"probe {hashlib.sha256(probe).hexdigest()}"
    with store.writer.begin() as conn:
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
        if optout_reference:
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
                "reason": reason,
                "threshold": threshold,
                "optout_reference": optout_reference,
            },
        )
    finish_pending_files(store)
    fl._searcher = None
    return report


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
