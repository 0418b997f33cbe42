"""Every path to the gallery is accountable (#11): the insider attacks found on the product,
each tried again through the real API (FastAPI on a real SQLite data dir, real LFW photos)
and the CLI.

Each test names the item of issue #11 it covers; each failed on the code before the fix.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import RawDB, lfw_image
from conftest_api import PW, entries, own_token, seed
from faceledger.cli import app as cli_app
from faceledger.core import MAX_JUSTIFICATION, Faceledger, RefusedError, SearchRequest
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

CASE = {
    "case_number": "CASE-1",
    "purpose": "violent-crime",
    "justification": "CCTV still from the robbery",
}
GALLERY = [
    ("Al_Gore", 1),
    ("Adrien_Brody", 1),
    ("Aaron_Peirsol", 1),
    ("Abdullah_Gul", 1),
    ("Alejandro_Toledo", 1),
    ("Aaron_Sorkin", 1),
]
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)


@dataclass
class Env:
    fl: Faceledger
    client: TestClient
    tokens: dict[str, str]
    lfw: Path

    def h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def photo(self, name: str = "Al_Gore", n: int = 2) -> bytes:
        return lfw_image(self.lfw, name, n).read_bytes()

    def search(self, user: str = "ivy", photo: bytes | None = None, **fields: Any) -> Any:
        return self.client.post(
            "/api/v1/searches",
            headers=self.h(user),
            data={**CASE, **fields},
            files={"probe": ("p.jpg", self.photo() if photo is None else photo, "image/jpeg")},
        )

    def verify(self, user: str = "ivy", **fields: Any) -> Any:
        a, b = self.photo("Al_Gore", 1), self.photo("Al_Gore", 2)
        return self.client.post(
            "/api/v1/verify",
            headers=self.h(user),
            data={**CASE, **fields},
            files={"photo_a": ("a.jpg", a, "image/jpeg"), "photo_b": ("b.jpg", b, "image/jpeg")},
        )

    def policy(self, **changes: Any) -> None:
        r = self.client.patch("/api/v1/policy", headers=self.h("root"), json=changes)
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def env(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("door")
    fl = seed(lfw, base, analyzer, GALLERY)
    root = fl.login("root", PW)
    fl.add_user(root, "sue", PW, "supervisor", "south")
    fl.add_user(root, "nat", PW, "supervisor")  # a supervisor without a unit
    fl.add_user(root, "ari", PW, "admin")  # a second admin
    users = ("root", "ivy", "ian", "sam", "ada", "sue", "nat", "ari")
    tokens = {u: own_token(fl, u)[1] for u in users}
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as client:
        e = Env(fl, client, tokens, lfw)
        e.policy(daily_quota=0)  # unlimited, except where a test sets a quota
        yield e


def gallery_face_ids(fl: Faceledger) -> list[int]:
    raw = RawDB(fl.data_dir)
    try:
        return [int(r[0]) for r in raw.execute("select id from faces order by id")]
    finally:
        raw.close()


def candidate_ids(result: dict[str, Any]) -> set[int]:
    return {c["face_id"] for f in result["faces"] for c in f["candidates"]}


# -- 1. no browsing the gallery without a case ------------------------------------------------


def test_crops_and_images_only_through_ones_own_search(env: Env) -> None:
    """#11 item 1: an investigator got 74 of 89 other crops and an admin all of them by
    enumerating /faces/{id}/crop and /images/{sha}; now nothing outside one's results."""
    c = env.client
    res = env.search(top_k=2).json()
    sid, mine = res["search_id"], candidate_ids(res)
    assert len(mine) == 2
    everyone = gallery_face_ids(env.fl)
    others = [f for f in everyone if f not in mine]
    assert others
    shas = {env.fl.store.candidates([f])[f].image_sha for f in everyone}
    for user in ("ivy", "root", "ian", "ada"):
        for fid in everyone:  # the old, case-less routes are gone for everyone
            assert c.get(f"/api/v1/faces/{fid}/crop", headers=env.h(user)).status_code == 404
        for sha in shas:
            assert c.get(f"/api/v1/images/{sha}", headers=env.h(user)).status_code == 404
    before = len(entries(env.fl, "authz.denied", "ivy"))
    for fid in others:  # not a candidate of this search: nothing, and the attempt is recorded
        for what in ("crop", "image"):
            r = c.get(f"/api/v1/searches/{sid}/faces/{fid}/{what}", headers=env.h("ivy"))
            assert r.status_code == 404 and r.json()["code"] == "not-a-candidate"
    assert len(entries(env.fl, "authz.denied", "ivy")) == before + 2 * len(others)
    n = len(entries(env.fl))
    for fid in mine:
        r = c.get(f"/api/v1/searches/{sid}/faces/{fid}/crop", headers=env.h("ivy"))
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert len(entries(env.fl)) == n  # thumbnails: the search entry already lists them
    fid = next(iter(mine))
    r = c.get(f"/api/v1/searches/{sid}/faces/{fid}/image", headers=env.h("ivy"))
    assert r.status_code == 200
    opened = entries(env.fl, "image.view")[-1]
    assert opened.details["search_id"] == sid and opened.details["face_id"] == fid
    assert opened.details["case_number"] == "CASE-1"
    # who may read the search sees its candidates; nobody else, admins included
    for user, status in (("ada", 200), ("sam", 200), ("ian", 403), ("sue", 403), ("root", 403)):
        r = c.get(f"/api/v1/searches/{sid}/faces/{fid}/crop", headers=env.h(user))
        assert r.status_code == status, (user, r.text)


