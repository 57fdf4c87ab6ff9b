"""The inbox: messages dispatched where they are read, in order, inside the connection's task.

No sockets: the test plays the transport, calling ``put`` and ``close`` from loop callbacks as
``data_received`` and ``connection_lost`` are called, and ``run`` in a task of its own as the
server's handler does.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from wsgateway.inbox import Inbox


class Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause(self) -> None:
        self.reading = False

    def resume(self) -> None:
        self.reading = True


class Handlers:
    """Records what ran, in which task, and lets a test hold a message's handler."""

    def __init__(self) -> None:
        self.ran: list[Any] = []
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.gates: dict[Any, asyncio.Future[None]] = {}

    async def dispatch(self, message: Any) -> None:
        self.tasks.append(asyncio.current_task())
        gate = self.gates.get(message)
        if gate is not None:
            await gate
        self.ran.append(message)


async def _from_loop(fn: Any, *args: Any) -> None:
    """Call ``fn`` as the transport does: from a loop callback, outside any task."""
    done = asyncio.get_running_loop().create_future()

    def call() -> None:
        fn(*args)
        done.set_result(None)

    asyncio.get_running_loop().call_soon(call)
    await done


async def _start(handlers: Handlers, **kwargs: Any) -> tuple[Inbox, asyncio.Task[None], Transport]:
    transport = Transport()
    inbox = Inbox(asyncio.get_running_loop(), transport.pause, transport.resume, **kwargs)
    task = asyncio.ensure_future(inbox.run(handlers.dispatch))
    await asyncio.sleep(0)  # the task is in run(), waiting
    return inbox, task, transport


async def test_messages_that_do_not_suspend_run_where_they_are_read_inside_the_task() -> None:
    handlers = Handlers()
    inbox, task, _ = await _start(handlers)
    ran_at_put: list[list[Any]] = []

    def put(message: str) -> None:
        inbox.put(message)
        ran_at_put.append(list(handlers.ran))

    for message in ("a", "b", "c"):
        await _from_loop(put, message)
    assert ran_at_put == [["a"], ["a", "b"], ["a", "b", "c"]]  # dispatched inside put
    assert handlers.tasks == [task, task, task]  # as the connection's task
    assert asyncio.current_task() is not task
    await _from_loop(inbox.close)
    await asyncio.wait_for(task, 1)


async def test_messages_before_run_wait_and_keep_their_order() -> None:
    handlers = Handlers()
    transport = Transport()
    inbox = Inbox(asyncio.get_running_loop(), transport.pause, transport.resume)
    for message in ("a", "b"):
        await _from_loop(inbox.put, message)
    assert handlers.ran == []  # the handshake is not done: nothing dispatched yet
    task = asyncio.ensure_future(inbox.run(handlers.dispatch))
    await _from_loop(inbox.put, "c")
    await _from_loop(inbox.close)
    await asyncio.wait_for(task, 1)
    assert handlers.ran == ["a", "b", "c"]


async def test_a_suspended_handler_holds_later_messages_until_it_finishes() -> None:
    handlers = Handlers()
    inbox, task, _ = await _start(handlers)
    gate = handlers.gates["slow"] = asyncio.get_running_loop().create_future()
    for message in ("slow", "x", "y"):
        await _from_loop(inbox.put, message)
    await asyncio.sleep(0.01)
    assert handlers.ran == []  # "slow" waits on its gate; x and y wait behind it
    gate.set_result(None)
    await asyncio.sleep(0.01)
    assert handlers.ran == ["slow", "x", "y"]
    assert handlers.tasks == [task, task, task]
    await _from_loop(inbox.put, "z")  # idle again: dispatched where read
    assert handlers.ran[-1] == "z"
    await _from_loop(inbox.close)
    await asyncio.wait_for(task, 1)


async def test_asyncio_timeout_in_a_handler_started_where_read_cancels_only_the_handler() -> None:
    inbox: Inbox
    outcomes: list[str] = []

    async def dispatch(message: Any) -> None:
        try:
            async with asyncio.timeout(0.02):
                await asyncio.sleep(10)
        except TimeoutError:
            outcomes.append(f"{message} timed out")

    transport = Transport()
    inbox = Inbox(asyncio.get_running_loop(), transport.pause, transport.resume)
    task = asyncio.ensure_future(inbox.run(dispatch))
    await asyncio.sleep(0)
    await _from_loop(inbox.put, "a")
    await _from_loop(inbox.put, "b")
    await asyncio.sleep(0.1)
    assert outcomes == ["a timed out", "b timed out"]
    assert not task.done() and task.cancelling() == 0
    await _from_loop(inbox.close)
    await asyncio.wait_for(task, 1)


