"""A face the detector missed (#13 item 5): the user marks it with a box; landmarks are
fitted inside the box, the face is aligned and embedded as usual, and the result, the
stored search record, the ledger entry and the CLI say "face marked by hand". Bad boxes
are refused with ``bad-face-box``.

The probe is a real LFW photo rotated by 60 degrees: dlib's HOG detector (the search's
detector here) finds no face in it, which each test checks, while a box drawn around the
face finds the person in a small LFW gallery. Real SQLite data dir, FastAPI app and CLI."""

from __future__ import annotations

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

from conftest import TURNED_FACE_BOX, lfw_image, side_by_side, turned_face
from conftest_api import PW, entries, own_token, seed
from faceledger.cli import app as cli_app
from faceledger.core import Faceledger, SearchRequest
from faceledger.errors import RefusedError
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.search.searcher import NoFaceError
from faceledger.vision.detection import create_detector

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REQ = SearchRequest("CASE-5", "violent-crime", "CCTV still, face turned sideways", top_k=3)
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)
HAND_BOX = TURNED_FACE_BOX


def detector_finds(fl: Faceledger, photo: bytes) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    return len(fl.searcher().analyzer.detector.detect(pixels))


@pytest.fixture(scope="module")
def fl(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceledger]:
    core = seed(lfw, tmp_path_factory.mktemp("handbox"), analyzer)
    root = core.login("root", PW)
    core.save_policy(root, core.policy().with_value("daily_quota", "0"))
    yield core
    core.close()


def test_a_face_marked_by_hand_where_the_detector_found_none(fl: Faceledger, lfw: Path) -> None:
    """#13 item 5: the detector finds no face in the photo; searched with a box drawn around
    the face, the box itself is the face (landmarks fitted inside it) and the person is
    candidate 1; the result, the stored record and the ledger entry say marked_by_hand."""
    photo = turned_face(lfw)
    assert detector_finds(fl, photo) == 0
    ivy = fl.login("ivy", PW)
    assert fl.detect(ivy, photo, "CASE-5")["faces"] == []
    with pytest.raises(NoFaceError):
        fl.search(ivy, photo, REQ)  # without the box: nothing to search

    result = fl.search(ivy, photo, REQ, list(HAND_BOX))
    assert result["picked"] == {
        "box": HAND_BOX,
        "face_index": None,
        "faces_in_photo": 0,
        "marked_by_hand": True,
    }
    [face] = result["faces"]
    assert face["selected"] is True and face["bbox"] == HAND_BOX  # back in photo pixels
    assert len(face["landmarks"]) == 5
    assert all(
        HAND_BOX[0] <= x <= HAND_BOX[2] and HAND_BOX[1] <= y <= HAND_BOX[3]
        for x, y in face["landmarks"]
    )
    assert not face["below_min_quality"]
    top = face["candidates"][0]
    assert "Adrien_Brody" in top["provenance"][0]["original_path"]
    assert top["score"] > face["candidates"][1]["score"]

    entry = entries(fl, "search")[-1]
    assert entry.details["search_id"] == result["search_id"]
    assert entry.details["marked_by_hand"] is True
    assert entry.details["probe_region"] == result["probe_region"]
    assert entry.details["photo_sha256"] == result["photo_sha256"]

    rec = fl.get_search(ivy, result["search_id"])
    assert rec["shown"]["picked"]["marked_by_hand"] is True
    assert rec["shown"]["faces"][0]["bbox"] == HAND_BOX
    assert fl.audit_verify(fl.login("ada", PW)).ok  # the record still matches its entry


def test_a_box_on_a_detected_face_is_not_marked_by_hand(fl: Faceledger, lfw: Path) -> None:
    """#13 item 5: where the box picks a face the detector found, that face is searched as
    before, and nothing says marked by hand."""
    ivy = fl.login("ivy", PW)
    group = side_by_side([lfw_image(lfw, "Al_Gore", 2), lfw_image(lfw, "Adrien_Brody", 2)])
    found = fl.detect(ivy, group, "CASE-5")
    faces = found["faces"]
    # Adrien Brody: the biggest face in the right half (the detector may find more)
    right = max(
        (i for i, f in enumerate(faces) if f["bbox"][0] + f["bbox"][2] > found["width"]),
        key=lambda i: faces[i]["size"],
    )
    result = fl.search(ivy, group, REQ, faces[right]["bbox"])
    assert result["picked"]["face_index"] == right
    assert result["picked"]["marked_by_hand"] is False
    assert "marked_by_hand" not in entries(fl, "search")[-1].details
    selected = next(f for f in result["faces"] if f["selected"])
    assert "Adrien_Brody" in selected["candidates"][0]["provenance"][0]["original_path"]


@pytest.mark.parametrize(
    ("box", "says"),
    [
        ([100, 100, 119, 300], "at least 20 pixels"),  # 19 px wide
        ([100, 100, 300, 110], "at least 20 pixels"),
        ([300, 300, 520, 480], "outside the photo"),  # past the right edge (500 px)
        ([-5, 10, 100, 100], "outside the photo"),
        ([200, 200, 200, 300], "right > left"),  # degenerate
        ([200, 300, 300, 200], "bottom > top"),
        ([1, 2, 3], "four numbers"),
    ],
)
def test_bad_face_boxes_are_refused_and_recorded(
    fl: Faceledger, lfw: Path, box: list[int], says: str
) -> None:
    """#13 item 5: a box under 20 px a side, outside the photo or degenerate is refused
    with ``bad-face-box`` (a search.refused ledger entry), and no search is stored."""
    ivy = fl.login("ivy", PW)
    searches = len(entries(fl, "search"))
    with pytest.raises(RefusedError, match=says) as caught:
        fl.search(ivy, turned_face(lfw), REQ, box)
    assert caught.value.code == "bad-face-box"
    refused = entries(fl, "search.refused")[-1]
    assert refused.details["reason"] == "bad-face-box" and says in refused.details["detail"]
    assert len(entries(fl, "search")) == searches


