"""Where the server's time goes: py-spy profiles of the servers during a measured window.

With ``--profile`` the runner starts :func:`start` for each phase once the clients run:
``py-spy record --format raw --function`` at 500 Hz (default) on every server process of the
target (``--subprocesses`` follows ``--workers``), pinned to the *client* core so the sampler
runs beside the server rather than on its core. py-spy pauses the process for each sample
(``--nonblocking`` was tried: its stacks come out torn), which at 500 Hz cost the servers
~20% of their throughput here (unicast: 13.5k -> 10.6k/s): take figures from runs without
``--profile``, and shares of time from runs with it. :func:`summarize` (pure) turns the
raw folded stacks into the top frames by self time and by inclusive time, as shares of the
samples taken while the server was busy (py-spy leaves idle samples out), that is, of the
server's CPU. Time spent inside uvloop and the kernel shows on the Python frame that called
in (``Runner.run`` for the event loop itself).
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Profiler", "start", "summarize"]

DEFAULT_RATE = 500
_ROOT_SHARE = 0.97  # a frame under this share of all samples is the program's root, not news


@dataclass
class Profiler:
    """A running py-spy; :meth:`finish` waits for it and returns its summary."""

    proc: subprocess.Popen[bytes]
    out: Path
    timeout: float

    def finish(self, top: int = 12) -> dict[str, object]:
        """Wait (bounded) for py-spy to write its file; return :func:`summarize` of it."""
        try:
            self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return {"error": "py-spy did not finish in time"}
        if not self.out.exists():
            return {"error": f"py-spy wrote nothing (exit {self.proc.returncode})"}
        summary = summarize(self.out.read_text(errors="replace"), top)
        summary["file"] = str(self.out)
        return summary


def start(pids: list[int], out: Path, duration: float, cpu: int | None, rate: int = DEFAULT_RATE) -> Profiler | None:
    """Start sampling ``pids`` (and their children) for ``duration`` seconds into ``out``.

    Returns ``None`` when py-spy is not installed. Only the first pid is followed with
    its children: a target's nodes are profiled one at a time (pass the node to look at).
    """
    binary = shutil.which("py-spy")
    if binary is None or not pids:
        return None
    argv = [binary, "record", "--pid", str(pids[0]), "--rate", str(rate), "--duration", str(max(1, int(duration))),
            "--format", "raw", "--function", "--subprocesses", "-o", str(out)]
    if cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    log = out.with_suffix(".log").open("wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return Profiler(proc, out, duration + 30)


def _frame(text: str) -> str:
    # "handler (wsgateway/server.py:120)" -> keep as is; py-spy's --function makes the line
    # the function's first, so one function is one key.
    return text.strip()


def summarize(raw: str, top: int = 12) -> dict[str, object]:
    """Return ``{"samples", "self", "inclusive"}`` from py-spy's raw output (pure).

    ``self`` and ``inclusive`` are lists of ``[frame, percent]``, largest first; a process
    or thread frame (py-spy's ``process ...`` / ``thread ...`` roots) is left out, and so are
    from ``inclusive`` the frames under nearly every sample (``main``, the event loop's run).
    """
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n

    def share(counter: Counter[str]) -> list[list[object]]:
        return [[f, round(100 * n / total, 1)] for f, n in counter.most_common(top)] if total else []

    for f in [f for f, n in incl.items() if n >= _ROOT_SHARE * total]:
        del incl[f]
    return {"samples": total, "self": share(own), "inclusive": share(incl)}
