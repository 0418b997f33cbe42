"""Multi-photo probes (issue #14 item 2): several photos of one person searched as one probe.

The investigator states that the photos show the same person (``--same-person``,
``same_person=true``); each photo gives one face: the one its face box picks (or the box itself,
marked by hand), else the photo's only face. A photo showing several faces without a box, or
none, is refused before anything is compared, as is a video among the photos (a clip is a
probe of its own). The faces at least the policy's minimum quality are fused with the
``template`` rule (:func:`faceledger.search.fusion.fused_face`) into one probe vector, searched
like a photo's face, with its est. FMR from the template calibration for its number of faces
(:meth:`~faceledger.search.searcher.Searcher.calibration_for`). The same rules as a photo
search apply first (:meth:`~faceledger.core.searching.SearchDoor.authorise_search`), and the
search counts once against the daily quota.

The search record and its ledger entry list every photo (SHA-256, face box, the face used,
whether it was fused); the probe shown and kept (``retain_probes_days``) is the photo of the
best face (``probe_sha256`` is its hash).
"""

from __future__ import annotations

import hashlib
from typing import Any

from faceledger.accounts.auth import Actor
from faceledger.core.base import SearchRequest
from faceledger.core.video import VideoDoor
from faceledger.errors import RefusedError
from faceledger.search.fusion import fused_face
from faceledger.types import Face
from faceledger.vision import probes

MIN_PROBE_PHOTOS = 2
MAX_PROBE_PHOTOS = 10


def photo_face_doc(face: Face) -> dict[str, Any]:
    """A face as a probe photo's entry shows it."""
    return {
        "bbox": face.detection.bbox.as_list(),
        "quality": face.quality,
        "size": face.size,
        "warnings": probes.quality_warnings(face.size, face.sharpness, face.yaw),
    }


class MultiPhotoDoor(VideoDoor):
    def _refuse_photos(
        self, actor: Actor, req: SearchRequest, code: str, message: str, **what: Any
    ) -> RefusedError:
        """Record a refused multi-photo search (``search.refused``) and return the error."""
        self.record(actor, "search.refused", req.case_number, reason=code, detail=message, **what)
        return RefusedError(code, message, ("face_boxes",) if "face" in code else ("probe",))

    def _photo_face(
        self,
        actor: Actor,
        req: SearchRequest,
        number: int,
        data: bytes,
        box: list[int] | None,
    ) -> tuple[Face, dict[str, Any], bytes]:
        """The face photo ``number`` (1-based) gives, with its entry in the record."""
        sha = hashlib.sha256(data).hexdigest()
        if self.is_video(data):
            raise self._refuse_photos(
                actor,
                req,
                "video-among-photos",
                f"probe {number} is a video clip: a clip is searched on its own, not among "
                "photos of the same person",
                photo=number,
                photo_sha256=sha,
            )
        img = self._decode_probe(
            actor, data, "search.bad_probe", req.case_number, photo=number, probe_sha256=sha
        )
        if box is not None:
            self._check_face_box(actor, req.case_number, f"face_boxes[{number}]", box, img)
        found, near, face = self._face_in_photo(img, box)
        by_hand = box is not None and near is None
        if face is None and len(found) == 1:
            face = found[0]
        if face is None:
            code = "no-face-in-photo" if not found else "choose-face"
            message = (
                f"photo {number} shows no face the detector finds: mark the face with a face "
                "box, or leave the photo out"
                if not found
                else f"photo {number} shows {len(found)} faces: pick the person's face with a "
                "face box (POST /api/v1/detect lists them)"
            )
            raise self._refuse_photos(
                actor, req, code, message, photo=number, photo_sha256=sha, faces=len(found)
            )
        entry = {
            "photo": number,
            "sha256": sha,
            "faces_in_photo": len(found),
            "face_box": box,
            "face_index": near if box is not None else 0,
            "marked_by_hand": by_hand,
            **photo_face_doc(face),
        }
        return face, entry, data

    def search_photos(
        self,
        actor: Actor,
        photos: list[bytes],
        req: SearchRequest,
        face_boxes: list[list[int] | None] | None = None,
    ) -> dict[str, Any]:
        """Search the gallery with several photos of one person, fused into one probe.

        ``photos``: 2 to :data:`MAX_PROBE_PHOTOS` photos the investigator says show the same
        person; ``face_boxes[i]`` picks the face in photo ``i`` (None: the photo's only
        face). Under the same rules as :meth:`search`. Refused (recorded ``search.refused``)
        before anything is compared: too few or too many photos, a video among them
        (``video-among-photos``), a photo with several faces and no box (``choose-face``) or
        with none (``no-face-in-photo``), a bad box (``bad-face-box``). Faces below the
        policy's minimum quality are listed but not fused; where none is left nothing is
        compared (the record says so). The result is a photo search's, with ``photos``:
        each photo's SHA-256, face and whether it was fused."""
        pol = self.authorise_search(actor, req)
        boxes = list(face_boxes) if face_boxes is not None else [None] * len(photos)
        if not MIN_PROBE_PHOTOS <= len(photos) <= MAX_PROBE_PHOTOS:
            raise self._refuse_photos(
                actor,
                req,
                "bad-probe-count",
                f"a same-person search fuses {MIN_PROBE_PHOTOS} to {MAX_PROBE_PHOTOS} photos; "
                f"{len(photos)} were sent",
                photos=len(photos),
            )
        if len(boxes) != len(photos):
            raise self._refuse_photos(
                actor,
                req,
                "bad-face-box",
                f"{len(boxes)} face boxes for {len(photos)} photos: give one per photo (empty "
                "for a photo with one face)",
                photos=len(photos),
            )
        top_k = max(1, min(req.top_k, pol.max_candidates))
        faces: list[Face] = []
        entries: list[dict[str, Any]] = []
        datas: list[bytes] = []
        for number, (data, box) in enumerate(zip(photos, boxes, strict=True), 1):
            face, entry, kept = self._photo_face(actor, req, number, data, box)
            entry["fused"] = face.quality >= pol.min_probe_quality
            entry["below_min_quality"] = not entry["fused"]
            faces.append(face)
            entries.append(entry)
            datas.append(kept)
        fused = [f for f, e in zip(faces, entries, strict=True) if e["fused"]]
        # the face shown (and its photo kept): the best by quality, then size
        best = max(range(len(faces)), key=lambda i: (faces[i].quality, faces[i].size, -i))
        probe_face = fused_face(fused or faces, faces[best])
        found = self._search_fused(probe_face, len(fused), top_k, pol)
        probe_faces, subjects = found.faces, found.subjects
        probe_faces[0]["photo"] = best + 1
        probe_sha = entries[best]["sha256"]
        return self._record_search(
            actor,
            req,
            pol,
            probe_faces,
            (found.calibration, found.gallery_faces, found.model_id),
            datas[best],
            {
                "photos": [
                    {k: e[k] for k in ("sha256", "face_box", "bbox", "fused", "marked_by_hand")}
                    for e in entries
                ]
            },
            probe_sha256=probe_sha,
            photo_sha256=probe_sha,
            probe_region=None,
            picked=None,
            photos=entries,
            fused_faces=found.fused,
            **subjects,
        )
