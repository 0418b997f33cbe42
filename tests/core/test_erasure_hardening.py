"""Erasure really erases (#11 item 10, and item 1's "admins see a face only through an
erasure request's own preview").

A small real LFW gallery (four photos of Tony Blair, single photos of other people, and one
group photo of two people standing close together), real SQLite files, the real index
files, the HTTP API through FastAPI's TestClient, the web pages and the CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import RawDB, copy_data_dir, lfw_image
from faceledger.accounts.auth import PermissionDenied
from faceledger.cli import app as cli_app
from faceledger.core import Faceledger, RefusedError
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_paths
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.ledger import audit
from faceledger.search import calibration
from faceledger.types import BBox, Detection
from faceledger.vision.analysis import CROP_MARGIN, face_crop_jpeg
from faceledger.vision.decode import decode_image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests another httpx package; irrelevant here
    from fastapi.testclient import TestClient

PW = "correct horse battery"
BLAIR = [1, 3, 4, 5]  # in the gallery; Tony_Blair_0002 is the subject's photo
OTHERS = ["John_Prescott", "Colin_Powell", "Gerhard_Schroeder", "Gordon_Brown", "Jack_Straw"]
GROUP = ("Al_Gore", "Adrien_Brody")  # one photo, the two faces close together
STORY_THRESHOLD = 0.90  # lists all four Blair photos and two other people (dlib, measured)


def close_pair(lfw: Path, left: tuple[str, int], right: tuple[str, int]) -> bytes:
    """A group photo of two people standing close: each LFW photo cut to its face, side by
    side, so that each face's review crop (its box plus a 30% margin) takes in part of the
    other face."""
    imgs = [
        Image.open(lfw_image(lfw, name, n)).convert("RGB").crop((75, 0, 175, 250))
        for name, n in (left, right)
    ]
    canvas = Image.new("RGB", (200, 250))
    canvas.paste(imgs[0], (0, 0))
    canvas.paste(imgs[1], (100, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def template(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("erasure")
    fl = Faceledger(base / "data")
    root = fl.init_admin("root", PW)
    fl.add_user(root, "rita", PW, "admin")
    fl.add_user(root, "ivy", PW, "investigator", "north")
    photos = base / "photos"
    photos.mkdir()
    for n in BLAIR:
        shutil.copy(lfw_image(lfw, "Tony_Blair", n), photos)
    for name in OTHERS:
        shutil.copy(lfw_image(lfw, name, 1), photos)
    (photos / "group.jpg").write_bytes(close_pair(lfw, (GROUP[0], 1), (GROUP[1], 1)))
    summary = fl.ingest(root, iter_paths([photos], "archive", "test"), PipelineSettings())
    assert summary.new == len(BLAIR) + len(OTHERS) + 1 and summary.faces == summary.new + 1
    fl.store.close()  # the WAL is folded into the database file: copies are self-contained
    return base / "data"


@pytest.fixture
def fl(template: Path, tmp_path: Path, analyzer: Any) -> Faceledger:
    f = Faceledger(copy_data_dir(template, tmp_path / "data"))
    f.set_analyzer_factory(lambda: analyzer)
    return f


def login(fl: Faceledger, name: str = "root"):
    return fl.login(name, PW)


def faces_of(fl: Faceledger, pattern: str) -> list[int]:
    """Face ids whose photo's original path contains ``pattern``."""
    raw = RawDB(fl.data_dir)
    rows = raw.execute(
        "select distinct f.id from faces f join provenance p on p.image_sha = f.image_sha "
        "where p.original_path like ? order by f.id",
        (f"%{pattern}%",),
    ).fetchall()
    return [r[0] for r in rows]


