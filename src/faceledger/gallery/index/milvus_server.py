"""A local Milvus standalone server (the ``milvus`` package's bundled binary) for tests and
benchmarks: started in a directory of its own on free loopback ports, stopped for sure.

The ``milvus`` package (2.3.5, the ``scale`` extra) ships the Milvus 2.3 standalone binary with
an embedded etcd and RocksMQ. Its own launcher picks ports by scanning up from the defaults
(19530, 2379, ...) and checks them with a bind that fails while a port has connections in
TIME_WAIT, so a stopped server could not be started again on its port. :class:`LocalMilvus`
instead asks the kernel for free ports (bind to port 0), keeps them across a restart (a
client's URI stays valid), and stops the binary with SIGTERM, then SIGKILL after a short
wait (its own graceful stop can take up to ``gracefulStopTimeout``, 1800 s).

    with LocalMilvus(Path("/tmp/m")) as server:
        uri = server.uri            # milvus://127.0.0.1:PORT
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

# the port settings of the package's config template (milvus/data/config.yaml.template)
PORT_KEYS = (
    "etcd_port",
    "root_coord_port",
    "proxy_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
)
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 2.0
# A stopped server's coordinators stay registered in its etcd until their session lease
# expires (Milvus' default TTL: 30 s), and a restarted server loads no collection before that:
# measured 23-28 s from restart to the first answered query at the default, whether it was
# stopped by SIGTERM or SIGKILL (its SIGTERM stop does not end within 60 s either).
SESSION_TTL_S = 5


class MilvusServerError(RuntimeError):
    """The bundled Milvus server is not installed, cannot run here, or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reusable_bind(port: int) -> socket.socket | None:
    """The launcher's port check, with SO_REUSEADDR as the server's own listeners have."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


class LocalMilvus:
    """One Milvus standalone server process with its data under ``base_dir``.

    :meth:`start` (again after :meth:`stop`: same ports, same data), :meth:`stop` (SIGTERM,
    then SIGKILL after ``STOP_GRACE_S``), :meth:`remove` (stop, delete ``base_dir``).
    """

    def __init__(self, base_dir: Path, session_ttl_s: int = SESSION_TTL_S) -> None:
        self.base_dir = Path(base_dir)
        self.session_ttl_s = session_ttl_s
        self.ports = {key: free_port() for key in PORT_KEYS}
        self.health_port = free_port()
        self._server: Any = None

    @property
    def port(self) -> int:
        return self.ports["proxy_port"]

    @property
    def uri(self) -> str:
        return f"milvus://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        proc = self._server.server_proc if self._server is not None else None
        return proc is not None and proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._server.server_proc.pid if self.running else None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> LocalMilvus:
        if self.running:
            return self
        try:
            from milvus import MilvusServer, MilvusServerConfig
        except ImportError as e:
            raise MilvusServerError(
                f"the milvus package does not import ({e}); pip install -e '.[scale]'"
            ) from e
        config = MilvusServerConfig(**self.ports)
        config.try_bind_port = _reusable_bind  # type: ignore[method-assign]
        config.set("common.session.ttl", self.session_ttl_s)
        server = MilvusServer(config, wait_for_started=False)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        server.set_base_dir(str(self.base_dir))
        server.webservice_port = self.health_port
        t0 = time.monotonic()
        try:
            server.start()
        except (OSError, RuntimeError) as e:
            raise MilvusServerError(f"the bundled Milvus server did not start: {e}") from e
        self._server = server
        try:
            server.wait_started(timeout=int(timeout_s * 1000))
        except (TimeoutError, RuntimeError) as e:
            log = self.base_dir / "logs" / "milvus-stderr.log"
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            self.stop()
            raise MilvusServerError(
                f"the bundled Milvus server did not come up in {time.monotonic() - t0:.0f} s "
                f"({e}); its stderr ends:\n{tail}"
            ) from e
        return self

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        proc: subprocess.Popen[bytes] | None = server.server_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        server.server_proc = None
        for fh in server.proc_fds.values():
            fh.close()
        server.proc_fds.clear()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalMilvus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
