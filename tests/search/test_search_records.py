"""Search records you can come back to (#13 item 1): a search is stored with everything it
showed, read back through the core, the API, the CLI and the web page by those who may read
it (each view recorded), and checked against the ledger by ``audit verify``.

Real LFW photos, a real SQLite data dir, the real FastAPI app and CLI."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REQ = SearchRequest("CASE-9", "violent-crime", "CCTV still from the robbery", top_k=3)
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)


@pytest.fixture(scope="module")
def fl(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceledger]:
    core = seed(lfw, tmp_path_factory.mktemp("records"), analyzer)
    root = core.login("root", PW)
    core.save_policy(root, core.policy().with_value("daily_quota", "0"))
    yield core
    core.close()


def group_photo(lfw: Path) -> bytes:
    return side_by_side([lfw_image(lfw, "Al_Gore", 2), lfw_image(lfw, "Adrien_Brody", 2)])


def test_a_search_is_stored_with_everything_it_showed(fl: Faceledger, lfw: Path) -> None:
    """#13 item 1: probe faces, candidates with score, est. FMR, expected false candidates
    and provenance, gallery size, model, calibration and policy versions, the face picked."""
    ivy = fl.login("ivy", PW)
    faces = fl.detect(ivy, group_photo(lfw), "CASE-9")["faces"]
    half = fl.detect(ivy, group_photo(lfw), "CASE-9")["width"] / 2
    # Adrien Brody: the biggest face in the right half (the detector may find more)
    right = max(
        (i for i, f in enumerate(faces) if (f["bbox"][0] + f["bbox"][2]) / 2 > half),
        key=lambda i: faces[i]["size"],
    )
    result = fl.search(ivy, group_photo(lfw), REQ, faces[right]["bbox"])
    rec = fl.get_search(ivy, result["search_id"])
    shown = rec["shown"]
    assert shown["picked"] == {
        "box": faces[right]["bbox"],
        "face_index": right,
        "faces_in_photo": len(faces),
        "marked_by_hand": False,  # #13 item 5: a detected face was picked
    }
    searcher = fl.searcher()
    assert shown["gallery_faces"] == result["gallery_faces"] == 4
    assert shown["model_id"] == searcher.analyzer.model_id
    assert searcher.calibration is not None
    assert shown["calibration"] == searcher.calibration.version
    assert shown["policy_sha256"] == fl.policy().sha256()
    picked = next(f for f in shown["faces"] if f["selected"])
    top = picked["candidates"][0]
    assert "Adrien_Brody" in top["provenance"][0]["original_path"]
    assert top["provenance"][0]["legal_basis"] == "test fixture"
    live = next(f for f in result["faces"] if f["selected"])["candidates"]
    for kept, was in zip(picked["candidates"], live, strict=True):
        for key in ("face_id", "score", "est_fmr", "expected_false_candidates", "provenance"):
            assert kept[key] == was[key], key
        assert kept["erased"] is False
        assert "crop_path" not in kept and "image_path" not in kept  # no server paths
    assert top["expected_false_candidates"] == pytest.approx(top["est_fmr"] * 4)

    # the stored text is what the search's ledger entry vouches for
    raw = RawDB(fl.data_dir)
    try:
        (text,) = raw.execute(
            "select shown_json from searches where id = ?", (result["search_id"],)
        ).fetchone()
    finally:
        raw.close()
    entry = entries(fl, "search", "ivy")[-1]
    assert entry.details["shown_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    view = entries(fl, "search.view", "ivy")[-1]
    assert view.details["candidates"] == [c["face_id"] for c in picked["candidates"]]


def test_audit_verify_catches_a_rewritten_record(lfw: Path, analyzer: Any, tmp_path: Path) -> None:
    """#13 item 1: changing what a record says it showed is caught by ``audit verify``."""
    core = seed(lfw, tmp_path, analyzer)
    try:
        ivy, ada = core.login("ivy", PW), core.login("ada", PW)
        sid = core.search(ivy, lfw_image(lfw, "Al_Gore", 2).read_bytes(), REQ)["search_id"]
        assert core.audit_verify(ada).ok
        raw = RawDB(core.data_dir)
        (text,) = raw.execute("select shown_json from searches where id = ?", (sid,)).fetchone()
        doc = json.loads(text)
        doc["faces"][0]["candidates"][0]["est_fmr"] = 1e-9  # a stronger-looking lead
        raw.execute("update searches set shown_json = ? where id = ?", (json.dumps(doc), sid))
        raw.commit()
        raw.close()
        result = core.audit_verify(ada)
        assert not result.ok
        assert any(
            m["table"] == "searches" and m["row_id"] == sid and "shown_sha256" in m["problem"]
            for m in result.mismatches
        ), result.mismatches
    finally:
        core.close()


