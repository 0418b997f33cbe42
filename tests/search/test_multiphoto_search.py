"""Multi-photo probes (#14 item 2): several photos of one person fused into one probe, through
the core, the API and the CLI, under the same rules as a photo search. The gallery holds
Al Gore's, Adrien Brody's and two other people's first LFW photo; the probes are other LFW
photos of them. Real SQLite data dir, FastAPI app and CLI."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import blank_jpeg, lfw_image, need_module, side_by_side
from conftest_api import PW, entries, own_token, seed
from faceledger.cli import app as cli_app
from faceledger.core import MAX_PROBE_PHOTOS, Faceledger, SearchRequest
from faceledger.errors import RefusedError
from faceledger.gallery.subjects import vectors_of
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.search.fusion import Groups, templates
from faceledger.search.subjects import load_subject_calibration
from faceledger.vision.decode import DecodeError, decode_image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REQ = SearchRequest("CASE-14P", "violent-crime", "three stills of the suspect", top_k=3)
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)


def top_name(face: dict[str, Any]) -> str:
    return Path(face["candidates"][0]["provenance"][0]["original_path"]).stem


@pytest.fixture(scope="module")
def fl(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceledger]:
    core = seed(lfw, tmp_path_factory.mktemp("multiphoto"), analyzer)
    root = core.login("root", PW)
    core.save_policy(root, core.policy().with_value("daily_quota", "0"))
    yield core
    core.close()


def right_face(faces: list[Any]) -> list[int]:
    """The box of the largest face in the right half of a side-by-side pair of LFW photos
    (250 px each): the second photo's person."""
    right = [f for f in faces if f.detection.bbox.as_list()[0] >= 250]
    return list(max(right, key=lambda f: f.size).detection.bbox.as_list())


def gore(lfw: Path, *numbers: int) -> list[bytes]:
    return [lfw_image(lfw, "Al_Gore", n).read_bytes() for n in numbers]


def test_photos_of_one_person_are_searched_as_their_fused_faces(
    fl: Faceledger, lfw: Path, analyzer: Any
) -> None:
    """#14 item 2: three photos of Al Gore, each with one face, are one probe: the template
    of their three faces; Al Gore is candidate 1 with the template's score, and its est. FMR
    comes from the template calibration for 3 faces (not the single-photo one); the result,
    the record and the ledger entry list every photo's SHA-256; subjects are ranked too."""
    ivy = fl.login("ivy", PW)
    photos = gore(lfw, 2, 3, 4)
    result = fl.search_photos(ivy, photos, REQ)
    shas = [hashlib.sha256(p).hexdigest() for p in photos]
    assert [p["sha256"] for p in result["photos"]] == shas
    assert all(p["fused"] and p["faces_in_photo"] >= 1 for p in result["photos"])
    assert result["fused_faces"] == 3
    [face] = result["faces"]
    assert top_name(face) == "Al_Gore_0001"

    # the same faces fused here score as the search did
    faces = [max(analyzer.analyze(decode_image(p).pixels), key=lambda f: f.size) for p in photos]
    fused = templates(np.stack([f.embedding for f in faces]), Groups.of([range(3)]))[0]
    gallery_gore = fl.searcher().search_faces([faces[0]], 1)[0].candidates[0]
    vec = vectors_of(fl.store, [gallery_gore.face_id])[gallery_gore.face_id]
    top = face["candidates"][0]
    assert top["score"] == pytest.approx(float(np.dot(fused, vec)), abs=1e-4)
    singles = [float(np.dot(f.embedding, vec)) for f in faces]
    assert top["score"] > np.mean(singles)  # fusing cancels what each photo gets wrong

    calib = load_subject_calibration(fl.searcher().analyzer.model_id)
    assert calib is not None
    fit = calib.for_probe(3)
    assert fit is not None and fit is calib.probe_fits["3+x1"]  # the fit for fused probes
    assert top["est_fmr"] == pytest.approx(fit.estimate(top["score"]).fmr, rel=0.01)
    single = fl.searcher().calibration
    assert single is not None
    assert single.estimate(top["score"]).fmr != pytest.approx(top["est_fmr"], rel=0.1)
    assert result["calibration"] == calib.version
    assert face["subjects"] and face["subjects"][0]["label"] is None  # unlabelled gallery

    rec = fl.get_search(ivy, result["search_id"])
    assert [p["sha256"] for p in rec["shown"]["photos"]] == shas
    assert rec["probe_sha256"] == shas[face["photo"] - 1]  # the best face's photo
    entry = entries(fl, "search")[-1]
    assert entry.details["search_id"] == result["search_id"]
    assert [p["sha256"] for p in entry.details["photos"]] == shas
    assert all(p["fused"] for p in entry.details["photos"])

    # the lead report names every photo the probe was fused from
    html = fl.case_report(ivy, REQ.case_number, "html").decode()
    assert "3 photos the investigator said show one person" in html
    assert all(sha in html for sha in shas)


