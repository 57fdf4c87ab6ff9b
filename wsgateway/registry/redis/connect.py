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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .link import Endpoint, Fixed, Locator, endpoint_of

if TYPE_CHECKING:
    from ...config import RegistryConfig

__all__ = ["SENTINEL_PORT", "Connected", "SentinelUrl", "connect", "parse_sentinel_url"]

log = logging.getLogger("wsgateway.registry")

SENTINEL_PORT = 26379  # a Sentinel's port when the URL names none
_SENTINEL_SCHEMES = {"redis+sentinel": "redis", "rediss+sentinel": "rediss"}


@dataclass
class Connected:
    """What the registry talks to Redis with; :meth:`aclose` closes it all."""

    client: Redis
    locator: Locator
    sentinel: Sentinel | None = None  # the Sentinels' clients, under Sentinel
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
    sentinels = tuple(_host_port(h) for h in hosts.split(","))
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


def _host_port(text: str) -> tuple[str, int]:
    host, port = text, ""
    if text.startswith("["):  # [::1]:26379
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host:
        raise ValueError(f"a Sentinel address needs a host, got {text!r}")
    if port and not port.isdigit():
        raise ValueError(f"a Sentinel port must be a number, got {text!r}")
    return host, int(port) if port else SENTINEL_PORT


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
