"""Redis deployments for the tests, private to the test session: real ``redis-server``
processes on free loopback ports, each in a temp dir of its own.

- ``single``: the session's pytest-redis server (``conftest.private_redis``);
- ``sentinel``: one master, one replica and three Sentinels (``redis-server --sentinel``),
  with passwords on the data nodes and on the Sentinels, ``down-after-milliseconds`` 1000
  and ``failover-timeout`` 3000, so that Sentinel promotes the replica a few seconds after
  the master dies; ``SentinelTopology(tls=True)`` speaks only TLS, everywhere.

``cluster``, a three-master Redis Cluster, is in ``tests/topology_cluster.py``.

A topology says how the registry reaches it (:meth:`Topology.config`, :meth:`registry_toml`)
and how a test reaches the current master(s) directly (:meth:`Topology.direct_url`,
:meth:`Topology.client`, :meth:`Topology.masters`). The ``topology`` fixture (conftest.py)
runs a test on each of :data:`TOPOLOGIES`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.free_ports import free_port
from wsgateway.config import RegistryConfig

__all__ = ["TOPOLOGIES", "DownAndBack", "RedisProcess", "SentinelTopology", "SingleTopology", "Topology"]

TOPOLOGIES = ("single", "sentinel", "cluster")  # the last: tests/topology_cluster.py
SERVICE = "mymaster"
DATA_PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
START_TIMEOUT_S = 10.0


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (a CA too) and its key, written to ``folder``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "redis.crt", folder / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Topology(Protocol):
    name: str
    url: str

    def config(self, **fields: object) -> RegistryConfig:
        """A redis registry config reaching this topology (``fields`` override)."""

    def registry_toml(self) -> str:
        """The ``[registry]`` lines a gateway process needs beyond ``redis_url``."""

    def direct_url(self) -> str:
        """A plain ``redis://`` URL of the current master, for the test's own checks."""

    def client(self) -> redis.Redis:
        """A client of the current master(s), for the test's own checks: ``redis.Redis``, or
        ``redis.RedisCluster`` (same commands; each sent to the master of its key's slot)."""

    def masters(self) -> list[redis.Redis]:
        """A client of each master, for what is counted or flushed per server."""


@dataclasses.dataclass(frozen=True)
class DownAndBack:
    """A Redis deployment the test takes down (SIGKILL: its data is lost) and brings back empty
    (the ``down_and_back`` fixture, conftest.py)."""

    url: str
    kill: Callable[[], None]
    start: Callable[[], None]


@dataclasses.dataclass
class SingleTopology:
    """One redis-server without a password."""

    host: str
    port: int
    name: str = "single"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def config(self, **fields: object) -> RegistryConfig:
        return RegistryConfig(backend="redis", redis_url=self.url, **fields)  # type: ignore[arg-type]

    def registry_toml(self) -> str:
        return ""

    def direct_url(self) -> str:
        return self.url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.direct_url())

    def masters(self) -> list[redis.Redis]:
        return [self.client()]


