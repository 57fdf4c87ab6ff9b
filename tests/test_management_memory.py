"""Connection churn on the management port must not grow a node's memory.

A real ``wsgateway serve`` process (with its tuned GC thresholds, which make full collections
rare) takes 10,000 POSTs of 120 KB, each on a new connection and each refused: half unsigned,
half with a signature that does not match. Its RSS, read with psutil, stays flat. Before the
fix every closed connection kept its body chunks in a reference cycle with its parser, and
3,000 such POSTs took a node from 52 to ~400 MB.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from tests.support import ACCESS_KEY, REGION

ROOT = Path(__file__).resolve().parent.parent

CONFIG = f"""
[listen]
port = 0
[management]
port = 0
auth = "sigv4"
[[management.credentials]]
access_key_id = "{ACCESS_KEY}"
secret_access_key = "churn-test-secret"
[log]
access_log = ""
level = "ERROR"
"""
BODY = b"x" * 120_000
CONNECTIONS = 10_000


def requests() -> tuple[bytes, bytes]:
    """An unsigned POST and one whose well-formed signature is wrong."""
    head = b"POST /prod/@tenants/t/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n" % len(BODY)
    now = datetime.now(UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    auth = (f"Authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{day}/{REGION}/execute-api/aws4_request, "
            f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}\r\nX-Amz-Date: {amz_date}\r\n").encode()
    return head + b"\r\n" + BODY, head + auth + b"\r\n" + BODY


def serve(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``wsgateway serve`` as a process (the CLI tunes the GC); returns it and its management port."""
    config, ready = tmp_path / "gateway.toml", tmp_path / "ready.json"
    config.write_text(CONFIG)
    argv = [sys.executable, "-m", "wsgateway", "serve", "--config", str(config), "--ready-file", str(ready)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"node did not start (exit status {proc.poll()})")
        time.sleep(0.05)
    return proc, int(json.loads(ready.read_text())["management_port"])


def post(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        return sock.recv(200)


def test_rss_stays_flat_over_10000_refused_posts_on_new_connections(tmp_path: Path) -> None:
    proc, port = serve(tmp_path)
    try:
        node = psutil.Process(proc.pid)
        unsigned, forged = requests()
        assert b"403" in post(port, unsigned).split(b"\r\n")[0]
        answer = post(port, forged)
        assert answer.startswith(b"HTTP/1.1 403") and b"InvalidSignatureException" in answer
        for _ in range(200):  # warm up: allocator arenas, caches
            post(port, forged)
        before = node.memory_info().rss
        started = time.monotonic()
        for i in range(CONNECTIONS):
            assert post(port, forged if i % 2 else unsigned).startswith(b"HTTP/1.1 403")
        grown_mb = (node.memory_info().rss - before) / 2**20
        assert grown_mb < 25, f"RSS grew {grown_mb:.0f} MB over {CONNECTIONS} connections"
        assert time.monotonic() - started < 60
    finally:
        proc.terminate()
        proc.wait(10)
