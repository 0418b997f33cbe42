"""Logins that neither leak nor lock out, unambiguous user names, one ledger entry per
login, and changing one's own password (#11 items 11, 12, 8 and 9 in part, 16 in part).

A small data dir without a gallery: these rules are about users, not faces.
"""

from __future__ import annotations

import re
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import RawDB
from conftest_api import entries, live_server
from faceledger.accounts.auth import AuthError, LoginThrottled, PermissionDenied
from faceledger.core import Faceledger, RefusedError
from faceledger.http.app import create_app
from faceledger.http.settings import ApiSettings
from faceledger.ledger import audit

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette suggests another httpx package; irrelevant here
    from fastapi.testclient import TestClient

PW = "correct horse battery"
NEW_PW = "a brand new passphrase"
NO_LIMITS = ApiSettings(rate_per_minute=0, search_rate_per_minute=0, login_rate_per_minute=0)


@pytest.fixture(autouse=True)
def production_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Login timing is measured at the cost a deployment runs (argon2-cffi's default)."""
    monkeypatch.delenv("FACELEDGER_ARGON2", raising=False)


@pytest.fixture
def fl(tmp_path: Path) -> Faceledger:
    f = Faceledger(tmp_path / "data")
    root = f.init_admin("root", PW)
    f.add_user(root, "ivy", PW, "investigator", "north")
    f.add_user(root, "ada", PW, "auditor")
    f.add_user(root, "dan", PW, "investigator", "north")
    f.set_disabled(root, "dan", True)
    return f


def ledger_len(f: Faceledger) -> int:
    return audit.count(f.store)


def refusal(fn: Callable[[], Any]) -> Exception:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("not refused")


def web_login(client: Any, user: str, password: str = PW, **headers: str) -> Any:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": token},
        headers=headers,
        follow_redirects=False,
    )


def cli(data_dir: Path, *args: str, **env: str | None) -> Any:
    from faceledger.cli import app

    base = {"FACELEDGER_USER": None, "FACELEDGER_TOKEN": None, "FACELEDGER_PASSWORD": None}
    return CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)], env=base | env)


# -- item 11: no leak, no lock-out -----------------------------------------------------------------


