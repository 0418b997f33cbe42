"""The suite fails, not skips, under CI when something a test needs is missing (#17 item 1).

Each test runs pytest (or CI's own scripts) in a subprocess, as CI would, and reads the
outcome: a CI run without LFW, a package or a service must not pass with tests skipped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, need_lfw

# no gallery database here: not run a second time against PostgreSQL
pytestmark = pytest.mark.nodb

LFW_TEST = "tests/vision/test_detection.py::test_small_faces_are_found_in_small_images"


def _env(**overrides: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "FACELEDGER_TEST_POSTGRES", "CI"))
    }
    src = str(REPO / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _pytest(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _summary(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_ci_fails_an_lfw_test_when_lfw_is_missing(tmp_path: Path) -> None:
    """#17 item 1: under CI=true a missing LFW fails the test with the reason; outside CI the
    same test skips with the same reason."""
    empty = tmp_path / "no-lfw"
    empty.mkdir()
    ci = _pytest([LFW_TEST], _env(CI="true", FACELEDGER_LFW=str(empty)))
    assert ci.returncode == 1, ci.stdout + ci.stderr
    summary = _summary(ci.stdout)
    assert "skipped" not in summary and ("error" in summary or "failed" in summary), ci.stdout
    assert "CI=true" in ci.stdout and f"LFW not found at {empty}" in ci.stdout, ci.stdout

    local = _pytest([LFW_TEST], _env(CI=None, FACELEDGER_LFW=str(empty)))
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 skipped" in _summary(local.stdout), local.stdout
    assert f"LFW not found at {empty}" in local.stdout, local.stdout


def test_ci_turns_every_other_skip_into_a_failure(tmp_path: Path) -> None:
    """#17 item 1: the rule lives in conftest.py: under CI=true a missing package
    (need_module), a bare pytest.skip, a skipif mark and a module-level importorskip all fail;
    only not_here() (no missing requirement) stays a skip."""
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n"
        "from conftest import need_module, not_here\n\n"
        "def test_missing_package():\n"
        "    need_module('no_such_package_17', 'pip install no-such-package-17')\n\n"
        "def test_bare_skip():\n"
        "    pytest.skip('a bare skip')\n\n"
        "@pytest.mark.skipif(True, reason='a skipif mark')\n"
        "def test_skipif():\n"
        "    pass\n\n"
        "def test_by_design():\n"
        "    not_here('the other pass runs this')\n"
    )
    (tmp_path / "test_module_skip.py").write_text(
        "import pytest\n\npytest.importorskip('no_such_package_17')\n\ndef test_x():\n    pass\n"
    )
    tests = str(REPO / "tests")
    env = _env(CI="true", PYTHONPATH=tests + os.pathsep + str(REPO / "src"))
    args = ["-p", "conftest", "--rootdir", str(tmp_path)]
    ci = _pytest([*args, str(tmp_path / "test_skips.py")], env)
    out = ci.stdout
    assert ci.returncode == 1, out + ci.stderr
    for name in ("test_missing_package", "test_bare_skip"):
        assert re.search(rf"FAILED .*::{name}\b", out), (name, out)
    assert re.search(r"ERROR .*::test_skipif\b", out), out  # a mark skips in the setup
    assert "no_such_package_17 does not import" in out and "pip install no-such-package" in out
    assert "SKIPPED" in out and "not for this run: the other pass runs this" in out, out
    assert "2 failed, 1 skipped, 1 error" in _summary(out), out
    module = _pytest([*args, str(tmp_path / "test_module_skip.py")], env)
    assert module.returncode == 2, module.stdout + module.stderr
    assert "ERROR collecting test_module_skip.py" in module.stdout, module.stdout
    assert "CI=true: this test skipped (could not import 'no_such_package_17'" in module.stdout

    local_env = _env(CI=None, PYTHONPATH=env["PYTHONPATH"])
    local = _pytest([*args, str(tmp_path)], local_env)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "5 skipped" in _summary(local.stdout), local.stdout


def test_postgres_only_tests_are_for_the_other_pass(tmp_path: Path) -> None:
    """#17 item 1: the PostgreSQL-only tests skip on the SQLite pass by design, also under
    CI=true, saying which pass runs them; the PostgreSQL pass of `make test` selects them;
    and an empty server URL (a PostgreSQL pass without a server) stops the run."""
    sqlite = _pytest(["-vv", "-m", "postgres", "tests/db/test_database.py"], _env(CI="true"))
    assert sqlite.returncode == 0, sqlite.stdout + sqlite.stderr
    pg_only = set(re.findall(r"::(\w+) SKIPPED", sqlite.stdout))
    why = "not for this run: PostgreSQL only: runs in the PostgreSQL pass (make test-postgres)"
    assert sqlite.stdout.count(why) == len(pg_only), sqlite.stdout
    assert pg_only and "passed" not in _summary(sqlite.stdout), sqlite.stdout
    assert f"{len(pg_only)} skipped" in _summary(sqlite.stdout), sqlite.stdout

    recipe = (REPO / "Makefile").read_text().split("\ntest-postgres:", 1)[1].split("\n\n", 1)[0]
    marks = re.search(r"-m '([^']+)'", recipe)
    assert marks, recipe
    pg_env = _env(CI="true", FACELEDGER_TEST_POSTGRES="postgresql://nobody@127.0.0.1:9/postgres")
    listed = _pytest(["--collect-only", "-m", marks.group(1), "tests/db/test_database.py"], pg_env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert pg_only <= set(re.findall(r"::(\w+)", listed.stdout)), listed.stdout

    empty = _pytest(["tests/db/test_database.py"], _env(CI="true", FACELEDGER_TEST_POSTGRES=""))
    assert empty.returncode == 4, empty.stdout + empty.stderr
    assert "FACELEDGER_TEST_POSTGRES is set but empty" in empty.stderr, empty.stderr


def _run_quickly(cmd: list[str], env: dict[str, str], limit: float) -> tuple[int, str, float]:
    """Run ``cmd`` in its own process group; kill the whole group past ``limit`` seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{cmd} still running after {limit} s:\n{out}") from None
    return proc.returncode, out, time.monotonic() - t0