def test_who_lists_and_reads_which_searches(fl: Faceledger, lfw: Path) -> None:
    """#13 item 1: investigators their own; supervisors their unit's; auditors all; each
    list and each view recorded; an admin reads none."""
    ivy, ian = fl.login("ivy", PW), fl.login("ian", PW)
    photo = lfw_image(lfw, "Al_Gore", 2).read_bytes()
    mine = fl.search(ivy, photo, SearchRequest("CASE-LIST", "violent-crime", "for the list"))
    theirs = fl.search(ian, photo, SearchRequest("CASE-LIST", "violent-crime", "other unit"))
    sam, ada = fl.login("sam", PW), fl.login("ada", PW)

    def ids(actor: Any) -> set[int]:
        return {r["id"] for r in fl.list_searches(actor, "CASE-LIST")}

    assert ids(ivy) == {mine["search_id"]}
    assert ids(ian) == {theirs["search_id"]}
    assert ids(sam) == {mine["search_id"]}  # sam supervises north, ian is in south
    assert ids(ada) == {mine["search_id"], theirs["search_id"]}
    row = fl.list_searches(ivy, "CASE-LIST")[0]
    assert row["candidates"] == sum(len(f["candidates"]) for f in mine["faces"])
    assert entries(fl, "search.list", "ivy")[-1].details == {
        "case_number": "CASE-LIST",
        "listed": 1,
    }
    with pytest.raises(PermissionDenied):
        fl.list_searches(fl.login("root", PW))
    with pytest.raises(PermissionDenied):
        fl.get_search(ian, mine["search_id"])
    assert fl.get_search(sam, mine["search_id"])["shown"] is not None


def test_an_erased_candidate_is_marked_in_the_record(
    lfw: Path, analyzer: Any, tmp_path: Path
) -> None:
    """#13 item 1: the record keeps what was shown; a face erased since is marked so."""
    core = seed(lfw, tmp_path, analyzer)
    try:
        ivy = core.login("ivy", PW)
        sid = core.search(ivy, lfw_image(lfw, "Al_Gore", 2).read_bytes(), REQ)["search_id"]
        top = core.get_search(ivy, sid)["shown"]["faces"][0]["candidates"][0]
        core.erase(core.login("root", PW), face_ids=[top["face_id"]], reason="subject request")
        again = core.get_search(ivy, sid)["shown"]["faces"][0]["candidates"]
        assert [c["erased"] for c in again] == [c["face_id"] == top["face_id"] for c in again]
    finally:
        core.close()


