"""``registry/redis/connect``: from ``redis_url`` to a redis-py client and the links' locator.
URL parsing and configuration without I/O; then the Redis registry on a Sentinel topology of
its own (tests/redis_topologies.py) through failovers: the master SIGKILLed right after
writes the replica missed, and a failover Sentinel coordinates (the old master stays up,
demoted). Also Redis Cluster URLs, the cluster client's settings and the MOVED/ASK answers
the channel links follow, without I/O.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from pathlib import Path

import hiredis
import pytest
import redis

from wsgateway.config import ConfigError, RegistryConfig, load_config
from wsgateway.errors import GoneError, RegistryUnavailableError
from wsgateway.registry.redis import RedisRegistry
from wsgateway.registry.redis.connect import (
    SENTINEL_PORT,
    SentinelLocator,
    cluster_client,
    cluster_seeds,
    connect,
    is_cluster_url,
    parse_sentinel_url,
    split_cluster_url,
)
from wsgateway.registry.redis.link import moved_to

from .redis_topologies import SentinelTopology
from .registry_contract import RecordingNode, wait_for
from .registry_support import HEARTBEAT_S, accept, topology_config, wait_settled

CHECK_S = 2.0  # the links' check: the registry's request timeout

# ---------------------------------------------------------------- without I/O


def test_a_sentinel_url_names_sentinels_service_db_and_the_data_nodes_settings() -> None:
    url = parse_sentinel_url("redis+sentinel://app:pw%40x@10.0.0.1:26380,sentinel-b,[::1]:26381/cache/3?socket_keepalive=true")
    assert url.sentinels == (("10.0.0.1", 26380), ("sentinel-b", SENTINEL_PORT), ("::1", 26381))
    assert (url.service, url.tls) == ("cache", False)
    assert url.options["db"] == 3
    assert (url.options["username"], url.options["password"]) == ("app", "pw@x")
    assert url.options["socket_keepalive"] is True
    assert "host" not in url.options and "connection_class" not in url.options
    assert parse_sentinel_url("redis+sentinel://h/svc").options["db"] == 0
    tls = parse_sentinel_url("rediss+sentinel://h:1/svc?ssl_cert_reqs=none")
    assert tls.tls and tls.options["ssl_cert_reqs"] == "none"


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://h:1/", "the path must be /service or /service/db"),
    ("redis+sentinel://h:1/svc/0/x", "the path must be /service or /service/db"),
    ("redis+sentinel://h:1/svc/zero", "the database must be a number, got 'zero'"),
    ("redis+sentinel://h:1,:2/svc", "a Sentinel address needs a host, got ':2'"),
    ("redis+sentinel://h:port/svc", "a Sentinel port must be a number, got 'h:port'"),
    ("redis://h:1/0", "not a Sentinel URL: redis://"),
])
def test_a_bad_sentinel_url_is_refused_with_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        parse_sentinel_url(url)


def test_the_config_takes_sentinel_urls_and_a_sentinel_password_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[registry]\nbackend = "redis"\n'
        'redis_url = "rediss+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0"\n'
        'password_env = "DATA_PW"\nsentinel_password_env = "SENTINEL_PW"\n'
    )
    config = load_config(path, env={"DATA_PW": "d", "SENTINEL_PW": "s"}).registry
    assert (config.password, config.sentinel_password) == ("d", "s")
    assert "password" not in repr(config)  # secrets never print
    path.write_text('[registry]\nbackend = "redis"\nredis_url = "redis://10.0.0.1:6379/0"\nsentinel_password = "s"\n')
    with pytest.raises(ConfigError, match=r"^registry\.sentinel_password: is for redis\+sentinel:// URLs only$"):
        load_config(path)
    for bad in ("redis+sentinel://10.0.0.1:26379/", "redis+sentinel:///mymaster", "redis+sentinel://h:1/m/x"):
        with pytest.raises(ConfigError, match=r"^registry\.redis_url"):
            RegistryConfig(backend="redis", redis_url=bad)


async def test_tls_reaches_the_sentinels_and_the_data_nodes() -> None:
    config = RegistryConfig(backend="redis", redis_url="rediss+sentinel://127.0.0.1:1/svc/2?ssl_cert_reqs=none",
                            password="d", sentinel_password="s")
    connected = connect(config, 2.0)
    try:
        pool = connected.client.connection_pool
        assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "d"
        assert "SSL" in pool.connection_class.__name__
        assert connected.sentinel is not None
        sentinels = connected.sentinel.sentinels
        assert all("SSL" in s.connection_pool.connection_class.__name__ for s in sentinels)
        assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"s"}
        assert isinstance(connected.locator, SentinelLocator)
        template = connected.locator.template
        assert template.master_only and isinstance(template.tls, ssl.SSLContext) and template.password == "d"
    finally:
        await connected.aclose()


# ---------------------------------------------------------------- failovers



async def registries(topology: SentinelTopology, prefix: str, *names: str) -> list[tuple[RecordingNode, RedisRegistry]]:
    started = []
    for name in names:
        node = RecordingNode(name)
        registry = RedisRegistry(topology_config(topology, prefix), name)
        await registry.start(node)
        started.append((node, registry))
    for _, registry in started:
        await wait_settled(registry)
    return started


async def listed(registry: RedisRegistry) -> list[str] | None:
    try:
        page = await registry.list_tenant("tenant-a", 100, None)
    except Exception:  # noqa: BLE001 - 503 while settling: ask again
        return None
    return sorted(i.record.connection_id for i in page.connections)


@pytest.mark.slow
async def test_a_failover_to_a_replica_that_missed_writes_puts_them_back(
    failing_over: SentinelTopology, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica is paused (SIGSTOP) and cut off while a connection is added and another
    removed, then the master is SIGKILLed: the promoted replica lacks the new record and still has the
    removed one, while its epoch marker, replicated long before, is the one the nodes know.
    Each node follows the new master and re-registers at its next beat: the listing is
    exact again, both records answer as they should, and no $disconnect runs."""
    topology = failing_over
    await topology.wait_ready()
    caplog.set_level(logging.WARNING, logger="wsgateway.registry")
    (node_a, reg_a), (node_b, reg_b) = await registries(topology, key_prefix, "na", "nb")
    kept = await accept(reg_a, node_a)
    leaving = await accept(reg_a, node_a)
    old_master, replica = topology.current_master(), topology.servers[1 - topology.servers.index(topology.current_master())]
    with old_master.client() as client:  # until the replica has everything so far
        client.execute_command("WAIT", 1, 2000)
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)
    try:
        with old_master.client() as client:  # what the master sends from now on is lost
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        late = await accept(reg_a, node_a)  # the replica misses both of these writes
        node_a.connections.pop(leaving.connection_id)
        assert await reg_a.remove(leaving) is True  # this node runs its $disconnect
        old_master.kill()
    finally:
        replica.process.send_signal(signal.SIGCONT)
    killed = time.monotonic()
    with redis.Redis.from_url(f"redis://:{replica.password}@127.0.0.1:{replica.port}/0") as direct:
        assert not direct.exists(f"{key_prefix}:{{c:{late.connection_id}}}")  # missed, as intended
        assert direct.exists(f"{key_prefix}:{{c:{leaving.connection_id}}}")
    took = await topology.wait_promoted(old_master.port)

    live = sorted([kept.connection_id, late.connection_id])

    async def exact() -> bool:
        return await listed(reg_b) == live

    async with asyncio.timeout(HEARTBEAT_S * 10 + 5):
        while not await exact():
            await asyncio.sleep(0.05)
    recovered = time.monotonic() - killed - took
    # Records come back through the pool; the node channels' links reconnect on their own
    # backoff (a post meanwhile answers 503 at once, its request unsent): wait for them.
    await asyncio.wait_for(reg_b._channel.ready(), 5)
    await asyncio.wait_for(reg_a._channel.ready(), 5)
    await reg_b.post(late.connection_id, b"after", False)
    assert node_a.posted[late.connection_id] == [(b"after", False)]
    with pytest.raises(GoneError):
        await reg_b.post(leaving.connection_id, b"x", False)
    assert node_a.orphans == [] and node_b.orphans == []
    assert recovered < 5.0, recovered
    # The epoch did not change: what put the records back is each node following the master.
    assert sum("writes to a new master" in r.getMessage() for r in caplog.records) == 2
    assert not any("epoch changed" in r.getMessage() for r in caplog.records)
    for registry in (reg_b, reg_a):
        await registry.close()