def face_row(fl: Faceledger, face_id: int) -> dict[str, Any]:
    raw = RawDB(fl.data_dir)
    r = raw.execute(
        "select f.id, f.image_sha, f.bbox_json, f.crop_path, f.embedding, i.stored_path "
        "from faces f join images i on i.sha256 = f.image_sha where f.id = ?",
        (face_id,),
    ).fetchone()
    assert r is not None, face_id
    return {
        "id": r[0],
        "sha": r[1],
        "bbox": json.loads(r[2]),
        "crop": fl.data_dir / r[3],
        "embedding": bytes(r[4]),
        "image": fl.data_dir / r[5],
    }


def group_faces(fl: Faceledger) -> tuple[dict[str, Any], dict[str, Any]]:
    """(left face, right face) of the group photo."""
    left, right = sorted(
        (face_row(fl, i) for i in faces_of(fl, "group.jpg")), key=lambda r: r["bbox"][0]
    )
    return left, right


def subject_photo(lfw: Path) -> bytes:
    return lfw_image(lfw, "Tony_Blair", 2).read_bytes()


def entries(fl: Faceledger, action: str) -> list[audit.Entry]:
    return list(audit.iter_entries(fl.store, action=action))


def overlap_columns(left: dict[str, Any], right: dict[str, Any]) -> int:
    """How many columns at the left edge of the right face's crop show the left face."""
    b = right["bbox"]
    crop_left = max(0, b[0] - round((b[2] - b[0]) * CROP_MARGIN))
    return left["bbox"][2] - crop_left


def column_change(a: bytes, b: bytes, cols: slice) -> float:
    x = np.asarray(Image.open(io.BytesIO(a)).convert("L"), dtype=float)[:, cols]
    y = np.asarray(Image.open(io.BytesIO(b)).convert("L"), dtype=float)[:, cols]
    return float(np.abs(x - y).mean())


# -- (a) the neighbours' crops come from the blurred photo -----------------------------------------


def test_erasing_a_face_remakes_the_neighbours_crop_from_the_blurred_photo(fl: Faceledger) -> None:
    """#11 item 10a: the other face's crop no longer shows the erased person."""
    left, right = group_faces(fl)
    shown = overlap_columns(left, right)
    assert shown >= 10  # the right face's crop takes in the left face's edge
    old_crop = right["crop"].read_bytes()
    assert column_change(old_crop, old_crop, slice(0, shown)) == 0
    rep = fl.erase(login(fl), face_ids=[left["id"]], reason="erasure request 31")
    assert rep.images_blurred == [left["sha"]] and not rep.images_deleted
    new_crop = right["crop"].read_bytes()
    assert new_crop != old_crop  # today: byte-identical, the erased face still in it
    # the columns that showed the erased face changed; the kept face itself did not
    assert column_change(old_crop, new_crop, slice(0, shown)) > 12
    assert column_change(old_crop, new_crop, slice(shown + 25, None)) < 4
    # ... and the crop is the one ingest makes from the (blurred) stored photo
    blurred = decode_image(right["image"].read_bytes()).pixels
    assert new_crop == face_crop_jpeg(blurred, Detection(BBox(*right["bbox"]), 0.0, "x"))
    assert not list((fl.data_dir / "pending").iterdir())  # the journal was carried out


