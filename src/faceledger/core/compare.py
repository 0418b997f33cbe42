"""Side-by-side comparison (#13 item 4): a search's probe face and one of its candidates,
or the two faces of a 1:1 verification, as the embedder's aligned chips with their
landmarks, and the full images with their face boxes.

The candidate side follows the rules of :meth:`RecordsDoor.candidate_file` (a candidate of
that search, within ``result_view_days``, not erased, readable by the actor). The probe side
is the stored probe while retention keeps it; after that the user may supply the photo
again, accepted only if it is the very photo searched (its SHA-256), and kept nowhere."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from sqlalchemy import select

from faceledger.accounts.auth import Actor
from faceledger.core.base import SearchRequest
from faceledger.core.records import RecordsDoor
from faceledger.db.schema import faces as faces_table
from faceledger.errors import RefusedError
from faceledger.types import Detection
from faceledger.vision import probes
from faceledger.vision.chips import AlignedChip, aligned_chip, detection_for
from faceledger.vision.decode import decode_image
from faceledger.vision.probes import jpeg_thumbnail

# The full images travel as JPEGs of at most this many pixels a side; boxes and landmarks
# stay in the full image's own pixels (``width`` x ``height``).
FULL_IMAGE_SIDE = 1024
# Candidate fields the comparison repeats from the search record (the score line).
SCORE_FIELDS = (
    "rank",
    "score",
    "est_fmr",
    "est_fmr_extrapolated",
    "expected_false_candidates",
    "quality",
    "image_sha256",
    "provenance",
)


def face_view(
    chip: AlignedChip,
    pixels: np.ndarray,
    bbox: list[int],
    landmarks: list[list[float]],
    with_image: bool = True,
) -> dict[str, Any]:
    """One side of a comparison: the aligned chip (PNG) and its landmarks, the full image
    (a JPEG, unless ``with_image`` is false) with the face's box and landmarks in it."""
    h, w = pixels.shape[:2]
    return {
        "chip_png": chip.png(),
        "chip_size": chip.size,
        "chip_landmarks": chip.landmarks,
        "image_jpeg": jpeg_thumbnail(pixels, FULL_IMAGE_SIDE) if with_image else None,
        "image_width": int(w),
        "image_height": int(h),
        "bbox": [int(v) for v in bbox],
        "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in landmarks],
    }


