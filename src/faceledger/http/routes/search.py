"""Searches, detection and 1:1 verification, and the candidate files a search shows."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from faceledger.core import SearchRequest
from faceledger.http.compare import verify_out
from faceledger.http.deps import Ctx, CurrentActor, DbId, FormStr
from faceledger.http.errors import ApiError
from faceledger.http.files import file_response
from faceledger.http.parsing import parse_box, parse_boxes, parse_request_id
from faceledger.http.schemas.common import ERRORS, IMAGE_RESPONSES, UPLOAD_ERRORS, ErrorOut
from faceledger.http.schemas.search import (
    ChooseTrackOut,
    DetectOut,
    SearchOut,
    SearchRecordOut,
    SearchSummaryOut,
    VerifyOut,
)
from faceledger.http.searches import record_out, search_out
from faceledger.http.settings import API
from faceledger.http.uploads import VIDEO_TYPES, read_upload
from faceledger.timing import SEARCH_STAGES

router = APIRouter(prefix=API)


CASE_FIELDS_DOC = (
    "case_number, purpose (from the policy) and justification (10+ characters) are required; "
    "purposes that need approval also need request_id, an approved case request of yours."
)


@router.post("/detect", response_model=DetectOut, responses=UPLOAD_ERRORS, tags=["search"])
def detect(
    ctx: Ctx,
    actor: CurrentActor,
    photo: Annotated[UploadFile | None, File(description="The probe photo")] = None,
    case_number: Annotated[
        str, Form(description="The case this detection serves (recorded)", examples=["CASE-7"])
    ] = "",
) -> dict[str, Any]:
    """Find the faces in a photo (boxes and quality warnings) without comparing anything.

    For picking one face before a search; investigators only; recorded in the ledger and
    counted against the policy's daily_detect_quota."""
    ctx.limit_search(actor)
    data = read_upload(photo, "photo")
    return ctx.fl.detect(actor, data, case_number)


VIDEO_DOC = (
    " The probe may be a video clip (MP4, MOV, MKV, WebM, AVI; recognised by its content, not "
    "its name): faces are found in frames sampled a few times a second, tracked across "
    "frames, and a track's best faces are fused into one probe. With one person in the clip "
    "it is searched at once; with several and no track, the answer is 409 choose-track with "
    "the tracks (thumbnails, frame ranges, face counts; recorded as search.video_tracks): "
    "send the search again with track=N. A clip too long or too large, or not readable, is "
    "422 video-too-long, video-too-large, not-a-video or corrupt-video."
)
SERVER_TIMING = {
    "description": "Where the server's time went (W3C Server-Timing, ms): "
    + ", ".join(SEARCH_STAGES)
    + " (every stage named, 0 where it did not run), then total, the server's time from "
    "the request's arrival to the start of this response",
    "schema": {"type": "string"},
    "example": "upload;dur=1.20, auth;dur=0.40, checks;dur=1.10, decode;dur=9.80, "
    "detect;dur=61.00, embed;dur=18.50, index;dur=2.30, db;dur=3.10, ledger;dur=4.20, "
    "core;dur=1.90, total;dur=106.40",
}
SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": {"Server-Timing": SERVER_TIMING}},
    **UPLOAD_ERRORS,
    409: {
        "model": ChooseTrackOut,
        "description": "A video probe with several people and no track: choose-track, with "
        "the tracks to choose from; or another conflict (empty gallery, policy changed "
        "outside faceledger...)",
    },
    415: {"model": ErrorOut, "description": "Not an image or video content type"},
}


