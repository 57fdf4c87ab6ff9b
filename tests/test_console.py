"""The operator console against one real node: its access rules over HTTP (aiohttp, as a
script or an attacker would call it) and its pages in a real headless Chromium.

Multi-node views (every node listed, a connection held by another node) are in
test_console_cluster.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import websockets

from tests import handlers_for_tests as th
from tests.console_support import PASSWORD, XSS, Console, chromium, skip_without_chromium
from tests.support import eventually, make_config, running_node, sigv4_section, whoami, ws_url
from wsgateway.ids import new_connection_id

skip_without_chromium()
pytestmark = pytest.mark.slow

TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


@pytest.fixture(autouse=True)
def _clear_events(browser: Any) -> None:
    th.EVENTS.clear()
    browser.delete_all_cookies()


def console_config(**sections: Any) -> Any:
    return make_config(console={"password": PASSWORD}, **sections)


@pytest.fixture
async def node() -> AsyncIterator[Any]:
    async with running_node(console_config()) as running:
        yield running


def base(node: Any) -> str:
    return f"http://127.0.0.1:{node.management_port}"


async def logged_in(http: aiohttp.ClientSession, node: Any) -> str:
    """Log ``http`` in through the JSON API; return the session's CSRF token."""
    async with http.post(f"{base(node)}/console/api/login", json={"password": PASSWORD}) as resp:
        assert resp.status == 204, await resp.text()
    async with http.get(f"{base(node)}/console/api/session") as resp:
        assert resp.status == 200
        return str((await resp.json())["csrf"])


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=TIMEOUT)


async def client(node: Any, tenant: str = "acme", **kwargs: Any) -> tuple[Any, str]:
    ws = await websockets.connect(ws_url(node, tenant=quote(tenant, safe="")), open_timeout=5, **kwargs)
    return ws, await whoami(ws)


# ---------------------------------------------------------------- access, over HTTP


async def test_without_the_cookie_only_the_login_form_answers(node: Any) -> None:
    ws, cid = await client(node)
    async with session() as http:
        async with http.get(f"{base(node)}/console") as resp:
            assert resp.status == 200
            page = await resp.text()
            assert '<form method="post" action="/console/login">' in page and "console.js" not in page
            assert "HttpOnly" not in resp.headers.get("Set-Cookie", "")  # nothing issued before a login
        for method, path in [("GET", "session"), ("GET", "overview"), ("GET", "tenants"), ("GET", "failures"),
                             ("GET", "tenants/acme/connections"), ("GET", f"connections/{cid}"),
                             ("POST", f"connections/{cid}/messages"), ("DELETE", f"connections/{cid}")]:
            async with http.request(method, f"{base(node)}/console/api/{path}") as resp:
                assert (resp.status, await resp.json()) == (401, {"message": "Log in first"}), path
        forged = {"Cookie": f"wsgw_console_{node.management_port}=forged-token"}
        async with http.get(f"{base(node)}/console/api/overview", headers=forged) as resp:
            assert resp.status == 401
        async with http.get(f"{base(node)}/console/static/console.js") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/javascript")
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        async with http.get(f"{base(node)}/console/static/index.html") as resp:
            assert resp.status == 404  # the page itself only at /console, behind the login
    await ws.close()


async def test_the_session_cookie_is_httponly_strict_and_secure_behind_tls(node: Any) -> None:
    async with session() as http:
        async with http.post(f"{base(node)}/console/api/login", json={"password": PASSWORD}) as resp:
            cookie = resp.headers["Set-Cookie"]
        name = f"wsgw_console_{node.management_port}="
        assert cookie.startswith(name)
        assert "; Path=/console; Max-Age=43200; HttpOnly; SameSite=Strict" in cookie and "Secure" not in cookie
        headers = {"X-Forwarded-Proto": "https"}
        async with http.post(f"{base(node)}/console/api/login", json={"password": PASSWORD}, headers=headers) as resp:
            assert resp.headers["Set-Cookie"].endswith("; HttpOnly; SameSite=Strict; Secure")
        async with http.get(f"{base(node)}/console/api/session") as resp:
            assert resp.status == 401  # the Secure cookie replaced the first and is never sent over plain HTTP


async def test_wrong_passwords_are_refused_and_five_lock_the_address_out(node: Any) -> None:
    async with session() as http:
        url = f"{base(node)}/console/api/login"
        for _ in range(5):
            async with http.post(url, json={"password": "not the password"}) as resp:
                assert (resp.status, await resp.json()) == (401, {"message": "Wrong password."})
                assert "Set-Cookie" not in resp.headers
        async with http.post(url, json={"password": PASSWORD}) as resp:  # right, but locked out
            assert resp.status == 429
            assert await resp.json() == {"message": "Too many wrong passwords from your address: try again in a minute."}
        async with http.post(f"{base(node)}/console/login", data={"password": PASSWORD}, allow_redirects=False) as resp:
            assert resp.status == 429 and "try again in a minute" in await resp.text()  # the form too
        async with http.post(url, data=b"not json") as resp:
            assert resp.status == 400


