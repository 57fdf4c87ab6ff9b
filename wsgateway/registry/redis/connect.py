"""From ``registry.redis_url`` to what the registry talks to: a redis-py client for records,
scripts and listings, and a :class:`~.link.Locator` that tells the node channels' links where
to connect. One function per kind of deployment; :func:`connect` picks it by the URL's scheme:

- ``redis://``, ``rediss://``, ``unix://``: one Redis. The links connect where the client does.
- ``redis+sentinel://host:port,host:port,.../service/db`` (``rediss+sentinel://``: TLS to the
  Sentinels and to the data nodes): the master that the Sentinels name for ``service``. The
  client's pool asks them at every new connection (redis-py's ``SentinelConnectionPool``; a
  master demoted while connected answers a write with READONLY, which drops the connection),
  and so do the links at every reconnect. Whenever the master the pool writes to changes,
  ``on_failover`` is called: the promoted replica may have missed the last writes.
- ``redis+cluster://h:p,h:p,h:p/`` (``rediss+cluster://`` for TLS): Redis Cluster. The
  registry's commands go through redis-py's :class:`~redis.asyncio.cluster.RedisCluster`,
  which routes each command (and each pipelined one) to the shard serving its key's slot and
  follows ``MOVED``/``ASK``; the channel links (``shards``) reach every shard with the
  client's credentials and TLS settings, starting from the URL's hosts.

The client never retries by itself (a retried pipeline could publish a request twice, and an
outage must reach the caller as a 503 at once) and speaks RESP2 (redis-py's pure-Python RESP3
parser costs ~30% more per pub/sub message). The configured password beats the URL's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .link import Endpoint, Fixed, Locator, endpoint_from, endpoint_of
from .shards import Locate

if TYPE_CHECKING:
    from ...config import RegistryConfig

__all__ = [
    "CLUSTER_SCHEMES", "SENTINEL_PORT", "Connected", "SentinelUrl", "cluster_client", "cluster_locator",
    "cluster_seeds", "connect", "is_cluster_url", "parse_sentinel_url", "split_cluster_url",
]

log = logging.getLogger("wsgateway.registry")

SENTINEL_PORT = 26379  # a Sentinel's port when the URL names none
_SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}


@dataclass
class Connected:
    """What the registry talks to Redis with; :meth:`aclose` closes it all."""

    client: Redis | RedisCluster
    locator: Locator
    sentinel: Sentinel | None = None  # the Sentinels' clients, under Sentinel
    # on Redis Cluster: the URL's hosts and where a channel's slot is served (``shards``)
    shards: tuple[list[Endpoint], Locate] | None = None
    on_failover: Callable[[], None] | None = None  # the master the client writes to changed

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def connect(config: RegistryConfig, timeout_s: float) -> Connected:
    """The client and locator for ``config.redis_url`` (one more kind of deployment is one
    more branch here). Raises ValueError for a URL it cannot use."""
    scheme = urlsplit(config.redis_url).scheme
    if scheme in _SENTINEL_SCHEMES:
        return _sentinel(config, timeout_s)
    if scheme.lower() in CLUSTER_SCHEMES:
        return _cluster(config, timeout_s)
    return _single(config, timeout_s)


def _client_options(timeout_s: float) -> dict[str, Any]:
    return {"retry": Retry(NoBackoff(), 0), "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
            "protocol": 2}


def _single(config: RegistryConfig, timeout_s: float) -> Connected:
    client = Redis.from_url(config.redis_url, **_client_options(timeout_s))
    if config.password is not None:  # the configured password beats the URL's
        client.connection_pool.connection_kwargs["password"] = config.password
    return Connected(client, Fixed(endpoint_of(client, timeout_s)))


# ------------------------------------------------------------ Sentinel


@dataclass(frozen=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL taken apart: ``options`` are the data nodes' connection
    settings (db, credentials, TLS and the query's options, as redis-py reads them)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    tls: bool
    options: dict[str, Any]


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``redis+sentinel://[user:password@]host[:port],host[:port],.../service[/db][?options]``;
    raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in _SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL: {parts.scheme}://")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = tuple(_host_port(h, "a Sentinel", SENTINEL_PORT) for h in hosts.split(","))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("the path must be /service or /service/db")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the database must be a number, got {path[1]!r}")
    plain = _SENTINEL_SCHEMES[parts.scheme]
    # redis-py reads the credentials, db and options of the equivalent one-server URL.
    at = f"{userinfo}@" if userinfo else ""
    db = path[1] if len(path) == 2 else "0"
    options: dict[str, Any] = dict(parse_url(f"{plain}://{at}localhost/{db}" + (f"?{parts.query}" if parts.query else "")))
    options.pop("host", None)
    options.pop("port", None)
    options.pop("connection_class", None)
    return SentinelUrl(sentinels, path[0], plain == "rediss", options)


def _host_port(text: str, what: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` or ``[ipv6][:port]`` of a URL's list of hosts; the port may be left out
    only where there is a ``default_port``. Raises ValueError naming ``what`` is wrong."""
    host, port = text, ""
    if text.startswith("["):  # [::1]:26379
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise ValueError(f"{what} address needs a host, got {text!r}")
    if (port and not port.isdigit()) or (not port and default_port is None):
        raise ValueError(f"{what} port must be a number, got {text!r}")
    return host, int(port) if port else default_port  # type: ignore[return-value]  # None ruled out above