class RedisProcess:
    """One ``redis-server`` (or ``redis-server --sentinel``) process with its config file in
    ``directory``: SIGKILL it, start it again."""

    def __init__(
        self, directory: Path, lines: list[str], *, sentinel: bool = False, tls: tuple[Path, Path] | None = None,
        port: int | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port or free_port()
        self.password = DATA_PASSWORD if not sentinel else SENTINEL_PASSWORD
        self.tls = tls  # (certificate, key): TLS only, the certificate is its own CA
        self._sentinel = sentinel
        self._conf = directory / ("sentinel.conf" if sentinel else "redis.conf")
        listen = [f"port {self.port}"] if tls is None else [
            "port 0", f"tls-port {self.port}", f"tls-cert-file {tls[0]}", f"tls-key-file {tls[1]}",
            f"tls-ca-cert-file {tls[0]}", "tls-auth-clients no", "tls-replication yes",
        ]
        common = [*listen, "bind 127.0.0.1", f"dir {directory}", "save \"\"", "appendonly no",
                  f"logfile {directory / 'log.txt'}", f"requirepass {self.password}"]
        self._conf.write_text("\n".join(common + lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", str(self._conf)] + (["--sentinel"] if self._sentinel else [])
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.client().ping()
                return
            except (redis.ConnectionError, OSError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.port} did not start") from None
                time.sleep(0.02)

    def client(self) -> redis.Redis:
        tls = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls[0])}
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2,
                           decode_responses=True, **tls)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: gone at once, with whatever it did not replicate."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class SentinelTopology:
    """A master, a replica and three Sentinels watching them as ``mymaster`` (quorum 2)."""

    name = "sentinel"

    def __init__(self, directory: Path, *, tls: bool = False) -> None:
        auth = [f"masterauth {DATA_PASSWORD}", "repl-diskless-sync-delay 0"]  # a replica syncs at once
        directory.mkdir(parents=True, exist_ok=True)
        self.tls = self_signed(directory) if tls else None
        self.master = RedisProcess(directory / "a", auth, tls=self.tls)
        self.replica = RedisProcess(directory / "b", [*auth, f"replicaof 127.0.0.1 {self.master.port}"], tls=self.tls)
        self.servers = (self.master, self.replica)
        watch = [
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2",
            f"sentinel auth-pass {SERVICE} {DATA_PASSWORD}",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel known-replica {SERVICE} 127.0.0.1 {self.replica.port}",
        ]
        # Each Sentinel knows the others from the start (ids and ports), instead of finding
        # them through hello messages every 2 s: a topology can fail over a second after it starts.
        ports = [free_port() for _ in range(3)]
        ids = [f"{i + 1:040x}" for i in range(3)]
        self.sentinels = [
            RedisProcess(directory / f"s{i}", [
                *watch, f"sentinel myid {ids[i]}",
                *(f"sentinel known-sentinel {SERVICE} 127.0.0.1 {ports[j]} {ids[j]}" for j in range(3) if j != i),
            ], sentinel=True, tls=self.tls, port=ports[i])
            for i in range(3)
        ]
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        if self.tls is None:
            self.url = f"redis+sentinel://{hosts}/{SERVICE}/0"
        else:
            self.url = f"rediss+sentinel://{hosts}/{SERVICE}/0?ssl_cert_reqs=required&ssl_ca_certs={self.tls[0]}"

    def start(self) -> None:
        for process in (*self.servers, *self.sentinels):
            process.start()

    def stop(self) -> None:
        for process in (*self.sentinels, *self.servers):
            process.kill()

    def config(self, **fields: object) -> RegistryConfig:
        return RegistryConfig(  # type: ignore[arg-type]
            backend="redis", redis_url=self.url, password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD, **fields
        )

    def registry_toml(self) -> str:
        return f'password = "{DATA_PASSWORD}"\nsentinel_password = "{SENTINEL_PASSWORD}"\n'

    def master_port(self) -> int:
        """The master's port as the Sentinels (all of them, asked in turn) name it now."""
        for sentinel in self.sentinels:
            if sentinel.running:
                with sentinel.client() as client:
                    return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])
        raise RuntimeError("no Sentinel runs")

    def current_master(self) -> RedisProcess:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def direct_url(self) -> str:
        if self.tls is not None:
            return f"rediss://:{DATA_PASSWORD}@127.0.0.1:{self.master_port()}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://:{DATA_PASSWORD}@127.0.0.1:{self.master_port()}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.direct_url())

    def masters(self) -> list[redis.Redis]:
        return [self.client()]

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Until every Sentinel knows the other two and a replica in sync: a failover can
        then happen (Sentinels find each other through hello messages every 2 s)."""
        async with asyncio.timeout(timeout):
            while not await asyncio.to_thread(self._ready):
                await asyncio.sleep(0.1)

    def _ready(self) -> bool:
        master = self.current_master()
        with master.client() as client:
            info = client.info("replication")
            if info.get("connected_slaves") != 1 or info["slave0"]["state"] != "online":
                return False
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(SERVICE)
                if state["num-other-sentinels"] != 2 or state["num-slaves"] != 1:
                    return False
                if state["is_sdown"] or state["is_odown"]:
                    return False
                if any(r["is_sdown"] for r in client.sentinel_slaves(SERVICE)):
                    return False
        return True

    async def wait_promoted(self, old_port: int, timeout: float = 30.0) -> float:
        """Until every Sentinel names another master than ``old_port`` and it answers as a
        master; returns the seconds it took."""
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while not await asyncio.to_thread(self._promoted, old_port):
                await asyncio.sleep(0.05)
        return time.monotonic() - started

    async def kill_master(self) -> float:
        """Once a failover can happen (:meth:`wait_ready`): SIGKILL the master, wait until
        Sentinel has promoted the replica, and start the old master again, empty, as the new
        one's replica (as Sentinel would make it). The seconds from the kill to the promotion."""
        await self.wait_ready()
        old = await asyncio.to_thread(self.current_master)
        await asyncio.to_thread(old.kill)
        promoted_s = await self.wait_promoted(old.port)
        await asyncio.to_thread(self._rejoin, old)
        return promoted_s

    def _rejoin(self, old: RedisProcess) -> None:
        old.start()
        with old.client() as client:
            client.execute_command("REPLICAOF", "127.0.0.1", str(self.master_port()))

    async def demote_master(self) -> float:
        """Once a failover can happen: ``SENTINEL FAILOVER`` (the replica is promoted while
        the master runs; Sentinel makes the old one a replica later). The seconds until the
        promotion."""
        await self.wait_ready()
        old_port = await asyncio.to_thread(self.master_port)
        with self.sentinels[0].client() as client:
            await asyncio.to_thread(client.execute_command, "SENTINEL", "FAILOVER", SERVICE)
        return await self.wait_promoted(old_port)

    def _promoted(self, old_port: int) -> bool:
        ports = set()
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                ports.add(int(client.sentinel_get_master_addr_by_name(SERVICE)[1]))
        if len(ports) != 1 or old_port in ports:
            return False
        master = next(s for s in self.servers if s.port in ports)
        with master.client() as client:
            return client.execute_command("ROLE")[0] == "master"
