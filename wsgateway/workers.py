"""``wsgateway serve --workers N``: N node processes on one machine sharing both ports.

Each worker is a full node of the Redis registry with its own node id, listening with
SO_REUSEPORT so that the kernel spreads connections and management calls over them. A
management call reaching any worker finds a connection on any other through the registry.
The supervisor picks the ports (when the config says 0) by binding placeholder sockets that
never listen, restarts a worker that dies (the registry cleans up after the dead one), and
on SIGTERM / SIGINT forwards the signal and waits for every worker to drain.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .console.access import KEY_ENV as CONSOLE_KEY_ENV
from .ids import new_node_id

if TYPE_CHECKING:
    from .config import GatewayConfig

__all__ = ["supervise"]

log = logging.getLogger("wsgateway.workers")

_READY_TIMEOUT_S = 60.0
_RESTART_DELAY_S = 1.0


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (never listen) a SO_REUSEPORT socket so that the port stays ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


class _Worker:
    def __init__(self, index: int, argv: list[str], ready_dir: Path, node_id: str) -> None:
        self.index = index
        self.node_id = node_id
        self.ready_file = ready_dir / f"worker-{index}.json"
        self._argv = argv
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        argv = [*self._argv, "--node-id", self.node_id, "--ready-file", str(self.ready_file)]
        self.process = subprocess.Popen(argv)

    def ready(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.ready_file.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None


def supervise(config: GatewayConfig, args: argparse.Namespace) -> int:
    """Run ``args.workers`` node processes until SIGTERM / SIGINT; return the exit status."""
    if config.registry.backend != "redis":
        print(
            "wsgateway: --workers above 1 needs [registry] backend = \"redis\": with the memory "
            "registry each worker would only know its own connections",
            file=sys.stderr,
        )
        return 2
    client_sock, port = _reserve_port(config.listen.host, config.listen.port)
    mgmt_sock, mgmt_port = _reserve_port(config.management.host, config.management.port)
    base = [sys.executable, "-m", "wsgateway", "serve", "--worker", "--reuse-port",
            "--listen-port", str(port), "--management-port", str(mgmt_port)]
    if args.config:
        base += ["--config", os.path.abspath(args.config)]
    prefix = config.registry.node_id or new_node_id()
    # One console session key for every worker: a login holds whichever worker answers.
    os.environ.setdefault(CONSOLE_KEY_ENV, secrets.token_hex(32))
    stopping = False

    def _stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    workers: list[_Worker] = []

    def _reload(signum: int, _frame: Any) -> None:  # each worker reloads the file itself
        for worker in workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    with tempfile.TemporaryDirectory(prefix="wsgateway-workers-") as tmp:
        workers[:] = [_Worker(i, base, Path(tmp), f"{prefix}-{i}") for i in range(args.workers)]
        try:  # whatever ends the supervisor (a ready file it cannot write, too) stops the workers
            for worker in workers:
                worker.start()
            if not _wait_ready(workers, lambda: stopping):
                stopping = True
            else:
                client_sock.close()  # the workers hold the ports now
                mgmt_sock.close()
                if args.ready_file:
                    _write_ready(args.ready_file, workers, port, mgmt_port)
                log.info("%d workers ready on ports %d / %d", len(workers), port, mgmt_port)
            while not stopping:
                time.sleep(0.2)
                for worker in workers:
                    if worker.process is not None and worker.process.poll() is not None and not stopping:
                        log.error("worker %s exited with %s: restarting", worker.node_id, worker.process.returncode)
                        time.sleep(_RESTART_DELAY_S)
                        worker.start()
        finally:
            status = _shutdown(workers)
        return status


def _wait_ready(workers: list[_Worker], stopping: Any) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline and not stopping():
        if all(w.ready() for w in workers):
            return True
        if any(w.process is not None and w.process.poll() is not None for w in workers):
            log.error("a worker exited during start-up")
            return False
        time.sleep(0.05)
    return False


def _write_ready(path: str, workers: list[_Worker], port: int, mgmt_port: int) -> None:
    data = {
        "node_id": workers[0].node_id,
        "node_ids": [w.node_id for w in workers],
        "port": port,
        "management_port": mgmt_port,
        "pid": os.getpid(),
        "worker_pids": [w.process.pid for w in workers if w.process is not None],
    }
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _shutdown(workers: list[_Worker]) -> int:
    """Forward SIGTERM, wait for every worker to drain; 0 if all exited cleanly."""
    for worker in workers:
        if worker.process is not None and worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    status = 0
    for worker in workers:
        if worker.process is None:
            continue
        try:
            code = worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            code = worker.process.wait()
        if code not in (0, -signal.SIGTERM):
            status = 1
    return status
