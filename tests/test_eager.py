"""wsgateway.eager: a first step run as an existing task, the rest carried on by that task."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars

from wsgateway.eager import DONE, START, carry_on, first_step

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def _host(ready: asyncio.Future[None]) -> None:
    await ready  # a task that exists and sleeps, as a connection's does


async def test_a_step_that_finishes_runs_as_the_task_in_the_context() -> None:
    loop = asyncio.get_running_loop()
    host = asyncio.create_task(_host(loop.create_future()))
    seen: list[object] = []

    async def work() -> None:
        seen.append(asyncio.current_task())
        VAR.set("set in the step")

    context = contextvars.copy_context()
    done = loop.create_future()
    # From a loop callback (no task running), as data_received is called.
    loop.call_soon(lambda: done.set_result(first_step(loop, host, context, work())))
    assert await done is DONE
    assert seen == [host]
    assert context[VAR] == "set in the step" and VAR.get() == "unset"
    host.cancel()


async def test_inside_a_running_task_the_step_is_left_to_the_task() -> None:
    loop = asyncio.get_running_loop()
    host = asyncio.create_task(_host(loop.create_future()))
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    coro = work()
    assert first_step(loop, host, contextvars.copy_context(), coro) is START  # this test's task runs
    assert ran == []
    await carry_on(coro, START, None, contextvars.copy_context())
    assert ran == [True]
    host.cancel()


async def test_a_suspended_step_is_carried_on_and_a_cancel_goes_into_it() -> None:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []

    async def work() -> None:
        steps.append(await gate)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            steps.append("cancelled inside")
            raise

    context = contextvars.copy_context()
    coro = work()
    box: list[object] = []
    host_ready = loop.create_future()
    host = asyncio.create_task(_host(host_ready))
    loop.call_soon(lambda: box.append(first_step(loop, host, context, coro)))
    await asyncio.sleep(0)
    assert box == [gate]  # it suspended on what it awaits

    async def carrier() -> None:
        await carry_on(coro, box[0], None, context)

    task = asyncio.create_task(carrier())
    gate.set_result("gate opened")
    await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert steps == ["gate opened", "cancelled inside"]
    host.cancel()


async def test_an_exception_in_the_step_is_raised_to_the_caller() -> None:
    loop = asyncio.get_running_loop()
    host = asyncio.create_task(_host(loop.create_future()))

    async def work() -> None:
        raise ValueError("from the step")

    outcome: list[BaseException] = []

    def call() -> None:
        try:
            first_step(loop, host, contextvars.copy_context(), work())
        except ValueError as exc:
            outcome.append(exc)

    loop.call_soon(call)
    await asyncio.sleep(0)
    assert [str(e) for e in outcome] == ["from the step"]
    assert asyncio.current_task() is not host  # left again after the failure
    host.cancel()


async def test_the_step_tells_done_from_a_bare_yield_and_ignores_a_return_value() -> None:
    """A coroutine that returns (None or a value) is DONE; one suspended on a bare yield
    (asyncio.sleep(0)) hands back None, as send(None) would, and carries on from there."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    steps: list[str] = []

    async def returns_a_value() -> None:
        steps.append("value")
        return 42  # type: ignore[return-value]

    async def yields_bare() -> None:
        await asyncio.sleep(0)
        steps.append("after the yield")

    assert first_step(loop, None, context, returns_a_value()) is DONE
    coro = yields_bare()
    yielded = first_step(loop, None, context, coro)
    assert yielded is None and steps == ["value"]
    await carry_on(coro, yielded, None, context)
    assert steps == ["value", "after the yield"]
