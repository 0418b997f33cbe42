"""The rules of the case workflow (#13 items 2 and 3): candidate review by a first and a
blind second examiner, never the same person, and the case file that shows a reader what
they may see of a case and nothing more.

Real LFW photos, a real SQLite data dir, the real core."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import lfw_image
from conftest_api import PW, entries, seed
from faceledger.accounts.auth import PermissionDenied
from faceledger.core import Faceledger, SearchRequest
from faceledger.errors import RefusedError
from faceledger.search.searcher import NoFaceError

CASE = "CASE-77"
REQ = SearchRequest(CASE, "violent-crime", "CCTV still from the robbery", top_k=3)


@pytest.fixture(scope="module")
def fl(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faceledger]:
    core = seed(lfw, tmp_path_factory.mktemp("cases"), analyzer)
    root = core.login("root", PW)
    core.add_user(root, "ivo", PW, "investigator", "north")  # ivy's colleague
    core.save_policy(root, core.policy().with_value("daily_quota", "0"))
    yield core
    core.close()


def search(fl: Faceledger, user: str, lfw: Path, who: str = "Al_Gore", n: int = 2) -> int:
    res = fl.search(fl.login(user, PW), lfw_image(lfw, who, n).read_bytes(), REQ)
    return int(res["search_id"])


def top(fl: Faceledger, user: str, sid: int, rank: int = 0) -> dict[str, Any]:
    return fl.get_search(fl.login(user, PW), sid)["shown"]["faces"][0]["candidates"][rank]


def test_a_lead_needs_a_second_examiner_who_is_not_the_first(fl: Faceledger, lfw: Path) -> None:
    """#13 item 3: the same user can never be both examiners of one candidate; a
    possible-lead becomes a lead only with a second investigator's possible-lead; an
    investigator of another unit cannot take the second examination; decisions are final."""
    sid = search(fl, "ivy", lfw)
    fid = top(fl, "ivy", sid)["face_id"]
    ivy, ivo, ian = (fl.login(u, PW) for u in ("ivy", "ivo", "ian"))

    state = fl.review(ivy, sid, fid, "possible-lead", "same ear shape and scar above the brow")
    assert state["status"] == "awaiting-second" and state["first"]["examiner"] == "ivy"
    with pytest.raises(PermissionDenied, match="another investigator"):
        fl.review(ivy, sid, fid, "possible-lead", "I am sure")
    with pytest.raises(PermissionDenied):  # south unit: not theirs to examine
        fl.review(ian, sid, fid, "possible-lead", "looks alike")
    denied = entries(fl, "authz.denied")
    assert denied[-2].details.get("reason") == "same-examiner"  # recorded, as ian's was

    other = top(fl, "ivy", sid, 1)["face_id"]  # ivo may read the search now, but the
    with pytest.raises(PermissionDenied, match="investigator who searched"):  # first
        fl.review(ivo, sid, other, "excluded", "not him")  # decisions are ivy's
    state = fl.review(ivo, sid, fid, "possible-lead", "nose bridge and hairline agree")
    assert state["status"] == "lead"
    assert (state["first"]["examiner"], state["second"]["examiner"]) == ("ivy", "ivo")
    for who in (ivy, ivo):
        with pytest.raises(RefusedError, match="all the decisions"):
            fl.review(who, sid, fid, "excluded", "changed my mind")

    reviews = entries(fl, "candidate.review")[-2:]
    assert [(e.actor, e.details["stage"], e.details["decision"]) for e in reviews] == [
        ("ivy", "first", "possible-lead"),
        ("ivo", "second", "possible-lead"),
    ]
    assert all(e.target == CASE and "reason_sha256" in e.details for e in reviews)


def test_the_second_decision_is_blind(fl: Faceledger, lfw: Path) -> None:
    """#13 item 3: the second examiner records a decision without seeing the first one's:
    not in the record, the queue, the case file or its ledger entries; supervisors see it,
    and disagreement is flagged once both have decided."""
    sid = search(fl, "ivy", lfw, "Adrien_Brody", 2)
    fid = top(fl, "ivy", sid)["face_id"]
    ivy, ivo, sam = (fl.login(u, PW) for u in ("ivy", "ivo", "sam"))
    fl.review(ivy, sid, fid, "possible-lead", "distinctive jaw line")

    queue = fl.review_queue(ivo)
    assert {"search_id": sid, "face_id": fid} in [
        {"search_id": q["search_id"], "face_id": q["face_id"]} for q in queue
    ]
    assert all("decision" not in q and "reason" not in q for q in queue)
    assert not [q for q in fl.review_queue(ivy) if q["search_id"] == sid]

    seen = top(fl, "ivo", sid)["review"]
    assert seen["status"] == "awaiting-second" and seen["first"] is None and seen["blind"]
    assert seen["can_decide"] is True
    file = fl.get_case(ivo, CASE)
    assert not [r for r in file["reviews"] if r["search_id"] == sid]
    assert "distinctive jaw line" not in repr(file)
    assert not [
        e
        for e in file["entries"]
        if e["action"] == "candidate.review" and e["details"]["search_id"] == sid
    ]
    assert top(fl, "sam", sid)["review"]["first"]["reason"] == "distinctive jaw line"

    fl.review(ivo, sid, fid, "excluded", "different ear lobes")
    after = top(fl, "ivo", sid)["review"]
    assert after["status"] == "disagreement" and after["first"]["decision"] == "possible-lead"
    flagged = [c for c in fl.get_case(sam, CASE)["candidates"] if c["status"] == "disagreement"]
    assert (sid, fid) in [(c["search_id"], c["face_id"]) for c in flagged]


def test_review_input_is_checked(fl: Faceledger, lfw: Path) -> None:
    """#13 item 3: a reason is required; the decision is one of three; only the search's
    candidates; only the searcher gives the first decision; supervisors do not review."""
    sid = search(fl, "ivy", lfw, "Aaron_Peirsol", 2)
    c = top(fl, "ivy", sid)
    ivy = fl.login("ivy", PW)
    with pytest.raises(RefusedError) as err:
        fl.review(ivy, sid, c["face_id"], "possible-lead", "  ")
    assert err.value.code == "missing-reason" and err.value.fields == ("reason",)
    with pytest.raises(RefusedError) as err:
        fl.review(ivy, sid, c["face_id"], "match", "certain")
    assert err.value.code == "bad-decision"
    with pytest.raises(RefusedError) as err:
        fl.review(ivy, sid, 999_999, "excluded", "not him")
    assert err.value.code == "not-a-candidate"
    with pytest.raises(PermissionDenied):  # a colleague cannot make the first decision
        fl.review(fl.login("ivo", PW), sid, c["face_id"], "excluded", "not him")
    with pytest.raises(PermissionDenied):
        fl.review(fl.login("sam", PW), sid, c["face_id"], "excluded", "not him")
    assert c["review"] == {
        "status": "unreviewed",
        "first": None,
        "second": None,
        "blind": False,
        "can_decide": True,
    }
    state = fl.review(ivy, sid, c["face_id"], "inconclusive", "too blurred to say")
    assert state["status"] == "inconclusive"
    with pytest.raises(RefusedError, match="all the decisions"):  # no second for these
        fl.review(ivy, sid, c["face_id"], "excluded", "not him")


def test_the_case_file_shows_each_reader_what_they_may_see(fl: Faceledger, lfw: Path) -> None:
    """#13 item 2: every search (also one with no face) and verify in the case, requests,
    reviews, notes and the ledger entries; an investigator of another unit who writes the
    same case number sees only their own work; auditors see all; each view recorded."""
    ivy, ian, ada, sam = (fl.login(u, PW) for u in ("ivy", "ian", "ada", "sam"))
    with pytest.raises(RefusedError) as err:
        fl.get_case(ian, CASE)
    assert err.value.code == "no-such-case"

    blank = blank_photo()
    with pytest.raises(NoFaceError):
        fl.search(ivy, blank, REQ)
    photo = lfw_image(lfw, "Al_Gore", 2).read_bytes()
    vid = fl.verify(ivy, photo, lfw_image(lfw, "Al_Gore", 3).read_bytes(), REQ)["verify_id"]
    note = fl.add_case_note(ivy, CASE, "Witness says the man wore glasses")

    file = fl.get_case(ivy, CASE)
    assert file["case_number"] == CASE
    assert any(s["faces"] == 0 for s in file["searches"])  # the search with no face
    assert [v["id"] for v in file["verifications"]] == [vid]
    assert file["verifications"][0]["outcome"] == "compared"
    assert [n["id"] for n in file["notes"]] == [note]
    actions = {e["action"] for e in file["entries"]}
    assert {"search", "verify", "case.note", "candidate.review"} <= actions
    assert file["head"]["seq"] >= max(e["seq"] for e in file["entries"])
    assert {c["status"] for c in file["candidates"]} >= {"lead", "unreviewed"}
    lead = next(r for r in file["reviews"] if r["stage"] == "second")
    assert lead["ledger_hash"] == next(
        e["hash"] for e in file["entries"] if e["seq"] == lead["ledger_seq"]
    )

    own = search(fl, "ian", lfw, "Abdullah_Gul", 2)
    theirs = fl.get_case(ian, CASE)
    assert [s["id"] for s in theirs["searches"]] == [own]
    assert not theirs["verifications"] and not theirs["notes"]
    assert {e["actor"] for e in theirs["entries"]} == {"ian"}

    everything = fl.get_case(ada, CASE)
    assert {s["username"] for s in everything["searches"]} == {"ivy", "ian"}
    assert len(everything["searches"]) == len(file["searches"]) + 1
    unit = fl.get_case(sam, CASE)  # supervisor of north: ivy's and ivo's work, not ian's
    assert {s["username"] for s in unit["searches"]} == {"ivy"}
    assert [n["id"] for n in unit["notes"]] == [note]

    views = entries(fl, "case.view")
    assert [e.actor for e in views[-4:]] == ["ivy", "ian", "ada", "sam"]
    with pytest.raises(RefusedError) as err:
        fl.add_case_note(ian, "CASE-NOBODY", "a note on nothing")
    assert err.value.code == "no-such-case"


def blank_photo() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (200, 200), (128, 140, 150)).save(buf, format="JPEG")
    return buf.getvalue()


def test_api_and_cli_review_and_show_the_case(fl: Faceledger, lfw: Path, monkeypatch) -> None:
    """#13 items 2-3 through the interfaces: POST .../review, GET /api/v1/reviews/queue,
    GET /api/v1/cases/{case}, POST .../notes; `faceledger review`, `reviews queue`,
    `cases show [--json]` and `cases note`."""
    import json
    import warnings

    from typer.testing import CliRunner

    from conftest_api import own_token
    from faceledger.cli import app as cli_app
    from faceledger.http.app import create_app
    from faceledger.http.settings import ApiSettings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    sid = search(fl, "ivy", lfw, "Al_Gore", 3)
    fid = top(fl, "ivy", sid)["face_id"]
    limits = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)
    app = create_app(fl.data_dir, faceledger=fl, settings=limits)
    ivy = {"Authorization": f"Bearer {own_token(fl, 'ivy')[1]}"}
    ivo = {"Authorization": f"Bearer {own_token(fl, 'ivo')[1]}"}
    with TestClient(app) as client:
        url = f"/api/v1/searches/{sid}/faces/{fid}/review"
        r = client.post(url, headers=ivy, json={"decision": "possible-lead", "reason": ""})
        assert r.status_code == 400 and r.json()["code"] == "missing-reason"
        r = client.post(url, headers=ivy, json={"decision": "possible-lead", "reason": "ears"})
        assert r.status_code == 200 and r.json()["status"] == "awaiting-second"
        r = client.post(url, headers=ivy, json={"decision": "possible-lead", "reason": "ears"})
        assert r.status_code == 403
        queue = client.get("/api/v1/reviews/queue", headers=ivo).json()
        assert [sid, fid] in [[q["search_id"], q["face_id"]] for q in queue]
        rec = client.get(f"/api/v1/searches/{sid}", headers=ivo).json()
        blind = rec["shown"]["faces"][0]["candidates"][0]["review"]
        assert blind["first"] is None and blind["can_decide"] is True
        r = client.post(f"/api/v1/cases/{CASE}/notes", headers=ivy, json={"text": "ok"})
        assert r.status_code == 400 and r.json()["code"] == "missing-note"
        r = client.post(f"/api/v1/cases/{CASE}/notes", headers=ivy, json={"text": "Re-check"})
        assert r.status_code == 201
        file = client.get(f"/api/v1/cases/{CASE}", headers=ivy).json()
        assert sid in [s["id"] for s in file["searches"]] and file["head"]["seq"] > 0
        assert client.get("/api/v1/cases/NO-SUCH", headers=ivy).status_code == 404

    runner = CliRunner()
    data = ["--data-dir", str(fl.data_dir)]
    monkeypatch.setenv("FACELEDGER_TOKEN", ivo["Authorization"].split()[1])
    r = runner.invoke(cli_app, ["reviews", "queue", *data, "--json"])
    assert r.exit_code == 0 and sid in [q["search_id"] for q in json.loads(r.stdout)]
    args = ["review", str(sid), "--face", str(fid), "--decision", "possible-lead"]
    r = runner.invoke(cli_app, [*args, "--reason", "same mole on the cheek", *data])
    assert r.exit_code == 0 and "lead" in r.output, r.output
    r = runner.invoke(cli_app, [*args, "--reason", "again", *data])
    assert r.exit_code != 0 and "all the decisions" in r.output
    monkeypatch.setenv("FACELEDGER_TOKEN", ivy["Authorization"].split()[1])
    r = runner.invoke(cli_app, ["cases", "note", CASE, "Lead passed to the detective", *data])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli_app, ["cases", "show", CASE, *data, "--json"])
    file = json.loads(r.stdout)
    assert "same mole on the cheek" in r.stdout and "Lead passed" in r.stdout
    assert any(c["search_id"] == sid and c["status"] == "lead" for c in file["candidates"]), file[
        "candidates"
    ]
    r = runner.invoke(cli_app, ["cases", "show", CASE, *data])
    assert r.exit_code == 0 and "not identifications" in r.output
    assert "candidates reviewed" in r.output and "ledger" in r.output


def test_chance_level_candidates_follow_the_policy_line(fl: Faceledger, lfw: Path) -> None:
    """#13 item 6: a candidate is at chance level when its expected false candidates at the
    gallery's size reaches the policy's lead_max_expected_false (default 1); the record
    keeps the line in force when the search ran."""
    root = fl.login("root", PW)
    assert fl.policy().lead_max_expected_false == 1.0
    sid = search(fl, "ivy", lfw, "Al_Gore", 4)
    shown = fl.get_search(fl.login("ivy", PW), sid)["shown"]
    assert shown["lead_max_expected_false"] == 1.0
    cands = shown["faces"][0]["candidates"]
    assert [c["chance_level"] for c in cands] == [
        c["expected_false_candidates"] >= 1.0 for c in cands
    ]
    assert not cands[0]["chance_level"] and any(c["chance_level"] for c in cands)
    # a stricter line: every candidate expected to have even 1e-12 false ones is apart
    fl.save_policy(root, fl.policy().with_value("lead_max_expected_false", "1e-12"))
    try:
        again = fl.get_search(fl.login("ivy", PW), search(fl, "ivy", lfw, "Al_Gore", 4))
        assert all(c["chance_level"] for c in again["shown"]["faces"][0]["candidates"])
        assert again["shown"]["lead_max_expected_false"] == 1e-12
        old = fl.get_search(fl.login("ivy", PW), sid)["shown"]  # what it showed then
        assert [c["chance_level"] for c in old["faces"][0]["candidates"]] == [
            c["chance_level"] for c in cands
        ]
        with pytest.raises(ValueError, match="lead_max_expected_false"):
            fl.policy().with_value("lead_max_expected_false", "0")
    finally:
        fl.save_policy(root, fl.policy().with_value("lead_max_expected_false", "1"))


def test_audit_verify_catches_a_rewritten_review_or_note(
    lfw: Path, analyzer: Any, tmp_path: Path
) -> None:
    """#13 item 3: each review and note is vouched for by its ledger entry: a decision or a
    reason changed in the database, or a review inserted behind faceledger's back, fails
    `audit verify`, naming the row."""
    from conftest import RawDB

    core = seed(lfw, tmp_path, analyzer)
    try:
        ivy = core.login("ivy", PW)
        sid = int(core.search(ivy, lfw_image(lfw, "Al_Gore", 2).read_bytes(), REQ)["search_id"])
        fid = core.get_search(ivy, sid)["shown"]["faces"][0]["candidates"][0]["face_id"]
        core.review(ivy, sid, fid, "excluded", "different ear shape")
        core.add_case_note(ivy, CASE, "Checked the CCTV time stamp")
        ada = core.login("ada", PW)
        assert core.audit_verify(ada).ok

        db = RawDB(core.data_dir)
        db.execute("UPDATE reviews SET decision = 'possible-lead'")
        db.commit()
        res = core.audit_verify(ada)
        assert not res.ok and "reviews row 1" in res.problem and "decision" in res.problem
        db.execute("UPDATE reviews SET decision = 'excluded'")
        db.execute("UPDATE case_notes SET text = 'Nothing to see'")
        db.commit()
        res = core.audit_verify(ada)
        assert not res.ok and "case_notes row 1" in res.problem
        db.execute("UPDATE case_notes SET text = 'Checked the CCTV time stamp'")
        db.execute(
            "INSERT INTO reviews (search_id, face_id, stage, examiner_id, decision, reason,"
            " created_at) VALUES (?, ?, 'second', 2, 'possible-lead', 'forged', 'x')",
            (sid, fid),
        )
        db.commit()
        db.close()
        res = core.audit_verify(ada)
        assert not res.ok and "has no 'candidate.review' ledger entry" in res.problem
    finally:
        core.close()
