"""npm packages that a Node.js program of this repository needs, installed on demand.

The program keeps its ``package.json`` (and, to pin every version, a ``package-lock.json``)
beside its code; :func:`install` puts the packages in a separate, git-ignored folder (run the
program with ``NODE_PATH=<folder>/node_modules``), with a copy of those files that says what is
installed there: a changed manifest or lock installs again, unchanged ones cost nothing. Used
by the Socket.IO peer (``peers/socketio_node``, into ``loadtest/.npm``) and by
``tests/test_sdk_javascript.py`` (``tests/js``, into ``tests/.npm``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NpmFailure", "install"]

# How npm reports a registry it cannot reach (DNS, refused, reset, timed out, offline mode).
_OFFLINE = re.compile(rb"\b(ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
                      rb"ENOTCACHED|ERR_SOCKET_TIMEOUT)\b|npm error network")
# One retry, soon: an unreachable registry fails in seconds, not after npm's default ~70 s.
_NPM_ARGS = ("--no-audit", "--no-fund", "--omit=dev", "--fetch-retries=1",
             "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=5000")


@dataclass(frozen=True, slots=True)
class NpmFailure:
    """Why the packages are not there. ``offline``: the registry could not be reached (or npm
    did not finish in time), so a test may skip; anything else is a failure to report."""

    reason: str
    offline: bool


def install(package_dir: Path, into: Path, *, timeout_s: float = 300.0) -> NpmFailure | None:
    """Install the dependencies of ``package_dir/package.json`` into ``into/node_modules``,
    unless the same manifest (and lock) is installed there already. Returns None when they are there,
    else why not (npm missing, unreachable registry, a failed install). Blocks up to
    ``timeout_s``."""
    if shutil.which("npm") is None:
        return NpmFailure("npm is not installed", offline=False)
    manifest = (package_dir / "package.json").read_bytes()
    lock = package_dir / "package-lock.json"
    pinned = lock.read_bytes() if lock.exists() else None
    into.mkdir(parents=True, exist_ok=True)
    stamp, installed_lock = into / "package.json", into / "package-lock.json"
    if (stamp.exists() and stamp.read_bytes() == manifest and (into / "node_modules").is_dir()
            and (pinned is None or (installed_lock.exists() and installed_lock.read_bytes() == pinned))):
        return None
    stamp.write_bytes(manifest)
    if pinned is not None:
        installed_lock.write_bytes(pinned)
    try:
        # With a lock, ``npm ci``: exactly its versions, and the lock is left as it is.
        command = ["npm", "install" if pinned is None else "ci", *_NPM_ARGS]
        run = subprocess.run(command, cwd=into, check=False, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stamp.unlink(missing_ok=True)
        return NpmFailure(f"npm install did not finish within {timeout_s:g} s (no network?)", offline=True)
    if run.returncode != 0:
        stamp.unlink(missing_ok=True)
        why = " / ".join(run.stderr.decode(errors="replace").strip().splitlines()[:4])[:300]  # npm's code first
        return NpmFailure(f"npm install failed: {why}", offline=bool(_OFFLINE.search(run.stderr)))
    return None