def test_api_and_cli_show_the_record(fl: Faceledger, lfw: Path, monkeypatch) -> None:
    """#13 item 1: GET /api/v1/searches, GET /api/v1/searches/{id}, `faceledger searches
    list` and `faceledger searches show ID [--json]`."""
    ivy = fl.login("ivy", PW)
    sid = fl.search(ivy, lfw_image(lfw, "Adrien_Brody", 2).read_bytes(), REQ)["search_id"]
    token = own_token(fl, "ivy")[1]
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as client:
        h = {"Authorization": f"Bearer {token}"}
        listed = client.get("/api/v1/searches", headers=h, params={"case_number": "CASE-9"})
        assert listed.status_code == 200 and sid in [r["id"] for r in listed.json()]
        r = client.get(f"/api/v1/searches/{sid}", headers=h)
        assert r.status_code == 200
        doc = r.json()
        assert "crop_path" not in r.text and "image_path" not in r.text
        top = doc["shown"]["faces"][0]["candidates"][0]
        assert top["crop_url"] == f"/api/v1/searches/{sid}/faces/{top['face_id']}/crop"
        assert client.get(top["crop_url"], headers=h).status_code == 200
        assert doc["results_viewable"] is True
        sam = {"Authorization": f"Bearer {own_token(fl, 'ian')[1]}"}
        assert client.get(f"/api/v1/searches/{sid}", headers=sam).status_code == 403

    monkeypatch.setenv("FACELEDGER_TOKEN", token)
    runner = CliRunner()
    data = ["--data-dir", str(fl.data_dir)]
    r = runner.invoke(cli_app, ["searches", "show", str(sid), *data, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shown"]["faces"][0]["candidates"][0]["face_id"] == top["face_id"]
    r = runner.invoke(cli_app, ["searches", "show", str(sid), *data])
    assert r.exit_code == 0 and "not identifications" in r.output
    assert "Adrien_Brody" in r.output and "calibration" in r.output
    r = runner.invoke(cli_app, ["searches", "list", "--case", "CASE-9", *data, "--json"])
    assert r.exit_code == 0 and sid in [row["id"] for row in json.loads(r.stdout)]
    r = runner.invoke(cli_app, ["searches", "show", "999999", *data])
    assert r.exit_code != 0 and "no search 999999" in r.output


def test_the_probe_thumbnail_shows_while_retention_keeps_it(fl: Faceledger, lfw: Path) -> None:
    """#13 item 1: the probe thumbnail shows where retention keeps the probe, to those who
    may read the search (each view recorded), and is refused once retention ends."""
    root, ivy = fl.login("root", PW), fl.login("ivy", PW)
    photo = lfw_image(lfw, "Al_Gore", 3).read_bytes()
    not_kept = fl.search(ivy, photo, REQ)["search_id"]
    assert fl.get_search(ivy, not_kept)["probe_kept"] is False
    with pytest.raises(RefusedError, match="not kept"):
        fl.probe_thumbnail(ivy, not_kept)

    fl.save_policy(root, fl.policy().with_value("retain_probes_days", "30"))
    try:
        sid = fl.search(ivy, lfw_image(lfw, "Al_Gore", 4).read_bytes(), REQ)["search_id"]
        assert fl.get_search(ivy, sid)["probe_kept"] is True
        thumb = fl.probe_thumbnail(ivy, sid)
        assert thumb[:3] == b"\xff\xd8\xff"  # a JPEG
        with Image.open(io.BytesIO(thumb)) as img:
            assert max(img.size) <= 480
        with pytest.raises(PermissionDenied):
            fl.probe_thumbnail(fl.login("ian", PW), sid)
        assert [e.details["search_id"] for e in entries(fl, "probe.view")][-1] == sid

        token = own_token(fl, "ivy")[1]
        app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
        with TestClient(app) as client:
            h = {"Authorization": f"Bearer {token}"}
            doc = client.get(f"/api/v1/searches/{sid}", headers=h).json()
            assert doc["probe_url"] == f"/api/v1/searches/{sid}/probe"
            r = client.get(doc["probe_url"], headers=h)
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            # retention over: the photo is purged and the thumbnail refused
            db = RawDB(fl.data_dir)
            db.execute("UPDATE probes SET expires_at = '2000-01-01T00:00:00+00:00'")
            db.commit()
            db.close()
            assert client.get(doc["probe_url"], headers=h).json()["code"] == "probe-not-kept"
            gone = client.get(f"/api/v1/searches/{sid}", headers=h).json()
            assert gone["probe_kept"] is False and gone["probe_url"] is None
    finally:
        fl.save_policy(root, fl.policy().with_value("retain_probes_days", "0"))