def test_candidates_close_after_the_view_window(env: Env) -> None:
    """#11 item 1: crops are served only while the search is within its retention window."""
    sid = env.search(top_k=1).json()["search_id"]
    rec = env.client.get(f"/api/v1/searches/{sid}", headers=env.h("ivy")).json()
    fid = rec["results"][0]["candidates"][0][0]
    url = f"/api/v1/searches/{sid}/faces/{fid}/crop"
    assert env.client.get(url, headers=env.h("ivy")).status_code == 200
    ivy = env.fl.login("ivy", PW)
    assert env.fl.get_search(ivy, sid)["results_viewable"]  # what the record page shows
    raw = RawDB(env.fl.data_dir)
    raw.execute(
        "update searches set created_at = ? where id = ?", ("2020-01-01T00:00:00+00:00", sid)
    )
    raw.commit()
    raw.close()
    r = env.client.get(url, headers=env.h("ivy"))
    assert r.status_code == 403 and r.json()["code"] == "results-expired"
    assert entries(env.fl, "authz.denied", "ivy")[-1].details["reason"] == "results-expired"
    assert not env.fl.get_search(ivy, sid)["results_viewable"]


def test_a_search_view_is_one_entry_listing_its_candidates(env: Env) -> None:
    """#11 item 9: one ledger entry per search view, naming the candidates shown."""
    res = env.search(top_k=3).json()
    sid = res["search_id"]
    n = len(entries(env.fl))
    r = env.client.get(f"/api/v1/searches/{sid}", headers=env.h("ada"))
    assert r.status_code == 200
    for face in r.json()["results"]:
        for fid, _ in face["candidates"]:
            url = f"/api/v1/searches/{sid}/faces/{fid}/crop"
            assert env.client.get(url, headers=env.h("ada")).status_code == 200
    new = entries(env.fl)[n:]
    assert [e.action for e in new] == ["search.view"]
    assert set(new[0].details["candidates"]) == candidate_ids(res)


# -- 2. no impersonation ----------------------------------------------------------------------


def test_nobody_creates_a_token_for_someone_else(env: Env, tmp_path: Path) -> None:
    """#11 item 2: POST /tokens {"user": "ivy"} as admin returned ivy's working token."""
    r = env.client.post("/api/v1/tokens", headers=env.h("root"), json={"user": "ivy"})
    assert r.status_code == 403 and r.json()["code"] == "impersonation"
    assert "secret" not in r.json()
    denied = entries(env.fl, "authz.denied", "root")[-1]
    assert denied.target == "ivy" and denied.details["reason"] == "impersonation"
    with pytest.raises(RefusedError):
        env.fl.create_token(env.fl.login("root", PW), "ivy")
    mine = env.client.post("/api/v1/tokens", headers=env.h("root"), json={"user": "root"})
    assert mine.status_code == 201 and mine.json()["user"] == "root"
    runner = CliRunner()
    base = ["--data-dir", str(env.fl.data_dir)]
    envvars = {"FACELEDGER_PASSWORD": PW}
    cli = runner.invoke(
        cli_app, ["tokens", "create", "--user", "ivy", "--as", "root", *base], env=envvars
    )
    assert cli.exit_code != 0 and "flt_" not in cli.output
    cli = runner.invoke(cli_app, ["tokens", "create", "--as", "ivy", *base], env=envvars)
    assert cli.exit_code == 0, cli.output
    secret = cli.output.strip().splitlines()[-1]
    assert env.fl.authenticate_token(secret, record_use=False).username == "ivy"


