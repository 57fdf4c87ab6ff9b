import json

from wsgateway.accesslog import AccessLog


async def test_lines_are_json_and_buffered(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.start()
    log.write("message", requestId="r1", connectionId="c1", routeKey="$default", status=200, latency_ms=0.1,
              tenant="t", sourceIp="1.2.3.4", userAgent="ua")
    assert path.read_text() == ""  # buffered, no syscall per line
    await log.close()
    (line,) = path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["kind"] == "message" and entry["requestId"] == "r1" and entry["time"].endswith("Z")


async def test_disabled_writes_nothing(tmp_path):
    log = AccessLog("")
    log.write("connect", requestId="r")
    await log.close()
    assert not log.enabled


def test_client_strings_are_bounded_and_user_agent_is_on_connect_lines_only(tmp_path):
    """A refused handshake (no record yet) and a message: every client string is cut."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.connection_event("connect", route_key="$connect", status=401, request_id="", started=None,
                         source_ip="9" * 1000, user_agent="U" * 8000)
    log.connection_event("message", route_key="r" * 1000, status=200, request_id="r1", started=None,
                         source_ip="1.2.3.4", user_agent="U" * 8000, orphanOf="n" * 1000)
    log.flush()
    connect, message = (json.loads(line) for line in path.read_text().splitlines())
    assert connect["userAgent"] == "U" * (256 - len("...[truncated]")) + "...[truncated]"
    assert connect["sourceIp"] == "9" * 242 + "...[truncated]" and connect["status"] == 401
    assert "userAgent" not in message
    assert message["routeKey"] == "r" * 242 + "...[truncated]"
    assert message["orphanOf"] == "n" * 242 + "...[truncated]"
    assert message["sourceIp"] == "1.2.3.4"  # short strings are left alone


async def test_a_long_user_agent_is_logged_once_per_connection(tmp_path):
    """Black-box: a real node, a client with an 8 KB User-Agent sending 100 messages. The log
    stays small: the UA is on the connect line only (truncated), never on message lines."""
    import websockets

    from tests.support import make_config, running_node, ws_url

    path = tmp_path / "access.log"
    user_agent = "Mozilla/5.0 " + "x" * 8000
    async with running_node(make_config(log={"access_log": str(path)})) as node:
        async with websockets.connect(ws_url(node), user_agent_header=user_agent, open_timeout=5) as ws:
            for i in range(100):
                await ws.send(f'{{"n": {i}}}')
                assert await ws.recv() == f'{{"n": {i}}}'
    lines = path.read_bytes().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["kind"] for e in entries] == ["connect"] + ["message"] * 100 + ["disconnect"]
    connect = entries[0]
    assert connect["status"] == 101 and connect["userAgent"].startswith("Mozilla/5.0 xxx")
    assert len(connect["userAgent"]) == 256 and connect["userAgent"].endswith("...[truncated]")
    assert all("userAgent" not in e for e in entries[1:])
    assert max(len(line) for line in lines[1:]) < 400  # bytes per message / disconnect line
    assert len(lines[0]) < 700
