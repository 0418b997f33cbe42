"""Users, roles, cases, approval, quotas, the ledger, reports, erasure, opt-out, retention.

Everything goes through the core (`Faceledger`), on a real SQLite data dir and real LFW
photos, so the rules are tested where every interface meets them.
"""

from __future__ import annotations

import io
import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import RawDB, copy_data_dir, lfw_image, side_by_side
from faceledger.accounts.auth import AuthError, LoginThrottled, PermissionDenied
from faceledger.cases.policy import Policy
from faceledger.cli import app
from faceledger.core import Faceledger, PolicyTamperedError, RefusedError, SearchRequest
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_paths
from faceledger.ledger import audit

PEOPLE = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody", "Al_Gore"]
PW = "correct horse battery"
GOOD = SearchRequest("CASE-1", "violent-crime", "CCTV still from the robbery", top_k=3)


@pytest.fixture(scope="module")
def template(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with users and a four-photo gallery, built once; each test gets a copy."""
    base = tmp_path_factory.mktemp("accountability")
    f = Faceledger(base / "data")
    root = f.init_admin("root", PW)
    for name, roles, unit in [
        ("ivy", "investigator", "north"),
        ("sam", "supervisor", "north"),
        ("ada", "auditor", None),
        ("ian", "investigator", "south"),
    ]:
        f.add_user(root, name, PW, roles, unit)
    photos = base / "photos"
    photos.mkdir()
    for name in PEOPLE:
        shutil.copy(lfw_image(lfw, name, 1), photos)
    f.ingest(root, iter_paths([photos], "archive", "test"), PipelineSettings())
    f.store.close()  # the WAL is folded into the database file: copies are self-contained
    return base / "data"


@pytest.fixture
def fl(template: Path, tmp_path: Path, analyzer) -> Faceledger:
    f = Faceledger(copy_data_dir(template, tmp_path / "data"))
    f.set_analyzer_factory(lambda: analyzer)
    return f


def who(f: Faceledger, name: str):
    return f.login(name, PW)


def probe(lfw: Path, name: str = "Al_Gore", n: int = 2) -> bytes:
    return lfw_image(lfw, name, n).read_bytes()


def actions(f: Faceledger) -> list[str]:
    return [e.action for e in audit.iter_entries(f.store)]


# -- identity -------------------------------------------------------------------------------


def test_passwords_are_argon2_and_never_stored_in_clear(fl: Faceledger) -> None:
    raw = RawDB(fl.data_dir)
    hashes = [r[0] for r in raw.execute("select password_hash from users")]
    assert all(h.startswith("$argon2id$") for h in hashes)
    dump = raw.dump()
    assert PW not in dump
    assert PW not in "\n".join(json.dumps(e.details) for e in audit.iter_entries(fl.store))


def test_wrong_password_backoff_and_disabled(fl: Faceledger) -> None:
    """Five failures from one address make that (name, address) pair wait; the same user
    from another address is not locked out (#11 item 11); disabled reads like a wrong
    password."""
    for _ in range(5):
        with pytest.raises(AuthError, match="wrong user name or password"):
            fl.login("ivy", "wrong password!", "10.0.0.1")
    with pytest.raises(LoginThrottled):
        fl.login("ivy", PW, "10.0.0.1")
    assert fl.login("ivy", PW, "10.0.0.2").username == "ivy"
    root = who(fl, "root")
    fl.set_disabled(root, "ian")
    with pytest.raises(AuthError, match="wrong user name or password") as refused:
        fl.login("ian", PW)
    assert not isinstance(refused.value, LoginThrottled)
    acts = actions(fl)
    assert acts.count("login.failed") == 6 and "user.locked" not in acts


def test_tokens_expire_and_revoke(fl: Faceledger) -> None:
    root, ivy = who(fl, "root"), who(fl, "ivy")
    tid, secret = fl.create_token(ivy, "ivy", "ci", days=1)
    assert fl.authenticate_token(secret).username == "ivy"
    raw = RawDB(fl.data_dir)
    assert secret not in raw.dump()
    fl.revoke_token(root, tid)
    with pytest.raises(AuthError, match="revoked"):
        fl.authenticate_token(secret)
    tid2, secret2 = fl.create_token(ivy, "ivy", "short", days=1)
    raw.execute("update tokens set expires_at='2000-01-01T00:00:00+00:00' where id=?", (tid2,))
    raw.commit()
    with pytest.raises(AuthError, match="expired"):
        fl.authenticate_token(secret2)
    with pytest.raises(AuthError):
        fl.authenticate_token("flt_not-a-token")


@pytest.mark.parametrize(
    ("user", "op"),
    [
        ("ada", "search"),
        ("sam", "search"),
        ("root", "search"),
        ("ivy", "ingest"),
        ("ivy", "erase"),
        ("ada", "erase"),
        ("ivy", "manage_users"),
        ("ivy", "read_ledger"),
        ("sam", "manage_policy"),
    ],
)
def test_roles_are_enforced_and_denials_recorded(fl: Faceledger, lfw: Path, user: str, op: str):
    actor = who(fl, user)
    before = actions(fl).count("authz.denied")
    with pytest.raises(PermissionDenied):
        if op == "search":
            fl.search(actor, probe(lfw), GOOD)
        elif op == "ingest":
            fl.ingest(actor, [], PipelineSettings())
        elif op == "erase":
            fl.erase(actor, face_ids=[1])
        elif op == "manage_users":
            fl.add_user(actor, "eve", PW, "admin")
        elif op == "read_ledger":
            fl.audit_entries(actor)
        elif op == "manage_policy":
            fl.save_policy(actor, Policy())
    assert actions(fl).count("authz.denied") == before + 1


# -- cases, approval, quota, policy ---------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        SearchRequest("", "violent-crime", "a long enough reason"),
        SearchRequest("C-2", "curiosity", "a long enough reason"),
        SearchRequest("C-2", "violent-crime", ""),
    ],
)
def test_search_refused_without_case_purpose_justification(fl: Faceledger, lfw, req) -> None:
    n_searches = actions(fl).count("search")
    with pytest.raises(RefusedError) as exc:
        fl.search(who(fl, "ivy"), probe(lfw), req)
    assert exc.value.code == "missing-case-fields"
    assert actions(fl).count("search") == n_searches  # nothing was compared
    assert actions(fl)[-1] == "search.refused"


def test_search_is_recorded_with_hashes_and_candidates(fl: Faceledger, lfw: Path) -> None:
    data = probe(lfw)
    res = fl.search(who(fl, "ivy"), data, GOOD)
    top = res["faces"][0]["candidates"][0]
    assert "Al_Gore" in top["provenance"][0]["original_path"]
    assert "not identifications" in res["notice"]
    entry = [e for e in audit.iter_entries(fl.store) if e.action == "search"][-1]
    assert entry.actor == "ivy" and entry.target == "CASE-1"
    assert entry.details["purpose"] == "violent-crime"
    import hashlib

    assert entry.details["probe_sha256"] == hashlib.sha256(data).hexdigest()
    assert entry.details["results"][0]["candidates"][0][0] == top["face_id"]
    text = json.dumps(entry.details)
    assert "embedding" not in text and len(text) < 2000  # ids and scores, no biometrics
    assert not (fl.data_dir / "probes").exists()  # default policy keeps no probe photo
    assert fl.get_search(who(fl, "ada"), res["search_id"])["case_number"] == "CASE-1"
    with pytest.raises(PermissionDenied):
        fl.get_search(who(fl, "ian"), res["search_id"])


def test_approval_flow(fl: Faceledger, lfw: Path) -> None:
    ivy, sam = who(fl, "ivy"), who(fl, "sam")
    req = SearchRequest("FRAUD-9", "identity-fraud", "passport application photo mismatch")
    with pytest.raises(RefusedError, match="supervisor-approved"):
        fl.search(ivy, probe(lfw), req)
    rid = fl.request_case(ivy, "FRAUD-9", "identity-fraud", "passport application mismatch")
    req.request_id = rid
    with pytest.raises(RefusedError, match="pending"):
        fl.search(ivy, probe(lfw), req)
    with pytest.raises(RefusedError, match="own request"):
        fl.decide_case(ivy.__class__(ivy.user_id, "ivy", frozenset({"supervisor"})), rid, True)
    assert [r["id"] for r in fl.list_case_requests(sam, "pending")] == [rid]
    assert fl.list_case_requests(who(fl, "ian")) == []  # another investigator's requests
    fl.decide_case(sam, rid, True, "ok")
    assert fl.search(ivy, probe(lfw), req)["faces"]
    with pytest.raises(RefusedError, match="another user"):
        fl.search(who(fl, "ian"), probe(lfw), req)
    rid2 = fl.request_case(ivy, "FRAUD-10", "identity-fraud", "another passport mismatch")
    fl.decide_case(sam, rid2, False, "insufficient grounds")
    with pytest.raises(RefusedError, match="denied"):
        fl.search(
            ivy,
            probe(lfw),
            SearchRequest("FRAUD-10", "identity-fraud", "another passport mismatch", rid2),
        )


def test_quota_and_candidate_limit(fl: Faceledger, lfw: Path) -> None:
    root, ivy = who(fl, "root"), who(fl, "ivy")
    fl.save_policy(
        root, fl.policy().with_value("daily_quota", "2").with_value("max_candidates", "2")
    )
    for _ in range(2):
        res = fl.search(ivy, probe(lfw), SearchRequest(**{**GOOD.__dict__, "top_k": 10}))
        assert len(res["faces"][0]["candidates"]) == 2
    with pytest.raises(RefusedError) as exc:
        fl.search(ivy, probe(lfw), GOOD)
    assert exc.value.code == "quota-exceeded"
    assert actions(fl)[-1] == "search.quota_refused"


def test_min_probe_quality_gates_faces(fl: Faceledger, lfw: Path) -> None:
    fl.save_policy(who(fl, "root"), fl.policy().with_value("min_probe_quality", "1.0"))
    res = fl.search(who(fl, "ivy"), probe(lfw), GOOD)
    assert res["faces"][0]["below_min_quality"] and res["faces"][0]["candidates"] == []


def test_policy_changes_logged_and_tampering_refused(fl: Faceledger, lfw: Path) -> None:
    fl.save_policy(who(fl, "root"), fl.policy().with_value("daily_quota", "7"))
    entry = [e for e in audit.iter_entries(fl.store) if e.action == "policy.set"][-1]
    assert entry.details["changes"] == {"daily_quota": {"old": 50, "new": 7}}
    path = fl.data_dir / "policy.json"
    path.write_text(path.read_text().replace('"daily_quota": 7', '"daily_quota": 7000'))
    with pytest.raises(PolicyTamperedError):
        fl.search(who(fl, "ivy"), probe(lfw), GOOD)


def test_policy_updates_typed_or_as_text_pass_one_rule(fl: Faceledger) -> None:
    """The API's PATCH (typed values) and the admin form and CLI (text) change the policy
    through one core call: admins only, validated, recorded with old and new values."""
    root, ivy = who(fl, "root"), who(fl, "ivy")
    with pytest.raises(PermissionDenied):
        fl.update_policy(ivy, {"daily_quota": 1})
    denied = list(audit.iter_entries(fl.store, action="authz.denied"))
    assert denied[-1].actor == "ivy" and denied[-1].details["permission"] == "manage_policy"
    texts = {"purposes": "missing-person\n identity-fraud, violent-crime ", "daily_quota": " 5 "}
    new = fl.update_policy(root, texts, as_text=True)
    assert new.purposes == ["missing-person", "identity-fraud", "violent-crime"]
    assert new.daily_quota == 5 and fl.policy() == new
    assert fl.update_policy(root, {"max_candidates": 3}).max_candidates == 3
    for bad in ({"bogus": 1}, {"approval_required": ["not-a-purpose"]}):
        with pytest.raises(ValueError):
            fl.update_policy(root, bad)
    with pytest.raises(ValueError):
        fl.update_policy(root, {"daily_quota": "many"}, as_text=True)
    changes = [e.details["changes"] for e in audit.iter_entries(fl.store, action="policy.set")]
    assert changes[-2:] == [
        {
            "purposes": {"old": Policy().purposes, "new": new.purposes},
            "daily_quota": {"old": 50, "new": 5},
        },
        {"max_candidates": {"old": 20, "new": 3}},
    ]
    assert fl.policy().max_candidates == 3


def test_probe_retention_when_policy_says(fl: Faceledger, lfw: Path) -> None:
    fl.save_policy(who(fl, "root"), fl.policy().with_value("retain_probes_days", "30"))
    fl.search(who(fl, "ivy"), probe(lfw), GOOD)
    kept = list((fl.data_dir / "probes").iterdir())
    assert len(kept) == 1
    from faceledger.core.erasure import purge_expired

    later = (date.today() + timedelta(days=31)).isoformat()
    assert purge_expired(fl, who(fl, "root"), now=later)["probes"] == 1
    assert not any((fl.data_dir / "probes").iterdir())


# -- the ledger ------------------------------------------------------------------------------


def _tamper(fl: Faceledger, sql: str) -> None:
    """What someone with write access to the database file could do."""
    raw = RawDB(fl.data_dir)
    raw.drop_ledger_guard()
    raw.execute(sql)
    raw.commit()
    raw.close()


def test_ledger_refuses_update_and_delete(fl: Faceledger) -> None:
    raw = RawDB(fl.data_dir)
    with pytest.raises(raw.guard_error, match="append-only"):
        raw.execute("update ledger set actor='nobody' where seq=1")
    with pytest.raises(raw.guard_error, match="append-only"):
        raw.execute("delete from ledger where seq=1")


@pytest.mark.parametrize(
    ("sql", "bad_seq", "words"),
    [
        ("update ledger set actor='nobody' where seq=3", 3, "modified"),
        ("update ledger set details='{}' where seq=4", 4, "modified"),
        ("delete from ledger where seq=2", 2, "missing"),
        # swap two entries' contents (a reorder) keeping the seq numbers
        (
            "update ledger set seq=-1 where seq=3; update ledger set seq=3 where seq=2;"
            " update ledger set seq=2 where seq=-1",
            2,
            "follow",
        ),
    ],
)
def test_verify_names_the_first_tampered_entry(fl, sql, bad_seq, words) -> None:
    assert audit.verify(fl.store).ok
    raw = RawDB(fl.data_dir)
    raw.drop_ledger_guard()
    raw.script(sql)
    raw.commit()
    res = audit.verify(fl.store)
    assert not res.ok and res.first_bad_seq == bad_seq and words in res.problem


def test_truncation_caught_by_checkpoint(fl: Faceledger) -> None:
    cp = fl.audit_checkpoint(who(fl, "ada"))
    assert audit.verify(fl.store, cp).ok
    last = audit.head(fl.store)[0]
    _tamper(fl, f"delete from ledger where seq >= {int(cp.split(':')[0])}")
    assert audit.verify(fl.store).ok  # the remaining chain alone looks fine...
    res = audit.verify(fl.store, cp)  # ...but not against the checkpoint
    assert not res.ok and "truncated" in res.problem
    assert last > 0


def test_cli_audit_verify_exit_codes(fl: Faceledger, monkeypatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    args = ["audit", "verify", "--data-dir", str(fl.data_dir), "--as", "ada"]
    assert runner.invoke(app, args).exit_code == 0
    _tamper(fl, "update ledger set target='x' where seq=5")
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "entry 5" in r.output


# -- reports ---------------------------------------------------------------------------------


def test_report_from_seeded_history(fl: Faceledger, lfw: Path, tmp_path: Path) -> None:
    ivy, ian, sam = who(fl, "ivy"), who(fl, "ian"), who(fl, "sam")
    fl.search(ivy, probe(lfw), GOOD)
    fl.search(ivy, probe(lfw), SearchRequest("CASE-2", "missing-person", "family reported"))
    fl.search(ian, probe(lfw), SearchRequest("CASE-3", "missing-person", "family reported"))
    rid = fl.request_case(ivy, "F-1", "identity-fraud", "passport application mismatch")
    fl.decide_case(sam, rid, False)
    with pytest.raises(RefusedError):
        fl.search(ivy, probe(lfw), SearchRequest("", "x", ""))
    today = date.today()
    rep = fl.audit_report(who(fl, "ada"), today, today)
    assert rep["searches"] == 3
    assert rep["searches_per_user"] == {"ivy": 2, "ian": 1}
    assert rep["searches_per_purpose"] == {"missing-person": 2, "violent-crime": 1}
    assert rep["case_requests"] == {"requested": 1, "denied": 1}
    assert rep["refusals"]["missing-case-fields"] == 1
    unit = fl.audit_report(sam, today, today)  # supervisor of unit north: ivy only
    assert unit["searches_per_user"] == {"ivy": 2}
    from faceledger.ledger import reports

    page = reports.to_html(rep)
    assert "<img" in page and "data:image/png;base64," in page
    png = page.split("data:image/png;base64,")[1].split("'")[0]
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(png))).size[0] > 300
    assert "searches_per_user,ivy,2" in reports.to_csv(rep).replace("\r", "")
    with pytest.raises(PermissionDenied):
        fl.audit_report(ivy, today, today)


# -- erasure, opt-out, retention -------------------------------------------------------------


def _face_ids(fl: Faceledger, name: str) -> list[int]:
    raw = RawDB(fl.data_dir)
    return [
        r[0]
        for r in raw.execute(
            "select f.id from faces f join provenance p on p.image_sha=f.image_sha "
            "where p.original_path like ?",
            (f"%{name}%",),
        )
    ]


def test_erase_by_face_removes_everything_and_search_no_longer_finds(fl, lfw) -> None:
    ids = _face_ids(fl, "Al_Gore")
    assert ids
    before = fl.search(who(fl, "ivy"), probe(lfw), GOOD)["faces"][0]["candidates"]
    assert before[0]["face_id"] == ids[0]
    crop = Path(before[0]["crop_path"])
    image = Path(before[0]["image_path"])
    rep = fl.erase(who(fl, "root"), face_ids=ids, reason="erasure request 12")
    assert rep.faces == ids and len(rep.images_deleted) == 1
    assert not crop.exists() and not image.exists()
    after = fl.search(who(fl, "ivy"), probe(lfw), GOOD)["faces"][0]["candidates"]
    assert all(c["face_id"] not in ids for c in after)
    raw = RawDB(fl.data_dir)
    marks = ",".join("?" * len(ids))
    left = raw.execute(f"select count(*) from faces where id in ({marks})", ids).fetchone()
    assert left[0] == 0
    entry = [e for e in audit.iter_entries(fl.store) if e.action == "erase"][-1]
    assert entry.details["face_ids"] == ids and entry.details["reason"] == "erasure request 12"


def test_erase_one_face_of_a_group_photo_blurs_it(lfw: Path, tmp_path: Path, analyzer) -> None:
    f = Faceledger(tmp_path / "d")
    root = f.init_admin("root", PW)
    group = tmp_path / "g"
    group.mkdir()
    (group / "group.jpg").write_bytes(
        side_by_side([lfw_image(lfw, "Al_Gore", 1), lfw_image(lfw, "Adrien_Brody", 1)])
    )
    f.ingest(root, iter_paths([group], "s", "t"), PipelineSettings())
    f.set_analyzer_factory(lambda: analyzer)
    raw = RawDB(f.data_dir)
    rows = raw.execute("select id, bbox_json from faces order by id").fetchall()
    assert len(rows) == 2
    left = min(rows, key=lambda r: json.loads(r[1])[0])
    stored = next((f.data_dir / "images").rglob("*.jpg"))
    original = np.asarray(Image.open(stored).convert("L"), dtype=float)
    rep = f.erase(root, face_ids=[left[0]], reason="erasure request 13")
    assert rep.images_blurred and not rep.images_deleted
    now = np.asarray(Image.open(stored).convert("L"), dtype=float)
    x0, y0, x1, y1 = json.loads(left[1])
    assert np.abs(now[y0:y1, x0:x1] - original[y0:y1, x0:x1]).mean() > 5  # the face is gone
    assert np.abs(now[:, 300:] - original[:, 300:]).mean() < 2  # the other face is kept
    assert not list((f.data_dir).rglob("*.tmp"))


def test_erase_by_probe_with_optout_blocks_reingest(fl: Faceledger, lfw: Path, tmp_path) -> None:
    root = who(fl, "root")
    preview = fl.erase_preview(root, probe(lfw, "Adrien_Brody"), threshold=0.93)
    rep = fl.erase(
        root,
        preview_id=preview["preview_id"],
        face_ids=[f["face_id"] for f in preview["faces"]],
        optout_reference="request-77",
        reason="opt-out request 77",
    )
    assert len(rep.faces) == 1 and rep.blocklisted == 1
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(lfw_image(lfw, "Adrien_Brody", 1), again)
    shutil.copy(lfw_image(lfw, "Adrien_Brody", 3), again / "other_photo.jpg")
    shutil.copy(lfw_image(lfw, "Abdullah_Gul", 2), again)
    # an unrelated person in the same batch is kept: the opt-out threshold is calibrated;
    # the erased file itself is refused by its hash, his other photo by the opt-out
    summary = fl.ingest(root, iter_paths([again], "archive2", "test"), PipelineSettings())
    assert summary.opted_out == 1 and summary.new == 1 and summary.failures == {"erased": 1}
    assert "opted-out" in summary.line()
    raw = RawDB(fl.data_dir)
    assert raw.execute("select count(*) from blocklist").fetchone()[0] == 1
    assert not list((fl.data_dir).rglob("probes"))  # the erasure photo was not kept


def test_erase_by_source_and_image(fl: Faceledger) -> None:
    root = who(fl, "root")
    raw = RawDB(fl.data_dir)
    sha = raw.execute("select sha256 from images limit 1").fetchone()[0]
    assert len(fl.erase(root, image_sha=sha, reason="request 14").images_deleted) == 1
    rep = fl.erase(root, source="archive", reason="request 15")
    assert len(rep.images_deleted) == len(PEOPLE) - 1
    assert raw.execute("select count(*) from images").fetchone()[0] == 0
    assert not list((fl.data_dir / "crops").rglob("*.jpg"))


def test_expired_images_are_purged(lfw: Path, tmp_path: Path) -> None:
    f = Faceledger(tmp_path / "d")
    root = f.init_admin("root", PW)
    p = tmp_path / "p"
    p.mkdir()
    shutil.copy(lfw_image(lfw, "Al_Gore", 1), p)
    f.ingest(root, iter_paths([p], "s", "t", expires_at="2001-01-01"), PipelineSettings())
    assert f.store.stats()["images"] == 1
    assert f.purge(root) == {"images": 1, "probes": 0}
    assert f.store.stats()["images"] == 0 and f.store.face_count() == 0
