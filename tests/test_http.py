"""The management edge's HTTP/1.1 server, with raw sockets: what SDKs, curl and proxies send."""

from __future__ import annotations

import asyncio
import http
import re
import time
from collections.abc import Coroutine
from email.utils import parsedate_to_datetime
from typing import Any

import httptools
import pytest

from wsgateway.http import Deferred, HttpServer, Request, Response
from wsgateway.node import listen_socket

SEEN: list[Request] = []


async def echo(request: Request) -> Response:
    SEEN.append(request)
    if request.raw_path == "/slow":
        await asyncio.sleep(0.2)
    if request.raw_path == "/pause":
        await asyncio.sleep(0.05)
    if request.raw_path == "/boom":
        raise RuntimeError("handler bug")
    body = b"%s %s ?%s len=%d big=%d" % (
        request.method.encode(), request.raw_path.encode(), request.raw_query.encode(), len(request.body), request.body_too_large,
    )
    return Response(200, body, [("Content-Type", "text/plain")])


@pytest.fixture
async def server():
    SEEN.clear()
    srv = HttpServer(echo, max_body=1000)
    port = await srv.start(listen_socket("127.0.0.1", 0, reuse_port=False))
    yield srv, port
    await srv.close(timeout=1)


_DATE = re.compile(rb"Date: ([^\r]*)\r\n")


def undated(data: bytes) -> bytes:
    """``data`` without its answers' Date lines, once each answer was found to have one, of
    now, in the IMF-fixdate form (RFC 9110 5.6.7) that SDKs parse."""
    finals = [line for line in re.findall(rb"HTTP/1\.1 (\d{3}) ", data) if line != b"100"]
    dates = _DATE.findall(data)
    assert len(dates) == len(finals), data
    for value in dates:
        assert re.fullmatch(rb"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", value), value
        assert abs(parsedate_to_datetime(value.decode()).timestamp() - time.time()) < 5
    return _DATE.sub(b"", data)


