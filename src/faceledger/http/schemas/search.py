"""Searches, detection and 1:1 verification."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from faceledger.http.schemas.common import ErrorOut
from faceledger.http.schemas.subjects import SubjectOut
from faceledger.search.searcher import LEADS_NOTICE


class DecisionOut(BaseModel):
    examiner: str
    decision: str = Field(description="excluded | inconclusive | possible-lead")
    reason: str
    created_at: str
    ledger_seq: int | None = Field(description="The ledger entry that recorded it")


class ReviewStateOut(BaseModel):
    status: str = Field(
        description="unreviewed | excluded | inconclusive | awaiting-second (a possible-lead "
        "without its second examination) | lead (two investigators decided possible-lead) | "
        "disagreement (the second examiner decided otherwise)"
    )
    first: DecisionOut | None = Field(
        description="The first examiner's decision; null while it is hidden from you (you "
        "may give the blind second decision)"
    )
    second: DecisionOut | None
    blind: bool = Field(description="The first decision is hidden from you until you decide")
    can_decide: bool | None = Field(None, description="You may record a decision now")


class CandidateOut(BaseModel):
    rank: int
    face_id: int
    score: float = Field(description="Cosine similarity of the two face vectors")
    est_fmr: float | None = Field(
        description="Estimated false match rate at this score (calibrated on impostor pairs); "
        "null without a calibration for the model"
    )
    est_fmr_extrapolated: bool | None
    expected_false_candidates: float | None = Field(
        description="Different people expected to score at least this high in a gallery of "
        "this size (gallery faces x est_fmr)"
    )
    quality: float
    bbox: list[int] = Field(description="The face in the source image: left, top, right, bottom")
    crop_url: str
    image_sha256: str
    image_url: str
    provenance: list[dict[str, Any]]
    erased: bool | None = Field(
        None,
        description="In a search record: the face has since been erased from the gallery "
        "(its crop and image are gone; the record keeps what was shown)",
    )
    chance_level: bool | None = Field(
        None,
        description="Expected false candidates at this gallery size reach the policy's "
        "lead_max_expected_false: at this score chance matches are expected (shown apart)",
    )
    review: ReviewStateOut | None = Field(
        None, description="In a search record: where the candidate's review stands, for you"
    )


class ProbeFaceOut(BaseModel):
    face_index: int
    bbox: list[int]
    quality: float
    size: int
    sharpness: float | None = None
    yaw: float | None = None
    warnings: list[str]
    below_min_quality: bool
    selected: bool | None = Field(
        None, description="With face_box: the face that was asked for (others are not searched)"
    )
    candidates: list[CandidateOut]
    photo: int | None = Field(
        None, description="A same-person probe: the photo whose face is shown (1-based)"
    )
    subjects: list[SubjectOut] | None = Field(
        None,
        description="The gallery's subjects ranked by the score of their template (every face "
        "of a labelled person, or a face of its own) against this face; candidates come from "
        "the best 4 x top_k faces (null in records of searches before subjects)",
    )


SEARCH_EXAMPLE: dict[str, Any] = {
    "search_id": 12,
    "probe_sha256": "9f2c...e1",
    "photo_sha256": "41ab...07",
    "probe_region": [210, 0, 500, 250],
    "case_number": "CASE-2026-114",
    "purpose": "violent-crime",
    "gallery_faces": 5210,
    "model_id": "dlib_resnet_v1",
    "notice": LEADS_NOTICE,
    "faces": [
        {
            "face_index": 0,
            "bbox": [318, 68, 425, 175],
            "quality": 0.91,
            "size": 107,
            "sharpness": 88.1,
            "yaw": 0.04,
            "warnings": [],
            "below_min_quality": False,
            "selected": True,
            "candidates": [
                {
                    "rank": 1,
                    "face_id": 881,
                    "score": 0.9512,
                    "est_fmr": 2.1e-06,
                    "est_fmr_extrapolated": True,
                    "expected_false_candidates": 0.011,
                    "quality": 0.88,
                    "bbox": [67, 68, 174, 175],
                    "crop_url": "/api/v1/searches/12/faces/881/crop",
                    "image_sha256": "5d1e...c3",
                    "image_url": "/api/v1/searches/12/faces/881/image",
                    "provenance": [
                        {
                            "source": "press-archive",
                            "original_path": "/srv/photos/2019/0412.jpg",
                            "source_url": "https://example.org/photo/0412",
                            "captured_at": "2019-04-12",
                            "legal_basis": "public press archive, licence 17/2019",
                            "subject_label": None,
                            "ingested_at": "2026-01-02T10:11:12+00:00",
                        }
                    ],
                }
            ],
        }
    ],
}


class PickedOut(BaseModel):
    box: list[int] = Field(description="The face_box asked for: left, top, right, bottom")
    face_index: int | None = Field(
        description="Which of the photo's faces (in /detect's order) it picked; null for a "
        "face marked by hand"
    )
    faces_in_photo: int
    marked_by_hand: bool = Field(
        False,
        description="The box picked none of the faces the detector found, so the box itself "
        "was searched as the face (landmarks fitted inside it): a face marked by hand",
    )


class VideoOut(BaseModel):
    """A video probe: the clip, how it was sampled and (once searched) the track used."""

    sha256: str = Field(description="SHA-256 of the uploaded video")
    format: str
    codec: str
    width: int
    height: int
    duration: float | None = Field(description="Seconds, from the container's header")
    fps_sampled: float = Field(description="Frames sampled a second at most")
    frames_sampled: list[int] = Field(
        description="The frames whose faces were found and tracked (numbers in decode order, "
        "0 = the first frame)"
    )
    tracks: int = Field(description="People (tracks) found in the clip")
    track: int | None = Field(None, description="The track searched (1-based)")
    track_first_frame: int | None = None
    track_last_frame: int | None = None
    track_faces: int | None = Field(None, description="Faces in the track searched")
    frames_used: list[int] | None = Field(
        None,
        description="The frames whose faces were fused into the probe (the track's best by "
        "quality, each at least the policy's minimum)",
    )
    probe_frame: int | None = Field(
        None, description="The frame of the track's best face: the probe shown and kept"
    )


class ProbePhotoOut(BaseModel):
    """One photo of a same-person (multi-photo) probe: the face it gave."""

    photo: int = Field(description="Its place among the photos sent (1-based)")
    sha256: str = Field(description="SHA-256 of the photo")
    faces_in_photo: int = Field(description="Faces the detector found in it")
    face_box: list[int] | None = Field(description="The face box sent for it, if any")
    face_index: int | None = Field(description="Which detected face was used; null if by hand")
    marked_by_hand: bool
    bbox: list[int] = Field(description="The face used: left, top, right, bottom")
    quality: float
    size: int
    warnings: list[str]
    fused: bool = Field(description="Fused into the probe (at least the minimum quality)")
    below_min_quality: bool


class TrackOut(BaseModel):
    track: int = Field(description="Its number, for track=N")
    first_frame: int
    last_frame: int
    faces: int = Field(description="Faces in the track (one per sampled frame it appears in)")
    best_frame: int
    bbox: list[int] = Field(description="The best face in its frame: left, top, right, bottom")
    quality: float = Field(description="The best face's quality")
    faces_searchable: int = Field(
        description="Faces that would be fused (the best, at least the policy's minimum)"
    )
    below_min_quality: bool
    thumbnail_jpeg: str = Field(description="The best face's crop, base64 JPEG")


class ChooseTrackOut(ErrorOut):
    """An error; for a video probe with several people and no track (code
    ``choose-track``), the tracks to choose from: send the search again with track=N."""

    video: VideoOut | None = None
    tracks: list[TrackOut] | None = None
    min_probe_quality: float | None = None


class SearchOut(BaseModel):
    search_id: int
    probe_sha256: str = Field(description="SHA-256 of the probe compared (the face region)")
    photo_sha256: str = Field(description="SHA-256 of the uploaded photo")
    probe_region: list[int] | None
    case_number: str
    purpose: str
    gallery_faces: int
    model_id: str
    notice: str
    faces: list[ProbeFaceOut]
    picked: PickedOut | None = Field(None, description="With face_box: the face picked")
    calibration: str | None = Field(
        None, description="Version (fingerprint) of the score calibration behind est_fmr"
    )
    policy_sha256: str | None = Field(None, description="SHA-256 of the policy in force")
    gallery_subjects: int | None = Field(
        None, description="Subjects in the gallery when the search ran (labels and faces of one)"
    )
    subject_calibration: str | None = Field(
        None, description="Version of the template calibration behind the subjects' est_fmr"
    )
    video: VideoOut | None = Field(
        None,
        description="A video probe: photo_sha256 is the video's, probe_sha256 the PNG of "
        "the frame of the track's best face",
    )
    photos: list[ProbePhotoOut] | None = Field(
        None,
        description="A same-person probe of several photos: each photo and its face; the "
        "faces fused are searched as one (faces[0]), probe_sha256 is the best face's photo",
    )
    fused_faces: int | None = Field(
        None,
        description="Faces fused into the probe (a video track's or the photos'); its est_fmr "
        "comes from the template calibration for that many faces",
    )
    model_config = ConfigDict(json_schema_extra={"examples": [SEARCH_EXAMPLE]})


class SearchShownOut(BaseModel):
    """A search as it was shown when it ran."""

    probe_sha256: str
    photo_sha256: str
    probe_region: list[int] | None
    picked: PickedOut | None
    gallery_faces: int = Field(description="Gallery size when the search ran")
    model_id: str
    calibration: str | None
    policy_sha256: str
    min_probe_quality: float
    lead_max_expected_false: float | None = Field(
        None, description="The policy's chance-level line when the search ran"
    )
    notice: str
    faces: list[ProbeFaceOut]
    gallery_subjects: int | None = Field(
        None, description="Subjects in the gallery when the search ran (labels and faces of one)"
    )
    subject_calibration: str | None = Field(
        None, description="Version of the template calibration behind the subjects' est_fmr"
    )
    video: VideoOut | None = Field(None, description="A video probe (see SearchOut.video)")
    photos: list[ProbePhotoOut] | None = Field(
        None,
        description="A same-person probe (see SearchOut.photos)",
    )
    fused_faces: int | None = Field(
        None,
        description="Faces fused into the probe (a video track's or the photos'); its est_fmr "
        "comes from the template calibration for that many faces",
    )


class SearchSummaryOut(BaseModel):
    id: int
    username: str
    case_number: str
    purpose: str
    request_id: int | None
    faces: int = Field(description="Faces found in the probe")
    candidates: int = Field(description="Candidates shown, all faces together")
    created_at: str


class DetectFaceOut(BaseModel):
    face_index: int
    bbox: list[int]
    quality: float
    size: int
    sharpness: float
    yaw: float
    warnings: list[str] = Field(description="small, blurred, turned")
    warning_text: list[str]
    below_min_quality: bool


class DetectOut(BaseModel):
    photo_sha256: str
    width: int
    height: int
    min_probe_quality: float
    faces: list[DetectFaceOut]
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "photo_sha256": "41ab...07",
                    "width": 500,
                    "height": 250,
                    "min_probe_quality": 0.0,
                    "faces": [
                        {
                            "face_index": 0,
                            "bbox": [68, 68, 175, 175],
                            "quality": 0.93,
                            "size": 107,
                            "sharpness": 91.2,
                            "yaw": 0.02,
                            "warnings": [],
                            "warning_text": [],
                            "below_min_quality": False,
                        }
                    ],
                }
            ]
        }
    )


class VerifyOut(BaseModel):
    verify_id: int
    case_number: str
    purpose: str
    model_id: str
    score: float
    est_fmr: float | None
    est_fmr_extrapolated: bool | None
    faces: list[dict[str, Any]]
    notice: str
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "verify_id": 3,
                    "case_number": "CASE-2026-114",
                    "purpose": "identity-fraud",
                    "model_id": "dlib_resnet_v1",
                    "score": 0.947,
                    "est_fmr": 1.3e-05,
                    "est_fmr_extrapolated": False,
                    "faces": [
                        {
                            "photo": "A",
                            "photo_sha256": "41ab...07",
                            "faces_in_photo": 1,
                            "bbox": [68, 68, 175, 175],
                            "quality": 0.93,
                            "warnings": [],
                            "marked_by_hand": False,
                        }
                    ],
                    "notice": LEADS_NOTICE,
                }
            ]
        }
    )


class SearchRecordOut(BaseModel):
    id: int
    username: str
    case_number: str
    purpose: str
    justification: str
    request_id: int | None
    probe_sha256: str
    faces: int
    created_at: str
    results: list[dict[str, Any]] = Field(
        description="Per probe face: candidate [face_id, score] pairs as recorded"
    )
    result_view_days: int | None = Field(
        None, description="How long after the search its candidates' files may be opened"
    )
    results_viewable: bool | None = Field(
        None, description="Whether the candidates' crops and images may still be opened"
    )
    shown: SearchShownOut | None = Field(
        None, description="Everything the search showed (null for searches before schema 3)"
    )
    probe_kept: bool = Field(False, description="Whether retention still keeps the probe photo")
    probe_url: str | None = Field(
        None, description="Thumbnail of the probe photo, where retention keeps it"
    )
