"""Video probes searched (#14 item 3): through the core, the API and the CLI, under the same
rules as a photo search. The clips are made from LFW photos with PyAV (tests/videoclips.py):
Al Gore alone, and Al Gore with Adrien Brody, each panned and zoomed across the frames; the
gallery holds other photos of both (and two other people). Real SQLite data dir, FastAPI
app and CLI."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import lfw_image, need_module
from conftest_api import PW, entries, own_token, seed
from faceledger.cli import app as cli_app
from faceledger.core import Faceledger, SearchRequest
from faceledger.errors import RefusedError
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.search.fusion import Groups, templates
from faceledger.search.subjects import load_subject_calibration
from faceledger.vision.video import VideoError, VideoLimits, analyse_video

need_module("av", "pip install av (a faceledger dependency)")
from videoclips import clip  # noqa: E402  (needs av)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REQ = SearchRequest("CASE-14", "violent-crime", "CCTV clip from the robbery", top_k=3)
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)
GORE, BRODY = ("Al_Gore", 3), ("Adrien_Brody", 4)  # the gallery holds their photos _0001


def top_name(face: dict[str, Any]) -> str:
    return Path(face["candidates"][0]["provenance"][0]["original_path"]).stem


@pytest.fixture(scope="module")
def fl(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceledger]:
    core = seed(lfw, tmp_path_factory.mktemp("video"), analyzer)
    root = core.login("root", PW)
    core.save_policy(root, core.policy().with_value("daily_quota", "0"))
    yield core
    core.close()


@pytest.fixture(scope="module")
def one_person(lfw: Path) -> bytes:
    return clip([lfw_image(lfw, *GORE)], seconds=3, fps=10)


@pytest.fixture(scope="module")
def two_people(lfw: Path) -> bytes:
    return clip([lfw_image(lfw, *GORE), lfw_image(lfw, *BRODY)], seconds=3, fps=10)


def test_a_clip_of_one_person_is_searched_as_its_fused_best_faces(
    fl: Faceledger, one_person: bytes, analyzer: Any
) -> None:
    """#14 item 3: one track, searched at once: the best faces (by quality, at most 5) of
    the sampled frames are fused by the template rule; the person is candidate 1; the
    result, the search record and its ledger entry carry the video's SHA-256, the frames
    sampled and used, and the track."""
    import hashlib

    ivy = fl.login("ivy", PW)
    result = fl.search_video(ivy, one_person, REQ)
    video_sha = hashlib.sha256(one_person).hexdigest()
    video = result["video"]
    assert video["sha256"] == result["photo_sha256"] == video_sha
    assert video["frames_sampled"] == [0, 5, 10, 15, 20, 25]
    assert (video["track"], video["tracks"], video["track_faces"]) == (1, 1, 6)
    [face] = result["faces"]
    assert top_name(face) == "Al_Gore_0001"

    # the same analysis, fused here from the 5 best faces, scores as the search did
    [track] = analyse_video(analyzer, one_person).tracks
    best = track.best(5)
    assert video["frames_used"] == [tf.frame for tf in best]
    vectors = np.stack([tf.face.embedding for tf in best])
    fused = templates(vectors, Groups.of([range(5)]))[0]
    searcher = fl.searcher()
    [by_fused] = searcher.search_faces([dataclasses.replace(best[0].face, embedding=fused)], 1)
    assert by_fused.candidates[0].score == pytest.approx(face["candidates"][0]["score"], abs=1e-4)
    singles = [searcher.search_faces([tf.face], 1)[0].candidates[0].score for tf in best]
    assert face["candidates"][0]["score"] >= np.mean(singles) - 1e-4  # the template's gain
    # a fused probe's est. FMR comes from the template fit for its size, and it has subjects
    top = face["candidates"][0]
    assert result["fused_faces"] == 5
    calib = load_subject_calibration(searcher.analyzer.model_id)
    assert calib is not None and result["calibration"] == calib.version
    fit = calib.for_probe(5)
    assert fit is not None and fit is calib.probe_fits["3+x1"]  # the fit for fused probes
    assert top["est_fmr"] == pytest.approx(fit.estimate(top["score"]).fmr, rel=0.01)
    assert face["subjects"][0]["face_ids"] == [top["face_id"]]

    rec = fl.get_search(ivy, result["search_id"])
    assert rec["shown"]["video"] == video
    assert rec["probe_sha256"] == result["probe_sha256"] != video_sha  # the best face's frame
    entry = entries(fl, "search")[-1]
    assert entry.details["search_id"] == result["search_id"]
    assert entry.details["video_sha256"] == video_sha
    assert entry.details["frames_used"] == video["frames_used"]
    assert entry.details["frames_sampled"] == video["frames_sampled"]
    assert entry.details["track"] == 1


def test_a_clip_of_two_people_lists_the_tracks_then_searches_the_one_chosen(
    fl: Faceledger, two_people: bytes
) -> None:
    """#14 item 3: with two people and no track, the tracks are returned (a JPEG of each
    track's best face, frame ranges, face counts), recorded as search.video_tracks, and no
    search is stored; track=2 searches Adrien Brody, track=1 Al Gore; a track the clip does
    not have is refused (no-such-track, recorded)."""
    import hashlib

    ivy = fl.login("ivy", PW)
    before = len(fl.list_searches(ivy))
    listed = fl.search_video(ivy, two_people, REQ)
    assert listed["search_id"] is None and "faces" not in listed
    assert [t["track"] for t in listed["tracks"]] == [1, 2]
    for t in listed["tracks"]:
        assert (t["first_frame"], t["last_frame"], t["faces"]) == (0, 25, 6)
        thumb = Image.open(io.BytesIO(base64.b64decode(t["thumbnail_jpeg"])))
        assert thumb.format == "JPEG" and min(thumb.size) > 40
    assert len(fl.list_searches(ivy)) == before  # listing the tracks compared nothing
    logged = entries(fl, "search.video_tracks")[-1]
    assert logged.details["video_sha256"] == hashlib.sha256(two_people).hexdigest()
    assert [t["frames"] for t in logged.details["tracks"]] == [[0, 25], [0, 25]]

    brody = fl.search_video(ivy, two_people, REQ, track=2)
    assert top_name(brody["faces"][0]) == "Adrien_Brody_0001"
    assert (brody["video"]["track"], brody["video"]["tracks"]) == (2, 2)
    gore = fl.search_video(ivy, two_people, REQ, track=1)
    assert top_name(gore["faces"][0]) == "Al_Gore_0001"
    assert entries(fl, "search")[-1].details["track"] == 1

    with pytest.raises(RefusedError) as refused:
        fl.search_video(ivy, two_people, REQ, track=3)
    assert refused.value.code == "no-such-track"
    assert entries(fl, "search.refused")[-1].details["reason"] == "no-such-track"


def test_listing_the_people_in_a_clip_counts_against_the_detection_quota(
    fl: Faceledger, two_people: bytes
) -> None:
    """#14 item 3: listing a clip's people shows their faces without comparing anything, as
    /detect does, so it counts against daily_detect_quota: at the quota the list is refused
    (quota-exceeded, recorded) and no thumbnail is returned; a search of a chosen track is a
    search (the search quota) and still runs."""
    ivy, root = fl.login("ivy", PW), fl.login("root", PW)
    listed = fl.search_video(ivy, two_people, REQ)
    assert listed["search_id"] is None
    used = fl._detects_today(ivy)
    assert used >= 1  # the list just made counts
    fl.save_policy(root, fl.policy().with_value("daily_detect_quota", str(used)))
    try:
        with pytest.raises(RefusedError) as refused:
            fl.search_video(ivy, two_people, REQ)
        assert refused.value.code == "quota-exceeded"
        assert "clip" in str(refused.value)
        assert entries(fl, "search.quota_refused")[-1].details["video_sha256"]
        assert fl.search_video(ivy, two_people, REQ, track=1)["search_id"] is not None
    finally:
        fl.save_policy(root, fl.policy().with_value("daily_detect_quota", "200"))


def test_video_searches_follow_the_rules_of_photo_searches(
    fl: Faceledger, one_person: bytes
) -> None:
    """#14 item 3: the case fields and the daily quota apply to a clip as to a photo; a clip
    past the duration budget, or cut short, is refused with its code and recorded
    (search.bad_probe) with the video's SHA-256."""
    ivy = fl.login("ivy", PW)
    with pytest.raises(RefusedError) as refused:
        fl.search_video(ivy, one_person, SearchRequest("CASE-14", "violent-crime", "short"))
    assert refused.value.code == "justification-too-short"

    root = fl.login("root", PW)
    used = fl.comparisons_today(ivy.user_id)
    fl.save_policy(root, fl.policy().with_value("daily_quota", str(used)))
    try:
        with pytest.raises(RefusedError) as refused:
            fl.search_video(ivy, one_person, REQ)
        assert refused.value.code == "quota-exceeded"
    finally:
        fl.save_policy(root, fl.policy().with_value("daily_quota", "0"))

    fl.video_limits = VideoLimits(max_seconds=2)
    try:
        with pytest.raises(VideoError) as bad:
            fl.search_video(ivy, one_person, REQ)
        assert bad.value.reason == "video-too-long"
    finally:
        fl.video_limits = VideoLimits()
    with pytest.raises(VideoError) as bad:
        fl.search_video(ivy, one_person[:5000], REQ)
    assert bad.value.reason == "corrupt-video"
    logged = entries(fl, "search.bad_probe")[-2:]
    assert [e.details["error"] for e in logged] == ["video-too-long", "corrupt-video"]
    assert all(len(e.details["video_sha256"]) == 64 for e in logged)


