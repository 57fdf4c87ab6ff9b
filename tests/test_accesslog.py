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
