"""The management API under the AWS SDK for JavaScript v3 (what Node.js backends use).

It needs node and npm; the SDK is installed on demand into tests/js/node_modules (git-ignored).
Without node and npm on the machine the test is skipped, and says why.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import connect, endpoint, make_config, running_node, sigv4_section, whoami

pytestmark = pytest.mark.slow

JS = Path(__file__).resolve().parent / "js"


@pytest.fixture(scope="module")
def js_sdk() -> Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed")
    if not (JS / "node_modules" / "@aws-sdk" / "client-apigatewaymanagementapi").exists():
        done = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=JS,
                              capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    return JS


async def test_js_sdk_v3_round_trip(js_sdk):
    async with running_node(make_config(management=sigv4_section())) as node:
        ws = await connect(node)
        cid = await whoami(ws)
        proc = await asyncio.create_subprocess_exec(
            "node", "management_client.mjs", endpoint(node), cid, cwd=js_sdk,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert await asyncio.wait_for(ws.recv(), 30) == "from js"
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        steps = {s["step"]: s for s in map(json.loads, out.decode().splitlines())}
        assert steps["get"] == {"step": "get", "connectedAt": True, "lastActiveAt": True, "sourceIp": "127.0.0.1"}
        assert (steps["too_large"]["error"], steps["too_large"]["status"]) == ("PayloadTooLargeException", 413)
        assert (steps["bad_secret"]["error"], steps["bad_secret"]["status"]) == ("InvalidSignatureException", 403)  # as AWS answers it
        assert (steps["after_delete"]["error"], steps["after_delete"]["status"]) == ("GoneException", 410)
        await ws.wait_closed()
        assert ws.close_code == 1000