def test_api_takes_a_clip_as_probe_and_answers_choose_track(
    fl: Faceledger, one_person: bytes, two_people: bytes
) -> None:
    """#14 item 3: POST /api/v1/searches with a clip (recognised by its bytes, whatever its
    name and type say): one person is searched (video in the response and the record); two
    are 409 choose-track with the tracks, then track=N searches one; face_box on a clip and
    track on a photo are 400; an unreadable clip is 422 with its code; OpenAPI documents it."""
    token = own_token(fl, "ivy")[1]
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    fields = {"case_number": "CASE-14", "purpose": "violent-crime", "top_k": "3"}
    fields["justification"] = "CCTV clip from the robbery"
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {token}"}

        def post(data: bytes, name: str, ctype: str, **extra: str) -> Any:
            files = {"probe": (name, data, ctype)}
            return client.post("/api/v1/searches", headers=h, data={**fields, **extra}, files=files)

        r = post(one_person, "still.jpg", "image/jpeg")  # misnamed: the bytes decide
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["video"]["track"] == 1 and doc["video"]["frames_used"]
        assert top_name(doc["faces"][0]) == "Al_Gore_0001"
        rec = client.get(f"/api/v1/searches/{doc['search_id']}", headers=h).json()
        assert rec["shown"]["video"]["sha256"] == doc["photo_sha256"]

        r = post(two_people, "clip.mp4", "video/mp4")
        assert r.status_code == 409, r.text
        body = r.json()
        assert body["code"] == "choose-track" and body["fields"] == ["track"]
        assert [t["track"] for t in body["tracks"]] == [1, 2]
        assert body["video"]["tracks"] == 2 and body["tracks"][0]["thumbnail_jpeg"]
        r = post(two_people, "clip.mp4", "video/mp4", track="2")
        assert r.status_code == 200, r.text
        assert top_name(r.json()["faces"][0]) == "Adrien_Brody_0001"
        r = post(two_people, "clip.mp4", "video/mp4", track="9")
        assert r.status_code == 400 and r.json()["code"] == "no-such-track"

        r = post(two_people, "clip.mp4", "video/mp4", face_box="10,10,100,100")
        assert r.status_code == 400 and r.json()["code"] == "bad-face-box"
        r = post(_jpeg(), "a.jpg", "image/jpeg", track="1")
        assert r.status_code == 400 and r.json()["code"] == "bad-track"
        r = post(one_person[:5000], "clip.mp4", "video/mp4")
        assert r.status_code == 422 and r.json()["code"] == "corrupt-video"
        r = post(b"plain text", "a.txt", "text/plain")
        assert r.status_code == 415

        spec = client.get("/openapi.json").json()
        op = spec["paths"]["/api/v1/searches"]["post"]
        assert "choose-track" in op["description"]
        assert op["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "ChooseTrackOut"
        )
        assert "video" in spec["components"]["schemas"]["SearchOut"]["properties"]


