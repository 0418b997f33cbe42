"""Side-by-side comparison (#13 item 4): a search's probe face and a candidate, and the two
faces of a 1:1 verification, as the embedder's aligned chips with their landmarks and the
full images with their boxes, through the core and the API.

Real LFW photos, a real SQLite data dir, the real FastAPI app."""

from __future__ import annotations

import base64
import io
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import RawDB, lfw_image, side_by_side
from conftest_api import PW, entries, own_token, seed
from faceledger.accounts.auth import PermissionDenied
from faceledger.cli import app as cli_app
from faceledger.core import Faceledger, SearchRequest
from faceledger.errors import RefusedError
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.vision.chips import aligned_chip
from faceledger.vision.decode import decode_image
from faceledger.vision.detection import Landmarker, create_detector
from faceledger.vision.embedding.dlib_backend import dlib_chip
from faceledger.vision.onnxmodels.align import (
    align_arcface,
    alignment_points,
    estimate_similarity,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REQ = SearchRequest("CASE-CMP", "violent-crime", "CCTV still from the robbery", top_k=3)
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)


@pytest.fixture(scope="module")
def fl(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceledger]:
    core = seed(lfw, tmp_path_factory.mktemp("compare"), analyzer)
    root = core.login("root", PW)
    core.save_policy(root, core.policy().with_value("daily_quota", "0"))
    yield core
    core.close()


@contextmanager
def retention(fl: Faceledger, days: int) -> Iterator[None]:
    root = fl.login("root", PW)
    fl.save_policy(root, fl.policy().with_value("retain_probes_days", str(days)))
    try:
        yield
    finally:
        fl.save_policy(root, fl.policy().with_value("retain_probes_days", "0"))


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


def top_candidate(result: dict[str, Any], selected: bool = False) -> dict[str, Any]:
    face = next(f for f in result["faces"] if f.get("selected") or not selected)
    return face["candidates"][0]


def probe_files(fl: Faceledger) -> list[Path]:
    folder = fl.data_dir / "probes"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_chips_have_the_same_size_with_the_landmarks_on_them(fl: Faceledger, lfw: Path) -> None:
    """#13 item 4: probe and candidate as the embedder's aligned chips, the same size, the
    five landmarks inside each chip where an aligned face has them; both full images with
    their boxes; the score line as the search showed it; recorded (candidate.compare)."""
    ivy = fl.login("ivy", PW)
    with retention(fl, 30):
        result = fl.search(ivy, lfw_image(lfw, "Al_Gore", 2).read_bytes(), REQ)
        top = top_candidate(result)
        out = fl.compare_candidate(ivy, result["search_id"], top["face_id"])
    assert out["probe_source"] == "kept"
    probe, cand = out["probe"], out["candidate"]
    assert png_size(probe["chip_png"]) == png_size(cand["chip_png"]) == (150, 150)
    assert probe["chip_size"] == cand["chip_size"] == 150
    for side in (probe, cand):
        pts = np.array(side["chip_landmarks"])
        assert pts.shape == (5, 2)
        assert (pts >= 0).all() and (pts < side["chip_size"]).all()
        # aligned upright: dlib's order is image-right eye (outer, inner), image-left eye
        # (outer, inner), nose base; the eyes on one line above the nose, right eye right
        assert pts[0, 0] > pts[1, 0] > pts[3, 0] > pts[2, 0]
        assert abs(pts[0, 1] - pts[2, 1]) < 8 and pts[4, 1] > pts[:4, 1].max() + 20
        with Image.open(io.BytesIO(side["image_jpeg"])) as full:
            assert full.size == (side["image_width"], side["image_height"])
        left, top_, right, bottom = side["bbox"]
        assert (
            0 <= left < right <= side["image_width"] and 0 <= top_ < bottom <= side["image_height"]
        )
    assert cand["bbox"] == top["bbox"]
    for key in ("score", "est_fmr", "expected_false_candidates", "rank"):
        assert out[key] == top[key], key
    assert out["gallery_faces"] == result["gallery_faces"]
    assert "not identifications" in out["notice"]
    entry = entries(fl, "candidate.compare", "ivy")[-1]
    assert entry.details == {
        "search_id": result["search_id"],
        "face_id": top["face_id"],
        "case_number": "CASE-CMP",
        "probe": "kept",
    }