class _MasterPool(SentinelConnectionPool):
    """The client's pool: reports each change of the master its connections go to."""

    connected: Connected | None = None

    async def get_master_address(self) -> tuple[str, int]:
        before = self.master_address
        address = await super().get_master_address()  # type: ignore[no-untyped-call]
        address = (str(address[0]), int(address[1]))
        connected = self.connected
        if before is not None and address != before and connected is not None and connected.on_failover is not None:
            log.warning("registry: Sentinel names a new master for %s: %s:%d", self.service_name, *address)
            connected.on_failover()
        return address

    async def follow(self, address: tuple[str, int]) -> None:
        """The Sentinels name ``address`` now: leave the old master at once, the connection
        in use too (its commands fail as in an outage), rather than at the next error."""
        if self.master_address is not None and tuple(self.master_address) != address:
            await self.disconnect(inuse_connections=True)
            await self.get_master_address()


class SentinelLocator:
    """The links' :class:`~.link.Locator` under Sentinel: the master they name now. A link
    that finds it moved moves the client's pool along (:meth:`_MasterPool.follow`)."""

    def __init__(self, sentinels: Sentinel, service: str, pool: _MasterPool, template: Endpoint) -> None:
        self._sentinels = sentinels
        self._service = service
        self._pool = pool
        self.template = template  # all but the address

    async def locate(self) -> Endpoint:
        host, port = await self._master()
        return dataclasses.replace(self.template, host=host, port=port)

    async def moved(self, endpoint: Endpoint) -> bool:
        try:
            async with asyncio.timeout(endpoint.connect_timeout_s):
                address = await self._master()
        except (RedisError, OSError, TimeoutError):
            return False  # nobody can tell: stay
        if address == (endpoint.host, endpoint.port):
            return False
        with contextlib.suppress(RedisError, OSError):  # else the pool finds it at its next connection
            await self._pool.follow(address)
        return True

    async def _master(self) -> tuple[str, int]:
        host, port = await self._sentinels.discover_master(self._service)
        return str(host), int(port)


def _sentinel(config: RegistryConfig, timeout_s: float) -> Connected:
    url = parse_sentinel_url(config.redis_url)
    options = {**url.options, **_client_options(timeout_s)}
    if config.password is not None:  # the configured password beats the URL's
        options["password"] = config.password
    tls = {k: v for k, v in options.items() if k.startswith("ssl_")}
    sentinel_options: dict[str, Any] = {
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "protocol": 2,
        "password": config.sentinel_password, **tls,
    }
    if url.tls:
        options["ssl"] = sentinel_options["ssl"] = True
    sentinels = Sentinel(url.sentinels, sentinel_kwargs=sentinel_options)
    client = sentinels.master_for(url.service, connection_pool_class=_MasterPool, **options)
    pool = client.connection_pool
    assert isinstance(pool, _MasterPool)
    template = dataclasses.replace(endpoint_of(client, timeout_s), master_only=True)
    connected = Connected(client, SentinelLocator(sentinels, url.service, pool, template), sentinels)
    pool.connected = connected
    return connected


# ------------------------------------------------------------ Redis Cluster


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return urlsplit(url).scheme.lower() in CLUSTER_SCHEMES


def split_cluster_url(url: str) -> tuple[str, list[tuple[str, int]]]:
    """Split a cluster URL into a single-node URL (the first host, with the credentials and
    query) that redis-py parses, and the hosts it names. Raises ValueError for a URL that is
    not a cluster URL, names no host, a port that is not a number, or a database other than 0."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError("not a redis+cluster:// or rediss+cluster:// URL")
    credentials, at, hosts = parts.netloc.rpartition("@")
    nodes = [_host_port(h, "a cluster node", None) for h in hosts.split(",") if h]
    if not nodes:
        raise ValueError("a cluster URL names at least one host:port")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    host, port = nodes[0]
    netloc = f"{credentials}{at}{f'[{host}]' if ':' in host else host}:{port}"
    return urlunsplit((scheme, netloc, "", parts.query, "")), nodes


def cluster_client(config: RegistryConfig, timeout_s: float) -> RedisCluster:
    """A cluster client that fails fast and never retries by itself (see ``_client`` of
    ``registry``): a shard that does not answer reaches the caller as a 503 at once."""
    single, nodes = split_cluster_url(config.redis_url)
    kwargs: dict[str, Any] = dict(parse_url(single))  # as RedisCluster.from_url reads it
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    if config.password is not None:  # the configured password beats the URL's
        kwargs["password"] = config.password
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes[1:]],
        **_client_options(timeout_s),  # no retries, the request timeout, RESP2: as on one Redis
        **kwargs,
    )


def cluster_seeds(client: RedisCluster, connect_timeout_s: float) -> list[Endpoint]:
    """The endpoints the channel links start from: the URL's hosts, as ``client`` connects
    to them (credentials, TLS)."""
    nodes = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
    template = endpoint_from(nodes[0].connection_class(**nodes[0].connection_kwargs), connect_timeout_s)
    seeds = [(n.host, int(n.port)) for n in client.nodes_manager.startup_nodes.values()]
    return [replace(template, host=host, port=port) for host, port in dict.fromkeys(seeds)]


def cluster_locator(client: RedisCluster) -> Locate:
    """Where ``client``'s slot table says a channel's slot is served (None until it has
    read the table: the links then start from the URL's hosts, which redirect them)."""

    def locate(channel: bytes) -> tuple[str, int] | None:
        try:
            node = client.get_node_from_key(channel.decode())
        except Exception:  # noqa: BLE001 - no table yet, or a slot not covered
            return None
        return None if node is None else (node.host, int(node.port))

    return locate


def _cluster(config: RegistryConfig, timeout_s: float) -> Connected:
    client = cluster_client(config, timeout_s)
    seeds = cluster_seeds(client, timeout_s)
    return Connected(client, Fixed(seeds[0]), shards=(seeds, cluster_locator(client)))