def test_refusals_read_alike_and_take_alike(fl: Faceledger) -> None:
    """#11 item 11: unknown user, wrong password and disabled account give one message and
    take as long (medians within a factor 1.5); throttled attempts, for an existing and an
    unknown name alike, too; the ledger keeps the real reasons."""
    for name in ("ivy", "nobody"):  # make both pairs wait: the "locked" case
        for _ in range(5):
            with pytest.raises(AuthError):
                fl.login(name, "wrong password!", "10.9.9.9")
    n = iter(range(1000))

    def unknown() -> Exception:
        return refusal(lambda: fl.login("nobody", PW, f"10.1.0.{next(n)}"))

    def wrong() -> Exception:
        return refusal(lambda: fl.login("ivy", "wrong password!", f"10.2.0.{next(n)}"))

    def disabled() -> Exception:
        return refusal(lambda: fl.login("dan", PW, f"10.3.0.{next(n)}"))

    def throttled_user() -> Exception:
        return refusal(lambda: fl.login("ivy", PW, "10.9.9.9"))

    def throttled_unknown() -> Exception:
        return refusal(lambda: fl.login("nobody", PW, "10.9.9.9"))

    cases = {
        "unknown": unknown,
        "wrong": wrong,
        "disabled": disabled,
        "throttled user": throttled_user,
        "throttled unknown": throttled_unknown,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    said: dict[str, set[str]] = {k: set() for k in cases}
    for _ in range(10):  # round robin: a busy machine slows every case alike
        for kind, attempt in cases.items():
            t = time.perf_counter()
            exc = attempt()
            times[kind].append(time.perf_counter() - t)
            assert isinstance(exc, AuthError)
            assert isinstance(exc, LoginThrottled) == kind.startswith("throttled")
            said[kind].add(re.sub(r"\d+ s$", "N s", str(exc).split(": ", 1)[-1]))
    assert said["unknown"] == said["wrong"] == said["disabled"]
    assert said["throttled user"] == said["throttled unknown"]
    medians = {k: statistics.median(v) for k, v in times.items()}
    assert max(medians.values()) < 1.5 * min(medians.values()), medians
    reasons = {e.details["reason"] for e in entries(fl, "login.failed")}
    assert reasons == {"unknown user", "wrong password", "account disabled"}


def test_backoff_is_per_name_and_address_and_grows(fl: Faceledger) -> None:
    """#11 item 11: after 5 failures one (name, address) pair waits, growing 60, 120 s...;
    the same user from another address logs in; unknown names wait the same way; no
    account lock; an admin's unlock clears it and is recorded."""
    for _ in range(4):
        with pytest.raises(AuthError):
            fl.login("ivy", "wrong password!", "198.51.100.7")
    assert fl.login("ivy", PW, "198.51.100.7").username == "ivy"  # a success resets
    for _ in range(5):
        exc = refusal(lambda: fl.login("ivy", "wrong password!", "198.51.100.7"))
        assert type(exc) is AuthError
    first = refusal(lambda: fl.login("ivy", PW, "198.51.100.7"))
    assert isinstance(first, LoginThrottled) and 55 <= first.retry_after <= 60
    assert fl.login("ivy", PW, "203.0.113.9").username == "ivy"  # another address: fine
    for _ in range(5):
        refusal(lambda: fl.login("nobody", "wrong password!", "198.51.100.7"))
    ghost = refusal(lambda: fl.login("nobody", PW, "198.51.100.7"))
    assert isinstance(ghost, LoginThrottled)
    assert re.sub(r"\d+", "N", str(ghost)) == re.sub(r"\d+", "N", str(first))
    assert abs(ghost.retry_after - first.retry_after) <= 5
    # the wait is over (as if a minute had passed): one more failure waits twice as long
    raw = RawDB(fl.data_dir)
    raw.execute("update login_failures set blocked_until = '2001-01-01T00:00:00+00:00'")
    raw.commit()
    raw.close()
    refusal(lambda: fl.login("ivy", "wrong password!", "198.51.100.7"))
    second = refusal(lambda: fl.login("ivy", PW, "198.51.100.7"))
    assert isinstance(second, LoginThrottled) and 115 <= second.retry_after <= 120
    failed = entries(fl, "login.failed", "ivy")[-1].details
    assert failed["failures"] == 6 and failed["blocked_for"] == 120
    assert failed["address"] == "198.51.100.7"
    with pytest.raises(PermissionDenied):
        fl.unlock_user(fl.login("ada", PW), "ivy")
    root = fl.login("root", PW)
    assert fl.unlock_user(root, "IVY") == 1  # by name key; one (name, address) pair
    assert fl.login("ivy", PW, "198.51.100.7").username == "ivy"
    unlock = entries(fl, "user.unlock")[-1]
    assert (unlock.actor, unlock.target, unlock.details["cleared"]) == ("root", "ivy", 1)
    with pytest.raises(RefusedError) as nobody:
        fl.unlock_user(root, "nobody")
    assert nobody.value.code == "no-such-user"
    raw = RawDB(fl.data_dir)
    locked = raw.execute("select count(*) from users where locked_until is not null").fetchone()
    raw.close()
    assert locked[0] == 0 and "user.locked" not in {e.action for e in entries(fl)}


def test_cli_login_backoff_and_users_unlock(fl: Faceledger) -> None:
    """#11 item 11: the CLI logs in from the address "cli"; its back-off is cleared by
    `faceledger users unlock NAME`."""
    for _ in range(5):
        r = cli(fl.data_dir, "stats", "--as", "ivy", FACELEDGER_PASSWORD="wrong password!")
        assert r.exit_code == 3 and "wrong user name or password" in r.output
    r = cli(fl.data_dir, "stats", "--as", "ivy", FACELEDGER_PASSWORD=PW)
    assert r.exit_code == 3 and "too many failed logins" in r.output
    assert {e.details["address"] for e in entries(fl, "login.failed")} == {"cli"}
    r = cli(fl.data_dir, "users", "unlock", "ivy", "--as", "root", FACELEDGER_PASSWORD=PW)
    assert r.exit_code == 0, r.output
    assert entries(fl, "user.unlock")[-1].target == "ivy"
    r = cli(fl.data_dir, "stats", "--as", "ivy", FACELEDGER_PASSWORD=PW)
    assert r.exit_code == 0, r.output
    assert entries(fl, "login")[-1].details["address"] == "cli"


def test_forwarded_for_is_believed_only_from_named_proxies(fl: Faceledger) -> None:
    """#11 item 11: over a real socket, as `faceledger serve` runs: rotating X-Forwarded-For
    from 127.0.0.1 does not escape the per-address login limit by default; with 127.0.0.1
    named in FACELEDGER_TRUSTED_PROXIES the header gives the client's address (and
    X-Forwarded-Proto the cookie's Secure flag)."""
    limits = {"login_rate_per_minute": 6.0, "login_rate_burst": 2}

    def attempts(settings: ApiSettings) -> list[int]:
        app = create_app(fl.data_dir, faceledger=fl, settings=settings)
        with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            return [
                web_login(
                    http, "nobody", "guess", **{"X-Forwarded-For": f"192.0.2.{i}"}
                ).status_code
                for i in range(1, 5)
            ]

    assert attempts(ApiSettings(**limits)) == [401, 401, 429, 429]
    assert {e.details["address"] for e in entries(fl, "login.failed")} == {"127.0.0.1"}
    trusted = ApiSettings.from_env(
        {
            "FACELEDGER_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
            "FACELEDGER_LOGIN_RATE_PER_MINUTE": "6",
        }
    )
    assert trusted.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    trusted.login_rate_burst = 2
    before = len(entries(fl, "login.failed"))
    assert attempts(trusted) == [401] * 4
    seen = [e.details["address"] for e in entries(fl, "login.failed")[before:]]
    assert seen == [f"192.0.2.{i}" for i in range(1, 5)]
    app = create_app(fl.data_dir, faceledger=fl, settings=trusted)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        # the client's own claim, then the proxy's: the last untrusted hop counts
        r = web_login(
            http,
            "ivy",
            **{"X-Forwarded-For": "6.6.6.6, 198.51.100.1, 10.1.2.3", "X-Forwarded-Proto": "https"},
        )
        assert r.status_code == 303
        cookie = next(
            v for k, v in r.headers.multi_items() if k == "set-cookie" and "_session=" in v
        )
        assert "Secure" in cookie
    assert entries(fl, "login")[-1].details["address"] == "198.51.100.1"
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        ApiSettings.from_env({"FACELEDGER_TRUSTED_PROXIES": "proxy.example"})


# -- item 12 (and 8): user names ------------------------------------------------------------------


def test_user_names_are_unambiguous_and_bounded(fl: Faceledger) -> None:
    """#11 item 12 and item 8 (user names): NFKC + case-folded uniqueness, mixed scripts
    refused, at most 64 characters (nothing longer is stored or recorded), units too; login
    by the name's key."""
    root = fl.login("root", PW)
    cases = {
        "IVY": "user-exists",
        "Ivy": "user-exists",
        "іvy": "bad-username",  # Cyrillic і
        "ｉｖｙ": "bad-username",  # full-width
        "iv y": "bad-username",
        "x" * 65: "bad-username",
        "x" * 1_000_000: "bad-username",
    }
    before = ledger_len(fl)
    for name, code in cases.items():
        with pytest.raises(RefusedError) as refused:
            fl.add_user(root, name, PW, "investigator")
        assert refused.value.code == code, name[:20]
    with pytest.raises(RefusedError) as refused:
        fl.add_user(root, "ulla", PW, "investigator", unit="u" * 65)
    assert refused.value.code == "bad-unit"
    with pytest.raises(RefusedError) as refused:  # not even an authz.denied with 1 MB
        fl.add_user(fl.login("ada", PW), "y" * 1_000_000, PW, "investigator")
    assert ledger_len(fl) == before + 1  # ada's login
    assert fl.add_user(root, "x" * 64, PW, "auditor", unit="u" * 64)
    assert fl.add_user(root, "Ωμέγα", PW, "auditor")  # one script, not Latin: fine
    assert fl.add_user(root, "山田たろう", PW, "auditor")  # Han with kana: Japanese
    assert fl.login("IVY", PW).username == "ivy"  # looked up by key
    assert fl.login("ΩΜΈΓΑ", PW).username == "Ωμέγα"
    before = ledger_len(fl)
    with pytest.raises(RefusedError) as refused:
        fl.login("z" * 1_000_000, PW, "203.0.113.1")
    assert refused.value.code == "bad-username" and ledger_len(fl) == before
    # 64 characters whose NFKC form is 1,152: an ordinary refusal, its key kept bounded
    with pytest.raises(AuthError):
        fl.login("\ufdfa" * 64, PW, "203.0.113.1")
    assert fl.add_user(root, "ß" * 64, PW, "auditor")  # its key: 128 characters
    with pytest.raises(RefusedError):  # 64 characters, but 192 once composed (NFC)
        fl.add_user(root, "\ufb2c" * 64, PW, "auditor")
    raw = RawDB(fl.data_dir)
    keys = dict(raw.execute("select username, username_key from users").fetchall())
    longest = raw.execute("select max(length(username_key)) from login_failures").fetchone()
    raw.close()
    assert longest[0] == 200
    assert keys["ivy"] == "ivy" and keys["Ωμέγα"] == "ωμέγα"


def test_user_name_rules_over_http(fl: Faceledger) -> None:
    """#11 items 12 and 8: the API answers 409 user-exists / 400 bad-username; a 1 MB login
    name at the web form is a 400 and leaves no ledger row."""
    root = fl.login("root", PW)
    token = fl.create_token(root, "root")[1]
    h = {"Authorization": f"Bearer {token}"}
    user = {"password": PW, "roles": ["investigator"]}
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as c:
        r = c.post("/api/v1/users", json={"username": "IVY", **user}, headers=h)
        assert (r.status_code, r.json()["code"]) == (409, "user-exists")
        r = c.post("/api/v1/users", json={"username": "іvy", **user}, headers=h)
        assert (r.status_code, r.json()["code"]) == (400, "bad-username")
        before = ledger_len(fl)
        r = web_login(c, "w" * 1_000_000)
        assert r.status_code == 400 and "at most 64" in r.text
        assert ledger_len(fl) == before
        assert max(len(e.actor) for e in entries(fl)) <= 64


def test_older_database_gets_username_keys(fl: Faceledger) -> None:
    """#11 item 12: users of an older database (no username_key yet) get their keys, so
    "IVY" still finds ivy and may not be added beside her."""
    raw = RawDB(fl.data_dir)
    raw.execute("update users set username_key = null")
    raw.commit()
    raw.close()
    old = Faceledger(fl.data_dir)
    assert old.login("IVY", PW).username == "ivy"
    with pytest.raises(RefusedError) as refused:
        old.add_user(old.login("root", PW), "Ivy", PW, "investigator")
    assert refused.value.code == "user-exists"
    old.store.close()


# -- item 9 (part): one entry per login ------------------------------------------------------------


def test_web_login_writes_one_ledger_entry(fl: Faceledger) -> None:
    """#11 item 9: a web login is one `login` entry naming the session's token (no
    token.create, no token.use on the next requests); logout one token.revoke; API tokens
    keep their token.use."""
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as browser:
        before = ledger_len(fl)
        assert web_login(browser, "ivy").status_code == 303
        me = browser.get("/api/v1/me").json()
        assert browser.get("/account").status_code == 200
        new = entries(fl)[before:]
        assert [e.action for e in new] == ["login"]
        assert new[0].details["token_id"] == me["token_id"]
        assert new[0].details["token_name"] == "web-session"
        page = browser.get("/account").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        before = ledger_len(fl)
        assert browser.post("/logout", data={"csrf_token": csrf}).status_code in (200, 303)
        assert [e.action for e in entries(fl)[before:]] == ["token.revoke"]
        tid, secret = fl.create_token(fl.login("ivy", PW), "ivy", "tool")
        assert browser.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"}).is_success
        use = entries(fl)[-1]
        assert (use.action, use.details["token_id"]) == ("token.use", tid)


# -- item 16 (part): changing one's password -------------------------------------------------------


def test_change_own_password_core(fl: Faceledger) -> None:
    """#11 item 16: the core changes only the caller's own password, given the current one;
    a wrong current password is refused, recorded and backs off like a login; the user's
    other web sessions end."""
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as other:
        assert web_login(other, "ivy").status_code == 303
        ivy = fl.login("ivy", PW)
        with pytest.raises(RefusedError) as refused:
            fl.change_password(ivy, "not my password", NEW_PW, "203.0.113.5")
        assert refused.value.code == "wrong-password"
        assert entries(fl)[-1].action == "user.password_change_refused"
        with pytest.raises(ValueError):
            fl.change_password(ivy, PW, "short")
        ended = fl.change_password(ivy, PW, NEW_PW, "203.0.113.5")
        assert len(ended) == 1 and other.get("/api/v1/me").status_code == 401
    done = entries(fl, "user.password_change")[-1]
    assert (done.actor, done.target, done.details["ended_sessions"]) == ("ivy", "ivy", ended)
    with pytest.raises(AuthError):
        fl.login("ivy", PW)
    assert fl.login("ivy", NEW_PW).username == "ivy"
    for _ in range(5):
        refusal(lambda: fl.change_password(fl.login("ada", PW), "guess guess", NEW_PW, "x"))
    with pytest.raises(LoginThrottled):
        fl.change_password(fl.login("ada", PW), PW, NEW_PW, "x")


def test_change_password_page_and_cli(fl: Faceledger) -> None:
    """#11 item 16: the Account page's form and `faceledger account password` (any role);
    a form naming another user still changes only one's own password."""
    app = create_app(fl.data_dir, faceledger=fl, settings=NO_LIMITS)
    with TestClient(app) as browser:
        assert web_login(browser, "ivy").status_code == 303
        page = browser.get("/account").text
        assert 'action="/account/password"' in page
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        form = {"csrf_token": csrf, "current": PW, "new": NEW_PW, "confirm": NEW_PW}
        r = browser.post("/account/password", data=form | {"username": "root"})
        assert r.status_code == 200 and "Password changed" in r.text
        r = browser.post("/account/password", data={**form, "current": "wrong one!"})
        assert "current password is wrong" in r.text
    assert fl.login("ivy", NEW_PW).username == "ivy"
    assert fl.login("root", PW).username == "root"  # untouched
    r = cli(
        fl.data_dir,
        "account",
        "password",
        "--as",
        "ada",
        FACELEDGER_PASSWORD=PW,
        FACELEDGER_NEW_PASSWORD=NEW_PW,
    )
    assert r.exit_code == 0, r.output
    assert fl.login("ada", NEW_PW).roles == {"auditor"}
    assert [e.actor for e in entries(fl, "user.password_change")] == ["ivy", "ada"]
