"""``faceledger migrate --to postgresql://...``: a SQLite gallery moved into PostgreSQL (#16
item 4). A worked case (real LFW photos ingested, users, a case request and its approval,
searches, reviews, a 1:1 verification, a note, an erased face) is built once on SQLite; each
test moves a copy of it into a fresh PostgreSQL database. PostgreSQL only: these run in the
PostgreSQL pass of ``make test`` (FACELEDGER_TEST_POSTGRES).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from conftest import PG_ADMIN, RawDB, _Databases, lfw_image
from conftest_api import PW
from conftest_cases import WHY, worked_case
from faceledger.accounts.auth import PermissionDenied
from faceledger.cli import app
from faceledger.core import Faceledger, SearchRequest
from faceledger.db import migrate
from faceledger.db.schema import faces, ledger, meta, metadata
from faceledger.db.store import BINDING_FILE, normalise_url, read_meta
from faceledger.errors import RefusedError
from faceledger.gallery.ingest import PipelineSettings
from faceledger.gallery.sources import iter_paths
from faceledger.ledger import audit

pytestmark = pytest.mark.postgres
PROBE = ("Al_Gore", 2)
REQ = SearchRequest("CASE-9", "violent-crime", WHY, top_k=4)


def candidates(fl: Faceledger, lfw: Path) -> list[tuple[int, float]]:
    res = fl.search(fl.login("ivy", PW), lfw_image(lfw, *PROBE).read_bytes(), REQ)
    return [(c["face_id"], c["score"]) for f in res["faces"] for c in f["candidates"]]


@pytest.fixture(scope="module")
def template(lfw: Path, analyzer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A SQLite data dir with a worked case, the search results it gives, and the highest
    face id it ever gave out (that face erased since)."""
    base = tmp_path_factory.mktemp("migrate")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FACELEDGER_DB", raising=False)  # SQLite: the gallery to move
        case = worked_case(lfw, base, analyzer)
        fl = case.fl
        root = fl.login("root", PW)
        with fl.store.engine.connect() as conn:
            top = int(conn.execute(select(faces.c.id).order_by(faces.c.id.desc())).scalar())
        fl.erase(root, face_ids=[top], reason="erasure request ER-1")  # its id stays used
        before = candidates(fl, lfw)
        fl.close()
        yield base / "data", before, top


@pytest.fixture
def sqlite_dir(template: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the template, opened on SQLite whatever $FACELEDGER_DB says."""
    monkeypatch.delenv("FACELEDGER_DB", raising=False)
    return Path(shutil.copytree(template[0], tmp_path / "data"))


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new empty PostgreSQL database, its URL with a password (never shown)."""
    dbs = _Databases(monkeypatch)
    url = dbs()
    assert url is not None and PG_ADMIN
    monkeypatch.delenv("FACELEDGER_DB")
    yield url.replace("://postgres@", "://postgres:s3cret-pw@")
    dbs.drop_all()


def rows(conn: Any, table: Any) -> list[tuple[Any, ...]]:
    order = list(table.primary_key.columns) or list(table.columns)
    return [tuple(r) for r in conn.execute(select(table).order_by(*order))]


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"FACELEDGER_PASSWORD": PW})