@pytest.mark.slow
async def test_a_coordinated_failover_moves_every_link_and_pool(failing_over: SentinelTopology, key_prefix: str) -> None:
    """SENTINEL FAILOVER: the old master stays up and becomes a replica. Cross-node calls work
    again once the links moved to the new master, which they do within two checks (the
    request timeout, 2 s) of Sentinel naming it, before Sentinel demotes the old one."""
    topology = failing_over
    await topology.wait_ready()
    (node_a, reg_a), (_, reg_b) = await registries(topology, key_prefix, "na", "nb")
    record = await accept(reg_a, node_a)
    await reg_b.post(record.connection_id, b"before", False)
    old = topology.current_master()
    with topology.sentinels[0].client() as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", "mymaster")
    await topology.wait_promoted(old.port)
    promoted = time.monotonic()
    new = topology.current_master()
    channels = [f"{key_prefix}:node:{{{n}}}" for n in ("na", "nb")]
    with old.client() as on_old, new.client() as on_new:
        # Sentinel demotes the old master seconds later (at its next INFO): the links go
        # as soon as Sentinel names the new one, killed by Sentinel or not.
        await wait_for(lambda: [n for _, n in on_new.pubsub_numsub(*channels)] == [1, 1], 10, "links on the new master")
        assert time.monotonic() - promoted < 2 * CHECK_S + 2.0
        assert [n for _, n in on_old.pubsub_numsub(*channels)] == [0, 0]
    async with asyncio.timeout(10):
        while True:
            try:
                await reg_b.post(record.connection_id, b"after", False)
                break
            except RegistryUnavailableError:  # until the pools moved too
                await asyncio.sleep(0.02)
    assert node_a.posted[record.connection_id][-1] == (b"after", False)
    assert time.monotonic() - promoted < 2 * CHECK_S + 2.0
    for registry in (reg_b, reg_a):
        await registry.close()


