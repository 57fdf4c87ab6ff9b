"""The client edge under a real browser: Debian's headless Chromium, driven by Selenium.

Browser dashboards are the gateway's users. What only a browser does is checked here against a
real node: the Origin it sends on its own, the token offered as a subprotocol
(``new WebSocket(url, ["bearer", token])``), its permessage-deflate offer, and how it reports a
refused handshake (``error`` then ``close`` 1006: the page never sees the HTTP status, so the
test reads the status from the node's counters). The page is ``tests/browser/index.html``,
served by a loopback ``http.server`` so the browser sends a real ``Origin``; a second server on
another port is a foreign origin. Without chromium, chromedriver or selenium the module is
skipped, and says why (``apt install chromium chromium-driver``; ``.ci/run`` does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.config import Config

from tests import handlers_for_tests as th
from tests.support import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    endpoint,
    eventually,
    jwt_section,
    make_config,
    running_node,
    sigv4_section,
    token,
    ws_url,
)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
if not shutil.which(CHROMIUM) or not shutil.which(CHROMEDRIVER):
    pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.common.exceptions import TimeoutException  # noqa: E402  (after the skip checks)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

PAGES = Path(__file__).resolve().parent / "browser"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
WAIT_S = 5.0
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})  # exactly one attempt

Events = list[dict[str, Any]]


# ---------------------------------------------------------------- fixtures


class _QuietPages(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request on stderr is noise in pytest's report


@contextlib.contextmanager
def _static_origin() -> Iterator[str]:
    """Serve ``tests/browser`` on a free loopback port; yields the origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietPages, directory=str(PAGES)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[str, str]]:
    """(trusted, foreign): the same page on two loopback ports, so two different origins."""
    with _static_origin() as trusted, _static_origin() as foreign:
        yield trusted, foreign


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless Chromium for the module, on a throwaway profile; Selenium Manager unused."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(10)
        driver.set_script_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


class Page:
    """The test page in the module's browser.

    Selenium blocks, and the node under test serves on this test's event loop, so every call
    runs in a thread; every wait is bounded by ``WAIT_S``.
    """

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    async def load(self, origin: str) -> None:
        """Navigate to the page at ``origin`` (which closes any socket of the previous page)."""
        await asyncio.to_thread(self._driver.get, f"{origin}/index.html")

    async def run(self, script: str, *args: Any) -> Any:
        return await asyncio.to_thread(self._driver.execute_script, script, *args)

    async def open(self, url: str, protocols: list[str] | None = None) -> None:
        await self.run("wsOpen(arguments[0], arguments[1])", url, protocols or [])

    async def send(self, text: str) -> None:
        await self.run("window.ws.send(arguments[0])", text)

    async def events(self, until: Callable[[Events], bool]) -> Events:
        """The socket's events so far, once ``until(events)`` holds; TimeoutException if never."""

        def poll(driver: Any) -> Events | bool:
            seen: Events = driver.execute_script("return window.wsEvents")
            return seen if until(seen) else False

        wait = WebDriverWait(self._driver, WAIT_S, poll_frequency=0.02)
        try:
            return await asyncio.to_thread(wait.until, poll)
        except TimeoutException:
            seen = await self.run("return window.wsEvents")
            raise AssertionError(f"the page's WebSocket events after {WAIT_S} s: {seen}") from None

    async def opened(self) -> dict[str, Any]:
        """The first event, which must be ``open``."""
        first = (await self.events(lambda seen: len(seen) >= 1))[0]
        assert first["type"] == "open", first
        return first

    async def messages(self, count: int) -> Events:
        """The first ``count`` messages received (text as ``data``, binary as ``bytes``)."""
        seen = await self.events(lambda seen: len(_messages(seen)) >= count or _closed(seen))
        return _messages(seen)[:count]

    async def closed(self) -> Events:
        """Every event, once ``close`` has fired."""
        return await self.events(_closed)


def _messages(events: Events) -> Events:
    return [e for e in events if e["type"] == "message"]


def _closed(events: Events) -> bool:
    return any(e["type"] == "close" for e in events)


@pytest.fixture
def page(browser: Any) -> Page:
    return Page(browser)


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    th.EVENTS.clear()


def management_client(node: Any) -> Any:
    return boto3.client(
        "apigatewaymanagementapi", endpoint_url=endpoint(node), region_name=REGION,
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, config=NO_RETRY,
    )


async def counted_connections(node: Any, tenant: str) -> tuple[int, list[Any]]:
    """(/health's connection count, the tenant listing), over HTTP on the management port."""
    base = f"http://127.0.0.1:{node.management_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
        async with http.get(f"{base}/health") as resp:
            assert resp.status == 200
            health = await resp.json()
        async with http.get(f"{base}/prod/@tenants/{tenant}/connections") as resp:
            assert resp.status == 200
            listing = await resp.json()
    return health["connections"], listing["connections"]


REFUSED = [{"type": "error"}, {"type": "close", "code": 1006, "reason": "", "wasClean": False}]


# ---------------------------------------------------------------- cases