def test_migrate_copies_every_table_and_switches(
    sqlite_dir: Path, target: str, template: Any, lfw: Path, analyzer: Any
) -> None:
    """#16 item 4: every table equal row by row, the chain verified on PostgreSQL, the move
    in both ledgers, the data dir switched, the same search results, sequences past every
    id ever given out, the ledger's guard in place."""
    _, before, erased_top = template
    r = run_cli("migrate", "--to", target, "--data-dir", str(sqlite_dir), "--as", "root")
    assert r.exit_code == 0, r.output
    assert "s3cret-pw" not in r.output
    assert "gallery.db.migrated-" in r.output.replace("\n", "")  # where it went
    aside = sorted(sqlite_dir.glob("gallery.db.migrated-*"))
    assert [p.name for p in aside] == [aside[0].name] and not (sqlite_dir / "gallery.db").exists()
    binding = json.loads((sqlite_dir / BINDING_FILE).read_text())
    assert binding["url"] == normalise_url(target)

    old = create_engine(f"sqlite:///{aside[0]}")
    new = create_engine(binding["url"])
    with old.connect() as a, new.connect() as b:
        for table in metadata.sorted_tables:
            src, dst = rows(a, table), rows(b, table)
            if table is ledger:
                # SQLite ends with the move to PostgreSQL; PostgreSQL with the move from SQLite
                assert dst[:-1] == src[:-1], "ledger"
                names = list(ledger.c.keys())
                moved_to = dict(zip(names, src[-1], strict=True))
                moved_from = dict(zip(names, dst[-1], strict=True))
            elif table is meta:
                added = {"data_dir_id": binding["data_dir_id"]}
                assert {k: v for k, v in dst if k != migrate.MIGRATED_KEY} == dict(src) | added
            else:
                assert dst == src, table.name
        assert len(rows(a, faces)) > 0
        top_user = max(u[0] for u in rows(a, metadata.tables["users"]))
    old.dispose()
    new.dispose()
    to = json.loads(moved_to["details"])
    frm = json.loads(moved_from["details"])
    assert moved_to["action"] == "gallery.migrated_to"
    assert moved_from["action"] == "gallery.migrated_from"
    assert to["postgresql_head"] == f"{moved_from['seq']}:{moved_from['hash']}"
    assert frm["source_head"] == f"{moved_to['seq'] - 1}:{moved_to['prev_hash']}"
    assert frm["rows"] == to["rows"] and frm["rows"]["faces"] == len(sqlite_faces(aside[0]))
    assert "s3cret-pw" not in moved_to["target"] and "***" in moved_to["target"]

    # the data dir opens PostgreSQL; audit verify passes; the same candidates come back
    r = run_cli("audit", "verify", "--data-dir", str(sqlite_dir), "--as", "root")
    assert r.exit_code == 0, r.output
    fl = Faceledger(sqlite_dir)
    assert fl.store.dialect == "postgresql"
    fl.set_analyzer_factory(lambda: analyzer)
    assert candidates(fl, lfw) == before

    # later inserts continue past every copied id, and past the erased face's id
    root = fl.login("root", PW)
    assert fl.add_user(root, "newcomer", PW, "investigator", "north") == top_user + 1
    photos = sqlite_dir.parent / "more"
    photos.mkdir()
    shutil.copy(lfw_image(lfw, "Aaron_Sorkin", 1), photos)
    fl.ingest(root, iter_paths([photos], "archive", "test"), PipelineSettings(embedder="dlib"))
    with fl.store.engine.connect() as conn:
        newest = int(conn.execute(select(faces.c.id).order_by(faces.c.id.desc())).scalar())
    assert newest > erased_top
    assert audit.verify(fl.store).ok
    fl.close()

    raw = RawDB(sqlite_dir)  # the guard came along: the database refuses a rewrite
    with pytest.raises(raw.guard_error, match="append-only"):
        raw.execute("update ledger set actor = 'someone else' where seq = 1")
    raw.close()


def sqlite_faces(sqlite_file: Path) -> list[tuple[Any, ...]]:
    eng = create_engine(f"sqlite:///{sqlite_file}")
    with eng.connect() as conn:
        out = rows(conn, faces)
    eng.dispose()
    return out


def test_a_non_empty_target_is_refused(sqlite_dir: Path, target: str, tmp_path: Path) -> None:
    """#16 item 4: a database holding anything of faceledger's (here only the meta rows a
    gallery's store writes) is refused, named without its password, and the refusal is
    recorded; neither side changes."""
    from faceledger.db.store import Store

    Store(tmp_path / "other", url=target).close()  # another data dir's database
    fl = Faceledger(sqlite_dir)
    with pytest.raises(RefusedError) as err:
        fl.migrate_database(fl.login("root", PW), target)
    assert err.value.code == "target-not-empty"
    assert "meta" in str(err.value) and "s3cret-pw" not in str(err.value)
    assert "***" in str(err.value)
    refused = list(audit.iter_entries(fl.store, action="gallery.migration_refused"))
    assert len(refused) == 1 and refused[0].details["code"] == "target-not-empty"
    assert fl.store.dialect == "sqlite" and audit.verify(fl.store).ok
    fl.close()
    assert (sqlite_dir / "gallery.db").exists() and not (sqlite_dir / BINDING_FILE).exists()
    other = Store(tmp_path / "other")
    with other.engine.connect() as conn:
        assert rows(conn, ledger) == [] and read_meta(conn, "data_dir_id")
    other.close()


class Interrupt(Exception):
    pass


def seq_of(head: str) -> int:
    return int(head.split(":", 1)[0])


