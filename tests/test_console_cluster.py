"""The operator console of one node showing a cluster of three: real gateway processes on a
private Redis (tests/cluster_support.py), the console in a real headless Chromium.

One node's console lists every node, adds their figures up, and reaches a connection held by
another node: its record, a test message, and a disconnect whose ``$disconnect`` runs
exactly once (the handlers write every event to a file the test reads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.cluster_support import Cluster, settled, wait_until
from tests.console_support import PASSWORD, Console, chromium, skip_without_chromium

skip_without_chromium()
pytestmark = [pytest.mark.redis, pytest.mark.slow]

CONSOLE = f'\n[console]\npassword = "{PASSWORD}"\n'


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


async def test_one_nodes_console_shows_and_acts_on_the_whole_cluster(browser: Any, cluster: Cluster) -> None:
    a, b, c = await cluster.start_all("a", "b", "c", extra=CONSOLE)
    for node in (a, b, c):
        await settled(node)
    clients = [await node.connect("practice-7") for node in (a, b, b, c)]
    ws_c, cid_c = clients[-1]
    for ws, _ in clients:  # some traffic for the charts: echoes, and a post to the tenant
        for i in range(5):
            await ws.send(f"echo {i}")
            await asyncio.wait_for(ws.recv(), 5)
    async with aiohttp.ClientSession() as http, http.post(f"{b.endpoint}/@tenants/practice-7/messages",
                                                          data=b"news") as resp:
        assert (await resp.json())["delivered"] == 4
    for ws, _ in clients:
        assert await asyncio.wait_for(ws.recv(), 5) == "news"
    page = Console(browser, f"http://127.0.0.1:{a.management_port}")
    await page.login()

    # Overview: every node, answering, on Redis, ready; totals across the cluster.
    for node in (a, b, c):
        row = f'#nodes-table tr[data-node="{node.node_id}"]'
        await page.until_js("const r = document.querySelector(arguments[0]); return r && r.textContent.includes('ready')",
                            f"node {node.name} listed, ready", row)
        cells = await page.texts(f"{row} td")
        assert cells[7:] == ["connected", "ready"], cells
    await page.until_js("return document.querySelector('#total-connections strong').textContent === '4'", "4 in all")
    assert await page.text("#total-nodes strong") == "3 / 3"
    counts = {node.node_id: (await page.texts(f'#nodes-table tr[data-node="{node.node_id}"] td'))[2] for node in (a, b, c)}
    assert counts == {a.node_id: "1", b.node_id: "2", c.node_id: "1"}
    first = int(await page.run("return +document.querySelector('#chart-connections').dataset.points"))
    await page.until_js(f"return +document.querySelector('#chart-connections').dataset.points > {first}",
                        "the chart gains a point")
    await page.screenshot("overview")
    assert await page.background() == "rgb(255, 255, 255)"
    await page.prefer("dark")  # the page follows the browser's preference, charts included
    await page.until_js("return getComputedStyle(document.body).backgroundColor === 'rgb(17, 20, 24)'", "dark")
    await page.screenshot("overview-dark")
    await page.prefer("light")

    # Tenants: the cluster's count; the tenant's connections from every node.
    await page.go("#/tenants")
    await page.until_js("const r = document.querySelector('#tenants-table tr[data-tenant=\"practice-7\"]');"
                        "return r && r.cells[1].textContent === '4' && r.cells[4].textContent === '3'", "4 on 3 nodes")
    await page.go("#/tenants/practice-7")
    await page.until_js("return document.querySelectorAll('#connections-table tbody tr').length === 4", "4 listed")
    nodes_listed = sorted(await page.texts("#connections-table tbody tr td:nth-child(3)"))
    assert nodes_listed == sorted([a.node_id, b.node_id, b.node_id, c.node_id])
    await page.screenshot("tenant")

    # A connection node c holds, from node a's console.
    await page.press_enter(f'#connections-table tr[data-connection="{cid_c}"] a')
    await page.find("#record")
    assert await page.texts('#record dd[data-field="Node"]') == [c.node_id]
    assert await page.texts('#record dd[data-field="Tenant"]') == ["practice-7"]
    await page.type("#test-message", "hello from node a's console")
    await page.screenshot("connection")
    await page.press_enter('#send button[type="submit"]')
    assert await asyncio.wait_for(ws_c.recv(), 5) == "hello from node a's console"
    await page.press_enter("#disconnect")
    await asyncio.wait_for(ws_c.wait_closed(), 5)
    assert ws_c.close_code == 1000

    def disconnects() -> list[dict[str, Any]]:
        return [e for e in cluster.events("$disconnect") if e["connectionId"] == cid_c]

    await wait_until(lambda: disconnects(), 5, "$disconnect of the connection on c")
    await asyncio.sleep(1.0)  # a second $disconnect (say, from node a) would have come by now
    (event,) = disconnects()
    assert event["disconnectStatusCode"] == 1000
    for ws, _ in clients[:-1]:
        await ws.close()