def test_each_photo_must_give_one_face_before_anything_is_compared(
    fl: Faceledger, lfw: Path, analyzer: Any
) -> None:
    """#14 item 2: a photo with two faces and no box is refused (choose-face), and a box
    picks the face meant; a photo with no face (no-face-in-photo), a video among the photos
    (video-among-photos), one photo or more than the maximum (bad-probe-count) and an
    unreadable photo are refused, each recorded, and no search is stored for any."""
    need_module("av", "pip install av (a faceledger dependency)")
    from videoclips import clip

    ivy = fl.login("ivy", PW)
    before = len(fl.list_searches(ivy))
    pair = side_by_side([lfw_image(lfw, "Adrien_Brody", 2), lfw_image(lfw, "Al_Gore", 2)])
    in_pair = analyzer.analyze(decode_image(pair).pixels)
    assert len(in_pair) >= 2

    def refused(photos: list[bytes], boxes: Any = None) -> str:
        with pytest.raises(RefusedError) as exc:
            fl.search_photos(ivy, photos, REQ, boxes)
        return exc.value.code

    assert refused([*gore(lfw, 3), pair]) == "choose-face"
    assert entries(fl, "search.refused")[-1].details["photo"] == 2
    assert refused([*gore(lfw, 3), blank_jpeg()]) == "no-face-in-photo"
    video = clip([lfw_image(lfw, "Al_Gore", 3)], seconds=1, fps=4)
    assert refused([*gore(lfw, 3), video]) == "video-among-photos"
    assert refused(gore(lfw, 3)) == "bad-probe-count"
    assert refused(gore(lfw, *([2] * (MAX_PROBE_PHOTOS + 1)))) == "bad-probe-count"
    assert refused(gore(lfw, 2, 3), [None]) == "bad-face-box"
    with pytest.raises(DecodeError):
        fl.search_photos(ivy, [*gore(lfw, 3), b"not a photo at all"], REQ)
    assert entries(fl, "search.bad_probe")[-1].details["photo"] == 2
    assert len(fl.list_searches(ivy)) == before

    gore_box = right_face(in_pair)
    result = fl.search_photos(ivy, [*gore(lfw, 3), pair], REQ, [None, gore_box])
    assert top_name(result["faces"][0]) == "Al_Gore_0001"
    assert result["photos"][1]["face_box"] == gore_box
    assert result["photos"][1]["faces_in_photo"] == len(in_pair)


def test_a_multi_photo_search_is_refused_as_a_photo_search_is(fl: Faceledger, lfw: Path) -> None:
    """#14 item 2: the same doors as a photo search, before any photo is read: an auditor
    may not search (authz.denied), a purpose that needs approval needs an approved request
    (not-approved), and at the daily quota the search is refused (quota-exceeded); each
    refusal is in the ledger and no search is stored."""
    from faceledger.accounts.auth import PermissionDenied

    ivy, ada, root = fl.login("ivy", PW), fl.login("ada", PW), fl.login("root", PW)
    photos = gore(lfw, 2, 3)
    before = len(fl.list_searches(ada))  # auditors read every search
    with pytest.raises(PermissionDenied):
        fl.search_photos(ada, photos, REQ)
    assert entries(fl, "authz.denied", "ada")[-1].details["permission"] == "search"
    needs = SearchRequest("CASE-14P", "identity-fraud", "three stills of the suspect")
    with pytest.raises(RefusedError) as exc:
        fl.search_photos(ivy, photos, needs)
    assert exc.value.code == "not-approved"
    assert entries(fl, "search.refused", "ivy")[-1].details["reason"] == "not-approved"
    used = fl.comparisons_today(ivy.user_id)
    fl.save_policy(root, fl.policy().with_value("daily_quota", str(used)))
    try:
        with pytest.raises(RefusedError) as exc:
            fl.search_photos(ivy, photos, REQ)
        assert exc.value.code == "quota-exceeded"
        assert entries(fl, "search.quota_refused", "ivy")
    finally:
        fl.save_policy(root, fl.policy().with_value("daily_quota", "0"))
    assert len(fl.list_searches(ada)) == before


def test_a_multi_photo_search_follows_the_rules_and_counts_once(fl: Faceledger, lfw: Path) -> None:
    """#14 item 2: the case fields are checked before any photo is read, and a search of
    three photos counts once against the daily quota."""
    ivy = fl.login("ivy", PW)
    with pytest.raises(RefusedError) as exc:
        fl.search_photos(ivy, gore(lfw, 2, 3), SearchRequest("CASE-14P", "violent-crime", "x"))
    assert exc.value.code == "justification-too-short"
    used = fl.comparisons_today(ivy.user_id)
    fl.search_photos(ivy, gore(lfw, 2, 3, 4), REQ)
    assert fl.comparisons_today(ivy.user_id) == used + 1