@router.post(
    "/searches",
    response_model=SearchOut,
    responses=SEARCH_RESPONSES,
    tags=["search"],
    description="Search the gallery with a probe photo: ranked candidates per face, as leads "
    "for human review. " + CASE_FIELDS_DOC + VIDEO_DOC,
)
def create_search(
    ctx: Ctx,
    actor: CurrentActor,
    probe: Annotated[
        list[UploadFile] | None,
        File(
            description="The probe photo, or a video clip; or 2 to 10 photos of one person "
            "with same_person=true"
        ),
    ] = None,
    case_number: Annotated[str, Form(examples=["CASE-2026-114"])] = "",
    purpose: Annotated[str, Form(examples=["violent-crime"])] = "",
    justification: Annotated[str, Form(examples=["CCTV still from the robbery at ..."])] = "",
    request_id: Annotated[str, Form(description="Approved case request id", examples=[""])] = "",
    top_k: Annotated[int, Form(ge=1, le=1000, description="Candidates per face")] = 10,
    face_box: Annotated[
        str,
        Form(
            description="left,top,right,bottom of one face in photo pixels (from /detect, "
            "or drawn by hand): only that face is searched. A box that picks none of the "
            "detected faces is searched as a face marked by hand (landmarks fitted inside it; "
            "picked.marked_by_hand). At least 20 px a side, inside the photo, else 400 "
            "bad-face-box",
            examples=["318,68,425,175"],
        ),
    ] = "",
    track: Annotated[
        int | None,
        Form(
            ge=1,
            le=100_000,
            description="A video probe: the track (person) to search, from the choose-track "
            "answer; 400 no-such-track where the clip has no such track",
        ),
    ] = None,
    same_person: Annotated[
        bool,
        Form(
            description="Several probe photos: you state they show one person; their faces "
            "are fused into one probe (required with more than one probe file)"
        ),
    ] = False,
    face_boxes: Annotated[
        str,
        Form(
            description="Several probe photos: one face box per photo, in the order sent, "
            "separated by ';' (empty for a photo whose only face is meant), e.g. "
            "'318,68,425,175;;10,12,90,95'. A photo with several faces needs one (400 "
            "choose-face); one with no face found is refused (400 no-face-in-photo)",
            examples=[""],
        ),
    ] = "",
) -> Any:
    ctx.limit_search(actor)
    box = parse_box(face_box)
    req = SearchRequest(case_number, purpose, justification, parse_request_id(request_id), top_k)
    files = probe or []
    if len(files) > 1:
        if not same_person:
            raise ApiError(
                400,
                "several-probes",
                f"{len(files)} probe files: set same_person=true to search them as one "
                "person's photos fused, or search each on its own",
            )
        if box is not None or track is not None:
            raise ApiError(
                400,
                "bad-face-box" if box is not None else "bad-track",
                "several photos pick their faces with face_boxes (one per photo); face_box "
                "and track are for one photo or one video",
            )
        photos = [read_upload(f, "probe", VIDEO_TYPES) for f in files]
        boxes = parse_boxes(face_boxes, len(photos))
        return search_out(ctx.fl.search_photos(actor, photos, req, boxes))
    if face_boxes.strip():
        raise ApiError(400, "bad-face-box", "face_boxes is for several photos; use face_box")
    data = read_upload(files[0] if files else None, "probe", VIDEO_TYPES)
    if not ctx.fl.is_video(data):
        if track is not None:
            raise ApiError(400, "bad-track", "track picks a person in a video; this is a photo")
        return search_out(ctx.fl.search(actor, data, req, box))
    if box is not None:
        raise ApiError(
            400, "bad-face-box", "face_box picks a face in a photo; in a video probe, use track"
        )
    result = ctx.fl.search_video(actor, data, req, track)
    if result["search_id"] is None:
        n = len(result["tracks"])
        body = {
            "code": "choose-track",
            "message": f"the clip shows {n} people: choose one and search again with track=N",
            "fields": ["track"],
            "video": result["video"],
            "tracks": result["tracks"],
            "min_probe_quality": result["min_probe_quality"],
        }
        return JSONResponse(body, status_code=409)
    return search_out(result)