@pytest.mark.nodb
def test_chip_landmarks_are_where_the_alignment_put_them(lfw: Path) -> None:
    """#13 item 4: the landmarks drawn on a chip are measured from the embedder's own
    alignment: exact for the ArcFace similarity warp (its matrix is known), and where dlib's
    landmarker finds them again on dlib's chip."""
    detector, landmarker = create_detector("hog"), Landmarker()
    for name, n in (("Al_Gore", 2), ("Adrien_Brody", 2), ("Aaron_Peirsol", 1)):
        pixels = decode_image(lfw_image(lfw, name, n).read_bytes()).pixels
        det = detector.detect(pixels)[0]
        landmarker(pixels, det)
        arc = aligned_chip(lambda img, d: align_arcface(img, d, 112), pixels, det)
        src, dst = alignment_points(det, 112)
        m = estimate_similarity(src, dst)
        exact = src @ m[:, :2].T + m[:, 2]
        assert np.abs(np.array(arc.landmarks) - exact).max() < 0.1, name
        assert arc.pixels.shape == (112, 112, 3)

        chip = aligned_chip(dlib_chip, pixels, det)
        found = detector.detect(np.ascontiguousarray(chip.pixels))
        assert found, name
        landmarker(chip.pixels, found[0])
        assert found[0].landmarks is not None
        assert np.abs(np.array(chip.landmarks) - found[0].landmarks).max() < 2.0, name


def test_a_probe_not_kept_is_supplied_again_and_must_be_the_probe(
    fl: Faceledger, lfw: Path
) -> None:
    """#13 item 4: without the kept probe the comparison asks for the photo; a different
    photo is refused (not-the-probe, recorded), the very photo is compared and kept nowhere."""
    ivy = fl.login("ivy", PW)
    photo = lfw_image(lfw, "Adrien_Brody", 2).read_bytes()
    result = fl.search(ivy, photo, REQ)
    sid, fid = result["search_id"], top_candidate(result)["face_id"]
    with pytest.raises(RefusedError) as err:
        fl.compare_candidate(ivy, sid, fid)
    assert err.value.code == "probe-not-kept"
    before = probe_files(fl)
    other = lfw_image(lfw, "Adrien_Brody", 3).read_bytes()
    with pytest.raises(RefusedError) as err:
        fl.compare_candidate(ivy, sid, fid, other)
    assert err.value.code == "not-the-probe"
    refused = entries(fl, "compare.refused", "ivy")[-1].details
    assert refused["reason"] == "not-the-probe" and refused["search_id"] == sid
    out = fl.compare_candidate(ivy, sid, fid, photo)
    assert out["probe_source"] == "supplied"
    assert png_size(out["probe"]["chip_png"]) == png_size(out["candidate"]["chip_png"])
    assert probe_files(fl) == before  # nothing stored
    assert entries(fl, "candidate.compare", "ivy")[-1].details["probe"] == "supplied"


def test_a_face_picked_from_a_group_photo_is_compared_in_its_region(
    fl: Faceledger, lfw: Path
) -> None:
    """#13 item 4: with a face picked, the whole photo supplied again is accepted by its
    recorded photo_sha256 and cut to the region searched; boxes are in that region."""
    ivy = fl.login("ivy", PW)
    group = side_by_side([lfw_image(lfw, "Al_Gore", 2), lfw_image(lfw, "Adrien_Brody", 2)])
    faces = fl.detect(ivy, group, "CASE-CMP")["faces"]
    right = max(faces, key=lambda f: f["bbox"][0])
    result = fl.search(ivy, group, REQ, right["bbox"])
    top = top_candidate(result, selected=True)
    out = fl.compare_candidate(ivy, result["search_id"], top["face_id"], group)
    region = result["probe_region"]
    assert out["probe"]["image_width"] == region[2] - region[0]
    assert out["probe"]["image_height"] == region[3] - region[1]
    picked = next(f for f in result["faces"] if f["selected"])
    b = picked["bbox"]
    assert out["probe"]["bbox"] == [
        b[0] - region[0],
        b[1] - region[1],
        b[2] - region[0],
        b[3] - region[1],
    ]
    assert out["probe_source"] == "supplied"


