"""An operator console page left open on the overview, for the ``wsgateway-console`` target:
``python -m loadtest.console_watch --url http://127.0.0.1:PORT --ready-file F``.

It logs in (password from ``WSGW_CONSOLE_PASSWORD``) and then calls the console's API as the
page does while it shows the overview: ``GET /console/api/overview?since=...`` every 2 s,
asking again for the last few seconds each time. Runs until SIGTERM; logs how many calls it
made and how many failed. It stands in for the browser, which would run on the operator's
machine: the node sees the same requests, and the generator's core is not spent drawing charts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson

REFRESH_S = 2.0  # as console.js


async def watch(url: str, password: str, ready_file: Path) -> int:
    calls = failed = 0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.post(f"{url}/console/api/login", json={"password": password}) as resp:
            if resp.status != 204:
                print(f"console login failed: {resp.status} {await resp.text()}", file=sys.stderr)
                return 1
        await asyncio.to_thread(ready_file.write_bytes, orjson.dumps({"port": 0}))
        last = 0
        while not stop.is_set():
            since = last - 6 if last else 0
            try:
                async with http.get(f"{url}/console/api/overview", params={"since": str(since)}) as resp:
                    body = await resp.json()
                    calls += 1
                    if resp.status != 200:
                        failed += 1
                    elif body["samples"]:
                        last = body["samples"][-1]["t"]
            except (aiohttp.ClientError, TimeoutError):
                failed += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_S)
    print(f"console overview calls: {calls}, failed: {failed}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the node's management base URL")
    parser.add_argument("--ready-file", required=True, type=Path)
    args = parser.parse_args()
    return asyncio.run(watch(args.url, os.environ["WSGW_CONSOLE_PASSWORD"], args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
