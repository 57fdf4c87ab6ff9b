"""The node channels on Redis Cluster: sharded pub/sub, one link per shard.

A node's channel ``P:node:{<node>}`` lives on the shard serving its hash slot (the node id
is its hash tag). This node listens with SSUBSCRIBE on that shard and publishes with SPUBLISH
on a :class:`PublishLink` to the shard of each target's channel, so a message crosses one
shard only and no shard carries every node's traffic:

- where a channel lives comes from redis-py's slot table (``locate``), corrected by every
  ``MOVED`` a shard answers: the SPUBLISH is sent again to the shard named (it was not
  published where it was refused), and an ``ASK`` is followed once with ``ASKING``;
- when a slot moves (resharding, failover), its old shard ends this node's subscription with
  a ``sunsubscribe`` push; the link reconnects, is sent on by ``MOVED`` to the new shard
  and subscribes there. While it does, a request to this node finds no subscriber and its
  sender looks the connection up again (see ``registry``), or answers 503: never a false 410;
- a shard that does not answer is tried again with backoff; the subscription meanwhile
  tries the URL's hosts in turn, which redirect it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import hiredis

from .link import UNSENT, Endpoint, Fixed, PublishLink, Sink, SubscribeLink, moved_to

__all__ = ["Locate", "ShardedPublisher", "ShardedSubscribeLink"]

log = logging.getLogger("wsgateway.registry")

Locate = Callable[[bytes], "tuple[str, int] | None"]  # channel -> the shard serving its slot
_MAX_REDIRECTS = 3


def _at(template: Endpoint, where: tuple[str, int]) -> Endpoint:
    host, port = where
    return replace(template, host=host or template.host, port=port)


class ShardedSubscribeLink(SubscribeLink):
    """The SSUBSCRIBE of this node's channel, on whichever shard serves its slot now."""

    def __init__(
        self, seeds: Sequence[Endpoint], channel: bytes, on_message: Callable[[bytes], None], locate: Locate,
        *, max_backoff_s: float, check_s: float,
    ) -> None:
        super().__init__(Fixed(seeds[0]), channel, on_message, max_backoff_s=max_backoff_s, check_s=check_s,
                         sharded=True)
        self._seeds = list(seeds)
        self._locate = locate

    async def _where_next(self, failures: int) -> Endpoint:
        if self.redirect is not None:
            where, self.redirect = self.redirect, None
            return _at(self._endpoint or self._seeds[0], where)
        if failures % 2 == 0:  # first the slot table's word, then the URL's hosts in turn
            located = self._locate(self._channel)
            if located is not None:
                return _at(self._seeds[0], located)
        return self._seeds[(failures // 2) % len(self._seeds)]


class ShardedPublisher:
    """SPUBLISH to the shard serving each channel's slot: one :class:`PublishLink` per shard,
    made as shards are found. The outcomes of publishes to different shards come back in no
    particular order (``in_order`` is False): give each publish its own sink."""

    in_order = False

    def __init__(
        self, seeds: Sequence[Endpoint], locate: Locate, *, max_backoff_s: float, check_s: float,
        join: Callable[[list[bytes]], bytes] | None = None,
    ) -> None:
        """``join``: as :class:`PublishLink`'s, for every shard's link."""
        self._join = join
        self._seeds = list(seeds)
        self._locate = locate
        self._max_backoff_s = max_backoff_s
        self._check_s = check_s
        self._links: dict[tuple[str, int], PublishLink] = {}
        # links not connected yet since they were made: what waits for them, in order
        self._fresh: dict[tuple[str, int], list[tuple[bytes, bytes, Sink, bool]]] = {}
        self._where: dict[bytes, tuple[str, int]] = {}  # channel -> its shard, as last known
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> _AllReady:
        """Set (``is_set()``) while every shard link made so far is connected: what the
        outcome memory asks of a publishing link before acting on a request."""
        return _AllReady(self._links)

    def start(self) -> None:
        """Connect to the URL's hosts (others as channels are found on them)."""
        for seed in self._seeds:
            self._link((seed.host, seed.port))

    async def wait_ready(self) -> None:
        """Until the links to the URL's hosts are connected."""
        await asyncio.gather(*(link.ready.wait() for link in list(self._links.values())))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(link.close() for link in self._links.values()))

    def publish(self, channel: bytes, message: bytes, sink: Sink | None) -> None:
        """SPUBLISH ``message`` on ``channel``'s shard; ``sink`` gets the outcome as from
        ``PublishLink.publish``, after any ``MOVED``/``ASK`` was followed."""
        where = self._where.get(channel)
        if where is None:
            where = self._locate(channel) or (self._seeds[0].host, self._seeds[0].port)
            self._where[channel] = where
        self._send(where, channel, message, _Redirect(self, channel, message, sink, 0), asking=False)

    def _send(self, where: tuple[str, int], channel: bytes, message: bytes, sink: Sink, *, asking: bool) -> None:
        link = self._link(where)
        backlog = self._fresh.get(where)
        if backlog is not None:  # a shard just found: its publishes wait for its first connection
            backlog.append((channel, message, sink, asking))
            return
        if asking:  # ASKING holds for the next command only: the SPUBLISH goes right after it
            link.send((b"ASKING",), None)
            link.send((b"SPUBLISH", channel, message), sink)
            return
        link.publish(channel, message, sink)

    async def _when_ready(self, link: PublishLink, where: tuple[str, int]) -> None:
        """Hand a new link what was published to it before it connected, in order (or
        UNSENT to each, if it does not connect within the connect timeout)."""
        try:
            async with asyncio.timeout(self._seeds[0].connect_timeout_s):
                await link.ready.wait()
        except TimeoutError:
            pass
        backlog = self._fresh.pop(where, [])
        for channel, message, sink, asking in backlog:
            if link.ready.is_set():
                self._send(where, channel, message, sink, asking=asking)
            else:
                sink.outcome(UNSENT)

    def follow(self, reply: Any, channel: bytes, message: bytes, sink: Sink | None, hops: int) -> bool:
        """Send a publish again where a ``MOVED``/``ASK`` ``reply`` points; False if the reply
        is no redirection (or one too many)."""
        where = moved_to(reply)
        if where is None or hops >= _MAX_REDIRECTS:
            return False
        asking = str(reply).startswith("ASK")
        if not where[0]:
            where = (self._where.get(channel) or (self._seeds[0].host, 0))[0], where[1]
        if not asking:
            self._where[channel] = where
        self._send(where, channel, message, _Redirect(self, channel, message, sink, hops + 1), asking=asking)
        return True

    def forget(self, channel: bytes) -> None:
        """The shard last known for ``channel`` did not take a publish: locate it again."""
        self._where.pop(channel, None)

    def _link(self, where: tuple[str, int]) -> PublishLink:
        link = self._links.get(where)
        if link is None:
            link = PublishLink(Fixed(_at(self._seeds[0], where)), max_backoff_s=self._max_backoff_s,
                               check_s=self._check_s, sharded=True, join=self._join)
            self._links[where] = link
            self._fresh[where] = []
            link.start()
            self._spawn(self._when_ready(link, where))
        return link

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _AllReady:
    """``is_set()`` of every link at once (the :class:`asyncio.Event` API the callers read)."""

    __slots__ = ("_links",)

    def __init__(self, links: dict[tuple[str, int], PublishLink]) -> None:
        self._links = links

    def is_set(self) -> bool:
        links = self._links
        return bool(links) and all(link.ready.is_set() for link in links.values())


class _Redirect:
    """The sink of one SPUBLISH: follows a redirection, else hands the outcome on."""

    __slots__ = ("_channel", "_hops", "_message", "_publisher", "_sink")

    def __init__(
        self, publisher: ShardedPublisher, channel: bytes, message: bytes, sink: Sink | None, hops: int
    ) -> None:
        self._publisher = publisher
        self._channel = channel
        self._message = message
        self._sink = sink
        self._hops = hops

    def outcome(self, reply: Any) -> None:
        if reply.__class__ is hiredis.ReplyError:
            if self._publisher.follow(reply, self._channel, self._message, self._sink, self._hops):
                return
            log.warning("redis refused a SPUBLISH: %r", reply)
        elif reply is UNSENT:
            self._publisher.forget(self._channel)
        if self._sink is not None:
            self._sink.outcome(reply)
