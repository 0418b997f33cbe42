"""Subjects: duplicate identities in the gallery and merging them (#14 item 4).

Who is which subject is :mod:`faceledger.gallery.subjects`' rule; the template maths and the
calibrated threshold are :mod:`faceledger.search.subjects`'. Both operations are the admins'
(``manage_subjects``) and recorded: ``subject.duplicates`` with the pairs reported,
``subject.merge`` with what moved where and why (a merge relabels, never deletes).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from faceledger.accounts.auth import Actor
from faceledger.core.base import LEDGER_TEXT_MAX, check_length
from faceledger.core.gallery import GalleryDoor
from faceledger.errors import RefusedError
from faceledger.gallery import subjects as gsubjects
from faceledger.gallery.subjects import SubjectKey, subject_name
from faceledger.ledger import audit
from faceledger.search.subjects import (
    DEFAULT_MAX_EXPECTED_FALSE,
    duplicate_pairs,
    load_subject_calibration,
)

MIN_EXPECTED_FALSE = 1e-6
MAX_EXPECTED_FALSE = 10.0


def _label_of(key: SubjectKey) -> str | None:
    return key if isinstance(key, str) else None


class SubjectsDoor(GalleryDoor):
    # -- subjects ---------------------------------------------------------------------------
    def subject_duplicates(
        self, actor: Actor, max_expected_false: float = DEFAULT_MAX_EXPECTED_FALSE
    ) -> dict[str, Any]:
        """Pairs of subjects whose templates match at the strict calibrated threshold: the
        score at which the whole gallery expects at most ``max_expected_false`` false pairs
        (admin; recorded with the pairs). Reads every stored vector once."""
        self.require(actor, "manage_subjects", "subjects")
        if not MIN_EXPECTED_FALSE <= max_expected_false <= MAX_EXPECTED_FALSE:
            raise RefusedError(
                "bad-threshold",
                f"max expected false pairs must be from {MIN_EXPECTED_FALSE:g} to "
                f"{MAX_EXPECTED_FALSE:g}",
            )
        model = self.store.model_id()
        calib = None if model is None else load_subject_calibration(model)
        if calib is None:
            self.record(actor, "subject.duplicates_refused", "subjects", reason="no-calibration")
            raise RefusedError(
                "no-calibration",
                f"no calibration ships for the gallery's model {model!r}: duplicates need "
                "calibrated scores",
            )
        t0 = time.perf_counter()
        members = gsubjects.membership(self.store)
        ids, vecs = [], []
        for batch_ids, batch in self.store.iter_vectors():
            ids.append(batch_ids)
            vecs.append(batch)
        face_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        vectors = np.concatenate(vecs) if vecs else np.zeros((0, 1), np.float32)
        dup = duplicate_pairs(face_ids, vectors, members, calib, max_expected_false)
        n_pairs = dup.subjects * (dup.subjects - 1) / 2
        pairs: list[dict[str, Any]] = [
            {
                "a": {
                    "subject": subject_name(p.a),
                    "label": _label_of(p.a),
                    "face_ids": p.a_faces,
                    "size": len(p.a_faces),
                },
                "b": {
                    "subject": subject_name(p.b),
                    "label": _label_of(p.b),
                    "face_ids": p.b_faces,
                    "size": len(p.b_faces),
                },
                "score": p.score,
                "est_fmr": p.est_fmr,
                "est_fmr_extrapolated": p.est_fmr_extrapolated,
                "expected_false_pairs": n_pairs * p.est_fmr,
            }
            for p in dup.pairs
        ]
        doc = {
            "gallery_subjects": dup.subjects,
            "gallery_faces": dup.faces,
            "max_expected_false": max_expected_false,
            "fmr_limit": dup.fmr_limit,
            "thresholds": dup.thresholds,
            "calibration": calib.version,
            "pairs": pairs,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        self.record(
            actor,
            "subject.duplicates",
            "subjects",
            gallery_subjects=dup.subjects,
            max_expected_false=max_expected_false,
            fmr_limit=dup.fmr_limit,
            calibration=calib.version,
            pairs=[[p["a"]["subject"], p["b"]["subject"], p["score"]] for p in pairs[:200]],
            pairs_found=len(pairs),
        )
        return doc

    def merge_subjects(
        self, actor: Actor, a: str, b: str, reason: str, label: str | None = None
    ) -> dict[str, Any]:
        """Make subjects ``a`` and ``b`` (labels, or ``face:<id>`` for a subject of one) one
        subject, labelled ``label``, else ``b``'s label, else ``a``'s (admin). Relabels and
        never deletes: the provenance keeps what its sources said, and the merge is a row of
        ``subject_relabels`` and a ledger entry (``subject.merge``). Refused: no reason
        (``missing-reason``), a subject that does not exist (``no-such-subject``), the same
        subject twice (``same-subject``), two faces and no label (``label-needed``)."""
        self.require(actor, "manage_subjects", "subjects")
        check_length("reason", reason, LEDGER_TEXT_MAX)
        reason = (reason or "").strip()
        target = f"{a} + {b}"
        try:
            if not reason:
                raise RefusedError("missing-reason", "a merge needs a reason")
            try:
                key_a, key_b = gsubjects.parse_subject(a), gsubjects.parse_subject(b)
                new_label = gsubjects.clean_label(label)
            except ValueError as exc:
                raise RefusedError("bad-subject", str(exc)) from exc
            faces_a, faces_b = self._subject_faces(key_a), self._subject_faces(key_b)
            if set(faces_a) == set(faces_b):
                raise RefusedError("same-subject", f"{a} and {b} are one subject already")
            final = new_label or _label_of(key_b) or _label_of(key_a)
            if final is None:
                raise RefusedError(
                    "label-needed", "two subjects of one face each: name the merged subject"
                )
        except RefusedError as exc:
            self.record(actor, "subject.merge_refused", target, reason=exc.code, detail=str(exc))
            raise
        with self.store.writer.begin() as conn:
            rel = gsubjects.load_relabels(conn)
            final = rel.label(final)
            moves: list[tuple[str, SubjectKey]] = []
            for key in (key_a, key_b):
                if isinstance(key, int):
                    moves.append(("face", key))
                elif key != final:
                    moves.append(("label", key))
            entry = audit.append(
                conn,
                actor.username,
                "subject.merge",
                target,
                {
                    "a": a,
                    "b": b,
                    "label": final,
                    "moves": [[kind, str(src)] for kind, src in moves],
                    "faces": sorted(set(faces_a) | set(faces_b)),
                    "reason": reason,
                    **({"token_id": actor.token_id} if actor.token_id else {}),
                },
            )
            for kind, src in moves:
                gsubjects.add_relabel(conn, kind, src, final, reason, actor.user_id, entry.seq)
        return {
            "label": final,
            "face_ids": sorted(set(faces_a) | set(faces_b)),
            "moves": [{"kind": kind, "source": str(src)} for kind, src in moves],
            "ledger_seq": entry.seq,
        }

    def _subject_faces(self, key: SubjectKey) -> list[int]:
        """The faces of an existing subject; RefusedError ``no-such-subject`` otherwise."""
        if isinstance(key, int):
            if key not in gsubjects.face_subjects(self.store, [key]):
                raise RefusedError("no-such-subject", f"there is no face {key}")
            return [key]
        faces = gsubjects.members(self.store, [key])[key]
        if not faces:
            raise RefusedError(
                "no-such-subject",
                f"no face is subject {key!r} (a label merged away names no subject; a group "
                "photo's label names none of its faces)",
            )
        return faces
