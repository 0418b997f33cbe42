"""Duplicate identities (#14 item 4): subjects whose templates match above the strict
calibrated threshold are reported to an admin, who merges them: a relabel (never a deletion)
and a ledger entry. Through the core, the CLI and the API.

Real LFW photos (one man ingested under two labels, a face left unlabelled), a real SQLite
data dir, the real FastAPI app and CLI."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import lfw_image
from conftest_api import PW, entries, own_token
from faceledger.accounts.auth import PermissionDenied
from faceledger.cli import app as cli_app
from faceledger.core import Faceledger
from faceledger.db.schema import provenance, subject_relabels
from faceledger.errors import RefusedError
from faceledger.gallery import subjects
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_manifest
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)
A, B, POWELL = "G. W. Bush", "George W Bush", "Colin Powell"


@pytest.fixture(scope="module")
def fl(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceledger]:
    base = tmp_path_factory.mktemp("duplicates")
    core = Faceledger(base / "data")
    root = core.init_admin("root", PW)
    core.add_user(root, "ivy", PW, "investigator", "north")
    photos = base / "photos"
    photos.mkdir()
    rows = ["path,subject_label"]
    for n, label in ((1, A), (2, A), (3, A), (4, B), (5, B), (6, B)):
        shutil.copy(lfw_image(lfw, "George_W_Bush", n), photos)
        rows.append(f"George_W_Bush_{n:04d}.jpg,{label}")
    for n, label in ((1, POWELL), (2, POWELL), (3, "")):
        shutil.copy(lfw_image(lfw, "Colin_Powell", n), photos)
        rows.append(f"Colin_Powell_{n:04d}.jpg,{label}")
    for name in ("Al_Gore", "Adrien_Brody", "Aaron_Peirsol"):
        shutil.copy(lfw_image(lfw, name, 1), photos)
        rows.append(f"{name}_0001.jpg,")
    (photos / "m.csv").write_text("\n".join(rows) + "\n")
    core.ingest(
        root,
        iter_manifest(photos / "m.csv", "archive", "test fixture"),
        PipelineSettings(embedder="dlib"),
    )
    yield core
    core.close()


def _powell_3(fl: Faceledger) -> int:
    with fl.store.engine.connect() as conn:
        sha = (
            conn.execute(
                provenance.select().where(provenance.c.original_path.like("%Colin_Powell_0003.jpg"))
            )
            .one()
            .image_sha
        )
    m = subjects.membership(fl.store)
    from faceledger.db.schema import faces

    with fl.store.engine.connect() as conn:
        fid = conn.execute(faces.select().where(faces.c.image_sha == sha)).one().id
    assert m.keys[int(m.subject[list(m.face_ids).index(fid)])] == fid
    return int(fid)


def test_one_person_under_two_labels_is_reported(fl: Faceledger) -> None:
    """#14 item 4: George W Bush ingested under two labels, and a photo of Colin Powell
    without a label, are the pairs found at the default threshold (expected false pairs
    in the gallery <= 0.1); no pair of two different people is; the run is recorded."""
    root = fl.login("root", PW)
    doc = fl.subject_duplicates(root)
    assert doc["gallery_subjects"] == 2 + 1 + 1 + 3
    n_pairs = 7 * 6 / 2
    assert doc["fmr_limit"] == pytest.approx(0.1 / n_pairs)
    found = {frozenset((p["a"]["subject"], p["b"]["subject"])) for p in doc["pairs"]}
    powell_3 = _powell_3(fl)
    assert found == {frozenset((A, B)), frozenset((POWELL, f"face:{powell_3}"))}
    bush = next(p for p in doc["pairs"] if {p["a"]["label"], p["b"]["label"]} == {A, B})
    assert bush["a"]["size"] == bush["b"]["size"] == 3
    assert bush["est_fmr"] <= doc["fmr_limit"]
    assert bush["score"] >= doc["thresholds"]["3+x3+"]
    assert bush["expected_false_pairs"] == pytest.approx(n_pairs * bush["est_fmr"])
    e = entries(fl, "subject.duplicates")[-1]
    assert e.actor == "root" and e.details["pairs_found"] == 2
    assert e.details["calibration"] == doc["calibration"]


def test_a_merge_relabels_never_deletes_and_is_recorded(
    fl: Faceledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#14 item 4: ``subjects merge A B --reason R`` moves A's faces to B's label (the
    provenance keeps what the source said), one ledger entry, named by the relabel row;
    a face of its own merges through the API; refusals are clear and recorded."""
    root = fl.login("root", PW)
    before = subjects.members(fl.store, [A, B])
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    runner = CliRunner()
    data = ["--data-dir", str(fl.data_dir), "--as", "root"]
    r = runner.invoke(cli_app, ["subjects", "merge", A, B, *data])
    assert r.exit_code != 0 and "missing-reason" in r.output
    assert entries(fl, "subject.merge_refused")[-1].details["reason"] == "missing-reason"
    r = runner.invoke(cli_app, ["subjects", "merge", A, B, "--reason", "same man", *data])
    assert r.exit_code == 0, r.output
    after = subjects.members(fl.store, [A, B])
    assert after[A] == [] and after[B] == sorted(before[A] + before[B])
    with fl.store.engine.connect() as conn:
        labels = {
            p.subject_label for p in conn.execute(provenance.select()) if "Bush" in p.original_path
        }
        relabel = conn.execute(subject_relabels.select()).all()
    assert labels == {A, B}  # what the sources said stays
    e = entries(fl, "subject.merge")[-1]
    assert e.details["label"] == B and e.details["reason"] == "same man"
    assert e.details["faces"] == after[B]
    assert [(x.kind, x.source, x.target_label, x.ledger_seq) for x in relabel] == [
        ("label", A, B, e.seq)
    ]
    # merged away, A names no subject any more; merging B with itself is refused
    with pytest.raises(RefusedError) as exc:
        fl.merge_subjects(root, A, B, "again")
    assert exc.value.code == "no-such-subject"
    with pytest.raises(RefusedError) as exc:
        fl.merge_subjects(root, B, B, "again")
    assert exc.value.code == "same-subject"

    powell_3 = _powell_3(fl)
    client = TestClient(create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS))
    h = {"Authorization": f"Bearer {own_token(fl, 'root')[1]}"}
    body = {"a": f"face:{powell_3}", "b": POWELL, "reason": "the same man, unlabelled"}
    r2 = client.post("/api/v1/subjects/merges", headers=h, json=body)
    assert r2.status_code == 200, r2.text
    assert r2.json()["moves"] == [{"kind": "face", "source": str(powell_3)}]
    assert powell_3 in subjects.members(fl.store, [POWELL])[POWELL]
    r3 = client.post("/api/v1/subjects/merges", headers=h, json=body | {"a": "face:999999"})
    assert r3.status_code == 404 and r3.json()["code"] == "no-such-subject"

    # nothing left to report: the two pairs are one subject each now
    assert fl.subject_duplicates(root)["pairs"] == []
    doc = client.get("/api/v1/subjects/duplicates", headers=h).json()
    assert doc["pairs"] == [] and doc["gallery_subjects"] == 5


def test_only_admins_see_duplicates_or_merge(
    fl: Faceledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#14 item 4: duplicates and merges are the admins' (manage_subjects); an
    investigator is refused in the core, the API and the CLI, and the refusal recorded."""
    ivy = fl.login("ivy", PW)
    with pytest.raises(PermissionDenied):
        fl.subject_duplicates(ivy)
    with pytest.raises(PermissionDenied):
        fl.merge_subjects(ivy, POWELL, B, "because")
    denied = [e for e in entries(fl, "authz.denied") if e.actor == "ivy"]
    assert [e.details["permission"] for e in denied[-2:]] == ["manage_subjects"] * 2
    client = TestClient(create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS))
    h = {"Authorization": f"Bearer {own_token(fl, 'ivy')[1]}"}
    assert client.get("/api/v1/subjects/duplicates", headers=h).status_code == 403
    body = {"a": POWELL, "b": B, "reason": "because"}
    assert client.post("/api/v1/subjects/merges", headers=h, json=body).status_code == 403
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    r = CliRunner().invoke(
        cli_app, ["subjects", "duplicates", "--data-dir", str(fl.data_dir), "--as", "ivy"]
    )
    assert r.exit_code != 0 and "may not" in r.output