@router.get("/searches", response_model=list[SearchSummaryOut], responses=ERRORS, tags=["search"])
def list_searches(
    ctx: Ctx,
    actor: CurrentActor,
    case_number: Annotated[str, Query(max_length=64, description="Only this case")] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    """The searches you may read, newest first: your own; supervisors also their unit's and
    those under approvals they gave; auditors all. Recorded (search.list)."""
    return ctx.fl.list_searches(actor, case_number or None, limit)


@router.get(
    "/searches/{search_id}", response_model=SearchRecordOut, responses=ERRORS, tags=["search"]
)
def get_search(ctx: Ctx, actor: CurrentActor, search_id: DbId) -> dict[str, Any]:
    """A recorded search (own searches; supervisors their unit's and those under approvals
    they gave; auditors all), with everything it showed: probe faces, candidates with
    scores, estimated FMRs, expected false candidates and provenance, model, calibration
    and policy versions. Each view is recorded with the candidates it shows."""
    return record_out(ctx.fl.get_search(actor, search_id))


@router.post(
    "/verify",
    response_model=VerifyOut,
    responses=UPLOAD_ERRORS,
    tags=["search"],
    description="1:1: how alike one face in each of two photos is (score and estimated FMR). "
    "Investigators only, under the same rules as a search, counted in the same daily quota "
    "and recorded in the ledger. " + CASE_FIELDS_DOC,
)
def verify(
    ctx: Ctx,
    actor: CurrentActor,
    photo_a: Annotated[UploadFile | None, File()] = None,
    photo_b: Annotated[UploadFile | None, File()] = None,
    case_number: FormStr = "",
    purpose: FormStr = "",
    justification: FormStr = "",
    request_id: FormStr = "",
    face_box_a: Annotated[
        str,
        Form(
            description="Which face in photo A (else the largest); a box no detected face "
            "fills is the face, marked by hand"
        ),
    ] = "",
    face_box_b: Annotated[
        str,
        Form(
            description="Which face in photo B (else the largest); a box no detected face "
            "fills is the face, marked by hand"
        ),
    ] = "",
    with_chips: Annotated[
        bool,
        Form(
            description="Also return each face as the model aligned it, for a side-by-side "
            "view: chip_png (base64 PNG), chip_size, chip_landmarks, landmarks, image_width, "
            "image_height"
        ),
    ] = False,
) -> dict[str, Any]:
    ctx.limit_search(actor)
    box_a, box_b = parse_box(face_box_a, "face_box_a"), parse_box(face_box_b, "face_box_b")
    a = read_upload(photo_a, "photo_a")
    b = read_upload(photo_b, "photo_b")
    req = SearchRequest(case_number, purpose, justification, parse_request_id(request_id))
    return verify_out(ctx.fl.verify(actor, a, b, req, box_a, box_b, with_chips=with_chips))


@router.get(
    "/searches/{search_id}/faces/{face_id}/crop", responses=IMAGE_RESPONSES, tags=["search"]
)
def candidate_crop(ctx: Ctx, actor: CurrentActor, search_id: DbId, face_id: DbId) -> FileResponse:
    """The crop of a candidate this search returned (to whoever may read the search, within
    the policy's result_view_days); the search's own ledger entry lists what it showed."""
    path = ctx.fl.candidate_file(actor, search_id, face_id, "crop")
    return file_response(path, f"face-{face_id}.jpg")


@router.get(
    "/searches/{search_id}/faces/{face_id}/image", responses=IMAGE_RESPONSES, tags=["search"]
)
def candidate_image(ctx: Ctx, actor: CurrentActor, search_id: DbId, face_id: DbId) -> FileResponse:
    """The source image of a candidate this search returned; each view is recorded."""
    path = ctx.fl.candidate_file(actor, search_id, face_id, "image")
    return file_response(path, f"search-{search_id}-face-{face_id}{path.suffix}")


@router.get("/searches/{search_id}/probe", responses=IMAGE_RESPONSES, tags=["search"])
def probe_thumbnail(ctx: Ctx, actor: CurrentActor, search_id: DbId) -> Response:
    """A thumbnail of the search's probe photo (as searched: with a chosen face, the region
    around it), while the policy's retain_probes_days keeps the photo; each view is recorded.
    410 ``probe-not-kept`` otherwise."""
    return Response(
        ctx.fl.probe_thumbnail(actor, search_id),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, no-store"},
    )
