"""`wsgateway serve` as a real process: ready file, signals, config errors, workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent


def start(tmp_path: Path, config: str | None, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / "ready.json"
    argv = [sys.executable, "-m", "wsgateway", "serve", "--ready-file", str(ready), *extra]
    if config is not None:
        path = tmp_path / "gateway.toml"
        path.write_text(config)
        argv += ["--config", str(path)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    return proc, ready


def wait_ready(proc: subprocess.Popen, ready: Path, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return json.loads(ready.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("not ready in time")


PORT0 = """
[listen]
port = 0
[management]
port = 0
[log]
access_log = "-"
"""


async def test_serve_writes_ready_file_and_drains_on_sigterm(tmp_path):
    proc, ready = start(tmp_path, PORT0)
    try:
        info = await asyncio.to_thread(wait_ready, proc, ready)
        assert set(info) >= {"node_id", "port", "management_port"} and info["port"] and info["management_port"]
        ws = await websockets.connect(f"ws://127.0.0.1:{info['port']}/prod?tenant=t")
        await ws.send('{"action": "echo-me"}')
        assert await ws.recv() == '{"action": "echo-me"}'  # the example $default route
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1001
        assert await asyncio.to_thread(proc.wait, 15) == 0
        out = proc.stdout.read().decode().splitlines()
        kinds = [json.loads(line)["kind"] for line in out if line.startswith("{")]
        assert kinds.count("connect") == 1 and kinds.count("message") == 1 and kinds.count("disconnect") == 1
        for line in out:  # never the token or the body
            assert "echo-me" not in line
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_sigint_also_exits_zero(tmp_path):
    proc, ready = start(tmp_path, PORT0)
    await asyncio.to_thread(wait_ready, proc, ready)
    proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(proc.wait, 15) == 0


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("[listen]\nport = 'abc'\n", "listen.port"),
        ("[limits]\nmax_message_bytes = -1\n", "limits.max_message_bytes"),
        ("[auth]\ntype = 'jwt'\nalgorithms = ['HS256']\nsecret_env = 'WSGW_TEST_UNSET_VAR'\n", "auth.secret_env"),
        ("[routes]\n'$default' = 'handlers.nope:handler'\n", "routes.$default"),
        ("[auth]\ntype = 'authorizer'\nauthorizer = 'tests.seed_authorizer:handler'\ncache_ttl_s = 3601\n",
         "auth.cache_ttl_s"),
        ("[auth]\ntype = 'authorizer'\nauthorizer = 'tests.seed_authorizer:handler'\n"
         "identity_sources = ['$request.header.Authorization']\n", "auth.identity_sources"),
        ("[auth]\ntype = 'authorizer'\nauthorizer = 'handlers.nope:handler'\n", "auth.authorizer"),
        ("[routes]\nchat = 'ftp://backend.example/ws'\n", "routes.chat"),
        ("[routes]\n'$connect' = 'http://backend.example/ws'\n", "routes.$connect"),
        ("[routes]\nchat = 'lambda:chat'\n", "routes.chat"),
        ("[listen\n", "gateway.toml"),
    ],
)
def test_bad_config_stops_startup_with_one_line(tmp_path, config, key):
    proc, _ = start(tmp_path, config)
    assert proc.wait(20) == 2
    err = [line for line in proc.stderr.read().decode().splitlines() if "WARNING" not in line]
    assert len(err) == 1 and "config error" in err[0] and key in err[0], err


def test_help_says_what_the_command_is_for(capsys):
    from wsgateway.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "WebSocket push gateway" in out and "serve" in out and "check-config" in out
    assert "uvloop" not in out and "event loop" not in out  # a note for developers, not users


@pytest.mark.parametrize("count", ["0", "-2", "two"])
def test_a_worker_count_below_one_is_refused(count, capsys):
    from wsgateway.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--workers", count])
    assert exit_.value.code == 2
    assert f"--workers: must be an integer >= 1, got '{count}'" in capsys.readouterr().err


@pytest.mark.redis
def test_a_ready_file_that_cannot_be_written_stops_the_node_and_takes_it_out_of_the_registry(
    tmp_path, redis_url, key_prefix
):
    """The node started before the ready file failed: it must not stay listed as alive in
    Redis, where other nodes would count on it until node_ttl_s and sweep it."""
    import redis

    path = tmp_path / "gateway.toml"
    path.write_text(PORT0 + f'[registry]\nbackend = "redis"\nredis_url = "{redis_url}"\nkey_prefix = "{key_prefix}"\n')
    run = subprocess.run([sys.executable, "-m", "wsgateway", "serve", "--config", str(path),
                          "--ready-file", str(tmp_path / "missing" / "ready.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "cannot start" in run.stderr, run.stderr
    assert redis.Redis.from_url(redis_url).zrange(f"{key_prefix}:{{meta}}:alive", 0, -1) == []


def test_workers_refused_with_memory_registry(tmp_path):
    proc, _ = start(tmp_path, PORT0, "--workers", "2")
    assert proc.wait(20) == 2
    assert "redis" in proc.stderr.read().decode()


def test_check_config_and_routes_commands(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(PORT0)
    out = subprocess.run([sys.executable, "-m", "wsgateway", "check-config", "--config", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "config OK" in out.stdout and "authentication is OFF" in out.stdout
    out = subprocess.run([sys.executable, "-m", "wsgateway", "routes"], cwd=ROOT, capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0 and "wsgateway.examples.echo:handler" in out.stdout


def test_routes_command_shows_each_kind_and_target(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(
        "[routes]\n'$connect' = 'https://backend.example/ws/connect'\n"
        "sendMessage = 'lambda:arn:aws:lambda:us-east-1:123456789012:function:chat'\n"
        "'$default' = 'handlers.echo:handler'\n"
    )
    out = subprocess.run([sys.executable, "-m", "wsgateway", "routes", "--config", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    assert rows == [
        ["$connect", "http", "https://backend.example/ws/connect"],
        ["sendMessage", "lambda", "lambda:arn:aws:lambda:us-east-1:123456789012:function:chat"],
        ["$default", "python", "handlers.echo:handler"],
    ]


def _health(port: int) -> tuple[int, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return response.status, json.loads(response.read())


def _serve_without_config(cwd: Path, ready: Path) -> subprocess.Popen:
    """The console script beside this interpreter, as `pip install .` puts it on PATH."""
    script = shutil.which("wsgateway", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is installed beside this interpreter"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Port 0 only because a fixed 8080 may be taken on a shared machine; there is no config.
    argv = [script, "serve", "--ready-file", str(ready), "--listen-port", "0", "--management-port", "0"]
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_serve_with_no_config_runs_from_an_empty_directory(tmp_path):
    """The README's `wsgateway serve`, run outside the clone: the embedded default routes
    import the installed examples, not a `handlers` package from the working directory."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    ready = tmp_path / "ready.json"
    proc = _serve_without_config(cwd, ready)
    try:
        info = await asyncio.to_thread(wait_ready, proc, ready)
        async with websockets.connect(f"ws://127.0.0.1:{info['port']}/prod?tenant=demo") as ws:
            await ws.send('{"action": "x"}')  # $connect ran the dashboard example; $default echoes
            assert await asyncio.wait_for(ws.recv(), 10) == '{"action": "x"}'
        status, health = await asyncio.to_thread(_health, info["management_port"])
        assert status == 200 and health["live"] is True
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert list(cwd.iterdir()) == []  # nothing written where it was started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
