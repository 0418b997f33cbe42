from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# The suite runs against SQLite (default) and, with FACELEDGER_TEST_POSTGRES set to an admin
# URL of a PostgreSQL server (``.ci/run`` starts one), against PostgreSQL: every test then
# gets a database of its own through $FACELEDGER_DB, which a new data dir binds to.
PG_ADMIN = os.environ.get("FACELEDGER_TEST_POSTGRES")


def pytest_report_header(config: pytest.Config) -> str:
    if PG_ADMIN:
        return f"gallery database: PostgreSQL, a database per test on {PG_ADMIN.rsplit('/', 1)[0]}"
    return "gallery database: SQLite (set FACELEDGER_TEST_POSTGRES for PostgreSQL)"


def _pg_admin_exec(sql: str) -> None:
    import psycopg

    assert PG_ADMIN
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)


class _Databases:
    """Fresh PostgreSQL databases (no-op on SQLite)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.created: list[str] = []

    def __call__(self) -> str | None:
        """Point $FACELEDGER_DB at a new empty database for the next new data dir."""
        if not PG_ADMIN:
            self.monkeypatch.delenv("FACELEDGER_DB", raising=False)
            return None
        import uuid

        name = f"fltest_{uuid.uuid4().hex[:16]}"
        _pg_admin_exec(f"CREATE DATABASE {name}")
        self.created.append(name)
        url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
        self.monkeypatch.setenv("FACELEDGER_DB", url)
        return url

    def drop_all(self) -> None:
        for name in self.created:
            _pg_admin_exec(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module", autouse=True)
def _module_db():
    """A database for the data dirs that module-scoped fixtures create (a data dir keeps
    the database it was created with, whatever $FACELEDGER_DB says later)."""
    with pytest.MonkeyPatch.context() as mp:
        dbs = _Databases(mp)
        dbs()
        yield
        dbs.drop_all()
        while _COPIES:
            _pg_admin_exec(f"DROP DATABASE IF EXISTS {_COPIES.pop()} WITH (FORCE)")


@pytest.fixture(autouse=True)
def fresh_db(_module_db, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Each test starts with its own database; call ``fresh_db()`` before each further
    data dir a test creates (a database belongs to one data dir)."""
    dbs = _Databases(monkeypatch)
    if request.node.get_closest_marker("nodb"):
        # keep the marker honest: a test that skips the PostgreSQL pass must not need it
        from faceledger.store import Store

        def refuse(*_a: Any, **_k: Any) -> None:
            raise AssertionError("a test marked nodb opened a gallery database")

        monkeypatch.setattr(Store, "__init__", refuse)
    else:
        dbs()
    yield dbs
    dbs.drop_all()


def copy_data_dir(src: Path, dest: Path) -> Path:
    """A copy of a data dir with its gallery: the files, and on PostgreSQL a clone of its
    database (``CREATE DATABASE ... TEMPLATE``), recorded in the copy's database.json."""
    import json
    import shutil
    import uuid

    shutil.copytree(src, dest)
    binding = dest / "database.json"
    if binding.is_file():
        rec = json.loads(binding.read_text())
        base, old = rec["url"].rsplit("/", 1)
        new = f"fltest_{uuid.uuid4().hex[:16]}"
        _pg_admin_exec(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{old}' AND pid <> pg_backend_pid()"
        )
        _pg_admin_exec(f"CREATE DATABASE {new} TEMPLATE {old}")
        _COPIES.append(new)
        rec["url"] = f"{base}/{new}"
        binding.write_text(json.dumps(rec))
    return dest


_COPIES: list[str] = []  # databases made by copy_data_dir, dropped at the end of the module


class RawDB:
    """Direct SQL on a data dir's database, bypassing faceledger (to inspect or tamper)."""

    def __init__(self, data_dir: Path) -> None:
        import json

        binding = Path(data_dir) / "database.json"
        self.pg = binding.is_file()
        if self.pg:
            import psycopg

            url = json.loads(binding.read_text())["url"].replace("+psycopg", "")
            self.conn: Any = psycopg.connect(url, autocommit=True)
            self.guard_error: type[Exception] = psycopg.errors.RaiseException
        else:
            import sqlite3

            self.conn = sqlite3.connect(Path(data_dir) / "gallery.db")
            self.guard_error = sqlite3.IntegrityError

    def execute(self, sql: str, params: Any = ()) -> Any:
        if self.pg:  # psycopg's placeholders are %s, and a literal % is written %%
            if not params:
                return self.conn.execute(sql)
            sql = sql.replace("%", "%%").replace("?", "%s")
        return self.conn.execute(sql, params)

    def script(self, sql: str) -> None:
        if self.pg:
            self.conn.execute(sql)
        else:
            self.conn.executescript(sql)

    def drop_ledger_guard(self) -> None:
        """What an attacker with the database's owner rights can do."""
        if self.pg:
            self.conn.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_no_change")
        else:
            self.conn.execute("drop trigger ledger_no_update")
            self.conn.execute("drop trigger ledger_no_delete")

    def dump(self) -> str:
        """Everything in the database as text."""
        if not self.pg:
            return "\n".join(self.conn.iterdump())
        tables = [
            r[0]
            for r in self.conn.execute(
                "select tablename from pg_tables where schemaname = 'public' order by 1"
            )
        ]
        return "\n".join(
            repr(row) for t in tables for row in self.conn.execute(f'select * from "{t}"')
        )

    def integrity_ok(self) -> bool:
        if self.pg:
            return True  # PostgreSQL has no cheap whole-database check; its WAL is the guard
        return bool(self.conn.execute("pragma integrity_check").fetchone()[0] == "ok")

    def commit(self) -> None:
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def lfw_root() -> Path:
    env = os.environ.get("FACELEDGER_LFW")
    return Path(env) if env else REPO.parent / "shared" / "data" / "lfw"


@pytest.fixture(scope="session")
def lfw() -> Path:
    root = lfw_root()
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"LFW not found at {root} (set FACELEDGER_LFW)")
    return root


def lfw_image(lfw: Path, name: str, n: int = 1) -> Path:
    return lfw / name / f"{name}_{n:04d}.jpg"


@pytest.fixture(scope="session")
def analyzer():
    from faceledger.ingest import PipelineSettings

    return PipelineSettings(detector="hog").analyzer()


def side_by_side(paths: list[Path]) -> bytes:
    """A JPEG with the given photos next to each other (a multi-face photo)."""
    imgs = [Image.open(p).convert("RGB") for p in paths]
    w = sum(i.width for i in imgs)
    h = max(i.height for i in imgs)
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    x = 0
    for i in imgs:
        canvas.paste(i, (x, 0))
        x += i.width
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def blank_jpeg(size: tuple[int, int] = (300, 200)) -> bytes:
    rng = np.random.default_rng(0)
    arr = (rng.random((size[1], size[0], 3)) * 40 + 100).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()
