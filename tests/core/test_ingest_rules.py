"""The ingest rules live in the core (#12: the interfaces hold no rules): who may start,
follow and cancel a job, the provenance every ingest must give, and which server paths
an ingest may read. Tried here on the core's job manager itself, with a real SQLite data
dir, and on the CLI, which shares the provenance rule with the API."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import lfw_image
from conftest_api import PW, entries
from faceledger.accounts.auth import PermissionDenied
from faceledger.cli import app
from faceledger.core import Faceledger, RefusedError
from faceledger.core.jobs import JobManager
from faceledger.gallery.sources import MAX_SOURCE, check_provenance


@pytest.fixture
def fl(tmp_path: Path) -> Iterator[Faceledger]:
    core = Faceledger(tmp_path / "data")
    root = core.init_admin("root", PW)
    core.add_user(root, "ivy", PW, "investigator", "north")
    yield core
    core.close()


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    path = tmp_path / "allowed"
    path.mkdir()
    return path


@pytest.fixture
def jobs(fl: Faceledger, allowed: Path) -> Iterator[JobManager]:
    manager = JobManager(fl, ingest_roots=(allowed,))
    yield manager
    manager.shutdown()


class _Refused:
    """``with _Refused("code"):`` the block raises RefusedError with this code."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> bool:
        assert isinstance(exc, RefusedError), f"expected refusal {self.code}, got {exc!r}"
        assert exc.code == self.code, (exc.code, str(exc))
        return True


@pytest.mark.nodb
def test_provenance_is_checked_before_anything_is_read() -> None:
    assert check_provenance("  archive ", " consent form 12 ", " 2031-01-31 ") == (
        "archive",
        "consent form 12",
        "2031-01-31",
    )
    for source in ("", "   ", "s" * (MAX_SOURCE + 1)):
        with _Refused("missing-source"):
            check_provenance(source, "consent form", None)
    for basis in (None, "", "  ", "ok", " x "):
        with _Refused("missing-legal-basis"):
            check_provenance("archive", basis, None)
    # a manifest's rows may each give their own basis; one given for all is still checked
    assert check_provenance("archive", None, None, basis_required=False) == ("archive", None, None)
    with _Refused("missing-legal-basis"):
        check_provenance("archive", "x", None, basis_required=False)
    with _Refused("bad-date"):
        check_provenance("archive", "consent", "soon")
    try:
        check_provenance("archive", "", None, fields=("--source", "--legal-basis", "-e"))
    except RefusedError as exc:
        assert str(exc).startswith("--legal-basis is required")


def test_only_those_who_may_ingest_see_or_cancel_jobs(fl: Faceledger, jobs: JobManager) -> None:
    ivy, root = fl.login("ivy", PW), fl.login("root", PW)
    with pytest.raises(PermissionDenied):
        jobs.list(ivy)
    with pytest.raises(PermissionDenied):
        jobs.get(ivy, "abc")
    with pytest.raises(PermissionDenied):
        jobs.cancel(ivy, "abc")
    with pytest.raises(PermissionDenied):
        jobs.start_ingest(ivy, "archive", "consent", None, save_uploads=lambda folder: [])
    denied = entries(fl, "authz.denied", "ivy")
    assert [(e.target, e.details["permission"]) for e in denied] == [
        ("jobs", "ingest"),
        ("job abc", "ingest"),
        ("job abc", "ingest"),
        ("archive", "ingest"),
    ]
    assert jobs.list(root) == []
    with _Refused("no-such-job"):
        jobs.get(root, "abc")
    assert not entries(fl, "ingest.cancel_requested")


def test_server_paths_only_under_the_allowed_roots(
    fl: Faceledger, jobs: JobManager, allowed: Path, tmp_path: Path, lfw: Path
) -> None:
    root = fl.login("root", PW)
    outside = tmp_path / "outside"
    outside.mkdir()
    for bad in (str(outside), str(allowed / ".." / "outside"), "allowed", "/etc"):
        with _Refused("path-not-allowed"):
            jobs.start_ingest(root, "srv", "consent form", None, server_path=bad)
        assert entries(fl)[-1].action == "ingest.path_refused"
        assert entries(fl)[-1].target == bad
    with _Refused("no-such-path"):
        jobs.start_ingest(root, "srv", "consent form", None, server_path=str(allowed / "nope"))
    with _Refused("nothing-to-ingest"):
        jobs.start_ingest(root, "srv", "consent form", None)
    with _Refused("nothing-to-ingest"):
        jobs.start_ingest(
            root, "srv", "consent form", None, str(allowed), save_uploads=lambda f: []
        )
    with _Refused("missing-legal-basis"):
        jobs.start_ingest(root, "srv", "ok", None, server_path=str(allowed))
    # no roots configured: no server path at all, and the refusal says why
    bare = JobManager(fl)
    try:
        with pytest.raises(RefusedError, match="none is configured"):
            bare.start_ingest(root, "srv", "consent form", None, server_path=str(allowed))
    finally:
        bare.shutdown()

    shutil.copy(lfw_image(lfw, "Al_Gore", 1), allowed)
    job = jobs.start_ingest(root, " srv ", " consent form ", "2031-01-31", str(allowed))
    assert job.args["source"] == "srv" and job.args["legal_basis"] == "consent form"
    assert job.args["paths"] == [str(allowed.resolve())]
    assert jobs.get(root, job.id).id == job.id and [j.id for j in jobs.list(root)] == [job.id]
    assert jobs.cancel(root, job.id).id == job.id
    assert entries(fl, "ingest.cancel_requested", "root")[-1].target == f"job {job.id}"


def test_a_failed_upload_leaves_no_files(fl: Faceledger, jobs: JobManager) -> None:
    root = fl.login("root", PW)
    seen: list[Path] = []

    def save(folder: Path) -> list[str]:
        seen.append(folder)
        (folder / "a.jpg").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        jobs.start_ingest(root, "upload", "consent form", None, save_uploads=save)
    assert seen and not seen[0].exists()
    assert jobs.list(root) == []


def test_the_cli_gives_the_same_provenance_rule(tmp_path: Path, monkeypatch) -> None:
    data, photos = tmp_path / "data", tmp_path / "photos"
    photos.mkdir()
    monkeypatch.setenv("FACELEDGER_DATA", str(data))
    monkeypatch.setenv("FACELEDGER_PASSWORD", PW)
    runner = CliRunner()
    assert runner.invoke(app, ["init", "--admin", "root"]).exit_code == 0
    r = runner.invoke(app, ["ingest", str(photos), "--legal-basis", "ok", "--as", "root"])
    assert r.exit_code == 1 and "--legal-basis is required" in r.output
    ingest = ["ingest", str(photos), "--legal-basis", "consent", "--as", "root"]
    r = runner.invoke(app, [*ingest, "--source", " "])
    assert r.exit_code == 1 and "--source" in r.output, r.output
    r = runner.invoke(app, [*ingest, "--expires-at", "soon"])
    assert r.exit_code == 1 and "--expires-at" in r.output
