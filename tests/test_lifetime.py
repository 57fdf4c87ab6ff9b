"""Token lifetime on a live connection ([auth] on_expiry, refresh_action).

The policy's decisions are tested without sockets against a real Authenticator; the behaviour
end to end against a real node with JWT auth, short-lived tokens (1-3 s, leeway 0) and real
clients: close 1008 "Token expired" and its $disconnect, in-band refresh, refused refreshes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests import handlers_for_tests as th
from tests.support import HS_SECRET, TEST_ROUTES, connect, eventually, jwt_section, make_config, running_node, token, whoami
from wsgateway.auth import Authenticator
from wsgateway.config import AuthConfig
from wsgateway.errors import AuthError
from wsgateway.lifetime import TokenLifetime
from wsgateway.records import ConnectionRecord

REFRESH = "refreshToken"


@pytest.fixture(autouse=True)
def _clear_events():
    th.EVENTS.clear()


# ---------------------------------------------------------------- the policy, no sockets


def _auth_config(**extra: Any) -> AuthConfig:
    fields = {**jwt_section(leeway_s=0, refresh_action=REFRESH), **extra}
    return AuthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _lifetime(expression: str = "$request.body.action", **extra: Any) -> TokenLifetime:
    config = _auth_config(**extra)
    return TokenLifetime(config, expression, Authenticator(config).verify_token)


def _record(sub: str = "user-1", tenant: str = "practice-1") -> ConnectionRecord:
    return ConnectionRecord(
        connection_id="c1", node_id="n1", tenant=tenant, principal_id=sub, connected_at=time.time(),
        source_ip="127.0.0.1", user_agent="", authorizer={}, domain_name="",
    )


def test_deadline_is_exp_plus_leeway_only_when_closing():
    assert _lifetime(on_expiry="close", leeway_s=5).deadline(1000.0) == 1005.0
    assert _lifetime(on_expiry="close").deadline(None) is None  # no exp: no deadline
    assert _lifetime(on_expiry="ignore").deadline(1000.0) is None  # AWS: exp counts at the handshake only


def test_a_refresh_is_what_the_selection_expression_selects():
    policy = _lifetime()
    assert policy.is_refresh('{"action": "refreshToken"}', REFRESH)  # a configured route with that key
    assert policy.is_refresh('{"action": "refreshToken"}', "$default")  # no such route: the key still counts
    assert policy.is_refresh('{"action": "refreshToken"}', None)  # no route at all
    assert policy.is_refresh('{"action": "\\u0072efreshToken"}', "$default")  # JSON escapes as the router reads them
    assert not policy.is_refresh('{"action": "refreshToken"}', "whoami")  # another route matched
    assert not policy.is_refresh('{"action": "refreshtoken"}', "$default")  # exact, as route keys
    assert not policy.is_refresh(b'{"action": "refreshToken"}', "$default")  # binary frames never
    assert not policy.is_refresh('["refreshToken"]', "$default")
    assert not policy.is_refresh("refreshToken", "$default")
    assert not policy.is_refresh("", "$default")
    assert not _lifetime(refresh_action="").is_refresh('{"action": "refreshToken"}', "$default")
    composite = _lifetime("${request.body.service}/${request.body.action}", refresh_action="auth/refresh")
    assert composite.is_refresh('{"service": "auth", "action": "refresh"}', "$default")
    assert not composite.is_refresh('{"action": "auth/refresh"}', "$default")


async def test_renew_accepts_the_same_principal_and_tenant_only():
    policy = _lifetime(on_expiry="close")
    fresh = token(ttl=60)
    principal = await policy.renew(_record(), json.dumps({"action": REFRESH, "token": fresh}), time.time() + 5)
    assert (principal.principal_id, principal.tenant) == ("user-1", "practice-1")
    assert principal.expires_at is not None and principal.expires_at > time.time() + 50
    refused = [
        (_record(), {"token": token(sub="user-2", ttl=60)}, 401),
        (_record(), {"token": token(practice_id="practice-2", ttl=60)}, 403),
        (_record(), {"token": token(ttl=-10)}, 401),  # expired (leeway 0)
        (_record(), {"token": token(ttl=60, secret="another-secret-with-enough-entropy-01234")}, 401),
        (_record(), {"token": "garbage"}, 401),
        (_record(), {"token": 42}, 401),
        (_record(), {"token": ""}, 401),
        (_record(), {}, 401),
    ]
    for record, body, status in refused:
        with pytest.raises(AuthError) as info:
            await policy.renew(record, json.dumps({"action": REFRESH, **body}), time.time() + 5)
        assert info.value.status == status, body
    with pytest.raises(AuthError) as info:  # past its deadline it is expired, whatever it sends
        await policy.renew(_record(), json.dumps({"action": REFRESH, "token": fresh}), time.time() - 1)
    assert info.value.status == 401 and "already expired" in info.value.reason


async def test_verify_token_checks_as_the_handshake_does():
    auth = Authenticator(_auth_config(audience=("dashboards",)))
    assert (await auth.verify_token(token(ttl=60, aud="dashboards"))).principal_id == "user-1"
    for bad in (token(ttl=60, aud="other"), token(ttl=60), "x" * 9000):
        with pytest.raises(AuthError):
            await auth.verify_token(bad)
    with pytest.raises(AuthError) as info:
        await Authenticator(AuthConfig(type="none")).verify_token(token())
    assert info.value.status == 401


# ---------------------------------------------------------------- end to end


def _config(*, routes: dict[str, str] | None = None, log: dict[str, Any] | None = None, **auth: Any) -> Any:
    return make_config(
        auth=jwt_section(leeway_s=0, **auth), routes=routes or dict(TEST_ROUTES), log=log or {"access_log": ""},
        limits={"handler_timeout_s": 1},  # the sweep ticks every 0.1 s
    )


def _exp(jwt_token: str) -> int:
    import jwt

    return int(jwt.decode(jwt_token, HS_SECRET, algorithms=["HS256"], options={"verify_exp": False})["exp"])


async def _closed_by_expiry(ws: Any, exp: int) -> None:
    """The connection is closed with 1008 "Token expired", not before ``exp``, within a bound."""
    async with asyncio.timeout(exp - time.time() + 3):
        await ws.wait_closed()
    assert time.time() >= exp
    assert (ws.close_code, ws.close_reason) == (1008, "Token expired")


async def _disconnect_of(cid: str) -> dict[str, Any]:
    (event,) = await eventually(lambda: th.events_of("$disconnect", cid))
    return event["requestContext"]


async def _refresh(ws: Any, **body: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"action": REFRESH, **body}))
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 5)))


async def test_expired_token_closes_1008_and_disconnect_says_so():
    short = token(ttl=2)
    async with running_node(_config(on_expiry="close")) as node:
        ws = await connect(node, query={"token": short})
        cid = await whoami(ws)
        await _closed_by_expiry(ws, _exp(short))
        ctx = await _disconnect_of(cid)
        assert (ctx["disconnectStatusCode"], ctx["disconnectReason"]) == (1008, "Token expired")
        assert node.gateway.stats.disconnects[1008] == 1


async def test_ignore_keeps_the_connection_open_past_exp_as_aws_does():
    short = token(ttl=1)
    async with running_node(_config(on_expiry="ignore", refresh_action=REFRESH)) as node:
        async with await connect(node, query={"token": short}) as ws:
            cid = await whoami(ws)
            await asyncio.sleep(max(0.0, _exp(short) - time.time()) + 0.5)  # past exp, several sweeps
            assert await whoami(ws) == cid
            # A refresh still checks the token and answers, though no deadline applies.
            longer = token(ttl=60)
            assert await _refresh(ws, token=longer) == {"message": "Token refreshed", "expiresAt": _exp(longer)}
            assert await _refresh(ws, token="garbage") == {"message": "Unauthorized"}
            assert node.gateway.hub.get(cid).token_deadline is None


async def test_refresh_moves_the_deadline_and_never_reaches_a_handler(tmp_path):
    """Even with a route named like refresh_action, the gateway answers the refresh itself."""
    path = tmp_path / "access.log"
    routes = {**TEST_ROUTES, REFRESH: "tests.handlers_for_tests:event"}
    cfg = _config(on_expiry="close", refresh_action=REFRESH, routes=routes, log={"access_log": str(path)})
    short = token(ttl=3, role="admin")
    async with running_node(cfg) as node:
        async with await connect(node, query={"token": short}) as ws:
            cid = await whoami(ws)
            longer = token(ttl=5)
            assert await _refresh(ws, token=longer) == {"message": "Token refreshed", "expiresAt": _exp(longer)}
            await asyncio.sleep(max(0.0, _exp(short) - time.time()) + 0.5)  # past the first exp
            assert await whoami(ws) == cid  # still open: the deadline moved
            await _closed_by_expiry(ws, _exp(longer))  # the new one still holds
        assert th.events_of(REFRESH) == [] and th.events_of("$default") == []
        ctx = await _disconnect_of(cid)
        assert (ctx["disconnectStatusCode"], ctx["disconnectReason"]) == (1008, "Token expired")
        node.gateway.access.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    refreshes = [(e["routeKey"], e["status"]) for e in lines if e["kind"] == "message" and e["routeKey"] == REFRESH]
    assert refreshes == [(REFRESH, 200)]


async def test_refused_refreshes_answer_unauthorized_and_the_old_deadline_stands(tmp_path):
    path = tmp_path / "access.log"
    cfg = _config(on_expiry="close", refresh_action=REFRESH, log={"access_log": str(path)})
    short = token(ttl=3)
    refused = [
        {"token": token(sub="user-2", ttl=60)},  # another principal
        {"token": token(practice_id="practice-2", ttl=60)},  # another tenant
        {"token": token(ttl=-10)},  # expired
        {"token": token(ttl=60, secret="another-secret-with-enough-entropy-01234")},  # bad signature
        {"token": "garbage"},
        {},  # no token
    ]
    async with running_node(cfg) as node:
        ws = await connect(node, query={"token": short})
        cid = await whoami(ws)
        for body in refused:
            assert await _refresh(ws, **body) == {"message": "Unauthorized"}, body
        await ws.send('{"action": "refreshToken", "token": "garbage"')  # not JSON: $default echoes it
        assert await asyncio.wait_for(ws.recv(), 5) == '{"action": "refreshToken", "token": "garbage"'
        await _closed_by_expiry(ws, _exp(short))
        assert (await _disconnect_of(cid))["disconnectStatusCode"] == 1008
        assert len(th.events_of("$default", cid)) == 1  # only the non-JSON message
        node.gateway.access.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["status"] for e in lines if e["kind"] == "message" and e["routeKey"] == REFRESH] == [401] * 6

