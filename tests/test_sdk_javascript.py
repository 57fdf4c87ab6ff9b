"""The management API under the AWS SDK for JavaScript v3, as a Node.js backend drives it.

``tests/js/sdk_client.cjs`` runs the real SDK (and the ``ws`` package for the WebSocket
clients, the token offered as a subprotocol) against a real node; this test checks every step
it reports. The packages, pinned by ``tests/js/package-lock.json``, are installed with npm on
demand into ``tests/.npm`` (git-ignored; ``loadtest.npm.install``, as for the Socket.IO peer),
once per version of the lock. The test is skipped, saying why, only when node or npm is missing
or the registry cannot be reached; any other failure to install fails it.

To move to a newer SDK: set the versions in ``tests/js/package.json``, run ``npm install`` in a
scratch copy of that folder and copy its ``package-lock.json`` back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loadtest import npm
from tests.support import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    endpoint,
    jwt_section,
    make_config,
    running_node,
    sigv4_section,
    token,
    ws_url,
)

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parent / "js"
NPM_DIR = JS.parent / ".npm"
INSTALL_TIMEOUT_S = 120
RUN_TIMEOUT_S = 45
SUBPROTOCOL = "wsgw.token"
MAX = 131072
BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. Check your "
                 "AWS Secret Access Key and signing method. Consult the service documentation for details.")


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed (the AWS SDK for JavaScript needs them)")
    failure = npm.install(JS, NPM_DIR, timeout_s=INSTALL_TIMEOUT_S)
    if failure is not None:
        if failure.offline:
            pytest.skip(f"the npm registry cannot be reached: {failure.reason}")
        pytest.fail(failure.reason)
    return NPM_DIR / "node_modules"


async def run_sdk_client(node_modules: Path, args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run sdk_client.cjs to its end; its steps by name."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS / "sdk_client.cjs"), json.dumps(args), env={**os.environ, "NODE_PATH": str(node_modules)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return {step.pop("step"): step for step in map(json.loads, out.decode().splitlines())}


def error(name: str, status: int, attempts: int = 1, *, modeled: bool = True, message: str | None = None) -> dict:
    """What sdk_client.cjs reports of a call the SDK threw ``name`` for."""
    return {"ok": False, "error": name, "modeled": modeled, "status": status, "attempts": attempts,
            **({"message": message} if message is not None else {})}


def without(outcome: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in outcome.items() if k not in keys}


def ok(status: int = 200, attempts: int = 1) -> dict[str, Any]:
    return {"ok": True, "status": status, "attempts": attempts}


async def test_the_javascript_sdk_v3_drives_the_management_api(node_modules):
    config = make_config(
        management=sigv4_section(),
        auth=jwt_section(sources=[f"subprotocol:{SUBPROTOCOL}"]),
        plans=[{"name": "tiny", "tenants": ["throttled"], "posts_per_s": 1, "posts_burst": 1}],
    )
    async with running_node(config) as node:
        steps = await run_sdk_client(node_modules, {
            "endpoint": endpoint(node), "region": REGION, "accessKey": ACCESS_KEY, "secret": SECRET_KEY,
            "wsUrl": ws_url(node), "subprotocol": SUBPROTOCOL, "token": token(),
            "throttledToken": token(practice_id="throttled"),
        })

    assert steps["open"] == {"protocol": SUBPROTOCOL}  # the name echoed, never the token

    # str as UTF-8 text; bytes that are not UTF-8 as binary; empty; the largest; one byte over.
    posts = steps["posts"]
    assert posts["outcomes"][:4] == [ok()] * 4
    too_large = posts["outcomes"][4]
    assert without(too_large, "requestId") == error("PayloadTooLargeException", 413, message="Message too long")
    assert len(too_large["requestId"]) == 16  # from x-amzn-RequestId
    assert posts["frames"] == [{"text": "héllo"}, {"bytes": [0, 1, 255]}, {"text": ""}, {"textLength": MAX}]

    get = steps["get"]
    assert get["connectedAtIsDate"] and get["lastActiveAtIsDate"]
    connected_at = datetime.fromisoformat(get["connectedAt"])
    assert abs((datetime.now(UTC) - connected_at).total_seconds()) < 60
    assert connected_at <= datetime.fromisoformat(get["lastActiveAt"])
    assert get["identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "sdk-test/1.0"}
    assert len(get["requestId"]) == 16

    # The SDK sends /prod//@connections/{id} for an endpoint ending in "/".
    assert steps["trailing_slash"] == {"outcome": ok(), "frames": [{"text": "slash"}]}

    # AWS's answer to a failed signature, unmodeled: the SDK's base class with AWS's code as name.
    bad_secret = steps["bad_secret"]
    assert without(bad_secret["outcome"], "requestId") == error("InvalidSignatureException", 403, modeled=False,
                                                                message=BAD_SIGNATURE)
    assert bad_secret["frames"] == []

    # The 403's Date corrected the slow clock (~600 s) and the retry went through.
    slow_clock = steps["slow_clock"]
    assert slow_clock["outcome"] == ok(attempts=2)
    assert 590 <= slow_clock["offsetS"] <= 610
    assert slow_clock["frames"] == [{"text": "clock"}]

    throttled = steps["throttled"]
    assert throttled["once"][0] == ok()
    assert without(throttled["once"][1], "requestId", "message") == error("LimitExceededException", 429)
    assert "posts_per_s" in throttled["once"][1]["message"]
    retried = throttled["retried"]
    assert all(o["ok"] or o["error"] == "LimitExceededException" for o in retried), retried
    assert any(o["attempts"] > 1 for o in retried), retried  # the SDK did retry 429s
    delivered = ["once-1"] + [f"retried-{n}" for n, o in enumerate(retried, 1) if o["ok"]]
    assert throttled["frames"] == [{"text": text} for text in delivered]  # each once; none that failed

    delete = steps["delete"]
    assert delete == {"outcome": ok(204), "closed": {"code": 1000, "reason": "Connection Closed Normally"}}
    # Post, get and delete of the deleted connection, then a get of one that never existed.
    for outcome in steps["gone"]["outcomes"]:
        assert without(outcome, "requestId", "message") == error("GoneException", 410)
