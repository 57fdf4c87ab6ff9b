"""A coroutine's first step run where its event arrives, as an existing task; the rest carried
on by that task.

Python 3.12's eager tasks run a new task's first step at once. Here the step runs for a task
that already exists (a client connection's, a management connection's), made current for it,
so that ``asyncio.current_task()``, ``asyncio.timeout`` and a cancel of that task see it as
the task's own work. Most steps finish there (a handler that awaits nothing); one that
suspends is handed to the task with what it yielded, and the task goes on with
:func:`carry_on`. Making a task current uses asyncio's ``_enter_task`` / ``_leave_task``
(private: the calls asyncio's own eager tasks make), here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

_A = TypeVar("_A")
_R = TypeVar("_R")

__all__ = ["DONE", "START", "call_as", "carry_on", "first_step"]

DONE = object()  # the first step finished the coroutine
START = object()  # a coroutine to start, not one suspended on what it yielded


def first_step(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any] | None,
    context: contextvars.Context,
    coro: Coroutine[Any, Any, None],
) -> Any:
    """Run ``coro``'s first step now, in ``context``, with ``task`` current (None: the caller
    runs inside that task already). Returns :data:`DONE` if it finished, :data:`START` if it
    cannot run here (another task is running: give it to ``task`` from its start), else what
    it suspended on. Raises what the step raised."""
    if task is not None:
        try:
            _enter_task(loop, task)
        except RuntimeError:
            return START
    try:
        # next() with a default on the coroutine's __await__ iterator, not send(None): a
        # coroutine that returns None ends that iterator without a StopIteration (and one that
        # returns a value has it swallowed in C), so no exception is made and caught per step.
        return context.run(next, coro.__await__(), DONE)
    finally:
        if task is not None:
            _leave_task(loop, task)


def call_as(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any] | None,
    context: contextvars.Context,
    fn: Callable[[_A], _R],
    arg: _A,
) -> _R | object:
    """Call ``fn(arg)`` now, in ``context``, with ``task`` current (None: the caller runs
    inside that task already): :func:`first_step` for a plain function, which costs no
    coroutine, for callers whose work mostly completes at once and otherwise returns what to
    await. Returns :data:`START` if it cannot run here (another task is running), else what
    ``fn`` returned. Raises what ``fn`` raised."""
    if task is not None:
        try:
            _enter_task(loop, task)
        except RuntimeError:
            return START
    try:
        return context.run(fn, arg)
    finally:
        if task is not None:
            _leave_task(loop, task)


@types.coroutine
def carry_on(
    coro: Coroutine[Any, Any, None], yielded: Any, thrown: BaseException | None, context: contextvars.Context
) -> Generator[Any, None, None]:
    """Go on running ``coro`` inside the awaiting task, each step in ``context``: ``coro``
    suspended outside the task on ``yielded`` (:data:`START`: it has not started), and gets
    ``thrown`` first if given. What the task would have done had it run ``coro`` from the
    start, in that context."""
    while True:
        if thrown is None and yielded is not START:
            try:
                yield yielded
            except BaseException as exc:  # noqa: BLE001 - the task's cancel goes into coro
                thrown = exc
        try:
            if thrown is None:
                yielded = context.run(coro.send, None)
            else:
                error, thrown = thrown, None
                yielded = context.run(coro.throw, error)
        except StopIteration:
            return
