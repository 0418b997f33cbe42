"""Authorisation cells that the role matrix in test_api.py does not cover.

test_api.py checks every endpoint x role (denials in the ledger) and every endpoint without
credentials (401). Here: every endpoint with each kind of bad credential (none, a malformed
header, an unknown, expired or revoked token, a disabled user's token), each refusal in the
ledger with its reason; object-level denials (another user's search or tokens, approving
one's own case request); wrong passwords, unknown users, disabled accounts and the login
back-off at the web login and in the CLI; and that refusals cannot flood the ledger.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import RawDB, lfw_image
from conftest_api import PW, entries, own_token, seed
from faceledger.core import Faceledger
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests another httpx package; irrelevant here
    from fastapi.testclient import TestClient

CASE = {
    "case_number": "CASE-7",
    "purpose": "violent-crime",
    "justification": "CCTV still from the robbery",
}
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)


@dataclass
class Env:
    fl: Faceledger
    client: TestClient
    tokens: dict[str, str]  # user: secret of a good token
    bad: dict[str, tuple[int, str]]  # kind: (token id, secret)
    lfw: Path

    def h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def ledger_len(self) -> int:
        return len(entries(self.fl))


@pytest.fixture(scope="module")
def env(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("authz")
    fl = seed(lfw, base, analyzer)
    root = fl.login("root", PW)
    fl.add_user(root, "sue", PW, "supervisor", "south")  # a supervisor of another unit
    fl.add_user(root, "vic", PW, ["investigator", "supervisor"], "north")  # may not self-approve
    fl.add_user(root, "dan", PW, "investigator", "north")  # disabled below
    fl.add_user(root, "lou", PW, "auditor")  # backed off below
    users = ("root", "ivy", "ian", "sam", "sue", "vic", "ada")
    tokens = {u: own_token(fl, u, "good")[1] for u in users}
    bad = {
        "expired": own_token(fl, "ivy", "old", days=1),
        "revoked": own_token(fl, "ivy", "gone"),
        "disabled": own_token(fl, "dan", "dan's"),
    }
    raw = RawDB(fl.data_dir)
    raw.execute(
        "update tokens set expires_at = '2001-01-01T00:00:00+00:00' where id = ?",
        (bad["expired"][0],),
    )
    raw.commit()
    raw.close()
    fl.revoke_token(root, bad["revoked"][0])
    fl.set_disabled(root, "dan", True)
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as client:
        yield Env(fl, client, tokens, bad, lfw)


def _operations(env: Env) -> list[tuple[str, str]]:
    spec = env.client.get("/openapi.json").json()
    ops = [
        (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
        for path, methods in spec["paths"].items()
        if path != "/api/v1/health"
        for method in methods
    ]
    assert len(ops) >= 30
    return ops


# -- every endpoint x every kind of bad credential ------------------------------------------------

CREDENTIALS = {
    # kind: (headers, ledger action, reason recorded)
    "none": (lambda env: {}, "auth.missing", "no credentials"),
    "not bearer": (
        lambda env: {"Authorization": "Basic cm9vdDpwdw=="},
        "auth.missing",
        "no credentials",
    ),
    "unknown token": (
        lambda env: {"Authorization": "Bearer flt_not-a-real-token"},
        "token.rejected",
        "unknown token",
    ),
    "expired token": (
        lambda env: {"Authorization": f"Bearer {env.bad['expired'][1]}"},
        "token.rejected",
        "token expired",
    ),
    "revoked token": (
        lambda env: {"Authorization": f"Bearer {env.bad['revoked'][1]}"},
        "token.rejected",
        "token revoked",
    ),
    "disabled user": (
        lambda env: {"Authorization": f"Bearer {env.bad['disabled'][1]}"},
        "token.rejected",
        "account disabled",
    ),
}


@pytest.mark.parametrize("kind", list(CREDENTIALS))
def test_every_endpoint_refuses_bad_credentials_and_records_it(env: Env, kind: str) -> None:
    headers, action, reason = CREDENTIALS[kind]
    problems = []
    for method, url in _operations(env):
        before = env.ledger_len()
        r = env.client.request(method, url, headers=headers(env))
        if r.status_code != 401 or r.json().get("code") != "unauthenticated":
            problems.append(f"{method} {url}: {r.status_code} {r.text[:120]}")
            continue
        new = entries(env.fl)[before:]
        if [e.action for e in new] != [action]:
            problems.append(f"{method} {url}: ledger got {[e.action for e in new]}")
            continue
        entry = new[0]
        if entry.details.get("reason") != reason:
            problems.append(f"{method} {url}: recorded reason {entry.details}")
        if action == "auth.missing" and entry.target != url:
            problems.append(f"{method} {url}: recorded target {entry.target!r}")
        known = env.bad.get(kind.split()[0])
        if known is not None and entry.details.get("token_id") != known[0]:
            problems.append(f"{method} {url}: the token is not named: {entry.details}")
    assert not problems, "\n".join(problems)


def test_a_bad_credential_never_reaches_the_core(env: Env) -> None:
    """Nothing but the refusal happens: a search with an expired token compares nothing."""
    searches = len(entries(env.fl, "search"))
    r = env.client.post(
        "/api/v1/searches",
        headers={"Authorization": f"Bearer {env.bad['expired'][1]}"},
        data=CASE,
        files={"probe": ("p.jpg", lfw_image(env.lfw, "Al_Gore", 2).read_bytes(), "image/jpeg")},
    )
    assert r.status_code == 401 and "expired" in r.json()["message"]
    assert len(entries(env.fl, "search")) == searches


# -- object-level denials ------------------------------------------------------------------------


def _denied(env: Env, user: str, call: Any, permission: str) -> Any:
    """``call`` by ``user`` is refused with 403 and one authz.denied entry naming the token."""
    before = len(entries(env.fl, "authz.denied", user))
    r = call(env.h(user))
    assert r.status_code == 403, r.text
    denied = entries(env.fl, "authz.denied", user)
    assert len(denied) == before + 1, "the denial is not in the ledger"
    assert denied[-1].details["permission"] == permission
    assert denied[-1].details["token_id"]
    return r


def test_object_level_denials_are_recorded(env: Env) -> None:
    c = env.client
    photo = ("p.jpg", lfw_image(env.lfw, "Al_Gore", 2).read_bytes(), "image/jpeg")
    r = c.post("/api/v1/searches", headers=env.h("ivy"), data=CASE, files={"probe": photo})
    assert r.status_code == 200, r.text
    search = f"/api/v1/searches/{r.json()['search_id']}"
    _denied(env, "ian", lambda h: c.get(search, headers=h), "view_search")  # other unit
    _denied(env, "sue", lambda h: c.get(search, headers=h), "view_search")  # other unit
    assert c.get(search, headers=env.h("sam")).status_code == 200  # ivy's own supervisor
    assert entries(env.fl, "search.view", "sam")

    ivy_tokens = c.get("/api/v1/tokens", headers=env.h("ivy")).json()
    good = next(t["id"] for t in ivy_tokens if t["name"] == "good")
    _denied(env, "ian", lambda h: c.delete(f"/api/v1/tokens/{good}", headers=h), "manage_users")
    assert c.get("/api/v1/me", headers=env.h("ivy")).status_code == 200  # not revoked
    _denied(
        env,
        "ian",
        lambda h: c.post("/api/v1/tokens", headers=h, json={"user": "ivy"}),
        "create_token",
    )
    _denied(env, "ian", lambda h: c.get("/api/v1/tokens?user=ivy", headers=h), "manage_users")


def test_approving_ones_own_request_is_refused_and_recorded(env: Env) -> None:
    c = env.client
    case = {**CASE, "case_number": "FRAUD-77", "purpose": "identity-fraud"}
    r = c.post("/api/v1/cases", headers=env.h("vic"), json=case)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    before = env.ledger_len()
    r = c.post(f"/api/v1/cases/{rid}/approve", headers=env.h("vic"), json={"note": "mine"})
    assert r.status_code == 403 and r.json()["code"] == "self-approval"
    new = entries(env.fl)[before:]
    assert [e.action for e in new] == ["authz.denied"], "the refusal is not in the ledger"
    assert new[0].details["reason"] == "self-approval" and new[0].details["token_id"]
    pending = c.get("/api/v1/cases?status=pending", headers=env.h("sam")).json()
    assert rid in [p["id"] for p in pending]  # still undecided
    assert c.post(f"/api/v1/cases/{rid}/approve", headers=env.h("sam")).status_code == 200


# -- passwords: web login and CLI -----------------------------------------------------------------


def _web_login(client: TestClient, user: str, password: str) -> Any:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": token},
        follow_redirects=False,
    )


@pytest.mark.parametrize(
    ("user", "password", "reason", "says"),
    [
        ("ivy", "not the password", "wrong password", "wrong user name or password"),
        ("nobody", PW, "unknown user", "wrong user name or password"),
        ("dan", PW, "account disabled", "wrong user name or password"),  # #11 item 11
    ],
)
def test_web_login_refusals_are_recorded(
    env: Env, user: str, password: str, reason: str, says: str
) -> None:
    with TestClient(env.client.app) as browser:
        before = env.ledger_len()
        r = _web_login(browser, user, password)
        assert r.status_code == 401 and says in r.text.lower()
        assert "faceledger_session" not in r.headers.get("set-cookie", "")
        assert browser.get("/api/v1/me").status_code == 401
    new = [e for e in entries(env.fl)[before:] if e.action != "auth.missing"]
    assert [(e.action, e.actor, e.details.get("reason")) for e in new] == [
        ("login.failed", user, reason)
    ]


def test_backoff_after_repeated_wrong_passwords(env: Env) -> None:
    """#11 item 11: five failures make (lou, this address) wait with a 429 and Retry-After;
    no account lock; an admin's unlock (recorded) clears it."""
    with TestClient(env.client.app) as browser:
        for _ in range(5):
            assert _web_login(browser, "lou", "wrong password!").status_code == 401
        r = _web_login(browser, "lou", PW)  # the right password, but this pair must wait
        assert r.status_code == 429 and 50 <= int(r.headers["retry-after"]) <= 60
        assert "too many failed logins" in r.text.lower()
        assert browser.get("/api/v1/me").status_code == 401
        unlock = browser.post("/api/v1/users/lou/unlock", headers=env.h("root"))
        assert unlock.status_code == 200, unlock.text
        assert _web_login(browser, "lou", PW).status_code == 303
    acts = [(e.action, e.details.get("reason")) for e in entries(env.fl, actor="lou")]
    assert acts.count(("login.failed", "wrong password")) == 5
    assert "user.locked" not in [a for a, _ in acts] and acts[5] == ("login", None)
    unlock_entry = entries(env.fl, "user.unlock")[-1]
    assert (unlock_entry.actor, unlock_entry.target) == ("root", "lou")


