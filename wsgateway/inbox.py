"""One connection's received messages, dispatched one at a time, in order, with no task wake-up
per message.

websockets' asyncio connection hands each message to the connection's task through a queue:
a future resolved, a loop iteration, a task step, for every message. Here the message is
dispatched where it was read (the transport's ``data_received``), as the connection's own task
would run it: the task is made current for that call (what Python 3.12's eager tasks do), so
``asyncio.current_task()``, ``asyncio.timeout`` and the sweep's cancel of ``conn.task`` all
see the connection's task. Most handlers finish without suspending; one that suspends (it
awaits I/O) is carried on by that task, which wakes for it only. Messages that arrive
meanwhile wait in a backlog, drained in order by the task; past ``high`` waiting messages the
transport stops reading until the backlog is down to ``low`` (websockets' ``max_queue``).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .eager import DONE, START, carry_on, first_step

__all__ = ["Inbox"]

Dispatch = Callable[[str | bytes], Awaitable[None]]


class Inbox:
    """The messages of one connection, from the end of its handshake until it closes.

    The transport side calls :meth:`put` and :meth:`close`; the connection's task awaits
    :meth:`run`, which returns once the connection closed and every message was dispatched, and
    raises what a dispatch raised.
    """

    __slots__ = (
        "_loop", "_pause", "_resume", "_high", "_low", "_dispatch", "_task", "_backlog",
        "_busy", "_pending", "_failure", "_waiter", "_closed", "_ended", "_context", "paused",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pause: Callable[[], None],
        resume: Callable[[], None],
        high: int = 16,
        low: int = 4,
    ) -> None:
        self._loop = loop
        self._pause: Callable[[], None] | None = pause  # stop reading the transport
        self._resume: Callable[[], None] | None = resume
        self._high, self._low = high, low
        self._dispatch: Dispatch | None = None  # set by run()
        self._task: asyncio.Task[Any] | None = None  # the connection's task, while in run()
        self._backlog: collections.deque[str | bytes] | None = None  # made when first needed
        self._busy = False  # a dispatch is under way (eager, suspended, or in the task)
        self._pending: tuple[Coroutine[Any, Any, None], Any] | None = None  # suspended eagerly
        self._failure: BaseException | None = None  # what an eager dispatch raised
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._ended = False  # run() returned or raised
        # Where every dispatch runs, in the task or not, so that a context variable a handler
        # sets before it suspends is still set (and resettable) after: a copy of the task's.
        self._context: contextvars.Context | None = None
        self.paused = False  # reading stopped for the backlog

    def put(self, message: str | bytes) -> None:
        """A message was read: dispatch it now if nothing is under way, else queue it."""
        if self._task is None or self._busy or self._backlog:
            self._queue(message)
            return
        dispatch = self._dispatch
        assert dispatch is not None
        coro: Coroutine[Any, Any, None] = dispatch(message)  # type: ignore[assignment]
        self._busy = True
        try:
            yielded = first_step(self._loop, self._task, self._context, coro)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - the task raises it (see run)
            self._failure = exc
            self._wake()
            return
        if yielded is DONE:
            self._busy = False
            return
        # The handler awaits something (or another task runs: START): the task takes over.
        self._pending = (coro, yielded)
        self._wake()

    def close(self) -> None:
        """The connection closed: :meth:`run` returns once the backlog is dispatched."""
        self._closed = True
        self._pause = self._resume = None  # bound methods of the connection: no cycle left
        self._wake()

    async def run(self, dispatch: Dispatch) -> None:
        """Dispatch the messages with ``dispatch`` until the connection closed; call it from
        the connection's task, once. Raises what a dispatch raised."""
        self._dispatch = dispatch
        self._context = context = contextvars.copy_context()
        self._task = asyncio.current_task()
        try:
            while True:
                if self._failure is not None:
                    raise self._failure
                if self._pending is not None:
                    coro, yielded = self._pending
                    self._pending = None
                    await carry_on(coro, yielded, None, context)
                    self._busy = False
                elif self._backlog:
                    message = self._backlog.popleft()
                    if self.paused and len(self._backlog) <= self._low:
                        self._unpause()
                    self._busy = True
                    await carry_on(dispatch(message), START, None, context)  # type: ignore[arg-type]
                    self._busy = False
                elif self._closed:
                    return
                else:
                    await self._idle()
        finally:
            self._ended = True
            self._task = self._dispatch = self._pending = self._backlog = self._context = None

    async def _idle(self) -> None:
        """Sleep until there is work; a cancel that comes while a dispatch that suspended
        eagerly waits for the task goes into that dispatch, as if the task had been running it."""
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        except asyncio.CancelledError as exc:
            if self._pending is None:
                raise
            context = self._context
            assert context is not None
            coro, yielded = self._pending
            self._pending = None
            # As Task.cancel: cancel what the dispatch awaits, else throw into it.
            if isinstance(yielded, asyncio.Future) and yielded.cancel(exc.args[0] if exc.args else None):
                await carry_on(coro, yielded, None, context)
            else:
                await carry_on(coro, START, exc, context)
            self._busy = False
        finally:
            self._waiter = None

    def _queue(self, message: str | bytes) -> None:
        if self._failure is not None or self._ended:
            return  # run() ended: nothing will dispatch it
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = collections.deque()
        backlog.append(message)
        if len(backlog) > self._high and not self.paused and self._pause is not None:
            self.paused = True
            self._pause()
        if not self._busy:
            self._wake()

    def _unpause(self) -> None:
        self.paused = False
        if self._resume is not None:
            self._resume()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