def test_verify_with_a_face_marked_by_hand(fl: Faceledger, lfw: Path) -> None:
    """#13 item 5 (the 1:1 verify gets the same rule): box_a picks no detected face, so the
    box is the face; the same person scores higher than another, and the result and the
    ledger entry say which photo's face was marked by hand."""
    ivy = fl.login("ivy", PW)
    photo = turned_face(lfw)
    assert detector_finds(fl, photo) == 0
    brody = lfw_image(lfw, "Adrien_Brody", 1).read_bytes()
    gore = lfw_image(lfw, "Al_Gore", 1).read_bytes()
    same = fl.verify(ivy, photo, brody, REQ, box_a=list(HAND_BOX))
    assert [f["marked_by_hand"] for f in same["faces"]] == [True, False]
    assert same["faces"][0]["bbox"] == HAND_BOX and same["faces"][0]["faces_in_photo"] == 0
    entry = entries(fl, "verify")[-1]
    assert entry.details["outcome"] == "compared" and entry.details["marked_by_hand"] == ["A"]
    other = fl.verify(ivy, photo, gore, REQ, box_a=list(HAND_BOX))
    assert same["score"] > other["score"]
    with pytest.raises(RefusedError) as caught:
        fl.verify(ivy, photo, brody, REQ, box_a=[10, 10, 20, 20])
    assert caught.value.code == "bad-face-box" and "face_box_a" in str(caught.value)


def test_api_search_with_a_face_marked_by_hand(fl: Faceledger, lfw: Path) -> None:
    """#13 item 5: POST /api/v1/searches with face_box where the detector finds no face;
    the response and GET /api/v1/searches/{id} say marked_by_hand; bad boxes are 400
    ``bad-face-box``."""
    photo = turned_face(lfw)
    token = own_token(fl, "ivy")[1]
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    fields = {"case_number": "CASE-5", "purpose": "violent-crime", "top_k": "3"}
    fields["justification"] = "CCTV still, face turned sideways"
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {token}"}

        def post(box: str) -> Any:
            files = {"probe": ("turned.jpg", photo, "image/jpeg")}
            return client.post(
                "/api/v1/searches", headers=h, data={**fields, "face_box": box}, files=files
            )

        r = post(",".join(map(str, HAND_BOX)))
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["picked"]["marked_by_hand"] is True and doc["picked"]["face_index"] is None
        top = doc["faces"][0]["candidates"][0]
        assert "Adrien_Brody" in top["provenance"][0]["original_path"]
        rec = client.get(f"/api/v1/searches/{doc['search_id']}", headers=h).json()
        assert rec["shown"]["picked"]["marked_by_hand"] is True
        for bad in ("10,10,25,25", "300,300,520,480", "1,2,3"):
            r = post(bad)
            assert r.status_code == 400 and r.json()["code"] == "bad-face-box", bad
        assert "marked_by_hand" in client.get("/openapi.json").text


def test_cli_search_with_a_face_marked_by_hand(
    fl: Faceledger, lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13 item 5: `faceledger search PHOTO --face-box X0,Y0,X1,Y1` where the detector finds
    no face: labelled "face marked by hand" (and in `searches show`); bad boxes refused.
    The CLI searches with the default probe detector (HOG, then the CNN), which finds the
    face rolled 60 degrees: this probe is rolled 120, where neither does."""
    photo = turned_face(lfw, degrees=120)
    pixels = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    assert create_detector("hog+cnn").detect(pixels) == []
    probe = tmp_path / "turned.jpg"
    probe.write_bytes(photo)
    monkeypatch.setenv("FACELEDGER_TOKEN", own_token(fl, "ivy")[1])
    runner = CliRunner()
    case = ["--case", "CASE-5", "--purpose", "violent-crime"]
    case += ["--justification", "CCTV still, face turned sideways", "--top-k", "3"]
    common = [*case, "--data-dir", str(fl.data_dir)]
    box = ",".join(map(str, HAND_BOX))
    r = runner.invoke(cli_app, ["search", str(probe), "--face-box", box, *common])
    assert r.exit_code == 0, r.output
    assert "face marked by hand" in r.output and "Adrien_Brody" in r.output
    r = runner.invoke(cli_app, ["search", str(probe), "--face-box", box, *common, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["picked"]["marked_by_hand"] is True
    r = runner.invoke(
        cli_app, ["searches", "show", str(doc["search_id"]), "--data-dir", str(fl.data_dir)]
    )
    assert r.exit_code == 0 and "face marked by hand" in r.output
    r = runner.invoke(cli_app, ["search", str(probe), "--face-box", "1,2,3", *common])
    assert r.exit_code != 0 and "bad-face-box" in r.output
    r = runner.invoke(cli_app, ["search", str(probe), "--face-box", "10,10,25,25", *common])
    assert r.exit_code == 4 and "bad-face-box" in r.output and "--face-box" in r.output