def test_a_crash_before_the_files_are_replaced_still_leaves_no_erased_pixels(
    fl: Faceledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#11 item 10a: the remade crops are journalled with the blurred photo, so the next
    start completes them after a crash between the commit and the file replacements."""
    import faceledger.core.erasure as privacy

    left, right = group_faces(fl)
    old_crop = right["crop"].read_bytes()
    with monkeypatch.context() as m:
        m.setattr(privacy, "finish_pending_files", lambda store: 0)  # "dies" after commit
        fl.erase(login(fl), face_ids=[left["id"]], reason="erasure request 33")
    assert right["crop"].read_bytes() == old_crop  # nothing replaced yet: the crash
    pending = RawDB(fl.data_dir).execute("select path from pending_files").fetchall()
    assert {p[0] for p in pending} >= {str(right["crop"].relative_to(fl.data_dir))}
    fl.store.close()
    reopened = Faceledger(fl.data_dir)  # the next start carries the journal out
    assert right["crop"].read_bytes() != old_crop
    blurred = decode_image(right["image"].read_bytes()).pixels
    det = Detection(BBox(*right["bbox"]), 0.0, "x")
    assert right["crop"].read_bytes() == face_crop_jpeg(blurred, det)
    assert not RawDB(reopened.data_dir).execute("select * from pending_files").fetchall()


def test_an_opted_out_face_dropped_at_ingest_is_not_in_the_kept_faces_crop(
    fl: Faceledger, lfw: Path, tmp_path: Path, analyzer: Any
) -> None:
    """#11 item 10a (ingest): a group photo with an opted-out person is stored blurred, and
    the other face's crop is made from the blurred pixels."""
    root = login(fl)
    # Al Gore is on the opt-out list (his embedding, as an opt-out erasure leaves it)
    (gore,) = analyzer.analyze(decode_image(lfw_image(lfw, "Al_Gore", 2).read_bytes()).pixels)
    with fl.store.writer.begin() as conn:
        fl.add_blocklist_embeddings(conn, fl.store.model_id() or "", gore.embedding[None, :], "r-5")
    folder = tmp_path / "new"
    folder.mkdir()
    data = close_pair(lfw, ("Al_Gore", 2), ("Colin_Powell", 2))
    (folder / "press.jpg").write_bytes(data)
    summary = fl.ingest(root, iter_paths([folder], "press", "test"), PipelineSettings())
    assert (summary.new, summary.faces, summary.opted_out) == (1, 1, 1)
    (kept,) = [face_row(fl, i) for i in faces_of(fl, "press.jpg")]
    stored = kept["image"].read_bytes()
    original = decode_image(data).pixels
    now = decode_image(stored).pixels
    assert np.abs(now[:, :90].astype(float) - original[:, :90]).mean() > 10  # Gore blurred
    det = Detection(BBox(*kept["bbox"]), 0.0, "x")
    crop = kept["crop"].read_bytes()
    assert crop == face_crop_jpeg(now, det)  # from the blurred pixels
    assert crop != face_crop_jpeg(original, det)  # today: from the original, Gore in it
    gore_box = [0, kept["bbox"][1], 97, kept["bbox"][3]]
    shown = overlap_columns({"bbox": gore_box}, kept)
    assert column_change(face_crop_jpeg(original, det), crop, slice(0, shown)) > 12


# -- (b) the vector is gone from every file at once ------------------------------------------------


def files_holding(data_dir: Path, needle: bytes) -> list[str]:
    return sorted(
        str(p.relative_to(data_dir))
        for p in data_dir.rglob("*")
        if p.is_file() and needle in p.read_bytes()
    )


def test_the_erased_vector_is_in_no_file_of_the_data_dir_when_erase_returns(
    fl: Faceledger, lfw: Path
) -> None:
    """#11 item 10b: index files, database and WAL hold no byte of the erased vector."""
    ivy = login(fl, "ivy")
    from faceledger.core import SearchRequest

    # a search first: the server's index is loaded, and the WAL has fresh pages
    req = SearchRequest("CASE-9", "violent-crime", "CCTV still from the robbery", top_k=3)
    fl.search(ivy, subject_photo(lfw), req)
    target = face_row(fl, faces_of(fl, "Tony_Blair_0004")[0])
    vector = target["embedding"]
    assert len(vector) == 128 * 4
    neighbour = face_row(fl, faces_of(fl, "Tony_Blair_0001")[0])["embedding"]
    before = files_holding(fl.data_dir, vector)
    assert "index/faces.f32" in before, before  # the test looks in the right places
    fl.erase(login(fl), face_ids=[target["id"]], reason="erasure request 32")
    assert files_holding(fl.data_dir, vector) == []  # today: index/faces.f32 still has it
    assert "index/faces.f32" in files_holding(fl.data_dir, neighbour)  # others are kept
    if fl.store.dialect == "sqlite":
        wal = fl.data_dir / "gallery.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0  # checkpointed and truncated
        for engine in (fl.store.engine, fl.store.writer):
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    # the erased face is not found; its neighbours still are
    found = fl.search(ivy, subject_photo(lfw), req)["faces"][0]["candidates"]
    assert target["id"] not in [c["face_id"] for c in found]


# -- (c) an erased file does not come back ---------------------------------------------------------


def test_an_erased_file_is_refused_at_ingest_and_the_cli_says_why(
    fl: Faceledger, lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#11 item 10c: hashes of deleted and blurred images kept; the same files refused."""
    root = login(fl)
    prescott = face_row(fl, faces_of(fl, "John_Prescott")[0])
    left, _right = group_faces(fl)
    fl.erase(root, image_sha=prescott["sha"], reason="erasure request 40")
    fl.erase(root, face_ids=[left["id"]], reason="erasure request 41")
    raw = RawDB(fl.data_dir)
    kept = dict(raw.execute("select sha256, reason from erased_images").fetchall())
    assert kept == {prescott["sha"]: "erasure request 40", left["sha"]: "erasure request 41"}
    folder = tmp_path / "again"
    folder.mkdir()
    shutil.copy(lfw_image(lfw, "John_Prescott", 1), folder)
    (folder / "group.jpg").write_bytes(close_pair(lfw, (GROUP[0], 1), (GROUP[1], 1)))
    assert hashlib.sha256((folder / "group.jpg").read_bytes()).hexdigest() == left["sha"]
    shutil.copy(lfw_image(lfw, "Colin_Powell", 2), folder)  # another photo: welcome
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    result = CliRunner().invoke(
        cli_app,
        [
            *("ingest", str(folder), "--source", "again", "--legal-basis", "test"),
            *("--workers", "1", "--data-dir", str(fl.data_dir), "--as", "root"),
        ],
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "1 new, 0 duplicates" in said and "2 failed (erased 2)" in said  # today: 1 dup
    run = json.loads(
        raw.execute("select summary_json from ingest_runs order by id desc").fetchone()[0]
    )
    assert run["new"] == 1 and run["failures"] == {"erased": 2}
    messages = {e["item"].rsplit("/", 1)[-1]: e["message"] for e in run["errors"]}
    assert "erasure request 40" in messages["John_Prescott_0001.jpg"]
    assert "erased from the gallery" in messages["group.jpg"]
    assert (
        raw.execute(
            "select count(*) from provenance p join sources s on s.id = p.source_id "
            "where s.name = 'again' and p.image_sha in (?, ?)",
            (prescott["sha"], left["sha"]),
        ).fetchone()[0]
        == 0
    )


def test_a_retention_purge_is_not_an_erasure(fl: Faceledger, lfw: Path, tmp_path: Path) -> None:
    """#11 item 10c: purged-by-retention files may be ingested again (no hash kept)."""
    root = login(fl)
    folder = tmp_path / "short"
    folder.mkdir()
    shutil.copy(lfw_image(lfw, "Jack_Straw", 2), folder)
    fl.ingest(root, iter_paths([folder], "short", "t", expires_at="2001-01-01"), PipelineSettings())
    assert fl.purge(root)["images"] == 1
    assert RawDB(fl.data_dir).execute("select count(*) from erased_images").fetchone()[0] == 0
    again = fl.ingest(root, iter_paths([folder], "short", "t"), PipelineSettings())
    assert again.new == 1 and not again.failures


# -- (d) erasure by photo: preview, then confirm ---------------------------------------------------


def test_the_story_preview_lists_scores_and_only_the_confirmed_faces_go(
    fl: Faceledger, lfw: Path
) -> None:
    """#11 item 10d: "erasing Tony_Blair_0002's matches at the suggested 0.93 deleted photos
    of three other people": the preview shows who would go; only the confirmed go."""
    root = login(fl)
    blair = sorted(i for n in BLAIR for i in faces_of(fl, f"Tony_Blair_{n:04d}"))
    others = {name: faces_of(fl, name)[0] for name in ("John_Prescott", "Colin_Powell")}
    preview = fl.erase_preview(root, subject_photo(lfw), STORY_THRESHOLD)
    listed = {f["face_id"]: f for f in preview["faces"]}
    assert set(blair) <= set(listed) and set(others.values()) <= set(listed)
    scores = [f["score"] for f in preview["faces"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= STORY_THRESHOLD
    n = preview["gallery_faces"]
    assert n == fl.store.face_count()
    cal = calibration.load(fl.store.model_id() or "")
    assert cal is not None
    for f in preview["faces"]:
        assert f["est_fmr"] == pytest.approx(cal.estimate(f["score"]).fmr)
        assert f["expected_false_matches"] == pytest.approx(n * f["est_fmr"])
        assert f["provenance"][0]["original_path"]  # metadata to decide by
    assert preview["threshold_fmr"] == pytest.approx(cal.estimate(STORY_THRESHOLD).fmr)
    assert preview["expected_false_matches"] == pytest.approx(n * preview["threshold_fmr"])
    assert not preview["threshold_is_calibrated"]
    # an id the preview does not list is refused, and nothing is erased
    with pytest.raises(RefusedError) as refused:
        fl.erase(
            root,
            preview_id=preview["preview_id"],
            face_ids=[*blair, faces_of(fl, "Gordon_Brown")[0]],
            reason="request 50",
        )
    assert refused.value.code == "not-in-preview"
    assert fl.store.face_count() == n
    rep = fl.erase(root, preview_id=preview["preview_id"], face_ids=blair, reason="request 50")
    assert sorted(rep.faces) == blair and rep.preview_id == preview["preview_id"]
    assert fl.store.face_count() == n - len(blair)
    for name, fid in others.items():
        assert faces_of(fl, name) == [fid], name  # listed, not confirmed: kept
    # the ledger: the preview (probe hash, threshold, ids and scores, no image), the erasure
    (made,) = entries(fl, "erase.preview")
    assert made.details["probe_sha256"] == hashlib.sha256(subject_photo(lfw)).hexdigest()
    assert made.details["threshold"] == STORY_THRESHOLD
    assert made.details["faces"] == [[f["face_id"], f["score"]] for f in preview["faces"]]
    assert made.details["preview_id"] == preview["preview_id"]
    assert len(json.dumps(made.details)) < 4000  # hashes, ids and scores: no image
    (done,) = entries(fl, "erase")
    assert done.details["preview_id"] == preview["preview_id"] and done.details["face_ids"] == blair
    assert done.details["reason"] == "request 50"
    # single use
    with pytest.raises(RefusedError) as again:
        fl.erase(
            root, preview_id=preview["preview_id"], face_ids=[others["Colin_Powell"]], reason="r"
        )
    assert again.value.code == "preview-used"
    assert faces_of(fl, "Colin_Powell") == [others["Colin_Powell"]]


def test_default_threshold_is_the_calibrated_score_of_fmr_1e6(fl: Faceledger, lfw: Path) -> None:
    """#11 item 10d: without a threshold, the score whose estimated FMR is 1e-6, stated."""
    from faceledger.core.erasure import PREVIEW_FMR

    preview = fl.erase_preview(login(fl), subject_photo(lfw))
    cal = calibration.load(fl.store.model_id() or "")
    assert cal is not None and PREVIEW_FMR == 1e-6
    assert preview["threshold"] == pytest.approx(cal.threshold_for(1e-6), abs=1e-5)
    assert preview["threshold_is_calibrated"] and preview["calibrated_fmr"] == 1e-6
    assert preview["threshold_fmr"] == pytest.approx(1e-6, rel=0.05)
    assert preview["expected_false_matches"] == pytest.approx(
        preview["gallery_faces"] * 1e-6, rel=0.05
    )
    assert preview["threshold"] > 0.93  # the 0.93 once suggested is an FMR of ~1e-3
    assert entries(fl, "erase.preview")[-1].details["threshold_is_calibrated"] is True


def test_previews_belong_to_their_admin_expire_and_keep_no_photo(fl: Faceledger, lfw: Path) -> None:
    """#11 item 10d: bound to its admin, one hour, single use; the subject's embedding (not
    the photo) is kept for an opt-out, and cleared once used or expired."""
    root, rita, ivy = login(fl), login(fl, "rita"), login(fl, "ivy")
    photo = subject_photo(lfw)
    with pytest.raises(PermissionDenied):
        fl.erase_preview(ivy, photo, 0.9)
    p1 = fl.erase_preview(root, photo, STORY_THRESHOLD)
    fid = p1["faces"][0]["face_id"]
    denied = len(entries(fl, "authz.denied"))
    with pytest.raises(PermissionDenied):
        fl.erase(rita, preview_id=p1["preview_id"], face_ids=[fid], reason="r")
    with pytest.raises(PermissionDenied):
        fl.erase_preview_crop(rita, p1["preview_id"], fid)
    assert len(entries(fl, "authz.denied")) == denied + 2
    assert fl.erase_preview_crop(root, p1["preview_id"], fid).is_file()
    with pytest.raises(RefusedError) as outside:
        fl.erase_preview_crop(root, p1["preview_id"], faces_of(fl, "Gordon_Brown")[0])
    assert outside.value.code == "no-such-preview-face"
    raw = RawDB(fl.data_dir)
    row = raw.execute(
        "select embedding, probe_sha256 from erasure_previews where id = ?", (p1["preview_id"],)
    ).fetchone()
    assert len(row[0]) == 128 * 4 and photo not in raw.dump().encode()  # vector, no photo
    assert not list(fl.data_dir.rglob("probes"))
    # expiry: an hour later the preview is refused and its embedding forgotten
    raw.execute(
        "update erasure_previews set expires_at = '2001-01-01T00:00:00+00:00' where id = ?",
        (p1["preview_id"],),
    )
    raw.commit()
    with pytest.raises(RefusedError) as expired:
        fl.erase(root, preview_id=p1["preview_id"], face_ids=[fid], reason="r")
    assert expired.value.code == "preview-expired"
    with pytest.raises(RefusedError):
        fl.erase_preview_crop(root, p1["preview_id"], fid)
    fl.purge(root)
    assert (
        raw.execute(
            "select embedding from erasure_previews where id = ?", (p1["preview_id"],)
        ).fetchone()[0]
        is None
    )
    # used with an opt-out: the subject's embedding moves to the blocklist, out of the preview
    p2 = fl.erase_preview(root, photo, STORY_THRESHOLD)
    rep = fl.erase(
        root, preview_id=p2["preview_id"], face_ids=[], optout_reference="r-77", reason="opt-out 77"
    )
    assert rep.blocklisted == 1 and rep.faces == []
    assert (
        raw.execute(
            "select embedding, used_at from erasure_previews where id = ?", (p2["preview_id"],)
        ).fetchone()[0]
        is None
    )
    with pytest.raises(RefusedError) as nothing:
        fl.erase(
            root,
            preview_id=fl.erase_preview(root, photo, STORY_THRESHOLD)["preview_id"],
            face_ids=[],
            reason="r",
        )
    assert nothing.value.code == "nothing-confirmed"


@pytest.mark.parametrize("how", ["face", "image", "source", "preview"])
def test_every_erasure_needs_a_reason(fl: Faceledger, lfw: Path, how: str) -> None:
    """#11 item 10d: a reason is mandatory for every kind of erasure (missing-reason)."""
    root = login(fl)
    fid = faces_of(fl, "Gordon_Brown")[0]
    kwargs: dict[str, Any] = {
        "face": {"face_ids": [fid]},
        "image": {"image_sha": face_row(fl, fid)["sha"]},
        "source": {"source": "archive"},
        "preview": {},
    }[how]
    if how == "preview":
        p = fl.erase_preview(root, subject_photo(lfw), STORY_THRESHOLD)
        kwargs = {"preview_id": p["preview_id"], "face_ids": [p["faces"][0]["face_id"]]}
    n = fl.store.face_count()
    for reason in ("", "   "):
        with pytest.raises(RefusedError) as refused:
            fl.erase(root, reason=reason, **kwargs)
        assert refused.value.code == "missing-reason"
    assert fl.store.face_count() == n and not entries(fl, "erase")


# -- the interfaces: API, web page, CLI ------------------------------------------------------------


@pytest.fixture
def api(fl: Faceledger) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    settings = ApiSettings(rate_per_minute=0, search_rate_per_minute=0)
    tokens = {}
    for name in ("root", "rita", "ivy"):
        tokens[name] = {"Authorization": f"Bearer {fl.create_token(login(fl, name), name, 't')[1]}"}
    with TestClient(create_app(fl.data_dir, faceledger=fl, settings=settings)) as client:
        yield client, tokens


def test_api_preview_crops_only_for_its_admin_then_confirm(api, fl: Faceledger, lfw: Path) -> None:
    """#11 items 10d and 1: the preview's crops are the admin's only view of a face."""
    client, h = api
    photo = ("subject.jpg", subject_photo(lfw), "image/jpeg")
    r = client.post("/api/v1/erasures/previews", headers=h["ivy"], files={"probe": photo})
    assert r.status_code == 403
    r = client.post(
        "/api/v1/erasures/previews",
        headers=h["root"],
        files={"probe": photo},
        data={"threshold": str(STORY_THRESHOLD)},
    )
    assert r.status_code == 200, r.text
    preview = r.json()
    pid = preview["preview_id"]
    blair = sorted(i for n in BLAIR for i in faces_of(fl, f"Tony_Blair_{n:04d}"))
    other = next(f for f in preview["faces"] if f["face_id"] not in blair)
    crop_url = other["crop_url"]
    assert crop_url == f"/api/v1/erasures/previews/{pid}/faces/{other['face_id']}/crop"
    r = client.get(crop_url, headers=h["root"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == face_row(fl, other["face_id"])["crop"].read_bytes()
    assert client.get(crop_url, headers=h["rita"]).status_code == 403  # another admin
    assert client.get(crop_url, headers=h["ivy"]).status_code == 403
    not_listed = faces_of(fl, "Gordon_Brown")[0]
    r = client.get(f"/api/v1/erasures/previews/{pid}/faces/{not_listed}/crop", headers=h["root"])
    assert r.status_code == 404 and r.json()["code"] == "no-such-preview-face"
    assert (
        client.get(f"/api/v1/erasures/previews/{pid}", headers=h["root"]).json()["faces"]
        == preview["faces"]
    )
    r = client.post(
        "/api/v1/erasures",
        headers=h["root"],
        data={"preview_id": str(pid), "face_ids": ",".join(map(str, blair))},
    )
    assert r.status_code == 400 and r.json()["code"] == "missing-reason"
    r = client.post(
        "/api/v1/erasures",
        headers=h["root"],
        data={"preview_id": str(pid), "face_ids": str(not_listed), "reason": "r"},
    )
    assert r.status_code == 400 and r.json()["code"] == "not-in-preview"
    data = {"preview_id": str(pid), "face_ids": ",".join(map(str, blair)), "reason": "request 60"}
    r = client.post("/api/v1/erasures", headers=h["root"], data=data)
    assert r.status_code == 200, r.text
    assert sorted(r.json()["face_ids"]) == blair and r.json()["preview_id"] == pid
    assert faces_of(fl, other["provenance"][0]["original_path"].rsplit("/", 1)[-1]) == [
        other["face_id"]
    ]
    r = client.get(crop_url, headers=h["root"])  # the preview is used: no more crops
    assert r.status_code == 409 and r.json()["code"] == "preview-used"
    r = client.post("/api/v1/erasures", headers=h["root"], data=data)
    assert r.status_code == 409 and r.json()["code"] == "preview-used"
    r = client.post("/api/v1/erasures", headers=h["root"], data={"face_ids": str(not_listed)})
    assert r.status_code == 400 and r.json()["code"] == "missing-reason"


def _session(client: TestClient, user: str) -> str:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/login",
        data={"username": user, "password": PW, "csrf_token": token},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/admin").text).group(1)


def test_admin_page_shows_the_preview_with_crops_and_checkboxes(
    api, fl: Faceledger, lfw: Path
) -> None:
    """#11 item 10d: the admin web page previews, then erases only the ticked faces."""
    client, _h = api
    csrf = _session(client, "root")
    r = client.post(
        "/admin/erase/preview",
        data={"csrf_token": csrf, "threshold": str(STORY_THRESHOLD)},
        files={"probe": ("subject.jpg", subject_photo(lfw), "image/jpeg")},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    page = client.get(r.headers["location"])
    assert page.status_code == 200
    boxes = [int(x) for x in re.findall(r'name="face_ids" value="(\d+)"', page.text)]
    crops = re.findall(r'<img class="crop" src="([^"]+)"', page.text)
    assert len(boxes) == len(crops) >= 6 and "checked" not in page.text  # nothing pre-ticked
    assert "Tony_Blair_0004.jpg" in page.text and "est" in page.text.lower()
    assert all(client.get(src).status_code == 200 for src in crops)
    blair = sorted(i for n in BLAIR for i in faces_of(fl, f"Tony_Blair_{n:04d}"))
    confirm = re.search(r'action="(/admin/erasures/previews/\d+/confirm)"', page.text).group(1)
    r = client.post(
        confirm,
        data={"csrf_token": csrf, "face_ids": [str(i) for i in blair], "reason": "request 70"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin#erase"
    assert "Erased 4 face(s)" in client.get("/admin").text
    assert fl.store.face_count() == len(BLAIR) + len(OTHERS) + 2 - 4
    assert entries(fl, "erase")[-1].details["preview_id"] is not None


def test_cli_erase_by_photo_prints_the_preview_and_erases_the_confirmed(
    fl: Faceledger, lfw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#11 item 10d: `faceledger erase --probe` shows the table, erases only --confirm's."""
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    photo = tmp_path / "subject.jpg"
    photo.write_bytes(subject_photo(lfw))
    blair = sorted(i for n in BLAIR for i in faces_of(fl, f"Tony_Blair_{n:04d}"))
    base = ["erase", "--probe", str(photo), "--threshold", str(STORY_THRESHOLD)]
    base += ["--data-dir", str(fl.data_dir), "--as", "root"]
    runner = CliRunner()
    result = runner.invoke(cli_app, [*base, "--confirm", ",".join(map(str, blair))])
    assert result.exit_code != 0 and "--reason" in result.output
    result = runner.invoke(cli_app, [*base, "--reason", "request 80"])  # no tty: must confirm
    assert result.exit_code != 0 and "--confirm" in result.output
    n = fl.store.face_count()
    result = runner.invoke(
        cli_app, [*base, "--reason", "request 80", "--confirm", ",".join(map(str, blair))]
    )
    assert result.exit_code == 0, result.output
    rows = dict(re.findall(r"^│ (\d+) +│ (0\.\d+) ", result.output, flags=re.M))
    prescott, powell = faces_of(fl, "John_Prescott")[0], faces_of(fl, "Colin_Powell")[0]
    assert set(map(int, rows)) == {*blair, prescott, powell}  # the preview table, with scores
    assert all(float(s) >= STORY_THRESHOLD for s in rows.values())
    said = " ".join(result.output.split())
    assert "est. FMR at the threshold" in said and "erased 4 face(s)" in said
    assert fl.store.face_count() == n - 4
    assert faces_of(fl, "John_Prescott") == [prescott] and faces_of(fl, "Colin_Powell") == [powell]
    assert entries(fl, "erase")[-1].details["reason"] == "request 80"
