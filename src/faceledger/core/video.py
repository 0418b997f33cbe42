"""Video probes (issue #14 item 3): a clip searched as one person's fused faces.

The clip is decoded within the video budgets (:class:`~faceledger.vision.video.VideoLimits`),
faces are found in the sampled frames and tracked across them under the analysis lock, and a
track's best faces are fused with the ``template`` rule (:func:`faceledger.search.fusion.
templates`) into one probe vector, searched like a photo's face. A clip with one track is
searched at once; with several, the tracks are listed (``search.video_tracks``) for the
investigator to pick one, and the search runs with ``track=N``. The same rules as a photo
search apply first (:meth:`~faceledger.core.searching.SearchDoor.authorise_search`).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from faceledger.accounts.auth import Actor
from faceledger.cases.policy import Policy
from faceledger.core.base import SearchRequest
from faceledger.core.searching import SearchDoor
from faceledger.core.shown import face_doc
from faceledger.errors import RefusedError
from faceledger.search.fusion import fused_face
from faceledger.search.searcher import LEADS_NOTICE, NoFaceError
from faceledger.search.subjects import attach_subjects
from faceledger.types import Face
from faceledger.vision import probes
from faceledger.vision.video import (
    Track,
    TrackFace,
    TrackLines,
    VideoAnalysis,
    VideoError,
    VideoLimits,
    analyse_video,
    frame_at,
    is_video,
)


def fused_probe(faces: list[TrackFace]) -> Face:
    """One probe face for a track: the best of ``faces`` (box, landmarks, quality, crop),
    with the ``template`` fusion of all their vectors as its embedding."""
    best = max(faces, key=lambda tf: (tf.face.quality, tf.face.size, -tf.frame)).face
    return fused_face([tf.face for tf in faces], best)


def track_summary(track: Track, min_quality: float, k: int) -> dict[str, Any]:
    """A track as the list to pick from shows it: frames, faces, the best face's crop."""
    best = track.best_face()
    usable = [tf for tf in track.best(k) if tf.face.quality >= min_quality]
    return {
        "track": track.index,
        "first_frame": track.frames[0],
        "last_frame": track.frames[1],
        "faces": len(track.faces),
        "best_frame": best.frame,
        "bbox": best.face.detection.bbox.as_list(),
        "quality": best.face.quality,
        "faces_searchable": len(usable),
        "below_min_quality": not usable,
        "thumbnail_jpeg": base64.b64encode(best.face.crop_jpeg).decode("ascii"),
    }


@dataclass
class FusedSearch:
    """What a fused probe's search showed: its face (none, or one with its candidates and
    subjects), the subjects' record fields, and the calibration, gallery size and model."""

    faces: list[dict[str, Any]]
    subjects: dict[str, Any]
    calibration: Any
    gallery_faces: int
    model_id: str
    fused: int  # faces fused into the probe (0: none at the minimum quality, not compared)