async def test_cross_node_calls_over_tls_to_the_sentinels_and_the_data_nodes(tmp_path: Path, key_prefix: str) -> None:
    """rediss+sentinel://: every server speaks only TLS (replication and Sentinel's own
    connections too); the certificate is trusted through the URL's ssl_ca_certs."""
    topology = SentinelTopology(tmp_path / "redis", tls=True)
    try:
        topology.start()
        (node_a, reg_a), (_, reg_b) = await registries(topology, key_prefix, "na", "nb")
        record = await accept(reg_a, node_a)
        await reg_b.post(record.connection_id, b"over tls", False)
        assert node_a.posted[record.connection_id] == [(b"over tls", False)]
        assert (await reg_b.get(record.connection_id)).record.node_id == "na"
        with redis.Redis.from_url(topology.direct_url()) as direct:
            assert direct.hget(f"{key_prefix}:{{c:{record.connection_id}}}", "node") == b"na"
        for registry in (reg_b, reg_a):
            await registry.close()
    finally:
        topology.stop()


# ---------------------------------------------------------------- Redis Cluster, without I/O


def test_cluster_urls_are_split_into_a_node_url_and_hosts() -> None:
    url = "rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/?ssl_cert_reqs=none"
    single, hosts = split_cluster_url(url)
    assert single == "rediss://app:s3cret@10.0.0.1:7000?ssl_cert_reqs=none"
    assert hosts == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert split_cluster_url("redis+cluster://h:1/0") == ("redis://h:1", [("h", 1)])
    assert is_cluster_url("REDIS+CLUSTER://h:1/") and not is_cluster_url("redis://h:1/0")


@pytest.mark.parametrize("url", [
    "redis://h:1/0", "redis+cluster:///", "redis+cluster://h/", "redis+cluster://h:x/", "redis+cluster://h:1/3",
])
def test_bad_cluster_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        split_cluster_url(url)


def test_cluster_urls_pass_the_config_check() -> None:
    RegistryConfig(backend="redis", redis_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001/")
    RegistryConfig(backend="redis", redis_url="rediss+cluster://127.0.0.1:7000/")
    with pytest.raises(ConfigError):
        RegistryConfig(backend="redis", redis_url="redis+cluster//127.0.0.1:7000/")


def test_cluster_client_takes_the_credentials_and_every_host() -> None:
    config = RegistryConfig(backend="redis", redis_url="redis+cluster://app:from-url@127.0.0.1:7000,127.0.0.2:7001/",
                            password="configured")
    client = cluster_client(config, 2.0)  # connects lazily: nothing is opened here
    seeds = cluster_seeds(client, 2.0)
    assert sorted((s.host, s.port) for s in seeds) == [("127.0.0.1", 7000), ("127.0.0.2", 7001)]
    assert {(s.username, s.password, s.tls) for s in seeds} == {("app", "configured", None)}


def test_moved_and_ask_name_where_to_go() -> None:
    assert moved_to(hiredis.ReplyError("MOVED 3999 127.0.0.1:6381")) == ("127.0.0.1", 6381)
    assert moved_to(hiredis.ReplyError("ASK 3999 10.0.0.2:7000")) == ("10.0.0.2", 7000)
    assert moved_to(hiredis.ReplyError("MOVED 3999 :7000")) == ("", 7000)  # the host it asked
    for other in (hiredis.ReplyError("NOAUTH Authentication required."), hiredis.ReplyError("MOVED x"), 3, b"MOVED"):
        assert moved_to(other) is None


def test_rediss_cluster_urls_give_the_links_tls() -> None:
    config = RegistryConfig(backend="redis", redis_url="rediss+cluster://127.0.0.1:7000,127.0.0.2:7001/?ssl_cert_reqs=none")
    seeds = cluster_seeds(cluster_client(config, 2.0), 2.0)
    assert len(seeds) == 2 and all(isinstance(s.tls, ssl.SSLContext) for s in seeds)
