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

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, insert, select, update

from faceledger.accounts.auth import Actor, PermissionDenied
from faceledger.db.schema import (
    erased_images,
    erasure_previews,
    faces,
    images,
    pending_files,
    probes,
    provenance,
    sources,
)
from faceledger.db.store import insert_or_ignore, now_iso
from faceledger.errors import RefusedError
from faceledger.gallery.erasure import (
    ErasureReport,
    _delete_faceless_images,
    _erase_faces_tx,
    _expire_previews,
    checkpoint_wal,
    finish_pending_files,
)
from faceledger.gallery.index import IndexManager
from faceledger.ledger import audit

if TYPE_CHECKING:
    from faceledger.core.searching import SearchDoor

log = logging.getLogger(__name__)

# Erasure by photo: the default threshold is the calibrated score of this estimated FMR
PREVIEW_FMR = 1e-6
PREVIEW_TTL = timedelta(hours=1)
PREVIEW_MAX_FACES = 1000  # the most faces one preview lists (the best-scoring ones)


def erase(
    fl: SearchDoor,
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


def scrub_erased_vectors(fl: SearchDoor) -> None:
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


def _usable_preview(fl: SearchDoor, actor: Actor, preview_id: int) -> Any:
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


def _preview_doc(fl: SearchDoor, row: Any) -> dict[str, Any]:
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
    fl: SearchDoor, actor: Actor, probe: bytes, threshold: float | None = None
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


def get_preview(fl: SearchDoor, actor: Actor, preview_id: int) -> dict[str, Any]:
    """An unused, unexpired preview, to its own admin (to show it again before confirming)."""
    return _preview_doc(fl, _usable_preview(fl, actor, preview_id))


def preview_crop_path(fl: SearchDoor, actor: Actor, preview_id: int, face_id: int) -> Path:
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


def purge_expired(fl: SearchDoor, actor: Actor, now: str | None = None) -> dict[str, int]:
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