async def test_allowed_origin_with_subprotocol_token_gets_pushes_and_echoes(page, origins):
    trusted, _ = origins
    cfg = make_config(
        auth=jwt_section(sources=["subprotocol:bearer"]), limits={"allowed_origins": [trusted]},
        management=sigv4_section(),
    )
    async with running_node(cfg) as node:
        await page.load(trusted)
        await page.open(ws_url(node), ["bearer", token()])
        assert await page.opened() == {"type": "open", "protocol": "bearer", "extensions": ""}
        (connect_event,) = th.events_of("$connect")
        assert connect_event["headers"]["Origin"] == trusted  # the browser's own header
        assert connect_event["requestContext"]["authorizer"] == {"principalId": "user-1", "tenant": "practice-1"}

        await page.send('{"action": "whoami"}')
        (reply,) = await page.messages(1)
        cid = json.loads(reply["data"])["connectionId"]
        assert cid == connect_event["requestContext"]["connectionId"]

        client = management_client(node)
        await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data="bonjour, tableau ✓".encode())
        await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"\xff\xfe")
        assert (await page.messages(3))[1:] == [
            {"type": "message", "data": "bonjour, tableau ✓"},  # UTF-8: a text frame
            {"type": "message", "bytes": [255, 254]},  # not UTF-8: a binary frame
        ]

        echoed = '{"action": "dashboard.refresh", "since": 42}'  # no such route: $default echoes
        await page.send(echoed)
        assert (await page.messages(4))[3] == {"type": "message", "data": echoed}
        (default_event,) = th.events_of("$default", cid)
        assert default_event["body"] == echoed

        await page.run("window.ws.close(1000, 'page done')")
        assert (await page.closed())[-1] == {"type": "close", "code": 1000, "reason": "page done", "wasClean": True}
        (disconnect,) = await eventually(lambda: th.events_of("$disconnect", cid))
        ctx = disconnect["requestContext"]
        assert (ctx["disconnectStatusCode"], ctx["disconnectReason"]) == (1000, "page done")


async def test_foreign_origin_is_refused_and_never_counted(page, origins):
    trusted, foreign = origins
    async with running_node(make_config(limits={"allowed_origins": [trusted]})) as node:
        await page.load(foreign)
        await page.open(ws_url(node, tenant="acme"))
        assert await page.closed() == REFUSED
        assert node.gateway.stats.rejected == {403: 1}  # the handshake reached the node: 403
        assert await counted_connections(node, "acme") == (0, [])
        assert th.events_of("$connect") == []


@pytest.mark.parametrize(
    "bad_token",
    [token(ttl=-3600), token(secret="another-secret-entirely-0123456789"), "not.a.jwt"],
    ids=["expired", "wrong-key", "garbage"],
)
async def test_bad_subprotocol_token_is_refused(page, origins, bad_token):
    trusted, _ = origins
    cfg = make_config(auth=jwt_section(sources=["subprotocol:bearer"]), limits={"allowed_origins": [trusted]})
    async with running_node(cfg) as node:
        await page.load(trusted)
        await page.open(ws_url(node), ["bearer", bad_token])
        assert await page.closed() == REFUSED
        assert node.gateway.stats.rejected == {401: 1}
        assert await counted_connections(node, "practice-1") == (0, [])
        assert th.events_of("$connect") == []


@pytest.mark.parametrize(
    ("compression", "extensions"),
    [(True, "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"), (False, "")],
    ids=["on", "off"],
)
async def test_browser_deflate_offer_follows_listen_compression(page, origins, compression, extensions):
    trusted, _ = origins
    async with running_node(make_config(listen={"compression": compression})) as node:
        await page.load(trusted)
        await page.open(ws_url(node, tenant="acme"))
        assert await page.opened() == {"type": "open", "protocol": "", "extensions": extensions}
        big = json.dumps({"action": "dashboard.calls", "rows": [{"caller": "front desk", "state": "ringing"}] * 500})
        await page.send(big)  # ~27 kB, compressible: a real inflate / deflate both ways
        assert await page.messages(1) == [{"type": "message", "data": big}]
        cid = th.events_of("$default")[0]["requestContext"]["connectionId"]
        await asyncio.to_thread(management_client(node).post_to_connection, ConnectionId=cid, Data=big.encode())
        assert (await page.messages(2))[1] == {"type": "message", "data": big}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:  # the hub's path
            async with http.post(f"{endpoint(node)}/@tenants/acme/messages", data=big.encode()) as resp:
                assert (resp.status, await resp.json()) == (200, {"delivered": 1, "unreachableNodes": 0})
        assert (await page.messages(3))[2] == {"type": "message", "data": big}


async def test_browser_side_closes_reach_disconnect(page, origins):
    trusted, _ = origins
    async with running_node(make_config()) as node:
        await page.load(trusted)
        await page.open(ws_url(node, tenant="acme"))
        await page.opened()
        await page.run("window.ws.close()")  # what most pages call: a close frame without a code
        assert (await page.closed())[-1] == {"type": "close", "code": 1005, "reason": "", "wasClean": True}
        (first,) = await eventually(lambda: th.events_of("$disconnect"))
        assert (first["requestContext"]["disconnectStatusCode"], first["requestContext"]["disconnectReason"]) == (1005, "")

        await page.open(ws_url(node, tenant="acme"))
        await page.opened()
        await page.load(trusted)  # navigating away: the browser says 1001 going away
        (_, second) = await eventually(lambda: len(th.events_of("$disconnect")) == 2 and th.events_of("$disconnect"))
        assert (second["requestContext"]["disconnectStatusCode"], second["requestContext"]["disconnectReason"]) == (1001, "")
        assert await counted_connections(node, "acme") == (0, [])
