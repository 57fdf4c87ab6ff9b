"""Shared fixtures: a private redis-server for the registry tests.

It runs on a free loopback port chosen by pytest-redis (never the machine's shared Redis on
6379, never fakeredis), once per session; each test gets its own key prefix, so tests do not
see each other's keys and need no FLUSHALL.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator, Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from tests.cluster_support import Cluster
from tests.free_ports import PORTS, free_port
from tests.redis_topologies import TOPOLOGIES, DownAndBack, SentinelTopology, SingleTopology, Topology
from tests.topology_cluster import ClusterTopology, PrivateRedisCluster

private_redis = factories.redis_proc(port=set(PORTS))  # any free port outside the ephemeral range

_prefixes = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    """Modules compiled in place (``python setup.py build_ext --inplace``, for a benchmark)
    are what an editable install imports, ahead of the source beside them: refuse to test
    them as if they were the source. tests/test_compiled.py tests a compiled copy."""
    root = Path(__file__).resolve().parent.parent
    built = sorted(str(path.relative_to(root)) for pattern in ("wsgateway/**/*", "wsgateway__mypyc*")
                   for path in root.glob(pattern) if path.name.endswith(tuple(EXTENSION_SUFFIXES)))
    if built:
        raise pytest.UsageError(f"compiled in place, and imported instead of the source: {', '.join(built)}; "
                                "delete them to test the source")


@pytest.fixture
def redis_url(private_redis: RedisExecutor) -> str:
    """URL of the session's private redis-server."""
    return f"redis://{private_redis.host}:{private_redis.port}/0"


@pytest.fixture(scope="session")
def private_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedisCluster]:
    """A three-master Redis Cluster of the session's own (see tests/topology_cluster.py)."""
    running = PrivateRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _topology(request: pytest.FixtureRequest, name: str) -> Topology:
    if name == "cluster":
        running: PrivateRedisCluster = request.getfixturevalue("private_redis_cluster")
        return ClusterTopology(running.url, running.ports[0], tuple(running.ports))
    if name == "sentinel":
        return request.getfixturevalue("sentinel_topology")  # type: ignore[no-any-return]
    assert name == "single", name
    executor: RedisExecutor = request.getfixturevalue("private_redis")
    return SingleTopology(executor.host, executor.port)


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> Topology:
    """The Redis the test runs on: "single" (the session's redis-server) unless the test
    is parametrised with ``pytest.mark.parametrize("redis_topology", [...], indirect=True)``
    ("single", "sentinel", "cluster")."""
    return _topology(request, getattr(request, "param", "single"))


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{next(_prefixes)}"


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisExecutor]:
    """A redis-server of the test's own, free port, to kill / stop and start again.

    ``kill(SIGKILL)`` loses its data; ``stop()`` (SIGTERM) saves it to ``tmp_path`` first
    (redis-server's default save points), and ``start()`` loads it back."""
    executor = RedisExecutor(
        executable="redis-server", databases=1, redis_timeout=30, loglevel="warning",
        host="127.0.0.1", port=free_port(), save="", datadir=tmp_path,
    )
    executor.start()
    yield executor
    executor.stop()


@pytest.fixture(params=["single", "cluster"])
def down_and_back(request: pytest.FixtureRequest) -> Iterator[DownAndBack]:
    """One redis-server of the test's own, or the session's whole Redis Cluster (its three
    masters; back from their nodes.conf, empty, at the end if the test left it down). Not under
    Sentinel: there the master going away is a failover (tests/test_cluster_failover.py)."""
    if request.param == "single":
        server: RedisExecutor = request.getfixturevalue("restartable_redis")
        yield DownAndBack(f"redis://127.0.0.1:{server.port}/0", lambda: server.kill(sig=signal.SIGKILL), server.start)
        return
    running: PrivateRedisCluster = request.getfixturevalue("private_redis_cluster")
    try:
        yield DownAndBack(running.url, running.kill, running.restart)
    finally:
        if not running.running:
            running.restart()


@pytest.fixture(scope="session")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """The session's master, replica and three Sentinels (tests/redis_topologies.py); tests
    that make it fail over start their own instead."""
    topology = SentinelTopology(tmp_path_factory.mktemp("sentinel"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def failing_over(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A master, a replica and three Sentinels of the test's own, to fail over at will
    (starting a fresh one is quicker than waiting for Sentinel to take a killed master back
    as a replica, and leaves the session's ``sentinel_topology`` alone)."""
    topology = SentinelTopology(tmp_path / "redis")
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> Topology:
    """Runs the test on each Redis deployment of ``TOPOLOGIES`` (the session's own); a test
    may name others with ``pytest.mark.parametrize("topology", [...], indirect=True)``."""
    return _topology(request, request.param)


def pytest_asyncio_loop_factories(config, item):  # type: ignore[no-untyped-def]
    """Tests run on uvloop, the loop `wsgateway serve` runs on (its transports differ)."""
    import uvloop

    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def cluster(tmp_path: Path, redis_topology: Topology, key_prefix: str) -> AsyncIterator[Cluster]:
    """Gateway processes on the test's Redis topology; every one killed at the end."""
    running = Cluster(tmp_path, redis_topology.url, key_prefix, registry_toml=redis_topology.registry_toml())
    try:
        yield running
    finally:
        running.stop_all()
