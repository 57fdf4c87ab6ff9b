"""The time limit every kind of integration runs under (``limits.handler_timeout_s``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ..errors import HandlerTimeout

__all__ = ["within"]


async def within(timeout: float, target: str, call: Awaitable[Any]) -> Any:
    """Await ``call`` for at most ``timeout`` seconds and return its result; past the limit
    raise :class:`HandlerTimeout` naming ``target``. A TimeoutError the call raised itself
    (not this limit's) propagates as it is."""
    try:
        async with asyncio.timeout(timeout) as scope:
            return await call
    except TimeoutError:
        if scope.expired():
            raise HandlerTimeout(target) from None
        raise