def test_comparisons_are_refused_outside_the_candidate_rules(
    lfw: Path, analyzer: Any, tmp_path: Path
) -> None:
    """#13 item 4: a face that is not a candidate of the search, an expired search, an
    erased face and another user's search are refused (denials recorded)."""
    core = seed(lfw, tmp_path, analyzer)
    try:
        root = core.login("root", PW)
        core.save_policy(root, core.policy().with_value("retain_probes_days", "30"))
        ivy, ian = core.login("ivy", PW), core.login("ian", PW)
        req = SearchRequest("CASE-CMP", "violent-crime", "CCTV still from the robbery", top_k=1)
        result = core.search(ivy, lfw_image(lfw, "Al_Gore", 2).read_bytes(), req)
        sid, fid = result["search_id"], top_candidate(result)["face_id"]
        other = next(i for i in range(1, 5) if i != fid)
        with pytest.raises(RefusedError) as err:
            core.compare_candidate(ivy, sid, other)
        assert err.value.code == "not-a-candidate"
        assert entries(core, "authz.denied", "ivy")[-1].details["reason"] == "not-a-candidate"

        with pytest.raises(PermissionDenied):
            core.compare_candidate(ian, sid, fid)
        assert entries(core, "authz.denied", "ian")[-1].details["permission"] == "view_search"

        raw = RawDB(core.data_dir)
        raw.execute(
            "update searches set created_at = ? where id = ?", ("2020-01-01T00:00:00+00:00", sid)
        )
        raw.commit()
        raw.close()
        with pytest.raises(RefusedError) as err:
            core.compare_candidate(ivy, sid, fid)
        assert err.value.code == "results-expired"

        fresh = core.search(ivy, lfw_image(lfw, "Al_Gore", 3).read_bytes(), req)
        fresh_fid = top_candidate(fresh)["face_id"]
        core.compare_candidate(ivy, fresh["search_id"], fresh_fid)  # allowed, until erased
        core.erase(root, face_ids=[fresh_fid], reason="subject request")
        with pytest.raises(RefusedError) as err:
            core.compare_candidate(ivy, fresh["search_id"], fresh_fid)
        assert err.value.code == "erased"
        assert not [e for e in entries(core, "candidate.compare") if e.details["search_id"] == sid]
    finally:
        core.close()


