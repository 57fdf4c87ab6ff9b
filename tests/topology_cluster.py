"""A three-master Redis Cluster private to the test session: ``redis-server --cluster-enabled
yes`` three times on free loopback ports, each in a temp dir of its own, joined with
``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``; and moving a slot from
one master to another as ``redis-cli --cluster reshard`` does it (SETSLOT IMPORTING/MIGRATING,
MIGRATE of its keys, SETSLOT NODE), for the tests that move a node's channel under traffic.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.free_ports import free_port
from wsgateway.config import RegistryConfig

__all__ = ["ClusterTopology", "PrivateRedisCluster"]

START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ClusterTopology:
    """The session's :class:`PrivateRedisCluster` as a ``tests.redis_topologies.Topology``."""

    url: str
    first_port: int

    def config(self, **fields: object) -> RegistryConfig:
        return RegistryConfig(backend="redis", redis_url=self.url, **fields)  # type: ignore[arg-type]

    def registry_toml(self) -> str:
        return ""

    ports: tuple[int, ...] = ()
    name: str = "cluster"

    def direct_url(self) -> str:
        """One master (keys of other slots answer MOVED there)."""
        return f"redis://127.0.0.1:{self.first_port}/0"

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.first_port)

    def masters(self) -> list[redis.Redis]:
        return [PrivateRedisCluster.client(port) for port in self.ports or (self.first_port,)]


class PrivateRedisCluster:
    """Three masters, no replicas; :meth:`stop` kills them (their data is thrown away);
    :meth:`kill` and :meth:`restart` take the whole cluster down and bring it back empty."""

    def __init__(self, root: Path, *, options: tuple[str, ...] = ()) -> None:
        """``options``: more ``redis-server`` arguments for every master."""
        self.root = root
        self._options = options
        self.ports: list[int] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._commands: list[list[str]] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"

    def start(self) -> None:
        """Three masters on free ports, joined. A master that exits at start (its port taken
        after it was found free) is started again on other ports, twice at most."""
        for attempt in range(3):
            self._commands, self.ports = [], []
            for _ in range(3):
                port = free_port()
                (self.root / str(port)).mkdir(parents=True, exist_ok=True)
                self._commands.append(
                    ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                     "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port()),
                     "--cluster-node-timeout", "2000", "--save", "",
                     "--appendonly", "no", "--logfile", "redis.log", *self._options],
                )
                self.ports.append(port)
            try:
                self._spawn()
                break
            except _Exited:
                self.stop()
                if attempt == 2:
                    raise
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=START_TIMEOUT_S,
        )
        self._wait_up()

    def _spawn(self) -> None:
        self._processes = [
            subprocess.Popen(command, cwd=self.root / str(port), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            for command, port in zip(self._commands, self.ports, strict=True)
        ]
        for port, process in zip(self.ports, self._processes, strict=True):
            self._wait(lambda p=port: self.client(p).ping(), process, self.root / str(port) / "redis.log")

    def _wait_up(self) -> None:
        for port in self.ports:  # every master agrees that the cluster is up
            self._wait(lambda p=port: b"cluster_state:ok" in self.client(p).execute_command("CLUSTER", "INFO"))

    def stop(self) -> None:
        for process in self._processes:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return bool(self._processes) and all(p.poll() is None for p in self._processes)

    def kill(self) -> None:
        """SIGKILL every master: the whole cluster is gone, with its data."""
        self.stop()

    def restart_master(self, port: int) -> None:
        """SIGKILL the master on ``port`` and start it again at once, empty (its slots and
        peers from its nodes.conf); returns once the cluster is up (Redis holds a restarted
        master back from writes for 2 s)."""
        i = self.ports.index(port)
        self._processes[i].kill()
        self._processes[i].wait()
        self._processes[i] = subprocess.Popen(
            self._commands[i], cwd=self.root / str(port), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self._wait_up()

    def restart(self) -> None:
        """Start the masters again, on their ports, from their ``nodes.conf`` (each knows its
        slots and its peers): the same cluster, empty; returns once it is up."""
        self._spawn()
        self._wait_up()

    @staticmethod
    def client(port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def port_of_slot(self, slot: int) -> int:
        """The port of the master serving ``slot`` now."""
        for start, end, master, *_ in self.client(self.ports[0]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"slot {slot} is not served")

    def move_slot(self, slot: int, to_port: int) -> None:
        """Move ``slot`` and its keys to the master on ``to_port``, as a reshard does."""
        from_port = self.port_of_slot(slot)
        if from_port == to_port:
            return
        source, target = self.client(from_port), self.client(to_port)
        source_id = source.execute_command("CLUSTER", "MYID").decode()
        target_id = target.execute_command("CLUSTER", "MYID").decode()
        target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
        for port in (to_port, from_port, *(p for p in self.ports if p not in (to_port, from_port))):
            self.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    @staticmethod
    def _wait(check: object, process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if check():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            if process is not None and process.poll() is not None:
                raise _Exited(f"redis-server exited with {process.returncode} at start:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the private Redis Cluster did not come up\n{_tail(log)}")
            time.sleep(0.05)


class _Exited(RuntimeError):
    """A master exited while it was being started."""


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