def test_ci_run_stops_at_once_without_lfw(tmp_path: Path) -> None:
    """#17 item 1: `.ci/run` checks for LFW before anything else (it installs nothing and
    starts no test) and exits non-zero within seconds saying where LFW was looked for; the
    check is scripts/check-test-data.sh, which passes when LFW is there."""
    missing = tmp_path / "lfw"
    env = _env(FACELEDGER_LFW=str(missing), PATH=os.environ.get("PATH", ""))
    for cmd in (["scripts/check-test-data.sh"], [".ci/run"]):
        rc, out, took = _run_quickly(cmd, env, limit=30)
        assert rc == 3, (cmd, rc, out)
        assert f"LFW not found at {missing}" in out and "FACELEDGER_LFW" in out, out
        assert len(out.strip().splitlines()) == 2, out  # the check's message, nothing after
        assert took < 30
    lfw = need_lfw()  # the real one, as the rest of the suite finds it
    rc, out, _ = _run_quickly(["scripts/check-test-data.sh"], _env(FACELEDGER_LFW=str(lfw)), 30)
    assert rc == 0 and f"LFW at {lfw}" in out, out


def test_ci_runs_every_slow_test() -> None:
    """#17 item 2: `.ci/run` ends in `make test-all`, which runs the fast suite on both
    databases and then every test marked slow; and each slow test is collected by that
    selection (a slow test CI never reaches would prove nothing)."""
    ci = (REPO / ".ci" / "run").read_text()
    commands = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.startswith("#")]
    assert commands[-1] == "make test-all"
    plan = subprocess.run(
        ["make", "-n", "test-all"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    lines = [ln for ln in plan.splitlines() if "pytest" in ln]
    assert len(lines) == 3, plan  # SQLite, PostgreSQL, slow
    assert "-m slow" in lines[2] and "-m 'not slow" in lines[1]
    r = _pytest(["--collect-only", "-m", "slow"], _env())
    slow = [ln for ln in r.stdout.splitlines() if "::" in ln]
    assert len(slow) >= 7, r.stdout
    for name in (
        "test_equivalence_500_lfw_faces",
        "test_sigkill_during_ingest_full",
        "test_lfw_calibration_reproduces_the_stored_defaults",
        "test_calibration_predicts_the_false_match_rate_of_unseen_impostors",
        "test_full_lfw_indexes_identical",
        "test_one_million_faces_recall_against_brute_force",
    ):
        assert any(name in ln for ln in slow), name
