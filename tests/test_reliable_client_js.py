"""The browser client (``wsgateway/reliable/wsgateway-client.js``) in headless Chromium, driven
by Selenium: the page imports it from the node's ``GET /client.js`` (another origin), connects
through a TCP link the test cuts, and must show every message exactly once across the cut.
Skipped without chromium, chromedriver or selenium, as ``tests/test_browser.py`` is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from tests import handlers_for_tests as th
from tests.reliable_support import CutLink
from tests.support import endpoint, make_config, running_node
from tests.test_browser import WAIT_S, _static_origin, browser  # noqa: F401  (the fixture)

TimeoutException = pytest.importorskip("selenium.common.exceptions").TimeoutException
WebDriverWait = pytest.importorskip("selenium.webdriver.support.wait").WebDriverWait

pytestmark = pytest.mark.slow

Events = list[dict[str, Any]]


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with _static_origin() as served:
        yield served


async def _events(driver: Any, until: Callable[[Events], bool], timeout: float = WAIT_S) -> Events:
    def poll(d: Any) -> Events | bool:
        seen: Events = d.execute_script("return window.relEvents")
        return seen if until(seen) else False

    try:
        return await asyncio.to_thread(WebDriverWait(driver, timeout, poll_frequency=0.02).until, poll)
    except TimeoutException:
        seen = await asyncio.to_thread(driver.execute_script, "return window.relEvents")
        raise AssertionError(f"the client's events after {timeout} s: {seen}") from None


def _messages(events: Events) -> list[str]:
    return [e["data"] for e in events if e["type"] == "message"]


async def _post(node: Any, cid: str, text: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{endpoint(node)}/@connections/{cid}", data=text) as resp:
        assert resp.status == 200, await resp.text()


async def test_the_shipped_client_shows_every_message_once_across_a_cut(browser: Any, origin: str) -> None:  # noqa: F811
    th.EVENTS.clear()
    async with running_node(make_config()) as node, CutLink(node.port) as link:
        await asyncio.to_thread(browser.get, f"{origin}/reliable.html")
        await asyncio.to_thread(
            browser.execute_script, "startClient(arguments[0], arguments[1], arguments[2])",
            link.url(tenant="t1"), f"http://127.0.0.1:{node.port}/client.js", {"minDelayMs": 100, "maxDelayMs": 400},
        )
        opened = (await _events(browser, lambda seen: any(e["type"] == "open" for e in seen)))[0]
        cid = opened["connectionId"]
        for i in range(1, 6):
            await _post(node, cid, f"m{i}")
        await _events(browser, lambda seen: len(_messages(seen)) >= 5)

        link.cut()
        await asyncio.sleep(0.05)
        for i in range(6, 16):  # posted while the page is cut off, or reconnecting
            await _post(node, cid, f"m{i}")
        seen = await _events(browser, lambda seen: len(_messages(seen)) >= 15)
        await asyncio.sleep(0.3)  # nothing more may come: no duplicate
        seen = await asyncio.to_thread(browser.execute_script, "return window.relEvents")
        assert _messages(seen) == [f"m{i}" for i in range(1, 16)]
        kinds = [e["type"] for e in seen if e["type"] != "message"]
        assert kinds[:3] == ["open", "close", "resumed"] and "reset" not in kinds, kinds
        assert next(e for e in seen if e["type"] == "resumed")["connectionId"] == cid
        assert link.connections >= 2
        assert th.events_of("$disconnect", cid) == [] and len(th.events_of("$connect", cid)) == 1

        await asyncio.to_thread(browser.execute_script, "window.client.close()")
        await _events(browser, lambda seen: seen[-1]["type"] == "close" and not seen[-1]["willReconnect"])
        await asyncio.sleep(0.3)
        assert [e["requestContext"]["disconnectStatusCode"] for e in th.events_of("$disconnect", cid)] == [1000]


async def test_the_shipped_client_reports_a_reset_when_its_session_ended(browser: Any, origin: str) -> None:  # noqa: F811
    th.EVENTS.clear()
    async with running_node(make_config()) as node, CutLink(node.port) as link:
        await asyncio.to_thread(browser.get, f"{origin}/reliable.html")
        await asyncio.to_thread(
            browser.execute_script, "startClient(arguments[0], arguments[1], arguments[2])",
            link.url(tenant="t1"), f"http://127.0.0.1:{node.port}/client.js", {"minDelayMs": 1500, "maxDelayMs": 1500},
        )
        old = (await _events(browser, lambda seen: any(e["type"] == "open" for e in seen)))[0]["connectionId"]
        link.cut()
        await _events(browser, lambda seen: any(e["type"] == "close" for e in seen))
        async with aiohttp.ClientSession() as http:  # the backend ends the dropped session
            async with http.delete(f"{endpoint(node)}/@connections/{old}") as resp:
                assert resp.status == 204
        seen = await _events(browser, lambda seen: any(e["type"] == "reset" for e in seen))
        reset = next(e for e in seen if e["type"] == "reset")
        assert reset["previousId"] == old and reset["connectionId"] != old
        await _post(node, reset["connectionId"], "fresh")
        seen = await _events(browser, lambda seen: len(_messages(seen)) >= 1)
        assert _messages(seen) == ["fresh"]
        assert [e["requestContext"]["disconnectStatusCode"] for e in th.events_of("$disconnect", old)] == [1006]
