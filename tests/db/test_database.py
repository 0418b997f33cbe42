"""Choosing the gallery database: --db, the data dir's record of it, and PostgreSQL's guards.

The PostgreSQL tests run in the PostgreSQL pass of ``make test`` (FACELEDGER_TEST_POSTGRES);
the rest of the suite runs there too, with every data dir on a database of its own.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import RawDB
from faceledger.cli import app
from faceledger.core import SYSTEM, Faceledger
from faceledger.db.store import (
    BINDING_FILE,
    BadTextError,
    DatabaseBindingError,
    Store,
    redact_url,
    resolve_database,
)
from faceledger.ledger import audit

needs_pg = pytest.mark.postgres  # the SQLite pass skips these by design (conftest.py)
PW = "database test password"


def test_default_is_sqlite_in_the_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FACELEDGER_DB", raising=False)
    store = Store(tmp_path / "data")
    assert store.dialect == "sqlite"
    assert (tmp_path / "data" / "gallery.db").is_file()
    assert not (tmp_path / "data" / BINDING_FILE).exists()
    store.close()


def test_a_sqlite_gallery_is_never_switched(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FACELEDGER_DB", raising=False)
    Store(tmp_path / "data").close()
    url = "postgresql://someone:s3cret@db.example:5432/gallery"
    with pytest.raises(DatabaseBindingError, match="keeps its gallery in SQLite") as err:
        Store(tmp_path / "data", url=url)
    assert "s3cret" not in str(err.value)  # the password never lands in a message
    r = CliRunner().invoke(
        app, ["--db", url, "stats", "--data-dir", str(tmp_path / "data"), "--as", "x"]
    )
    assert r.exit_code == 1 and "keeps its gallery in SQLite" in r.output, r.output
    assert "Traceback" not in r.output and "s3cret" not in r.output


def test_urls_are_normalised_and_redacted() -> None:
    url, binding = resolve_database(Path("/nonexistent"), "postgres://u:pw@h/db")
    assert url == "postgresql+psycopg://u:pw@h/db"
    assert binding is not None and binding["url"] == url and len(binding["data_dir_id"]) == 32
    assert "pw" not in redact_url(url) and "***" in redact_url(url)


def test_nul_in_text_is_refused_alike(tmp_path: Path) -> None:
    fl = Faceledger(tmp_path / "data")
    fl.init_admin("root", PW)
    with pytest.raises(BadTextError):
        fl.record(SYSTEM, "test", "a\x00b")
    assert audit.verify(fl.store).ok


@needs_pg
def test_db_flag_binds_a_new_data_dir(tmp_path: Path, fresh_db, monkeypatch) -> None:
    url = fresh_db()
    monkeypatch.delenv("FACELEDGER_DB")  # only the flag names the database
    data = tmp_path / "data"
    env = {"FACELEDGER_PASSWORD": PW}
    r = CliRunner().invoke(
        app, ["--db", url, "init", "--admin", "root", "--data-dir", str(data)], env=env
    )
    assert r.exit_code == 0, r.output
    binding = data / BINDING_FILE
    assert stat.S_IMODE(binding.stat().st_mode) == 0o600  # the URL may hold a password
    assert not (data / "gallery.db").exists()
    # later commands find the database without the flag
    r = CliRunner().invoke(
        app, ["stats", "--data-dir", str(data), "--as", "root", "--json"], env=env
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ledger_entries"] >= 1
    raw = RawDB(data)
    assert raw.execute("select count(*) from users").fetchone()[0] == 1
    raw.close()


@needs_pg
def test_one_database_one_data_dir(tmp_path: Path, fresh_db) -> None:
    url = fresh_db()
    Faceledger(tmp_path / "a").store.close()
    with pytest.raises(DatabaseBindingError, match="another data dir"):
        Store(tmp_path / "b", url=url)
    assert not (tmp_path / "b" / BINDING_FILE).exists()  # nothing recorded for the refusal
    # the first data dir keeps its database whatever the environment says later
    other = fresh_db()
    store = Store(tmp_path / "a")
    assert store.url.endswith(url.rsplit("/", 1)[1]) and not store.url.endswith(other)
    store.close()


@needs_pg
def test_postgres_ledger_refuses_truncate_and_its_guard_comes_back(tmp_path: Path) -> None:
    fl = Faceledger(tmp_path / "data")
    fl.init_admin("root", PW)
    raw = RawDB(tmp_path / "data")
    for sql in ("truncate ledger", "update ledger set actor='x'", "delete from ledger"):
        with pytest.raises(raw.guard_error, match="append-only"):
            raw.execute(sql)
    raw.drop_ledger_guard()  # what the database owner can do...
    fl.store.close()
    Faceledger(tmp_path / "data").store.close()  # ...is undone when faceledger opens it
    with pytest.raises(raw.guard_error, match="append-only"):
        raw.execute("delete from ledger")
    raw.close()


@needs_pg
def test_concurrent_ledger_appends_keep_one_chain(tmp_path: Path) -> None:
    """Writers from several processes are serialised (the advisory lock): no forked chain."""
    import subprocess
    import sys

    fl = Faceledger(tmp_path / "data")
    fl.init_admin("root", PW)
    fl.store.close()
    script = (
        "import sys; from pathlib import Path\n"
        "from faceledger.core import SYSTEM, Faceledger\n"
        "fl = Faceledger(Path(sys.argv[1]))\n"
        "for i in range(40): fl.record(SYSTEM, 'stress', sys.argv[2], i=i)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "data"), str(n)], env=os.environ.copy()
        )
        for n in range(4)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    fl = Faceledger(tmp_path / "data")
    res = audit.verify(fl.store)
    assert res.ok, res.problem
    raw = RawDB(tmp_path / "data")
    assert raw.execute("select count(*) from ledger where action='stress'").fetchone()[0] == 160
    raw.close()