@pytest.mark.parametrize(
    ("env_vars", "reason", "action"),
    [
        ({"FACELEDGER_PASSWORD": "not the password"}, "wrong password", "login.failed"),
        ({"FACELEDGER_TOKEN": "expired"}, "token expired", "token.rejected"),
        ({"FACELEDGER_TOKEN": "revoked"}, "token revoked", "token.rejected"),
    ],
)
def test_cli_refusals_are_recorded(
    env: Env, env_vars: dict[str, str], reason: str, action: str
) -> None:
    from faceledger.cli import app

    args = ["stats", "--data-dir", str(env.fl.data_dir)]
    if "FACELEDGER_TOKEN" in env_vars:
        env_vars = {"FACELEDGER_TOKEN": env.bad[env_vars["FACELEDGER_TOKEN"]][1]}
    else:
        args += ["--as", "ivy"]
    before = env.ledger_len()
    r = CliRunner().invoke(app, args, env={"FACELEDGER_USER": None, **env_vars})
    assert r.exit_code == 3, r.output
    new = entries(env.fl)[before:]
    assert [(e.action, e.details.get("reason")) for e in new] == [(action, reason)]


# -- refusals cannot flood the ledger --------------------------------------------------------------


def test_anonymous_refusals_are_recorded_without_flooding(env: Env) -> None:
    settings = ApiSettings(login_rate_per_minute=6, login_rate_burst=2)
    app = create_app(env.fl.data_dir, faceledger=env.fl, settings=settings)
    with TestClient(app) as c:
        before = len(entries(env.fl, "auth.missing"))
        statuses = [c.get("/api/v1/stats").status_code for _ in range(5)]
        assert statuses == [401] * 5  # always refused, never locked out for it
        assert len(entries(env.fl, "auth.missing")) == before + 2  # then only counted
        assert c.get("/api/v1/stats", headers=env.h("ada")).status_code == 200