async def test_state_changing_calls_need_the_sessions_csrf_token(node: Any) -> None:
    ws, cid = await client(node)
    async with session() as http, session() as other:
        csrf = await logged_in(http, node)
        other_csrf = await logged_in(other, node)
        url = f"{base(node)}/console/api/connections/{cid}"
        for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": other_csrf}):
            async with http.post(f"{url}/messages", data=b"forged", headers=headers) as resp:
                assert (resp.status, await resp.json()) == (403, {"message": "Forbidden: missing or wrong CSRF token"})
            async with http.delete(url, headers=headers) as resp:
                assert resp.status == 403
        async with http.get(url) as resp:  # reading needs none
            assert resp.status == 200 and (await resp.json())["connectionId"] == cid
        async with http.post(f"{url}/messages", data=b"hello", headers={"X-CSRF-Token": csrf}) as resp:
            assert (resp.status, await resp.json()) == (200, {"sent": 5})
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"  # the forged ones never arrived
        origin = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        async with http.delete(url, headers=origin) as resp:
            assert resp.status == 403  # another site's page, even with a token it could not read
        async with http.delete(url, headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 204
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1000
        async with http.delete(url, headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 410
        async with http.post(f"{base(node)}/console/api/logout", headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 204
        async with http.get(f"{base(node)}/console/api/session") as resp:
            assert resp.status == 401


async def test_bad_input_gets_a_clear_error() -> None:
    async with running_node(console_config()) as node, session() as http:
        await logged_in(http, node)
        api = f"{base(node)}/console/api"
        for path, status, message in [
            ("connections/not%20an%20id", 400, "Invalid connectionId"),
            ("tenants?sort=secret", 400, "sort must be one of connections, traffic, throttled, name"),
            ("overview?since=abc", 400, "since must be a number"),
            ("tenants/acme/connections?limit=0", 400, None),
            (f"tenants/{'x' * 300}", 400, "Invalid tenant"),
            ("nothing", 404, None),
        ]:
            async with http.get(f"{api}/{path}") as resp:
                body = await resp.json()
                assert resp.status == status, (path, body)
                if message is not None:
                    assert body == {"message": message}


async def test_open_on_loopback_without_a_password_but_csrf_still_holds() -> None:
    async with running_node(make_config()) as node, session() as http:
        ws, cid = await client(node)
        async with http.get(f"{base(node)}/console/api/overview") as resp:
            assert resp.status == 401  # the page issues the session
        async with http.get(f"{base(node)}/console") as resp:
            assert resp.status == 200 and "console.js" in await resp.text()
        async with http.get(f"{base(node)}/console/api/session") as resp:
            csrf = (await resp.json())["csrf"]
        async with http.delete(f"{base(node)}/console/api/connections/{cid}") as resp:
            assert resp.status == 403
        async with http.delete(f"{base(node)}/console/api/connections/{cid}", headers={"X-CSRF-Token": csrf}) as resp:
            assert resp.status == 204
        async with http.post(f"{base(node)}/console/api/login", json={"password": ""}) as resp:
            assert resp.status == 401  # no password to log in with: the page is the way in
        await ws.close()


async def test_the_console_keeps_its_own_auth_beside_sigv4_and_can_be_turned_off() -> None:
    cfg = console_config(management=sigv4_section())
    async with running_node(cfg) as node, session() as http:
        await logged_in(http, node)  # no signature needed for the console...
        async with http.get(f"{base(node)}/prod/@tenants/acme/connections") as resp:
            assert resp.status == 403  # ...and the management API still wants one
    async with running_node(make_config(console={"enabled": False})) as node, session() as http:
        assert node.management.console is None
        async with http.get(f"{base(node)}/console") as resp:
            assert resp.status == 404


# ---------------------------------------------------------------- pages, in Chromium


async def test_log_in_see_the_node_and_watch_the_charts_gain_points(browser: Any, node: Any) -> None:
    ws, _ = await client(node)
    page = Console(browser, base(node))
    await page.get("/console")
    await page.screenshot("login")
    field = await page.find("#password")
    await asyncio.to_thread(field.send_keys, "wrong password\n")
    await page.shows("#login-message", "Wrong password.")  # the page the form's post loaded
    assert await page.run("return document.cookie") == ""
    await page.login()
    row = f'#nodes-table tr[data-node="{node.node_id}"]'
    await page.until_js("const r = document.querySelector(arguments[0]); return r && r.textContent.includes('ready')",
                        "the first sample (2 s)", row)
    cells = await page.texts(f"{row} td")
    assert cells[0] == f"{node.node_id} (this node)"
    assert cells[2] == "1" and cells[7:] == ["in memory (single node)", "ready"]
    assert f"served by node {node.node_id}" == await page.text("#served-by")
    assert await page.run("return document.cookie") == ""  # HttpOnly: no script can read it
    for chart in ("connections", "messages", "handshakes", "management", "latency"):
        await page.until_js(f"return +document.querySelector('#chart-{chart}').dataset.points >= 1", f"{chart} has points")
    first = int(await page.run("return +document.querySelector('#chart-connections').dataset.points"))
    await page.until_js(f"return +document.querySelector('#chart-connections').dataset.points > {first}",
                        "the connections chart gains a point (no reload)")
    assert await page.run("return document.querySelectorAll('#chart-connections canvas').length") >= 1
    assert await page.run("return performance.getEntriesByType('navigation').length") == 1  # never reloaded
    await page.until_js("return document.querySelector('#total-connections strong').textContent === '1'",
                        "the totals count the connection")
    await page.press_enter('nav a[data-page="tenants"]')  # the keyboard reaches every page
    await page.find('#tenants-table tr[data-tenant="acme"]')
    await ws.close()


async def test_client_values_are_shown_as_text_and_never_run(browser: Any, node: Any) -> None:
    ws, cid = await client(node, tenant=XSS, user_agent_header=XSS)
    page = Console(browser, base(node))
    await page.login()
    await page.go("#/tenants")
    assert await page.text("#tenants-table tbody tr td a") == XSS
    await page.press_enter("#tenants-table tbody tr td a")
    assert await page.text("#tenant-name") == XSS
    row = f'#connections-table tr[data-connection="{cid}"]'
    await page.find(row)
    assert XSS in await page.texts(f"{row} td")
    assert (await page.text(row)).count(XSS) == 1
    await page.press_enter(f'#connections-table tr[data-connection="{cid}"] a')
    await page.find("#record")
    assert await page.texts('#record dd[data-field="User agent"]') == [XSS]
    assert await page.texts('#record dd[data-field="Tenant"]') == [XSS]
    assert json.loads(await page.text("#authorizer")) == {"principalId": "", "tenant": XSS}
    await page.no_script_ran()
    await ws.close()


async def test_tenants_sort_by_connections_and_by_traffic(browser: Any, node: Any) -> None:
    many = [await client(node, "many") for _ in range(3)]
    chatty, _ = await client(node, "chatty")
    for _ in range(20):
        await chatty.send('{"action": "whoami"}')
        await asyncio.wait_for(chatty.recv(), 5)
    page = Console(browser, base(node))
    await page.login()
    await page.go("#/tenants")

    async def order() -> list[str]:
        return list(await page.run(
            "return [...document.querySelectorAll('#tenants-table tbody tr')].map(r => r.dataset.tenant)"))

    await page.find('#tenants-table tr[data-tenant="chatty"]')
    assert await order() == ["many", "chatty"]  # by connections: 3, then 1
    # Traffic is counted per sample (every 2 s): wait until the chatty tenant's is in one.
    await eventually(lambda: node.gateway.history.tenants().get("chatty", [0, 0])[1] >= 21, timeout=5)
    await page.press_enter('th button[data-sort="traffic"]')
    await page.until_js("const b = document.querySelector('th[aria-sort=descending] button'); return b && b.dataset.sort === 'traffic'",
                        "sorted by traffic")
    assert await order() == ["chatty", "many"]
    await page.screenshot("tenants")
    await page.press_enter('th button[data-sort="connections"]')
    await page.until_js("const r = document.querySelector('#tenants-table tbody tr'); return r && r.dataset.tenant === 'many'",
                        "sorted by connections again")
    for ws, _ in many:
        await ws.close()
    await chatty.close()


async def test_look_up_send_a_test_message_and_disconnect(browser: Any, node: Any) -> None:
    ws, cid = await client(node, user_agent_header="dashboard/2.1 (reception desk)")
    page = Console(browser, base(node))
    await page.login()
    await page.go("#/connection")
    await page.type("#lookup-id", cid)
    await page.press_enter("#lookup-id")
    await page.find("#record")
    assert await page.texts('#record dd[data-field="Node"]') == [node.node_id]
    assert await page.texts('#record dd[data-field="User agent"]') == ["dashboard/2.1 (reception desk)"]
    await page.type("#test-message", '{"type": "ping from the console"}')
    await page.press_enter('#send button[type="submit"]')
    assert await asyncio.wait_for(ws.recv(), 5) == '{"type": "ping from the console"}'
    await page.until_js("return document.getElementById('status').textContent.startsWith('Sent 33 bytes')", "sent")
    await page.press_enter("#disconnect")
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1000
    await page.until_js("return document.getElementById('status').textContent.includes('close 1000')", "said so")
    (disconnect,) = await eventually(lambda: th.events_of("$disconnect", cid))
    assert disconnect["requestContext"]["disconnectStatusCode"] == 1000
    await asyncio.sleep(0.5)
    assert len(th.events_of("$disconnect", cid)) == 1  # exactly once
    await page.press_enter("#lookup-id")  # look it up again
    await page.shows("#lookup-error", "No such connection on any node (gone).")


async def test_recent_failures_show_request_ids_never_tokens_or_bodies(browser: Any, node: Any) -> None:
    secret = "SECRET-TOKEN-abc123"
    ws, _ = await client(node)
    await ws.send('{"action": "boom", "card": "4111-1111"}')  # the handler raises
    error = json.loads(await asyncio.wait_for(ws.recv(), 5))
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(ws_url(node, tenant="acme", connect="403", token=secret), open_timeout=5)
    page = Console(browser, base(node))
    await page.login()
    await page.go("#/failures")
    await page.until_js("return document.querySelectorAll('#failures-table tbody tr').length >= 2", "two failures")
    rows = await page.run(
        "return [...document.querySelectorAll('#failures-table tbody tr')].map(r => [...r.cells].map(c => c.textContent))")
    by_kind = {row[2]: row for row in rows}
    assert by_kind["handler"][3:7] == ["boom", "500", error["requestId"], "python error"]
    assert by_kind["handshake"][3:5] == ["$connect", "403"]
    source = await page.run("return document.documentElement.outerHTML")
    assert secret not in source and "4111" not in source and "secret internal detail" not in source
    await page.screenshot("failures")
    await ws.close()


async def test_a_tenant_on_a_plan_shows_its_plan_usage_and_throttled_calls() -> None:
    plan = {"name": "gold", "tenants": ["acme"], "posts_per_s": 1, "posts_burst": 1, "quota_per_day": 100}
    async with running_node(console_config(plans=[plan])) as node, session() as http:
        ws, _ = await client(node)
        mgmt = f"{base(node)}/prod/@tenants/acme/messages"
        statuses = []
        for _ in range(2):
            async with http.post(mgmt, data=b"news") as resp:
                statuses.append(resp.status)
        assert statuses == [200, 429]
        await logged_in(http, node)
        async with http.get(f"{base(node)}/console/api/tenants/acme") as resp:
            body = await resp.json()
        assert {k: body[k] for k in ("tenant", "plan", "connections", "postsToday", "quotaPerDay", "throttled")} == {
            "tenant": "acme", "plan": "gold", "connections": 1, "postsToday": 1, "quotaPerDay": 100, "throttled": 1,
        }
        async with http.get(f"{base(node)}/console/api/tenants?sort=throttled") as resp:
            (row,) = (await resp.json())["tenants"]
        assert (row["tenant"], row["connections"], row["throttled"]) == ("acme", 1, 1)
        await ws.close()


@pytest.mark.redis
async def test_with_redis_gone_the_console_shows_this_node_its_link_and_the_5xx(restartable_redis: Any,
                                                                                  key_prefix: str) -> None:
    registry = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{restartable_redis.port}/0",
                "key_prefix": key_prefix, "heartbeat_s": 0.2, "node_ttl_s": 1.0}
    async with running_node(console_config(registry=registry)) as node, session() as http:
        await logged_in(http, node)
        restartable_redis.kill(sig=signal.SIGKILL)
        async with http.post(f"{base(node)}/prod/@connections/{new_connection_id()}", data=b"x") as resp:
            assert resp.status == 503
            request_id = resp.headers["x-amzn-RequestId"]
        async with http.get(f"{base(node)}/console/api/failures") as resp:
            (failure,) = (await resp.json())["failures"]
        assert {k: failure[k] for k in ("kind", "route", "status", "requestId", "node")} == {
            "kind": "management", "route": "PostToConnection", "status": 503, "requestId": request_id,
            "node": node.node_id,
        }

        async def link_down() -> bool:
            async with http.get(f"{base(node)}/console/api/overview") as resp:
                (me,) = (await resp.json())["nodes"]
            return me["node"] == node.node_id and me["registry"].get("reachable") is False and not me["ready"]

        await eventually(link_down, timeout=10)
