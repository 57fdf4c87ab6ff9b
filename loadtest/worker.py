"""The client worker process: runs one :class:`~loadtest.roles.Role` and reports back.

The runner starts each worker with :func:`main` (multiprocessing, spawn). A worker opens its
connections, reports ``("ready", index, opened, errors)``, waits for the shared *go* event,
starts at the shared start time, and reports ``("result", index, WorkerResult)`` or
``("failed", index, traceback)`` on the events queue. Its ops counter in the shared
``progress`` array lets the runner print progress without asking; the shared ``acked`` array
(per worker, the highest message sequence all its listeners got) paces a fan-out publisher.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
import traceback
from typing import Any

from loadtest.roles import ROLES, Role, WorkerResult, WorkerSpec

__all__ = ["main"]

_GO_TIMEOUT_S = 600.0


def main(spec: WorkerSpec, events: Any, go: Any, start_at: Any, progress: Any, acked: Any) -> None:
    """Process entry point; never raises (failures are reported on ``events``)."""
    try:
        if spec.cpu is not None:
            os.sched_setaffinity(0, {spec.cpu})
        _raise_open_files()
        import uvloop

        result = uvloop.run(_run(spec, events, go, start_at, progress, acked))
    except BaseException:  # noqa: BLE001 - report everything; the runner decides
        events.put(("failed", spec.index, traceback.format_exc()))
        return
    events.put(("result", spec.index, result))


def _raise_open_files() -> None:
    # Every connection is a file: take the whole hard limit (20,000 on this machine).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _run(
    spec: WorkerSpec, events: Any, go: Any, start_at: Any, progress: Any, acked: Any
) -> WorkerResult:
    role = ROLES[spec.role](spec)
    role.acked = acked
    ticker: asyncio.Task[None] | None = None
    try:
        await role.prepare()
        events.put(("ready", spec.index, len(role.conns) + len(role.stalled), dict(role.errors)))
        if not await asyncio.to_thread(go.wait, _GO_TIMEOUT_S) or start_at.value <= 0:
            return role.result(0.0, 0.0)  # the runner gave up on this run
        start = start_at.value
        end = start + int(spec.duration * 1e9)
        await asyncio.sleep(max(0.0, (start - time.monotonic_ns()) / 1e9))
        ticker = asyncio.create_task(_tick(role, progress, spec.index))
        cpu0 = time.process_time()
        await role.run(start, end)
        window = (time.monotonic_ns() - start) / 1e9
        return role.result(time.process_time() - cpu0, window)
    finally:
        if ticker is not None:
            ticker.cancel()
        await role.close()


async def _tick(role: Role, progress: Any, index: int) -> None:
    while True:
        progress[index] = role.ops
        await asyncio.sleep(0.5)