# -- 3. no self-granted roles -------------------------------------------------------------------


def test_nobody_changes_their_own_roles_or_unit(env: Env) -> None:
    """#11 item 3: an admin could make themselves an investigator (or move units)."""
    c = env.client
    r = c.patch(
        "/api/v1/users/root", headers=env.h("root"), json={"roles": ["admin", "investigator"]}
    )
    assert r.status_code == 403 and r.json()["code"] == "self-roles"
    r = c.patch("/api/v1/users/root", headers=env.h("root"), json={"unit": "north"})
    assert r.status_code == 403 and r.json()["code"] == "self-unit"
    me = next(
        u for u in c.get("/api/v1/users", headers=env.h("root")).json() if u["username"] == "root"
    )
    assert me["roles"] == ["admin"] and me["unit"] is None
    assert [e.details["reason"] for e in entries(env.fl, "authz.denied", "root")[-2:]] == [
        "self-roles",
        "self-unit",
    ]
    # another admin may
    r = c.patch("/api/v1/users/nat", headers=env.h("ari"), json={"unit": "east"})
    assert r.status_code == 200
    change = entries(env.fl, "user.set_unit")[-1]
    assert change.actor == "ari" and change.details == {"old": None, "new": "east"}
    r = c.patch("/api/v1/users/nat", headers=env.h("ari"), json={"unit": ""})
    assert r.status_code == 200


# -- 4. supervisors decide only for their unit -------------------------------------------------


def test_supervisors_decide_only_for_their_unit(env: Env) -> None:
    """#11 item 4: a north supervisor approved a south request; a unit-less one any."""
    c = env.client
    fraud = {**CASE, "case_number": "SOUTH-1", "purpose": "identity-fraud"}
    rid = c.post("/api/v1/cases", headers=env.h("ian"), json=fraud).json()["id"]  # south
    for user, code in (("sam", "other-unit"), ("nat", "no-unit")):
        r = c.post(f"/api/v1/cases/{rid}/approve", headers=env.h(user), json={})
        assert r.status_code == 403 and r.json()["code"] == code, r.text
        assert entries(env.fl, "authz.denied", user)[-1].details["reason"] == code
    assert rid not in [r["id"] for r in c.get("/api/v1/cases", headers=env.h("sam")).json()]
    assert c.get("/api/v1/cases", headers=env.h("nat")).json() == []
    r = c.post(f"/api/v1/cases/{rid}/approve", headers=env.h("sue"), json={"note": "ok"})
    assert r.status_code == 200
    assert env.search("ian", **fraud, request_id=str(rid)).status_code == 200


# -- 5. an approval is bound to its case and purpose, and it ends --------------------------------


def _approved(env: Env, case: str, purpose: str = "identity-fraud", **decision: Any) -> int:
    c = env.client
    body = {**CASE, "case_number": case, "purpose": purpose}
    rid = int(c.post("/api/v1/cases", headers=env.h("ivy"), json=body).json()["id"])
    r = c.post(f"/api/v1/cases/{rid}/approve", headers=env.h("sam"), json=decision)
    assert r.status_code == 200, r.text
    return rid


def test_an_approval_covers_only_its_case_and_purpose(env: Env) -> None:
    """#11 item 5: any case (and any purpose) could ride on an approved request."""
    rid = _approved(env, "BOUND-1")
    ok = env.search(case_number="BOUND-1", purpose="identity-fraud", request_id=str(rid))
    assert ok.status_code == 200
    assert ok.json()["search_id"] > 0
    for fields in (
        {"case_number": "OTHER-9", "purpose": "identity-fraud"},  # another case
        {"case_number": "BOUND-1", "purpose": "violent-crime"},  # no approval needed, but quoted
        {"case_number": "OTHER-9", "purpose": "violent-crime"},
    ):
        r = env.search(**fields, request_id=str(rid))
        assert r.status_code == 403 and r.json()["code"] == "not-approved", (fields, r.text)
        assert "not case" in r.json()["message"]
    r = env.verify(case_number="OTHER-9", purpose="identity-fraud", request_id=str(rid))
    assert r.status_code == 403 and r.json()["code"] == "not-approved"