def test_an_interrupted_copy_leaves_the_target_empty_and_runs_again(
    sqlite_dir: Path, target: str
) -> None:
    """#16 item 4: a migration stopped part-way through the copy leaves nothing behind in
    PostgreSQL and the data dir on SQLite; a re-run completes."""
    fl = Faceledger(sqlite_dir)
    root = fl.login("root", PW)
    seen: list[str] = []

    def stop_in_faces(table: str, done: int, total: int) -> None:
        seen.append(table)
        if table == "faces" and done > 0:
            raise Interrupt("stopped in the middle of the faces")

    with pytest.raises(Interrupt):
        fl.migrate_database(root, target, stop_in_faces)
    assert "images" in seen and "faces" in seen  # stopped after some tables were copied
    eng = create_engine(normalise_url(target))
    with eng.connect() as conn:
        assert migrate.target_state(conn).empty
        tables = "select count(*) from pg_tables where schemaname = 'public'"
        assert conn.exec_driver_sql(tables).scalar() == 0  # the copy's DDL rolled back too
    assert not (sqlite_dir / BINDING_FILE).exists() and (sqlite_dir / "gallery.db").exists()
    failed = list(audit.iter_entries(fl.store, action="gallery.migration_failed"))
    assert [e.details["code"] for e in failed] == ["Interrupt"]

    result = fl.migrate_database(root, target)
    assert fl.store.dialect == "postgresql" and not result.replaced_unfinished_copy
    assert result.entries_verified > 0 and result.records_checked > 0
    assert len(list(audit.iter_entries(fl.store, action="gallery.migration_started"))) == 2
    fl.close()
    eng.dispose()


def test_interrupted_after_the_commit_runs_again_to_completion(
    sqlite_dir: Path, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#16 item 4: stopped after PostgreSQL committed the copy but before the data dir was
    switched, a re-run replaces that copy (SQLite changed since: a login) instead of
    refusing; stopped after the switch but before gallery.db was moved aside, a re-run
    finishes the switch and verifies."""
    real_write, real_move = migrate.write_binding, migrate.move_sqlite_aside

    def once(real: Any) -> Any:
        def fail_once(*a: Any, **k: Any) -> Any:
            monkeypatch.setattr(migrate, real.__name__, real)
            raise Interrupt(f"killed before {real.__name__}")

        return fail_once

    monkeypatch.setattr(migrate, "write_binding", once(real_write))
    fl = Faceledger(sqlite_dir)
    with pytest.raises(Interrupt):
        fl.migrate_database(fl.login("root", PW), target)
    eng = create_engine(normalise_url(target))
    with eng.connect() as conn:
        first = migrate.target_state(conn)
    assert first.migrated is not None and not (sqlite_dir / BINDING_FILE).exists()

    monkeypatch.setattr(migrate, "move_sqlite_aside", once(real_move))
    root = fl.login("root", PW)  # SQLite moves on after the copy
    with pytest.raises(Interrupt):
        fl.migrate_database(root, target)
    assert (sqlite_dir / BINDING_FILE).exists() and (sqlite_dir / "gallery.db").exists()
    with eng.connect() as conn:
        second = migrate.target_state(conn)
    assert second.migrated is not None
    # the new copy has what SQLite gained since the first (a failure record, a login)
    assert seq_of(second.migrated["source_head"]) > seq_of(first.migrated["source_head"])
    fl.close()

    fl = Faceledger(sqlite_dir)  # the data dir opens PostgreSQL now
    assert fl.store.dialect == "postgresql"
    result = fl.migrate_database(fl.login("root", PW), target)
    assert result.finished_switch and result.entries_verified > 0
    assert not (sqlite_dir / "gallery.db").exists() and result.moved_aside
    with pytest.raises(RefusedError, match="already"):
        fl.migrate_database(fl.login("root", PW), target)
    assert audit.verify(fl.store).ok
    fl.close()
    eng.dispose()


def test_only_an_admin_may_migrate_and_a_busy_gallery_is_refused(
    sqlite_dir: Path, target: str
) -> None:
    """#16 item 4: a non-admin is refused and the refusal recorded; a gallery another
    process (here another open core) holds is refused; so is a target that is no
    PostgreSQL database."""
    r = run_cli("migrate", "--to", target, "--data-dir", str(sqlite_dir), "--as", "ivy")
    assert r.exit_code == 4 and "permission denied" in r.output, r.output
    fl = Faceledger(sqlite_dir)
    with pytest.raises(PermissionDenied):
        fl.migrate_database(fl.login("sam", PW), target)
    denied = list(audit.iter_entries(fl.store, action="authz.denied"))
    assert [e.actor for e in denied[-2:]] == ["ivy", "sam"]
    assert all(e.details["permission"] == "migrate_database" for e in denied[-2:])
    assert "s3cret-pw" not in denied[-1].target

    root = fl.login("root", PW)
    with pytest.raises(RefusedError) as err:
        fl.migrate_database(root, f"sqlite:///{sqlite_dir}/copy.db")
    assert err.value.code == "bad-url"

    server = Faceledger(sqlite_dir)  # a second process's core, its connections open
    server.stats(server.login("root", PW))
    with pytest.raises(RefusedError) as err:
        fl.migrate_database(root, target)
    assert err.value.code == "data-dir-busy" and "faceledger serve" in str(err.value)
    server.close()
    assert fl.store.dialect == "sqlite" and not (sqlite_dir / BINDING_FILE).exists()
    eng = create_engine(normalise_url(target))
    with eng.connect() as conn:
        assert migrate.target_state(conn).empty
    eng.dispose()
    fl.close()