def test_cli_lists_the_tracks_and_searches_the_one_chosen(
    fl: Faceledger, two_people: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#14 item 3: `faceledger search clip.mp4` with two people lists the tracks (exit 7,
    nothing compared); with --track 2 it searches Adrien Brody; `searches show` names the
    track and the frames used; --track on a photo is refused."""
    probe = tmp_path / "clip.mp4"
    probe.write_bytes(two_people)
    monkeypatch.setenv("FACELEDGER_TOKEN", own_token(fl, "ivy")[1])
    runner = CliRunner()
    case = ["--case", "CASE-14", "--purpose", "violent-crime"]
    case += ["--justification", "CCTV clip from the robbery", "--top-k", "3"]
    common = [*case, "--data-dir", str(fl.data_dir)]
    r = runner.invoke(cli_app, ["search", str(probe), *common])
    assert r.exit_code == 7, r.output
    said = " ".join(r.output.split())
    assert "2 people (tracks)" in said and "--track N" in said
    r = runner.invoke(cli_app, ["search", str(probe), *common, "--track", "2", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["video"]["track"] == 2 and top_name(doc["faces"][0]) == "Adrien_Brody_0001"
    r = runner.invoke(
        cli_app, ["searches", "show", str(doc["search_id"]), "--data-dir", str(fl.data_dir)]
    )
    said = " ".join(r.output.split())  # as printed, wrapped to the terminal
    assert r.exit_code == 0 and "track 2 of 2" in said and "fused into the probe" in said
    photo = tmp_path / "gore.jpg"
    photo.write_bytes(_jpeg())
    r = runner.invoke(cli_app, ["search", str(photo), *common, "--track", "1"])
    assert r.exit_code != 0 and "bad-track" in r.output


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def test_a_video_search_is_kept_and_shown_like_a_photo_search(
    fl: Faceledger, one_person: bytes
) -> None:
    """#14 item 3: stored like a photo search: with probes kept, the probe kept is the
    frame of the track's best face (its thumbnail and the side-by-side comparison work from
    it, the face's box in that frame); the case file lists the search and the lead report
    is made with it."""
    root = fl.login("root", PW)
    ivy = fl.login("ivy", PW)
    fl.save_policy(root, fl.policy().with_value("retain_probes_days", "30"))
    try:
        req = SearchRequest("CASE-14K", "violent-crime", "CCTV clip from the robbery", top_k=3)
        result = fl.search_video(ivy, one_person, req)
    finally:
        fl.save_policy(root, fl.policy().with_value("retain_probes_days", "0"))
    sid = result["search_id"]
    assert fl.get_search(ivy, sid)["probe_kept"] is True
    thumb = Image.open(io.BytesIO(fl.probe_thumbnail(ivy, sid)))
    assert thumb.size == (480, 270)  # the 640 x 360 frame
    top = result["faces"][0]["candidates"][0]["face_id"]
    side = fl.compare_candidate(ivy, sid, top)
    assert side["probe"]["bbox"] == result["faces"][0]["bbox"]
    case = fl.get_case(ivy, "CASE-14K")
    assert [s["id"] for s in case["searches"]] == [sid]
    html = fl.case_report(ivy, "CASE-14K", "html").decode()
    assert "CASE-14K" in html
    video = result["video"]
    assert f"video {video['sha256']}: person (track) 1 of 1" in html  # what was compared
