"""The argon2id cost is the operator's setting ($FACELEDGER_ARGON2), a hash made with other
settings is re-made at the next login, and a bad setting stops start-up with its name.

The suite itself runs with a cheap cost (tests/conftest.py); these tests set their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest_api import entries
from faceledger.accounts import auth
from faceledger.cli import app
from faceledger.core import Faceledger

PW = "correct horse battery"


def stored_hash(fl: Faceledger, name: str) -> str:
    from sqlalchemy import select

    from faceledger.db.schema import users

    with fl.store.engine.connect() as conn:
        return str(
            conn.execute(select(users.c.password_hash).where(users.c.username == name)).scalar_one()
        )


def test_the_cost_is_the_operators_and_old_hashes_are_remade_at_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#14 (CI time) / #11 item 11: hashes follow $FACELEDGER_ARGON2; after the operator
    changes it, a user's next login re-makes their hash with the new cost (recorded in the
    login's ledger entry), a failed login does not, and both passwords keep working."""
    monkeypatch.setenv(auth.ARGON2_ENV, "1,1024,1")
    fl = Faceledger(tmp_path / "data")
    root = fl.init_admin("root", PW)
    fl.add_user(root, "ivy", PW, "investigator", "north")
    assert "$argon2id$v=19$m=1024,t=1,p=1$" in stored_hash(fl, "ivy")

    monkeypatch.setenv(auth.ARGON2_ENV, "2,2048,2")
    with pytest.raises(auth.AuthError):
        fl.login("ivy", "not the password", "10.0.0.1")
    assert "m=1024,t=1,p=1" in stored_hash(fl, "ivy")  # only a right password re-makes it
    assert fl.login("ivy", PW, "10.0.0.1").username == "ivy"
    assert "$argon2id$v=19$m=2048,t=2,p=2$" in stored_hash(fl, "ivy")
    logins = [e for e in entries(fl, "login") if e.actor == "ivy"]
    assert logins[-1].details["password_rehashed"] is True
    assert fl.login("ivy", PW, "10.0.0.1").username == "ivy"
    assert (
        "password_rehashed" not in [e for e in entries(fl, "login") if e.actor == "ivy"][-1].details
    )

    monkeypatch.delenv(auth.ARGON2_ENV)  # the default: argon2-cffi's RFC 9106 profile
    assert fl.login("ivy", PW, "10.0.0.1").username == "ivy"
    t, m, p = auth.DEFAULT_ARGON2
    assert f"$argon2id$v=19$m={m},t={t},p={p}$" in stored_hash(fl, "ivy")
    fl.close()


@pytest.mark.parametrize("bad", ["3,65536", "fast", "0,1024,1", "1,4,1", "1,-8,1"])
def test_a_bad_cost_stops_start_up_naming_the_setting(
    bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped $FACELEDGER_ARGON2 is refused when the data dir is opened (core and CLI),
    not at the first login."""
    monkeypatch.setenv(auth.ARGON2_ENV, bad)
    with pytest.raises(ValueError, match="FACELEDGER_ARGON2"):
        Faceledger(tmp_path / "data")
    monkeypatch.setenv("FACELEDGER_DATA", str(tmp_path / "data"))
    r = CliRunner().invoke(app, ["stats", "--as", "root"])
    assert r.exit_code == 1 and "FACELEDGER_ARGON2" in r.output, r.output
    assert "Traceback" not in r.output