def test_approvals_expire_run_out_and_can_be_withdrawn(env: Env) -> None:
    """#11 item 5: an approval has an expiry (policy approval_days), optionally a search
    limit, and a supervisor can withdraw it."""
    c = env.client
    fields = {"case_number": "LIMIT-1", "purpose": "identity-fraud"}
    rid = _approved(env, "LIMIT-1", search_limit=2)
    row = next(r for r in c.get("/api/v1/cases", headers=env.h("ivy")).json() if r["id"] == rid)
    assert row["search_limit"] == 2 and row["expires_at"] > row["decided_at"]
    assert env.search(**fields, request_id=str(rid)).status_code == 200
    assert env.verify(**fields, request_id=str(rid)).status_code == 200  # verify counts too
    r = env.search(**fields, request_id=str(rid))
    assert r.status_code == 403 and "all used" in r.json()["message"]

    rid = _approved(env, "EXPIRE-1")
    raw = RawDB(env.fl.data_dir)
    (ends,) = raw.execute("select expires_at from case_requests where id = ?", (rid,)).fetchone()
    set_end = "update case_requests set expires_at = ? where id = ?"
    raw.execute(set_end, ("2001-01-01T00:00:00+00:00", rid))  # as if 25 years had passed
    raw.commit()
    r = env.search(case_number="EXPIRE-1", purpose="identity-fraud", request_id=str(rid))
    assert r.status_code == 403 and "expired" in r.json()["message"]
    raw.execute(set_end, (ends, rid))  # as the approval recorded it (audit verify checks)
    raw.commit()
    raw.close()

    rid = _approved(env, "WITHDRAW-1")
    fields = {"case_number": "WITHDRAW-1", "purpose": "identity-fraud", "request_id": str(rid)}
    assert env.search(**fields).status_code == 200
    r = c.post(f"/api/v1/cases/{rid}/withdraw", headers=env.h("sue"), json={"note": "no"})
    assert r.status_code == 403 and r.json()["code"] == "other-unit"
    r = c.post(f"/api/v1/cases/{rid}/withdraw", headers=env.h("sam"), json={"note": "closed"})
    assert r.status_code == 200
    r = env.search(**fields)
    assert r.status_code == 403 and "withdrawn" in r.json()["message"]
    assert entries(env.fl, "case.withdraw")[-1].details["request_id"] == rid


def test_a_denied_case_needs_a_new_approval(env: Env) -> None:
    """#11 item 5: a case whose request was denied was searched under another purpose."""
    c = env.client
    body = {**CASE, "case_number": "DENIED-1", "purpose": "identity-fraud"}
    rid = c.post("/api/v1/cases", headers=env.h("ivy"), json=body).json()["id"]
    assert c.post(f"/api/v1/cases/{rid}/deny", headers=env.h("sam"), json={}).status_code == 200
    r = env.search(case_number="DENIED-1", purpose="violent-crime")  # needs no approval itself
    assert r.status_code == 403 and "denied" in r.json()["message"]
    rid2 = _approved(env, "DENIED-1", "violent-crime")
    r = env.search(case_number="DENIED-1", purpose="violent-crime", request_id=str(rid2))
    assert r.status_code == 200


# -- 6. verify and detect are counted ---------------------------------------------------------


def test_verify_counts_in_the_daily_quota(env: Env) -> None:
    """#11 item 6: 1:1 verify escaped the quota; it is stored and counted like a search."""
    ivy = env.fl.login("ivy", PW)
    done = env.fl.comparisons_today(ivy.user_id)
    env.policy(daily_quota=done + 2)
    try:
        assert env.verify().status_code == 200
        assert env.verify().status_code == 200
        r = env.verify()
        assert r.status_code == 429 and r.json()["code"] == "quota-exceeded"
        r = env.search()
        assert r.status_code == 429 and r.json()["code"] == "quota-exceeded"
    finally:
        env.policy(daily_quota=0)
    raw = RawDB(env.fl.data_dir)
    try:
        rows = list(raw.execute("select id, case_number, outcome from verifications"))
    finally:
        raw.close()
    last = entries(env.fl, "verify")[-1]
    assert last.details["verify_id"] == max(r[0] for r in rows)
    assert last.details["case_number"] == "CASE-1"


