"""Python integrations: ``module:function`` with AWS Lambda's ``(event, context)`` signature.

Async functions run on the event loop under ``asyncio.timeout``; sync functions run in the
gateway's thread pool so that they never block the loop. A sync function that overruns its
time limit is abandoned (its thread finishes on its own: Python cannot kill a thread) and the
client gets ``Endpoint request timed out`` as with AWS.

Modules resolve against the working directory first, then ``sys.path``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from ..errors import ConfigError, HandlerExit
from .context import HandlerContext
from .timed import within

__all__ = ["PythonIntegration"]


def _resolve(target: str, key: str) -> Callable[..., Any]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(key, f"route target must look like 'module:function', got {target!r}")
    cwd = os.getcwd()
    if not sys.path or sys.path[0] != cwd:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import failure stops start-up with the key named
        raise ConfigError(key, f"cannot import {module_name!r}: {exc!r}") from exc
    func: Any = module
    for part in attr.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise ConfigError(key, f"{module_name!r} has no attribute {attr!r}")
    if not callable(func):
        raise ConfigError(key, f"{target!r} is not callable")
    return func  # type: ignore[no-any-return]


class PythonIntegration:
    """A resolved ``module:function`` target."""

    __slots__ = ("target", "func", "is_async", "timeout", "executor", "call")

    kind = "python"

    def __init__(self, target: str, func: Callable[..., Any], timeout: float, executor: Executor) -> None:
        self.target = target
        self.func = func
        self.is_async = inspect.iscoroutinefunction(func)
        self.timeout = timeout
        self.executor = executor
        # Call the function with no time limit of its own: for a caller that enforces the
        # limit itself (the dispatcher's deadlines cost no timer per message). An async
        # function is its own ``call`` (its coroutine awaited by the caller: no Python frame
        # of ours per message); a sync one goes to the thread pool and its future is awaited.
        self.call: Callable[[dict[str, Any], HandlerContext], Awaitable[Any]] = (
            func if self.is_async else self._in_pool
        )

    @classmethod
    def load(cls, target: str, *, key: str, timeout: float, executor: Executor) -> PythonIntegration:
        """Import the target now (start-up), so a typo stops the node, not a request."""
        return cls(target, _resolve(target, key), timeout, executor)

    async def start(self) -> None:
        """Nothing to open: the function was imported by :meth:`load`."""

    async def close(self) -> None:
        """Nothing to release (the gateway owns the thread pool)."""

    async def invoke(self, event: dict[str, Any], context: HandlerContext) -> Any:
        """Call the function; raise HandlerTimeout past the limit, or what it raised
        (HandlerExit for SystemExit and the like, which asyncio would let out of the loop)."""
        try:
            return await within(self.timeout, self.target, self.call(event, context))
        except (Exception, asyncio.CancelledError):
            raise
        except BaseException as exc:
            raise HandlerExit(self.target, exc) from exc

    def _in_pool(self, event: dict[str, Any], context: HandlerContext) -> Awaitable[Any]:
        """A sync function's ``call``: run in the gateway's thread pool, never on the loop."""
        return asyncio.get_running_loop().run_in_executor(self.executor, self.func, event, context)
