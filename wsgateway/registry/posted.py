"""Who learns how a post to another node's connection ended (``Registry.send_post``).

The management edge answers most posts from a callback, with no coroutine or task per
request: it hands the registry a :class:`PostWaiter`, told once, from whatever callback the
outcome arrives in (another node's reply, a timeout). A coroutine awaits an :class:`Awaited`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["Awaited", "PostWaiter"]


class PostWaiter(Protocol):
    """Told a post's outcome exactly once."""

    def posted(self, error: BaseException | None) -> None:
        """None: the owner queued the frame; else why not (GoneError, LimitExceededError,
        RegistryUnavailableError, RemoteNodeError...). Must not raise."""


class Awaited:
    """A :class:`PostWaiter` to await: ``await waiter.future`` raises the post's error."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def posted(self, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(error)