def test_detect_is_recorded_with_its_case_and_has_a_quota(env: Env) -> None:
    """#11 item 6: detect on a probe is recorded with the case it serves, and limited."""

    def detect(**data: str) -> Any:
        files = {"photo": ("p.jpg", env.photo(), "image/jpeg")}
        return env.client.post("/api/v1/detect", headers=env.h("ivy"), data=data, files=files)

    assert detect(case_number="CASE-7").status_code == 200
    e = entries(env.fl, "probe.detect")[-1]
    assert e.target == "CASE-7" and e.details["case_number"] == "CASE-7"
    env.policy(daily_detect_quota=len(entries(env.fl, "probe.detect", "ivy")))
    try:
        r = detect()
        assert r.status_code == 429 and r.json()["code"] == "quota-exceeded"
    finally:
        env.policy(daily_detect_quota=200)


# -- 7. the justification is in the chain ---------------------------------------------------------


def test_case_fields_and_justification_hash_are_in_the_chain(env: Env) -> None:
    """#11 item 7 (the writers): every search, verify and case request carries the case
    number, the purpose and the SHA-256 of the justification."""
    why = "a justification that the ledger must pin down"
    res = env.search(justification=why).json()
    digest = hashlib.sha256(why.encode()).hexdigest()
    s = entries(env.fl, "search")[-1]
    assert s.details["search_id"] == res["search_id"]
    assert (s.details["case_number"], s.details["purpose"]) == ("CASE-1", "violent-crime")
    assert s.details["justification_sha256"] == digest
    assert env.verify(justification=why).status_code == 200
    assert entries(env.fl, "verify")[-1].details["justification_sha256"] == digest
    body = {**CASE, "case_number": "HASH-1", "purpose": "identity-fraud", "justification": why}
    env.client.post("/api/v1/cases", headers=env.h("ivy"), json=body)
    req = entries(env.fl, "case.request")[-1]
    assert req.details["justification_sha256"] == digest and req.details["case_number"] == "HASH-1"


# -- 8. nothing user-supplied bloats the ledger ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind", "payload"),
    [
        ("/api/v1/searches", "form", {**CASE, "case_number": "C" * 900_000}),
        ("/api/v1/searches", "form", {**CASE, "justification": "j" * (MAX_JUSTIFICATION + 1)}),
        ("/api/v1/searches", "form", {**CASE, "purpose": "p" * 65}),
        ("/api/v1/verify", "form", {**CASE, "case_number": "C" * 65}),
        ("/api/v1/detect", "form", {"case_number": "C" * 65}),
        ("/api/v1/cases", "json", {**CASE, "case_number": "C" * 900_000}),
        ("/api/v1/tokens", "json", {"name": "n" * 101}),
    ],
)
def test_long_input_is_refused_before_anything_is_stored(
    env: Env, path: str, kind: str, payload: dict[str, str]
) -> None:
    """#11 item 8: a 900 KB case number landed in permanent ledger rows."""
    n = len(entries(env.fl))
    photo = ("p.jpg", env.photo(), "image/jpeg")
    files = {"photo": photo} if "detect" in path else {"probe": photo}
    if "verify" in path:
        files = {"photo_a": photo, "photo_b": photo}
    user = "root" if "tokens" in path else "ivy"
    if kind == "form":
        r = env.client.post(path, headers=env.h(user), data=payload, files=files)
    else:
        r = env.client.post(path, headers=env.h(user), json=payload)
    assert r.status_code == 400 and r.json()["code"] == "too-long", r.text
    assert len(entries(env.fl)) == n


def test_long_text_that_reaches_the_ledger_is_clipped(env: Env) -> None:
    """#11 item 8 (second line of defence): a refusal naming a huge path stays small."""
    r = env.client.get("/api/v1/" + "x" * 50_000, headers=env.h("ivy"))
    assert r.status_code == 404
    env.fl.record(env.fl.login("ada", PW), "test.clip", "t" * 100_000, note="n" * 100_000)
    e = entries(env.fl, "test.clip")[-1]
    assert len(e.target) < 300 and len(e.details["note"]) < 2100
    assert "100000 characters" in e.target


def test_the_core_refuses_long_case_fields_without_recording(env: Env) -> None:
    """#11 item 8, in the core (the CLI calls it): no ledger row for over-long fields."""
    ivy = env.fl.login("ivy", PW)
    n = len(entries(env.fl))
    for req in (
        SearchRequest("C" * 65, "violent-crime", "long enough justification"),
        SearchRequest("C-1", "violent-crime", "j" * 2001),
    ):
        with pytest.raises(RefusedError) as exc:
            env.fl.search(ivy, env.photo(), req)
        assert exc.value.code == "too-long"
    with pytest.raises(RefusedError):
        env.fl.request_case(ivy, "C" * 900_000, "identity-fraud", "long enough justification")
    assert len(entries(env.fl)) == n


