"""Servers under callgrind, for the instruction-count harnesses (``bench_*_instructions.py``).

A server runs under ``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0`` (so that dict and
set layouts, and so instruction counts, repeat), in a session of its own, its output in
``NAME.log`` and its counts in ``NAME.callgrind`` in the work folder. It is stopped with
SIGTERM, so that callgrind writes its totals; :func:`total` reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "Counted", "compare", "compare_cli", "count", "node_config", "total"]

REPO_ROOT = Path(__file__).resolve().parents[1]
_START_S = 300  # CPython under callgrind starts ~50x slower


class Counted:
    """One server under callgrind: ``argv`` (``{ready}`` in it becomes the ready file's path),
    started at once, run from the repository root."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.ready_file = workdir / f"{name}.ready"
        self.ready_file.unlink(missing_ok=True)
        self.out = workdir / f"{name}.callgrind"
        argv = [str(self.ready_file) if part == "{ready}" else part for part in argv]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        with (workdir / f"{name}.log").open("wb") as log:
            self.process = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", *argv],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def ready(self) -> dict[str, object]:
        """Wait for the ready file; what it says (ports)."""
        deadline = time.monotonic() + _START_S
        while not self.ready_file.exists() or not self.ready_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not start; see {self.name}.log")
            time.sleep(0.2)
        return dict(json.loads(self.ready_file.read_text()))

    def stop(self) -> None:
        """SIGTERM, and wait for the exit: callgrind writes its totals as the server exits."""
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(_START_S)

    def instructions(self) -> int:
        """After :meth:`stop`: the instructions the server executed."""
        return total(self.out)


def total(out: Path) -> int:
    """The instruction total in callgrind's output file ``out``."""
    match = re.search(r"^summary: (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no summary in {out}")
    return int(match.group(1))


def count(name: str, argv: list[str], workdir: Path, drive: Callable[[dict[str, Any]], Coroutine[Any, Any, None]]) -> int:
    """Start ``argv`` under callgrind (as :class:`Counted`), run ``drive(ready)`` against it
    half a second after it is ready, stop it; the instructions it executed."""
    server = Counted(name, argv, workdir)
    try:
        info = server.ready()
        time.sleep(0.5)
        asyncio.run(drive(info))
    finally:
        server.stop()
    return server.instructions()


def compare(
    targets: list[str], small: int, large: int, keep: str | None, unit: str, baseline: str,
    instructions: Callable[[str, int, Path], int],
) -> None:
    """For each target, ``instructions(target, n, workdir)`` with ``small`` and ``large``
    operations; print the cost of one (the difference over ``large - small``: start-up and
    shutdown cancel out) and, if ``baseline`` is among the targets, each one's ratio to it."""
    per_op: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for target in targets:
            few = instructions(target, small, workdir)
            many = instructions(target, large, workdir)
            per_op[target] = (many - few) / (large - small)
            print(f"{target}: {few:,} / {many:,} instructions -> {per_op[target] / 1000:.1f}k per {unit}", flush=True)
    if baseline in per_op:
        for target, cost in per_op.items():
            if target != baseline:
                print(f"{target}: {per_op[baseline] / cost:.2f}x {baseline} "
                      f"({baseline}'s instructions per {unit} / its own)")


def node_config(management: str = "", routes: str = "", more: str = "") -> str:
    """A ``wsgateway serve`` config for a counted node: both ports on loopback, chosen by the
    system, no pings and no access log (neither is what is counted); ``management``: more
    lines of its ``[management]`` table, ``routes``: its ``[routes]`` lines, ``more``: other
    tables."""
    return (
        'stage = "prod"\n[listen]\nhost = "127.0.0.1"\nport = 0\nping_interval_s = 0\n'
        f'[management]\nhost = "127.0.0.1"\nport = 0\n{management}'
        f'[routes]\n{routes}{more}[log]\naccess_log = ""\n'
    )


def compare_cli(
    doc: str, targets: str, small: int, large: int, unit: str, baseline: str,
    instructions: Callable[[str, int, Path], int],
) -> None:
    """A harness's command line (``--target``, ``--small``, ``--large``, ``--keep``; defaults
    given here), then :func:`compare`."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))  # the first paragraph
    parser.add_argument("--target", default=targets)
    parser.add_argument("--small", type=int, default=small)
    parser.add_argument("--large", type=int, default=large)
    parser.add_argument("--keep", help="write the callgrind files into this directory (for callgrind_annotate)")
    args = parser.parse_args()
    compare(args.target.split(","), args.small, args.large, args.keep, unit, baseline, instructions)