@pytest.mark.parametrize("woken", [False, True], ids=["task-asleep", "task-woken"])
async def test_cancelling_the_task_goes_into_a_handler_that_suspended_where_read(woken: bool) -> None:
    """The sweep cancels ``conn.task`` past a handler's deadline: the handler must get the
    CancelledError, whether or not the task has taken the handler over yet."""
    seen: list[str] = []

    async def dispatch(message: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append(message)
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()  # as the dispatcher turns the sweep's cancel into a timeout

    transport = Transport()
    inbox = Inbox(asyncio.get_running_loop(), transport.pause, transport.resume)
    task = asyncio.ensure_future(inbox.run(dispatch))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def put_then_cancel() -> None:
        inbox.put("a")  # suspends in sleep(10): the task is woken to carry it on
        if not woken:
            task.cancel()  # before the task ran again
        done.set_result(None)

    loop.call_soon(put_then_cancel)
    await done
    if woken:
        await asyncio.sleep(0.01)
        task.cancel()
    await asyncio.sleep(0.01)
    assert seen == ["a"] and not task.done()
    await _from_loop(inbox.put, "b")
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    assert seen == ["a", "b"] and not task.done()
    await _from_loop(inbox.close)
    await asyncio.wait_for(task, 1)


async def test_what_a_handler_raises_where_read_is_raised_by_run() -> None:
    async def dispatch(message: Any) -> None:
        raise ValueError(message)

    transport = Transport()
    inbox = Inbox(asyncio.get_running_loop(), transport.pause, transport.resume)
    task = asyncio.ensure_future(inbox.run(dispatch))
    await asyncio.sleep(0)
    await _from_loop(inbox.put, "boom")
    await _from_loop(inbox.put, "after")  # never dispatched: the connection is failing
    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(task, 1)


async def test_a_backlog_past_high_stops_reading_until_it_is_down_to_low() -> None:
    handlers = Handlers()
    inbox, task, transport = await _start(handlers, high=3, low=1)
    gate = handlers.gates[0] = asyncio.get_running_loop().create_future()
    for message in range(4):
        await _from_loop(inbox.put, message)
    assert transport.reading and not inbox.paused  # 3 waiting: at the mark
    await _from_loop(inbox.put, 4)
    assert not transport.reading and inbox.paused
    held = handlers.gates[2] = asyncio.get_running_loop().create_future()
    gate.set_result(None)
    await asyncio.sleep(0.01)
    assert handlers.ran == [0, 1] and not transport.reading  # 2 left waiting (3, 4): over low
    held.set_result(None)
    await asyncio.sleep(0.01)
    assert handlers.ran == [0, 1, 2, 3, 4] and transport.reading and not inbox.paused
    await _from_loop(inbox.close)
    await asyncio.wait_for(task, 1)


async def test_close_lets_the_backlog_finish_then_run_returns() -> None:
    handlers = Handlers()
    inbox, task, _ = await _start(handlers)
    gate = handlers.gates["a"] = asyncio.get_running_loop().create_future()
    for message in ("a", "b"):
        await _from_loop(inbox.put, message)
    await _from_loop(inbox.close)
    assert not task.done()
    gate.set_result(None)
    await asyncio.wait_for(task, 1)
    assert handlers.ran == ["a", "b"]
    await _from_loop(inbox.put, "late")  # after run() returned: dropped
    assert handlers.ran == ["a", "b"]


_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("_VAR", default="")


async def test_a_context_variable_set_before_a_handler_suspends_is_there_after_it() -> None:
    """A handler started where read and carried on by the task runs in one context: a token
    taken before the suspension resets after it (an integration's client does this)."""
    seen: list[str] = []

    async def dispatch(message: Any) -> None:
        seen.append(_VAR.get())  # what the previous message left: one context per connection
        token = _VAR.set(message)
        await asyncio.sleep(0.001)
        seen.append(_VAR.get())
        _VAR.reset(token)
        _VAR.set(message + "'")

    transport = Transport()
    inbox = Inbox(asyncio.get_running_loop(), transport.pause, transport.resume)
    task = asyncio.ensure_future(inbox.run(dispatch))
    await asyncio.sleep(0)
    for message in ("a", "b", "c"):
        await _from_loop(inbox.put, message)
    await asyncio.sleep(0.05)
    await _from_loop(inbox.close)
    await asyncio.wait_for(task, 1)
    assert seen == ["", "a", "a'", "b", "b'", "c"]
    assert _VAR.get() == ""  # the test's own context is untouched