# -- 16. smaller ones -----------------------------------------------------------------------------


def test_stats_show_paths_to_admins_only(env: Env) -> None:
    """#11 item 16: /stats showed the data dir's absolute path to every role."""
    for user in ("ivy", "sam", "ada"):
        doc = env.client.get("/api/v1/stats", headers=env.h(user)).json()
        assert "data_dir" not in doc and str(env.fl.data_dir) not in str(doc)
    assert env.client.get("/api/v1/stats", headers=env.h("root")).json()["data_dir"]


def test_data_dir_files_are_private(env: Env) -> None:
    """#11 item 16: policy.json, index files and the database were world-readable."""
    env.search()  # builds and saves the index
    data = env.fl.data_dir
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    loose = []
    for p in data.rglob("*"):
        if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o077:
            loose.append(f"{p.relative_to(data)} {oct(stat.S_IMODE(p.stat().st_mode))}")
    assert (data / "policy.json").is_file()
    assert (data / "gallery.db").is_file() or (data / "database.json").is_file()
    assert not loose, loose


def test_audit_verify_agrees_with_every_writer_and_catches_a_forged_justification(
    env: Env,
) -> None:
    """#11 item 7, end to end: after searches, verifications, requests, approvals (with
    limits), denials and withdrawals through the API, `audit verify` finds every record in
    agreement with the chain; `UPDATE searches SET justification=...` then fails it."""
    c = env.client
    rid = _approved(env, "E2E-1", search_limit=3)
    fields = {"case_number": "E2E-1", "purpose": "identity-fraud", "request_id": str(rid)}
    assert env.search(**fields).status_code == 200
    assert env.verify(**fields).status_code == 200
    c.post(f"/api/v1/cases/{rid}/withdraw", headers=env.h("sam"), json={"note": "done"})
    body = {**CASE, "case_number": "E2E-2", "purpose": "identity-fraud"}
    rid2 = c.post("/api/v1/cases", headers=env.h("ivy"), json=body).json()["id"]
    c.post(f"/api/v1/cases/{rid2}/deny", headers=env.h("sam"), json={"note": "no"})
    sid = env.search(justification="the real reason for this search").json()["search_id"]
    ok = c.get("/api/v1/audit/verify", headers=env.h("ada")).json()
    assert ok["ok"] and ok["mismatch_count"] == 0, ok["mismatches"]
    raw = RawDB(env.fl.data_dir)
    raw.execute("update searches set justification = ? where id = ?", ("forged reason", sid))
    raw.commit()
    raw.close()
    bad = c.get("/api/v1/audit/verify", headers=env.h("ada")).json()
    assert not bad["ok"] and bad["mismatch_count"] == 1
    assert bad["mismatches"][0]["table"] == "searches" and bad["mismatches"][0]["row_id"] == sid
    raw = RawDB(env.fl.data_dir)
    raw.execute(
        "update searches set justification = ? where id = ?",
        ("the real reason for this search", sid),
    )
    raw.commit()
    raw.close()
    assert c.get("/api/v1/audit/verify", headers=env.h("ada")).json()["ok"]


def test_admins_see_and_clear_a_login_back_off(env: Env) -> None:
    """#11 item 11: the admin's user list shows a back-off (no account lock) and an unlock
    clears it."""
    from faceledger.accounts.auth import AuthError

    for _ in range(5):
        with pytest.raises(AuthError):
            env.fl.login("ian", "not the password", address="203.0.113.9")
    users = {
        u["username"]: u for u in env.client.get("/api/v1/users", headers=env.h("root")).json()
    }
    assert users["ian"]["locked_until"] and not users["ivy"]["locked_until"]
    assert env.fl.login("ian", PW, address="198.51.100.1").username == "ian"  # elsewhere: fine
    r = env.client.post("/api/v1/users/ian/unlock", headers=env.h("root"))
    assert r.status_code == 200
    users = {
        u["username"]: u for u in env.client.get("/api/v1/users", headers=env.h("root")).json()
    }
    assert users["ian"]["locked_until"] is None