class VideoDoor(SearchDoor):
    _video_limits: VideoLimits | None = None

    def _search_fused(
        self, probe_face: Face | None, fused: int, top_k: int, pol: Policy
    ) -> FusedSearch:
        """Search one fused probe face (of a video track, of several photos), made of
        ``fused`` faces at least the policy's minimum quality (0: shown, not compared), with
        the est. FMR of its size (:meth:`Searcher.calibration_for`) and its subjects."""
        sizes = [max(1, fused)]
        with self.analysis_lock:
            searcher = self.searcher()
            docs: list[dict[str, Any]] = []
            subjects: dict[str, Any] = {}
            if probe_face is not None:
                results = searcher.search_faces([probe_face], top_k, sizes) if fused else []
                docs.append(face_doc(0, probe_face, results[0] if results else None))
                subjects = attach_subjects(
                    searcher, [probe_face], docs, top_k, pol.lead_max_expected_false, sizes
                )
            return FusedSearch(
                docs,
                subjects,
                searcher.calibration_for(sizes[0]),
                len(searcher.indexes.sync()),
                searcher.analyzer.model_id,
                fused,
            )

    @property
    def video_limits(self) -> VideoLimits:
        """The video budgets and sampling (from ``FACELEDGER_VIDEO_*`` unless set)."""
        if self._video_limits is None:
            self._video_limits = VideoLimits.from_env()
        return self._video_limits

    @video_limits.setter
    def video_limits(self, limits: VideoLimits) -> None:
        self._video_limits = limits

    @staticmethod
    def is_video(data: bytes) -> bool:
        """Whether a probe upload is a video clip (by its bytes, never its name)."""
        return is_video(data)

    def _analyse_clip(
        self, actor: Actor, clip: bytes, req: SearchRequest, video_sha: str
    ) -> VideoAnalysis:
        """The clip's analysis, under the analysis lock; a clip that cannot be read is
        recorded (``search.bad_probe``) before the error goes up."""
        try:
            with self.analysis_lock:
                searcher = self.searcher()
                lines = TrackLines.from_calibration(searcher.calibration)
                return analyse_video(searcher.analyzer, clip, self.video_limits, lines)
        except VideoError as exc:
            self.record(
                actor,
                "search.bad_probe",
                req.case_number,
                video_sha256=video_sha,
                error=exc.reason,
            )
            raise

    def search_video(
        self, actor: Actor, clip: bytes, req: SearchRequest, track: int | None = None
    ) -> dict[str, Any]:
        """Search the gallery with the person in a video clip.

        Under the same rules as :meth:`search` (role, case fields, approval, quota, the
        probe-quality minimum). Faces are found in the frames sampled (at most
        ``video_limits.fps`` a second) and tracked; a track's best faces (at most
        ``video_limits.track_faces``, by quality, each at least the policy's minimum) are
        fused into one probe. With one track it is searched; with several and no ``track``
        the tracks are returned (``search_id`` null, ``tracks``: thumbnails, frame ranges,
        face counts), recorded as ``search.video_tracks``, and nothing is compared; with
        ``track=N`` (1-based) that track is searched. The search record and its ledger
        entry carry the video's SHA-256, the frames sampled, the frames whose faces were
        fused and the track. The probe kept (``retain_probes_days``) is the frame of the
        track's best face, as PNG (``probe_sha256`` is its hash)."""
        pol = self.authorise_search(actor, req)
        top_k = max(1, min(req.top_k, pol.max_candidates))
        video_sha = hashlib.sha256(clip).hexdigest()
        analysis = self._analyse_clip(actor, clip, req, video_sha)
        tracks = analysis.tracks
        limits = self.video_limits
        info = analysis.info
        video_doc: dict[str, Any] = {
            "sha256": video_sha,
            "format": info.format,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "duration": None if info.duration is None else round(info.duration, 3),
            "fps_sampled": limits.fps,
            "frames_sampled": analysis.frames,
            "tracks": len(tracks),
        }
        if track is not None and not 1 <= track <= len(tracks):
            message = f"the clip has {len(tracks)} track(s); there is no track {track}"
            self.record(
                actor,
                "search.refused",
                req.case_number,
                reason="no-such-track",
                video_sha256=video_sha,
                track=track,
                tracks=len(tracks),
            )
            raise RefusedError("no-such-track", message, ("track",))
        if len(tracks) > 1 and track is None:
            # the people listed (thumbnails, nothing compared) count as a detection
            self._check_detect_quota(actor, pol, req.case_number, video_sha256=video_sha)
            listed = [track_summary(t, pol.min_probe_quality, limits.track_faces) for t in tracks]
            self.record(
                actor,
                "search.video_tracks",
                req.case_number,
                purpose=req.purpose,
                video_sha256=video_sha,
                frames_sampled=analysis.frames,
                tracks=[
                    {
                        "track": t["track"],
                        "frames": [t["first_frame"], t["last_frame"]],
                        "faces": t["faces"],
                    }
                    for t in listed
                ],
            )
            return {
                "search_id": None,
                "case_number": req.case_number,
                "purpose": req.purpose,
                "video": video_doc,
                "tracks": listed,
                "min_probe_quality": pol.min_probe_quality,
                "notice": LEADS_NOTICE,
            }
        chosen = tracks[(track or 1) - 1] if tracks else None
        kept = [] if chosen is None else chosen.best(limits.track_faces)
        fused = [tf for tf in kept if tf.face.quality >= pol.min_probe_quality]
        # below the minimum quality, the best faces are shown fused but not compared
        probe_face = fused_probe(fused or kept) if kept else None
        found = self._search_fused(probe_face, len(fused), top_k, pol)
        probe_faces, subjects = found.faces, found.subjects
        best_frame: int | None = None
        if chosen is not None and kept:
            best_frame = max(kept, key=lambda tf: (tf.face.quality, tf.face.size, -tf.frame)).frame
            video_doc |= {
                "track": chosen.index,
                "track_first_frame": chosen.frames[0],
                "track_last_frame": chosen.frames[1],
                "track_faces": len(chosen.faces),
                "frames_used": [tf.frame for tf in fused],
                "probe_frame": best_frame,
            }
        # the probe shown and kept: the frame of the track's best face, as PNG
        frame_png = (
            b"" if best_frame is None else probes.png_bytes(frame_at(clip, best_frame, limits))
        )
        probe_sha = hashlib.sha256(frame_png or clip).hexdigest()
        result = self._record_search(
            actor,
            req,
            pol,
            probe_faces,
            (found.calibration, found.gallery_faces, found.model_id),
            frame_png,
            {
                "video_sha256": video_sha,
                "frames_sampled": analysis.frames,
                "frames_used": video_doc.get("frames_used", []),
                "track": video_doc.get("track"),
                "tracks": len(tracks),
            },
            probe_sha256=probe_sha,
            photo_sha256=video_sha,
            probe_region=None,
            picked=None,
            video=video_doc,
            fused_faces=found.fused,
            **subjects,
        )
        if not probe_faces:
            raise NoFaceError(f"no face found in the video (search {result['search_id']} recorded)")
        return result