def test_api_compares_a_candidate_and_verify_returns_chips(fl: Faceledger, lfw: Path) -> None:
    """#13 item 4: GET/POST /api/v1/searches/{id}/faces/{face_id}/compare (base64 chips,
    documented in OpenAPI; 410 probe-not-kept, 400 not-the-probe) and POST /api/v1/verify
    with with_chips for the same view of a 1:1 comparison."""
    token = own_token(fl, "ivy")[1]
    h = {"Authorization": f"Bearer {token}"}
    ivy = fl.login("ivy", PW)
    photo = lfw_image(lfw, "Al_Gore", 4).read_bytes()
    result = fl.search(ivy, photo, REQ)
    sid, fid = result["search_id"], top_candidate(result)["face_id"]
    url = f"/api/v1/searches/{sid}/faces/{fid}/compare"
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as client:
        r = client.get(url, headers=h)
        assert r.status_code == 410 and r.json()["code"] == "probe-not-kept"
        wrong = lfw_image(lfw, "Al_Gore", 5).read_bytes()
        r = client.post(url, headers=h, files={"probe": ("p.jpg", wrong, "image/jpeg")})
        assert r.status_code == 400 and r.json()["code"] == "not-the-probe"
        r = client.post(url, headers=h, files={"probe": ("p.jpg", photo, "image/jpeg")})
        assert r.status_code == 200, r.text
        doc = r.json()
        chips = [base64.b64decode(doc[s]["chip_png"]) for s in ("probe", "candidate")]
        assert png_size(chips[0]) == png_size(chips[1])
        assert doc["probe_source"] == "supplied" and doc["face_id"] == fid
        assert "crop_path" not in r.text and "stored_path" not in r.text

        schema = client.get("/openapi.json").json()
        path = schema["paths"]["/api/v1/searches/{search_id}/faces/{face_id}/compare"]
        assert {"get", "post"} <= set(path)
        assert "CompareOut" in schema["components"]["schemas"]
        verify_form = schema["paths"]["/api/v1/verify"]["post"]["requestBody"]["content"]
        ref = verify_form["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert "with_chips" in schema["components"]["schemas"][ref]["properties"]

        form = {
            "case_number": "CASE-CMP",
            "purpose": "violent-crime",
            "justification": "is this the same man as on the CCTV",
        }
        a, b = lfw_image(lfw, "Al_Gore", 2).read_bytes(), lfw_image(lfw, "Al_Gore", 3).read_bytes()
        files = {"photo_a": ("a.jpg", a, "image/jpeg"), "photo_b": ("b.jpg", b, "image/jpeg")}
        plain = client.post("/api/v1/verify", headers=h, data=form, files=files).json()
        assert all("chip_png" not in f for f in plain["faces"])  # unchanged unless asked
        r = client.post(
            "/api/v1/verify", headers=h, data=form | {"with_chips": "true"}, files=files
        )
        assert r.status_code == 200, r.text
        faces = r.json()["faces"]
        assert [f["photo"] for f in faces] == ["A", "B"]
        sizes = [png_size(base64.b64decode(f["chip_png"])) for f in faces]
        assert sizes[0] == sizes[1] == (faces[0]["chip_size"],) * 2
        for f in faces:
            pts = np.array(f["chip_landmarks"])
            assert pts.shape == (5, 2) and (pts >= 0).all() and (pts < f["chip_size"]).all()
            assert f["image_width"] == 250 and len(f["landmarks"]) == 5


def test_cli_writes_the_two_chips_and_the_side_by_side(
    fl: Faceledger, lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13 item 4: `faceledger compare SEARCH_ID --face FACE_ID [--probe FILE] --out DIR`
    writes both chips and one side-by-side PNG and prints the score line; a wrong --probe
    is refused."""
    ivy = fl.login("ivy", PW)
    photo_path = lfw_image(lfw, "Adrien_Brody", 3)
    result = fl.search(ivy, photo_path.read_bytes(), REQ)
    sid, fid = result["search_id"], top_candidate(result)["face_id"]
    monkeypatch.setenv("FACELEDGER_TOKEN", own_token(fl, "ivy")[1])
    runner = CliRunner()
    data = ["--data-dir", str(fl.data_dir)]
    base = ["compare", str(sid), "--face", str(fid), "--out", str(tmp_path / "out"), *data]
    r = runner.invoke(cli_app, base)
    assert r.exit_code != 0 and "not kept" in r.output
    wrong = lfw_image(lfw, "Al_Gore", 2)
    r = runner.invoke(cli_app, [*base, "--probe", str(wrong)])
    assert r.exit_code != 0 and "not the one" in r.output
    r = runner.invoke(cli_app, [*base, "--probe", str(photo_path), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["face_id"] == fid and doc["probe_source"] == "supplied"
    out = tmp_path / "out"
    probe_size = png_size((out / "probe-chip.png").read_bytes())
    assert probe_size == png_size((out / "candidate-chip.png").read_bytes())
    wide = png_size((out / "side-by-side.png").read_bytes())
    assert wide[1] == 2 * probe_size[1] and wide[0] > 4 * probe_size[0]
    r = runner.invoke(cli_app, [*base, "--probe", str(photo_path)])
    assert r.exit_code == 0 and "not identifications" in r.output and "score" in r.output