class CompareDoor(RecordsDoor):
    # -- landmarks and chips ----------------------------------------------------------------
    def _landmarked(self, pixels: np.ndarray, bbox: list[int], landmarks: Any) -> Detection:
        """A detection with five landmarks: the stored ones, else fitted within ``bbox``
        by the landmarker (as at ingest and search)."""
        if landmarks is not None and len(landmarks) == 5:
            return detection_for(bbox, landmarks)
        det = detection_for(bbox)
        self.searcher().analyzer.landmarker(pixels, det)
        return det

    def _chip(self, pixels: np.ndarray, det: Detection) -> AlignedChip:
        return aligned_chip(self.searcher().analyzer.embedder.align, pixels, det)

    # -- a search's candidate -----------------------------------------------------------------
    def _probe_pixels(
        self, actor: Actor, row: Any, shown: dict[str, Any], face_id: int, photo: bytes | None
    ) -> tuple[np.ndarray, str, str | None]:
        """The probe as it was searched (with a picked face: the region around it, the
        other faces painted out), where it came from (``kept`` or ``supplied``) and the
        supplied photo's SHA-256."""
        sid = int(row["id"])
        if photo is None:
            path = self._kept_probe(row["probe_sha256"])
            if path is None:
                raise RefusedError(
                    "probe-not-kept",
                    f"search {sid}'s probe photo is not kept (policy retain_probes_days): "
                    "supply the photo that was searched to compare",
                )
            return decode_image(path.read_bytes()).pixels, "kept", None
        sha = hashlib.sha256(photo).hexdigest()
        region = shown.get("probe_region")
        if sha == row["probe_sha256"]:
            img = self._decode_probe(actor, photo, "compare.bad_probe", row["case_number"])
            return img.pixels, "supplied", sha
        if region and sha == shown.get("photo_sha256"):
            img = self._decode_probe(actor, photo, "compare.bad_probe", row["case_number"])
            # as the search cut it: the region around the face picked, the others painted out
            box = shown["picked"]["box"]
            found = [d.bbox.as_list() for d in self.searcher().analyzer.detector.detect(img.pixels)]
            others = [b for b in found if probes.iou(b, box) < 0.3]
            return probes.masked_region(img.pixels, region, others), "supplied", sha
        self.record(
            actor,
            "compare.refused",
            f"search {sid}",
            reason="not-the-probe",
            search_id=sid,
            face_id=face_id,
            supplied_sha256=sha,
        )
        raise RefusedError(
            "not-the-probe",
            f"that photo is not the one search {sid} searched (its SHA-256 differs from the "
            "recorded probe's); nothing was compared or kept",
        )

    def compare_candidate(
        self, actor: Actor, search_id: int, face_id: int, probe_photo: bytes | None = None
    ) -> dict[str, Any]:
        """The probe face and candidate ``face_id`` of search ``search_id`` side by side:
        both as the embedder's aligned chips (same size) with their five landmarks on the
        chip, both full images with the faces' boxes, and the candidate's score line as the
        search showed it (score, est. FMR, expected false candidates at that gallery size).

        The candidate must be one of the search's, within ``result_view_days``, not erased,
        and the search readable by ``actor`` (:meth:`candidate_file`'s rules, denials
        recorded). The probe is the stored one while retention keeps it (else
        ``probe-not-kept``); ``probe_photo`` supplies it again, accepted only if its SHA-256
        is the searched probe's (or, with a picked face, the whole photo's), else
        ``not-the-probe``, recorded; a supplied photo is kept nowhere. Recorded as
        ``candidate.compare``."""
        self.candidate_file(actor, search_id, face_id, "crop")  # the candidate rules
        row = self._readable_search(actor, search_id)
        if not row["shown_json"]:
            raise RefusedError(
                "not-comparable",
                f"search {search_id} was stored before records kept its faces' boxes and "
                "landmarks; it cannot be compared side by side",
            )
        shown = json.loads(row["shown_json"])
        pairs = [
            (face, c)
            for face in shown["faces"]
            for c in face["candidates"]
            if int(c["face_id"]) == face_id
        ]
        probe_face, cand = max(pairs, key=lambda p: float(p[1]["score"]))
        rec = self.store.candidates([face_id]).get(face_id)
        if rec is None:
            raise RefusedError("erased", f"face {face_id} has since been erased from the gallery")
        with self.store.engine.connect() as conn:
            stored_landmarks = json.loads(
                conn.execute(
                    select(faces_table.c.landmarks_json).where(faces_table.c.id == face_id)
                ).scalar_one()
            )
        gallery_pixels = decode_image((self.data_dir / rec.stored_path).read_bytes()).pixels
        with self.analysis_lock:
            pixels, source, supplied = self._probe_pixels(actor, row, shown, face_id, probe_photo)
            # the record keeps the probe face in the whole photo's pixels; a region starts at
            x0, y0 = (shown["probe_region"] or [0, 0])[:2]
            b = probe_face["bbox"]
            pbox = [b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0]
            plm = [[p[0] - x0, p[1] - y0] for p in probe_face.get("landmarks") or []]
            pdet = self._landmarked(pixels, pbox, plm)
            cdet = self._landmarked(gallery_pixels, rec.bbox, stored_landmarks)
            probe_chip = self._chip(pixels, pdet)
            cand_chip = self._chip(gallery_pixels, cdet)
        assert pdet.landmarks is not None and cdet.landmarks is not None
        details: dict[str, Any] = {
            "search_id": search_id,
            "face_id": face_id,
            "case_number": row["case_number"],
            "probe": source,
        }
        if supplied:
            details["supplied_sha256"] = supplied
        self.record(actor, "candidate.compare", f"search {search_id}", **details)
        return {
            "search_id": search_id,
            "face_id": face_id,
            "case_number": row["case_number"],
            "purpose": row["purpose"],
            "probe_source": source,
            "probe_face_index": probe_face["face_index"],
            "gallery_faces": shown["gallery_faces"],
            "model_id": shown["model_id"],
            "notice": shown["notice"],
            **{k: cand.get(k) for k in SCORE_FIELDS},
            "probe": face_view(probe_chip, pixels, pbox, pdet.landmarks.tolist()),
            "candidate": face_view(cand_chip, gallery_pixels, rec.bbox, cdet.landmarks.tolist()),
        }

    # -- a 1:1 verification ---------------------------------------------------------------------
    def verify(
        self,
        actor: Actor,
        photo_a: bytes,
        photo_b: bytes,
        req: SearchRequest,
        box_a: list[int] | None = None,
        box_b: list[int] | None = None,
        with_chips: bool = False,
    ) -> dict[str, Any]:
        """:meth:`SearchDoor.verify`, its rules and ledger entry unchanged; ``with_chips``
        adds to each face the aligned chip and its landmarks (:func:`face_view`, without the
        full image: the caller sent both photos), for the side-by-side page."""
        result = super().verify(actor, photo_a, photo_b, req, box_a, box_b)
        if not with_chips:
            return result
        photos = {"A": photo_a, "B": photo_b}
        faces = []
        for face in result["faces"]:
            label = face["photo"]
            img = self._decode_probe(
                actor, photos[label], "verify.bad_photo", req.case_number, photo=label
            )
            with self.analysis_lock:
                det = self._landmarked(img.pixels, face["bbox"], None)
                chip = self._chip(img.pixels, det)
            assert det.landmarks is not None
            view = face_view(chip, img.pixels, face["bbox"], det.landmarks.tolist(), False)
            faces.append(face | {k: v for k, v in view.items() if k not in face})
        return result | {"faces": faces}
