"""The Ray engine on a two-node Ray cluster started as an operator starts one (#16 item 2).

A head (`ray start --head`) and a second node (`ray start --address ...`, one CPU and a
custom resource of its own, its own temp dir) on this machine; `faceledger ingest --engine
ray --address <head>` run as a command, as an operator runs it. The cluster gets a token of
its own (Ray's token authentication, passed in the environment as to every node) and free
ports, so that it neither joins nor disturbs another Ray on the machine; it is stopped by
killing its own process groups (`ray stop` would stop every Ray of this user on the
machine).

What is tested is where the work runs and what comes back; the rows go through the local
engine's store code, which the PostgreSQL pass runs elsewhere: this file is SQLite only.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from test_ingest_ray import (  # this folder's module (pytest's rootdir imports)
    photo_folder,
    same_gallery,
)

import faceledger
from conftest import blank_jpeg, need_module
from faceledger.db.schema import ingest_runs
from faceledger.db.store import Store
from faceledger.gallery.ingest import Ingestor, PipelineSettings
from faceledger.gallery.sources import iter_paths

need_module("ray", "pip install -e '.[scale]' (ray)")

pytestmark = pytest.mark.nopg

BIN = Path(sys.executable).parent
SRC = Path(faceledger.__file__).resolve().parents[1]  # the nodes run this faceledger
PASSWORD = "admin password 1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports() -> list[str]:
    """Ports of a node's daemons, free ones rather than Ray's fixed defaults (another Ray on
    this machine may hold those)."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    return [arg for name in names for arg in (f"--{name}", str(_free_port()))]


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    root: Path
    groups: list[int] = field(default_factory=list)

    def start_node(self, name: str, args: list[str]) -> None:
        """`ray start ...` in a process group of its own (its daemons stay in it)."""
        temp = self.root / name  # short: Ray's socket paths must stay under 107 characters
        temp.mkdir()
        log = temp / "ray-start.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(BIN / "ray"), "start", *args, "--temp-dir", str(temp), *_COMMON],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.groups.append(proc.pid)
            try:
                rc = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            raise RuntimeError(f"ray start {name} failed ({rc}):\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, to this cluster's process groups only."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in self.groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
            if sig == signal.SIGTERM:
                time.sleep(2)


_COMMON = [
    "--num-cpus",
    "1",
    "--object-store-memory",
    str(100 << 20),
    "--disable-usage-stats",
    "--include-log-monitor",
    "false",
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    port = _free_port()
    env = dict(os.environ)
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])]),
    }
    env.pop("RAY_ADDRESS", None)
    c = Cluster(f"127.0.0.1:{port}", env, Path(tempfile.mkdtemp(prefix="flray-", dir="/tmp")))
    try:
        c.start_node(
            "head",
            [
                "--head",
                "--port",
                str(port),
                "--node-ip-address",
                "127.0.0.1",
                "--include-dashboard=false",
                "--dashboard-port",
                str(_free_port()),
                "--ray-client-server-port",
                str(_free_port()),
                *_ports(),
            ],
        )
        c.start_node(
            "worker",
            [
                "--address",
                c.address,
                "--node-ip-address",
                "127.0.0.1",
                "--resources",
                '{"faceledger_worker": 1}',
                *_ports(),
            ],
        )
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


@pytest.fixture(scope="module")
def photos(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 LFW photos (two each of 10 people), a duplicate, a corrupt file, a blank photo."""
    src = tmp_path_factory.mktemp("photos")
    people = photo_folder(lfw, src, 10, (3, 7))
    (src / people[5] / "m_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / people[9] / "n_landscape.jpg").write_bytes(blank_jpeg())
    return src


def _faceledger(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "faceledger"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_ingest_runs_on_both_nodes_of_a_cluster(
    cluster: Cluster, photos: Path, tmp_path: Path, fresh_db
) -> None:
    """#16 item 2: `faceledger ingest --engine ray --address <head>` spreads its batches
    over both nodes, loads the models once per actor (not per chunk), records where the
    work ran in the run's summary, and builds the local engine's gallery."""
    local_store = Store(tmp_path / "local")
    local = Ingestor(local_store, PipelineSettings()).run(iter_paths([photos], "lfw", "test"))
    assert local.seen == 23 and local.new == 21 and local.duplicates == 1

    fresh_db()
    data = tmp_path / "ray"
    env = cluster.env | {"FACELEDGER_DATA": str(data), "FACELEDGER_PASSWORD": PASSWORD}
    r = _faceledger(env, "init", "--admin", "root")
    assert r.returncode == 0, r.stderr
    r = _faceledger(
        env,
        *("ingest", str(photos), "--source", "lfw", "--legal-basis", "test", "--as", "root"),
        *("--engine", "ray", "--address", cluster.address, "--json"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    for key in ("seen", "new", "duplicates", "faces", "no_face"):
        assert doc[key] == getattr(local, key), key
    assert doc["failures"] == dict(local.failures)

    where = doc["ray"]
    assert len(where["nodes"]) == 2  # both nodes ran batches
    analysed = local.new + sum(local.failures.values())  # what went to the actors
    assert sum(where["nodes"].values()) == analysed
    assert where["actors"] == 2 and where["model_loads"] == 2  # once per actor
    assert len(where["batches"]) == 2 and min(where["batches"].values()) >= 2  # reused

    store = Store(data)
    with store.engine.connect() as conn:
        row = conn.execute(select(ingest_runs).order_by(ingest_runs.c.id.desc())).first()
    assert row is not None and row.status == "done"
    assert json.loads(row.summary_json)["ray"] == where  # the run's record says it too
    same_gallery(tmp_path / "local", data, local_store, store)


def test_address_where_no_cluster_answers(tmp_path: Path) -> None:
    """#16 item 2: `--address` pointing at nothing fails at once with a clear error, rather
    than hanging in Ray's minutes of retries."""
    env = dict(os.environ)
    env |= {
        "FACELEDGER_DATA": str(tmp_path / "data"),
        "FACELEDGER_PASSWORD": PASSWORD,
        "PYTHONPATH": os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])]),
    }
    assert _faceledger(env, "init", "--admin", "root").returncode == 0
    g = tmp_path / "g"
    g.mkdir()
    (g / "a.jpg").write_bytes(blank_jpeg())
    ingest = ["ingest", str(g), "--legal-basis", "test", "--as", "root", "--engine", "ray"]
    for address in (f"127.0.0.1:{_free_port()}", f"ray://127.0.0.1:{_free_port()}"):
        t0 = time.monotonic()
        r = _faceledger(env, *ingest, "--address", address, timeout=60)
        assert time.monotonic() - t0 < 30
        assert r.returncode == 1
        assert f"no Ray cluster answers at {address}" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