def test_api_takes_several_probe_files_of_the_same_person(fl: Faceledger, lfw: Path) -> None:
    """#14 item 2: POST /api/v1/searches with several `probe` files and same_person=true
    searches them fused (photos in the response and the record); without same_person it is
    400 several-probes; face_boxes with the wrong count is 400 bad-face-box; a photo with
    two faces is 400 choose-face; OpenAPI documents same_person and face_boxes."""
    token = own_token(fl, "ivy")[1]
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    fields = {"case_number": "CASE-14P", "purpose": "violent-crime", "top_k": "3"}
    fields["justification"] = "three stills of the suspect"
    photos = gore(lfw, 2, 3, 4)
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {token}"}

        def post(datas: list[bytes], **extra: str) -> Any:
            files = [("probe", (f"p{i}.jpg", d, "image/jpeg")) for i, d in enumerate(datas)]
            return client.post("/api/v1/searches", headers=h, data={**fields, **extra}, files=files)

        r = post(photos, same_person="true")
        assert r.status_code == 200, r.text
        doc = r.json()
        assert [p["sha256"] for p in doc["photos"]] == [
            hashlib.sha256(p).hexdigest() for p in photos
        ]
        assert doc["fused_faces"] == 3 and top_name(doc["faces"][0]) == "Al_Gore_0001"
        rec = client.get(f"/api/v1/searches/{doc['search_id']}", headers=h).json()
        assert len(rec["shown"]["photos"]) == 3

        r = post(photos)
        assert r.status_code == 400 and r.json()["code"] == "several-probes"
        r = post(photos, same_person="true", face_boxes=";")
        assert r.status_code == 400 and r.json()["code"] == "bad-face-box"
        pair = side_by_side([lfw_image(lfw, "Adrien_Brody", 2), lfw_image(lfw, "Al_Gore", 2)])
        r = post([photos[0], pair], same_person="true")
        assert r.status_code == 400 and r.json()["code"] == "choose-face"
        r = post(photos[:1], same_person="true")  # one photo: a plain photo search
        assert r.status_code == 200 and r.json().get("photos") is None

        spec = client.get("/openapi.json").json()
        op = spec["paths"]["/api/v1/searches"]["post"]
        form = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        props = spec["components"]["schemas"][form.rsplit("/", 1)[1]]["properties"]
        assert {"same_person", "face_boxes", "probe"} <= set(props)
        assert "photos" in spec["components"]["schemas"]["SearchOut"]["properties"]


def test_cli_searches_photos_of_the_same_person(
    fl: Faceledger, lfw: Path, analyzer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#14 item 2: `faceledger search a.jpg b.jpg --same-person` fuses them (and `searches
    show` lists the photos); without --same-person it is refused; --face-box N:... picks the
    face in photo N."""
    paths = [lfw_image(lfw, "Al_Gore", n) for n in (2, 3)]
    pair = tmp_path / "pair.jpg"
    pair.write_bytes(side_by_side([lfw_image(lfw, "Adrien_Brody", 2), paths[0]]))
    monkeypatch.setenv("FACELEDGER_TOKEN", own_token(fl, "ivy")[1])
    runner = CliRunner()
    common = ["--case", "CASE-14P", "--purpose", "violent-crime", "--top-k", "3"]
    common += ["--justification", "two stills of the suspect", "--data-dir", str(fl.data_dir)]
    r = runner.invoke(cli_app, ["search", *map(str, paths), *common])
    assert r.exit_code != 0 and "several-probes" in r.output
    r = runner.invoke(cli_app, ["search", *map(str, paths), *common, "--same-person", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["photos"]) == 2 and top_name(doc["faces"][0]) == "Al_Gore_0001"
    r = runner.invoke(
        cli_app, ["searches", "show", str(doc["search_id"]), "--data-dir", str(fl.data_dir)]
    )
    said = " ".join(r.output.split())
    assert r.exit_code == 0 and "2 photos of one person" in said

    r = runner.invoke(cli_app, ["search", str(paths[1]), str(pair), *common, "--same-person"])
    assert r.exit_code != 0 and "choose-face" in r.output
    found = analyzer.analyze(decode_image(pair.read_bytes()).pixels)
    box = "2:" + ",".join(str(v) for v in right_face(found))
    r = runner.invoke(
        cli_app,
        ["search", str(paths[1]), str(pair), *common, "--same-person", "--face-box", box],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        cli_app,
        ["search", str(paths[1]), str(pair), *common, "--same-person", "--face-box", "9,9,99,99"],
    )
    assert r.exit_code != 0 and "N:X0,Y0,X1,Y1" in " ".join(r.output.split())
