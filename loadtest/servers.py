"""Starting and stopping the processes under test: target nodes and a private redis-server.

Each server runs in its own session (so its worker children stop with it), pinned with
``taskset`` to the server core when the machine has one to spare, with its output in a log
file in the run's folder. A node is ready when it has written its ready file
(``{"node_id", "port", "management_port"}``), as ``wsgateway serve --ready-file`` does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "REPO_ROOT",
    "ServerError",
    "ServerProcess",
    "free_port",
    "management_edge",
    "python_argv",
    "start_redis",
    "start_redis_cluster",
    "start_server",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_POLL_S = 0.05


class ServerError(Exception):
    """A server did not come up; the message ends with the tail of its log."""


@dataclass
class ServerProcess:
    """A started server: its process, what its ready file said, and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        """The client (WebSocket) port."""
        return int(self.ready["port"])

    @property
    def management_port(self) -> int:
        """The management API port."""
        return int(self.ready.get("management_port") or self.ready["port"])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, then SIGKILL it after ``timeout``."""
        if self.popen.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.popen.wait(5)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone is what we wanted
            os.killpg(self.popen.pid, sig)  # its own session: the group id is its pid


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def management_edge() -> str:
    """"compiled" when the clone's management edge was compiled in place (setup.py), which
    the servers then run (they start in the clone, with ``-m``), else "Python"."""
    built = any((REPO_ROOT / "wsgateway" / f"management{suffix}").exists() for suffix in EXTENSION_SUFFIXES)
    return "compiled" if built else "Python"


def python_argv(module: str, *args: str) -> list[str]:
    """Return the argv that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def _pinned(argv: list[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None, cpu: int | None):
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            _pinned(argv, cpu),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return ServerProcess(name, popen, log_path)


def start_server(
    name: str,
    argv: list[str],
    workdir: Path,
    *,
    ready_file: Path,
    env: dict[str, str] | None = None,
    cpu: int | None = None,
    timeout: float = 60.0,
) -> ServerProcess:
    """Start ``argv`` (run from the repository root) and wait for its ready file.

    Raises :class:`ServerError` when it exits or is not ready within ``timeout``.
    """
    ready_file.unlink(missing_ok=True)
    server = _spawn(name, argv, workdir, env, cpu)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise ServerError(f"{name} exited with {server.popen.returncode}:\n{_log_tail(server.log_path)}")
        try:
            server.ready = orjson.loads(ready_file.read_bytes())
            return server
        except (FileNotFoundError, orjson.JSONDecodeError):
            time.sleep(_POLL_S)
    server.stop()
    raise ServerError(f"{name} not ready after {timeout:.0f} s:\n{_log_tail(server.log_path)}")


def start_redis(
    workdir: Path, cpu: int | None = None, timeout: float = 20.0, *, name: str = "redis", cluster: bool = False
) -> ServerProcess:
    """Start a private ``redis-server`` on a free loopback port (never the shared 6379);
    ``cluster``: with cluster mode on, to be joined by :func:`start_redis_cluster`.

    Persistence is off. Raises :class:`ServerError` if it does not answer PING in time.
    """
    import redis

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--maxclients", "10000"]
    if cluster:
        (workdir / f"{name}-nodes.conf").unlink(missing_ok=True)  # a previous run's, in a reused --out
        # the bus port is a free one too (by default port + 10000, which may be taken or > 65535)
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"{name}-nodes.conf",
                 "--cluster-port", str(free_port())]
    server = _spawn(name, argv, workdir, None, cpu)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if server.popen.poll() is not None:
                raise ServerError(f"redis-server exited:\n{_log_tail(server.log_path)}")
            try:
                if client.ping():
                    server.ready = {"port": port, "url": f"redis://127.0.0.1:{port}/0"}
                    return server
            except redis.ConnectionError:
                time.sleep(_POLL_S)
    finally:
        client.close()
    server.stop()
    raise ServerError("redis-server did not answer PING")


def start_redis_cluster(
    workdir: Path, cpu: int | None = None, masters: int = 3, timeout: float = 30.0
) -> list[ServerProcess]:
    """Start a private Redis Cluster of ``masters`` masters, no replicas (``redis-cli
    --cluster create``); the first server's ``ready["cluster_url"]`` is its
    ``redis+cluster://`` URL. Raises :class:`ServerError` if it does not come up in time."""
    import redis

    servers: list[ServerProcess] = []
    try:
        # one by one, so that those started are stopped if one fails
        servers.extend(start_redis(workdir, cpu, name=f"redis-{i}", cluster=True) for i in range(masters))
        hosts = [f"127.0.0.1:{s.port}" for s in servers]
        done = subprocess.run(
            [shutil.which("redis-cli") or "/usr/bin/redis-cli", "--cluster", "create", *hosts,
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, timeout=timeout, check=False,
        )
        if done.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed:\n{done.stdout.decode(errors='replace')[-600:]}")
        deadline = time.monotonic() + timeout
        for server in servers:  # every master agrees that the cluster is up
            client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2.0)
            try:
                while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    if time.monotonic() > deadline:
                        raise ServerError("the Redis Cluster did not reach cluster_state:ok")
                    time.sleep(_POLL_S)
            finally:
                client.close()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    servers[0].ready["cluster_url"] = "redis+cluster://" + ",".join(hosts) + "/"
    return servers
