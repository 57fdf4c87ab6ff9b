"""From ``registry.redis_url`` to the redis-py client and the endpoints of the channel links.

On Redis Cluster (``redis+cluster://h:p,h:p,h:p/``, ``rediss+cluster://`` for TLS) the
registry's commands go through redis-py's :class:`~redis.asyncio.cluster.RedisCluster`, which
routes each command (and each pipelined one) to the shard serving its key's slot and follows
``MOVED``/``ASK``; the channel links (``shards``) reach every shard with the client's
credentials and TLS settings, starting from the URL's hosts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .link import Endpoint, endpoint_from
from .shards import Locate

if TYPE_CHECKING:
    from ...config import RegistryConfig

__all__ = [
    "CLUSTER_SCHEMES", "cluster_client", "cluster_locator", "cluster_seeds", "is_cluster_url", "split_cluster_url",
]

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
    nodes = [_host_port(h) for h in hosts.split(",") if h]
    if not nodes:
        raise ValueError("a cluster URL names at least one host:port")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("Redis Cluster has only database 0")
    host, port = nodes[0]
    netloc = f"{credentials}{at}{f'[{host}]' if ':' in host else host}:{port}"
    return urlunsplit((scheme, netloc, "", parts.query, "")), nodes


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    return host, int(port)


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
        retry=Retry(NoBackoff(), 0),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        protocol=2,  # RESP2, as on one Redis
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