async def exchange(port: int, raw: bytes, *, until_close: bool = True, expect: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = b""
    try:
        async with asyncio.timeout(3):
            while data.count(b"HTTP/1.1 ") < expect or until_close:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        pass
    writer.close()
    return data


async def test_keep_alive_pipelining_in_order(server):
    _, port = server
    raw = b"".join(b"GET /r%d?x=%%41 HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5))
    raw += b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    data = await exchange(port, raw)
    bodies = [part.split(b"\r\n\r\n", 1)[1].split(b" ")[1] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"/r0", b"/r1", b"/r2", b"/r3", b"/r4", b"/slow", b"/last"]
    assert SEEN[0].raw_query == "x=%41"  # percent-encoding kept, as SigV4 signed it
    assert data.endswith(b"/last ? len=0 big=0")


async def test_every_answer_is_dated_and_a_204_has_no_content_length():
    """Date on every answer, as AWS sends it (SDKs correct a skewed clock from it); a 204
    carries no Content-Length (RFC 9110 8.6), and the answer pipelined after it still parses."""
    async def handler(request: Request) -> Response:
        return Response(204, b"", [("x-amzn-RequestId", "r1")]) if request.raw_path == "/gone" else Response(200, b"ok")

    srv = HttpServer(handler, max_body=1000)
    port = await srv.start(listen_socket("127.0.0.1", 0, reuse_port=False))
    try:
        data = await exchange(port, b"DELETE /gone HTTP/1.1\r\nHost: h\r\n\r\n"
                                    b"GET /next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    finally:
        await srv.close(timeout=1)
    assert undated(data) == (b"HTTP/1.1 204 No Content\r\nx-amzn-RequestId: r1\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    parser_says: list[bytes] = []

    class Seen:
        def on_body(self, body: bytes) -> None:
            parser_says.append(body)

        def on_message_complete(self) -> None:
            parser_says.append(b"|")

    httptools.HttpResponseParser(Seen()).feed_data(data)  # a client's parser: two answers, one body
    assert parser_says == [b"|", b"ok", b"|"]


async def test_the_date_follows_the_clock_while_the_server_runs(server):
    """The Date line is remade every second, not read from the clock per answer: after two
    seconds of running, an answer's Date is still this second's."""
    _, port = server
    await asyncio.sleep(2.2)
    data = await exchange(port, b"GET /d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    (value,) = _DATE.findall(data)
    assert abs(parsedate_to_datetime(value.decode()).timestamp() - time.time()) <= 1.1


async def test_bodies_content_length_chunked_and_expect_continue(server):
    _, port = server
    data = await exchange(port, b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert b"len=5 big=0" in data
    chunked = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert b"len=5" in await exchange(port, chunked)
    assert SEEN[-1].body == b"abcde"
    data = await exchange(port, b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")


async def test_a_head_request_is_answered_without_content(server):
    """RFC 9110 9.3.2: a keep-alive client reads no content after a HEAD answer, so content
    sent there was read as the start of the next answer (aiohttp: BadStatusLine)."""
    _, port = server
    raw = b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    data = await exchange(port, raw)
    head_answer, _, rest = data.partition(b"\r\n\r\n")
    assert head_answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: %d" % len(b"HEAD /h ? len=0 big=0") in head_answer  # what a GET would carry
    assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"GET /after ? len=0 big=0")


async def test_oversize_body_is_flagged_and_connection_stays_usable(server):
    _, port = server
    big = b"x" * 5000
    raw = b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + big
    raw += b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    data = await exchange(port, raw)
    assert b"/big ? len=0 big=1" in data and b"/after" in data
    assert SEEN[0].headers["content-length"] == "5000"  # case-insensitive headers


@pytest.mark.parametrize(("raw", "status"), [
    (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 70000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nHost: h\r\n\r\n", b"400"),
    (b"GET /d HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"400"),  # RFC 9112 3.2: Host is required
])
async def test_malformed_requests_get_4xx_and_close(server, raw, status):
    _, port = server
    data = await exchange(port, raw)
    assert data.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in data


async def test_http_1_0_needs_no_host(server):
    _, port = server
    data = await exchange(port, b"GET /d HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")


async def test_handler_bug_is_a_500_without_details(server):
    _, port = server
    data = await exchange(port, b"GET /boom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error") and b"handler bug" not in data


async def test_http10_closes_after_answer(server):
    _, port = server
    data = await exchange(port, b"GET /old HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data


async def test_close_lets_requests_in_progress_finish(server):
    srv, port = server
    task = asyncio.create_task(exchange(port, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n", until_close=True))
    await asyncio.sleep(0.05)
    await srv.close(timeout=2)
    data = await task
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data


async def started(**options) -> tuple[HttpServer, int]:
    SEEN.clear()
    srv = HttpServer(echo, **{"max_body": 1000, **options})
    return srv, await srv.start(listen_socket("127.0.0.1", 0, reuse_port=False))


async def read_all(reader: asyncio.StreamReader, limit_s: float = 3) -> bytes:
    async with asyncio.timeout(limit_s):
        return await reader.read()


async def test_a_request_that_stops_coming_is_dropped():
    srv, port = await started(idle_timeout_s=0.2, header_timeout_s=0.3, request_timeout_s=0.6)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Le")  # and then nothing
    await writer.drain()
    data = await read_all(reader)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout") and b"Connection: close" in data
    writer.close()
    await srv.close(timeout=1)


async def trickle(writer: asyncio.StreamWriter, raw: bytes, every_s: float) -> None:
    """Send one byte every ``every_s``: each arrives well inside the idle timeout."""
    for i in range(len(raw)):
        writer.write(raw[i:i + 1])
        await writer.drain()
        await asyncio.sleep(every_s)


@pytest.mark.parametrize("raw", [
    b"GET /slow-head HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"a" * 200,  # head never ends
    b"POST /slow-body HTTP/1.1\r\nHost: h\r\nContent-Length: 300\r\n\r\n" + b"b" * 300,
])
async def test_slowloris_gets_408_at_the_deadline_whatever_it_trickles(raw):
    # One byte every 50 ms never lets the 0.5 s idle timeout fire; only the deadlines can.
    srv, port = await started(idle_timeout_s=0.5, header_timeout_s=0.4, request_timeout_s=0.8)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slow = asyncio.create_task(trickle(writer, raw, 0.05))
    started_at = asyncio.get_running_loop().time()
    data = await read_all(reader)
    elapsed = asyncio.get_running_loop().time() - started_at
    slow.cancel()
    assert data.startswith(b"HTTP/1.1 408 Request Timeout") and b"Connection: close" in data
    assert 0.3 < elapsed < 2.5
    assert SEEN == []  # nothing reached the handler
    writer.close()
    await srv.close(timeout=1)


async def test_a_request_we_stopped_reading_is_not_timed_out():
    # 16 answers pending pause reading; the 17th request, half read, waits on us, not the peer.
    srv, port = await started(header_timeout_s=0.2, request_timeout_s=0.4)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /pause HTTP/1.1\r\nHost: h\r\n\r\n" * 16 + b"GET /last HTTP/1.1\r\nHo")
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write(b"st: h\r\nConnection: close\r\n\r\n")
    data = await read_all(reader)
    assert data.count(b"HTTP/1.1 200 OK") == 17 and data.endswith(b"/last ? len=0 big=0")
    writer.close()
    await srv.close(timeout=1)


async def test_connections_over_the_cap_get_503_and_are_closed():
    srv, port = await started(max_connections=2)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = await read_all(reader)
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable") and b"Connection: close" in data
    writer.close()
    held[0][1].close()  # a slot frees up: the next connection is served
    await asyncio.sleep(0.1)
    assert b"/free" in await exchange(port, b"GET /free HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    held[1][1].close()
    await srv.close(timeout=1)


async def test_malformed_request_is_answered_after_the_pipelined_ones_before_it(server):
    _, port = server
    raw = b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nNOT HTTP AT ALL\r\n\r\n"
    data = await exchange(port, raw)
    assert data.index(b"HTTP/1.1 200 OK") < data.index(b"HTTP/1.1 400 Bad Request")
    assert b"/slow" in data and data.count(b"HTTP/1.1 ") == 2


def refuse_unless_signed(request: Request) -> Response | None:
    return None if "authorization" in request.headers else Response(403, b"no")


async def test_refused_head_is_answered_before_its_body_is_sent_and_nothing_is_buffered():
    srv, port = await started(head_check=refuse_unless_signed, max_body=200_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 120000\r\n\r\n")  # no body yet
    await writer.drain()
    async with asyncio.timeout(2):
        head = await reader.readuntil(b"no")
    assert head.startswith(b"HTTP/1.1 403 Forbidden") and b"Connection: close" in head
    writer.write(b"x" * 120000)  # what the client had in flight is read and dropped, not reset
    await writer.drain()
    assert await read_all(reader) == b""
    assert SEEN == []
    writer.close()
    await srv.close(timeout=1)


async def test_refused_expect_continue_gets_the_answer_instead_of_100(server):
    srv, port = await started(head_check=refuse_unless_signed)
    data = await exchange(port, b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 403 Forbidden") and b"100 Continue" not in data
    signed = b"POST /e HTTP/1.1\r\nHost: h\r\nAuthorization: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert b"len=2" in await exchange(port, signed)
    await srv.close(timeout=1)


REFUSED: list[tuple[int, str, str, str, str]] = []


def shaped(status: int, reason: str, request: Request) -> Response:
    """A refusal that says what it was given: the status, the reason and what was read."""
    REFUSED.append((status, reason, request.method, request.raw_path, request.headers.get("X-Sent", "")))
    return Response(status, reason.encode(), [("X-Refused", "yes")])


def refused(status: int, reason: str) -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nX-Refused: yes\r\nConnection: close\r\n\r\n%s" % (
        status, http.HTTPStatus(status).phrase.encode(), len(reason), reason.encode())


@pytest.mark.parametrize(("raw", "status", "reason", "seen"), [
    (b"NOT HTTP AT ALL\r\n\r\n", 400, "Malformed request", ("", "", "")),
    (b"POST /p HTTP/1.1\r\nX-Sent: 1\r\nContent-Length: 1x\r\n\r\n", 400, "Malformed request", ("POST", "", "1")),
    (b"GET /p HTTP/1.1\r\nX-Sent: 1\r\nHost: h\r\nBad Name: v\r\n\r\n", 400, "Malformed request", ("GET", "", "1")),
    (b"GET / HTTP/1.1\r\nX-Sent: 1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431, "Request header fields too large",
     ("GET", "", "1")),
    (b"GET /ws HTTP/1.1\r\nX-Sent: 1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400,
     "Upgrade is not supported", ("GET", "", "1")),
    (b"GET /p HTTP/1.1\r\nX-Sent: 1\r\n\r\n", 400, "Host header is missing", ("GET", "/p", "1")),  # its head is complete
    (b"GET /boom HTTP/1.1\r\nX-Sent: 1\r\nHost: h\r\nConnection: close\r\n\r\n", 500, "Internal server error",
     ("GET", "/boom", "1")),
])
async def test_the_servers_own_refusals_are_made_by_its_refusal(raw, status, reason, seen):
    """A malformed request, a head too large, an upgrade, a missing Host and a handler's failure are answered
    by the ``refusal`` the server was made with, given the status, a reason and the request
    as far as it was read; the connection closes after it."""
    REFUSED.clear()
    srv, port = await started(refusal=shaped)
    data = await exchange(port, raw)
    await srv.close(timeout=1)
    assert undated(data) == refused(status, reason)
    assert [(status, reason, *seen)] == REFUSED


async def test_a_late_request_and_a_connection_past_the_cap_are_refused_by_its_refusal():
    REFUSED.clear()
    srv, port = await started(refusal=shaped, max_connections=1, header_timeout_s=0.2, request_timeout_s=0.4)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /late HTTP/1.1\r\nX-Sent: 1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab")  # and no more
    await writer.drain()
    await asyncio.sleep(0.05)
    second, _ = await asyncio.open_connection("127.0.0.1", port)
    assert undated(await read_all(second)) == refused(503, "Too many connections")
    assert undated(await read_all(reader)) == refused(408, "Request timed out")
    writer.close()
    await srv.close(timeout=1)
    assert REFUSED == [(503, "Too many connections", "", "", ""), (408, "Request timed out", "POST", "/late", "1")]


async def test_without_a_refusal_the_server_answers_the_bare_status(server):
    _, port = server
    data = await exchange(port, b"GET /boom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert undated(data) == b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert undated(await exchange(port, b"NOT HTTP\r\n\r\n")) == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


async def test_an_oversize_body_announced_with_expect_continue_is_refused_before_it_is_sent():
    """A client that waits for 100 Continue before sending its body gets the final 413 at
    once instead, without 100, and the connection closes (the client may still send the body
    it announced: read and dropped); one within the limit still gets 100."""
    REFUSED.clear()
    srv, port = await started(refusal=shaped)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /big HTTP/1.1\r\nHost: h\r\nX-Sent: 1\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(2):
        head = await reader.readuntil(b"Payload too large")
    assert undated(head) == refused(413, "Payload too large")
    writer.write(b"x" * 1001)
    await writer.drain()
    assert await read_all(reader) == b""
    writer.close()
    assert REFUSED == [(413, "Payload too large", "POST", "/big", "1")]
    assert SEEN == []  # the handler never ran
    fits = b"POST /fits HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
    data = await exchange(port, fits + b"y" * 1000)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK") and data.endswith(b"len=1000 big=0")
    await srv.close(timeout=1)


async def test_concurrent_requests_run_together_and_are_answered_in_order():
    """A request the head check marks concurrent starts while the ones ahead of it still
    run (here /c1 waits until /c2 started: served one at a time, it would time out); a
    serial one starts only once everything ahead is answered, and holds back what follows
    it; the answers keep the order of the requests."""
    events: list[str] = []
    c2_started = asyncio.Event()

    def mark(request: Request) -> None:
        request.concurrent = request.raw_path.startswith("/c")

    async def handler(request: Request) -> Response:
        path = request.raw_path
        events.append(f"start {path}")
        if path == "/c1":
            await asyncio.wait_for(c2_started.wait(), 2)
        elif path == "/c2":
            c2_started.set()
        await asyncio.sleep(0.02)
        events.append(f"end {path}")
        return Response(200, path.encode())

    srv = HttpServer(handler, max_body=1000, head_check=mark)
    port = await srv.start(listen_socket("127.0.0.1", 0, reuse_port=False))
    try:
        paths = ["/c1", "/c2", "/s", "/c3", "/c4"]
        raw = b"".join(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % p.encode() for p in paths)
        data = await exchange(port, raw, until_close=False, expect=len(paths))
    finally:
        await srv.close(timeout=1)
    bodies = [part.split(b"\r\n\r\n", 1)[1][:3] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [p.encode() for p in paths]
    assert events.index("start /c2") < events.index("end /c1")
    assert events.index("end /c1") < events.index("start /s") and events.index("end /c2") < events.index("start /s")
    assert events.index("end /s") < events.index("start /c3") < events.index("start /c4") < events.index("end /c3")


async def test_a_handler_may_answer_without_a_coroutine_and_nothing_after_a_final_answer_runs():
    """A handler that returns a Response (as a post to a local connection does) is answered
    in order with coroutine ones, concurrent or serial; a request pipelined after one without
    keep-alive is neither answered nor run."""
    ran: list[str] = []

    def mark(request: Request) -> None:
        request.concurrent = request.raw_path.startswith("/c")

    def handler(request: Request) -> Response | Coroutine[Any, Any, Response]:
        ran.append(request.raw_path)
        if request.raw_path.endswith("a"):
            return echo(request)
        return Response(200, b"now " + request.raw_path.encode())

    srv = HttpServer(handler, max_body=1000, head_check=mark)
    port = await srv.start(listen_socket("127.0.0.1", 0, reuse_port=False))
    try:
        paths = ["/c1", "/c2a", "/s1", "/s2a", "/c3"]
        raw = b"".join(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % p.encode() for p in paths)
        raw += b"GET /c4 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /c5 HTTP/1.1\r\nHost: h\r\n\r\n"
        data = await exchange(port, raw)
    finally:
        await srv.close(timeout=1)
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"now /c1", b"GET /c2a ? len=0 big=0", b"now /s1", b"GET /s2a ? len=0 big=0", b"now /c3",
                      b"now /c4"]
    assert ran == ["/c1", "/c2a", "/s1", "/s2a", "/c3", "/c4"]


async def test_a_deferred_answer_is_given_in_order_when_resolved():
    """A handler may return a Deferred (a post to another node's connection: no task), which
    some callback resolves later: answered in order with the others, however its resolves
    are ordered, the ones resolved together in one write; and a serial request behind it
    starts only once it is answered."""
    pending: dict[str, Deferred] = {}
    ran: list[str] = []

    def mark(request: Request) -> None:
        request.concurrent = request.raw_path.startswith("/d")

    def handler(request: Request) -> Response | Deferred:
        ran.append(request.raw_path)
        if request.raw_path == "/s":
            return Response(200, b"now /s")
        deferred = pending[request.raw_path] = Deferred()
        return deferred

    async def resolve() -> None:
        while len(pending) < 3:
            await asyncio.sleep(0.01)
        assert ran == ["/d1", "/d2", "/d3"]  # /s waits for them
        for path in ("/d3", "/d1", "/d2"):
            pending[path].resolve(Response(200, b"later " + path.encode()))
            pending[path].resolve(Response(500))  # once
        while "/d4" not in pending:
            await asyncio.sleep(0.01)
        pending["/d4"].resolve(Response(200, b"later /d4"))

    srv = HttpServer(handler, max_body=1000, head_check=mark)
    port = await srv.start(listen_socket("127.0.0.1", 0, reuse_port=False))
    try:
        paths = ["/d1", "/d2", "/d3", "/s", "/d4"]
        raw = b"".join(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % p.encode() for p in paths)
        resolving = asyncio.ensure_future(resolve())
        data = await exchange(port, raw, until_close=False, expect=len(paths))
        await resolving
    finally:
        await srv.close(timeout=1)
    bodies = [part.split(b"\r\n\r\n", 1)[1] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"later /d1", b"later /d2", b"later /d3", b"now /s", b"later /d4"]
    assert ran == paths


async def test_a_deferred_answer_while_the_server_stops_is_awaited_alone():
    """While the server stops, a concurrent request is served alone (as a serial one): its
    Deferred is awaited by the connection's task, and answered before what follows it runs."""
    pending: list[Deferred] = []
    ran: list[str] = []

    def mark(request: Request) -> None:
        request.concurrent = True

    def handler(request: Request) -> Deferred:
        ran.append(request.raw_path)
        deferred = Deferred()
        pending.append(deferred)
        return deferred

    srv = HttpServer(handler, max_body=1000, head_check=mark)
    port = await srv.start(listen_socket("127.0.0.1", 0, reuse_port=False))
    srv.stopping = True
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    async with asyncio.timeout(3):
        while not pending:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert ran == ["/a"]
        pending[0].resolve(Response(200, b"/a done"))
        data = await reader.read(65536)
    writer.close()
    await srv.close(timeout=1)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"/a done") and b"Connection: close" in data
    assert ran == ["/a"]  # the answer while stopping closed the connection: /b never ran


async def test_header_names_seen_before_are_reused_case_insensitive_and_the_cache_is_bounded(server):
    """A header name seen before is reused already decoded (case-insensitive, its case as
    sent); names past the cache's bound are decoded each time, alike."""
    from wsgateway import http

    _, port = server
    names = [f"X-Name-{i}" for i in range(http._NAMES_KEPT + 10)]
    raw = b"GET /h HTTP/1.1\r\nHost: h\r\n" + b"".join(b"%s: v\r\n" % n.encode() for n in names)
    for _ in range(2):
        await exchange(port, raw + b"x-name-0: again\r\nConnection: close\r\n\r\n")
        headers = SEEN[-1].headers
        assert headers.getall("x-NAME-0") == ["v", "again"] and headers[names[-1]] == "v"
        assert [k for k in headers if k.startswith("X-")] == names and "HOST" in headers
    assert len(http._NAMES) <= http._NAMES_KEPT
