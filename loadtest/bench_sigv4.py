"""Micro-benchmark: SigV4 verification, ours against re-signing with botocore, in one run.

Run from the repository root: ``python -m loadtest.bench_sigv4`` (or
``python loadtest/bench_sigv4.py``). Needs boto3 (the ``loadtest`` extra); opens no sockets.

The request is what a real boto3 ``apigatewaymanagementapi`` client sends for a typical
``post_to_connection``: it is captured on botocore's ``before-send`` event, then handed to
both verifiers as the management edge's httptools server (``wsgateway/http.py``) hands a
request to its verifier: the request target's raw path and raw query, split at ``?`` with
their percent-encoding untouched, the headers as a ``CIMultiDict`` including the unsigned
ones, and the body bytes. The botocore baseline is how a verifier built on
botocore's signer checks a request: an ``AWSRequest`` holding the signed headers, timestamped
from X-Amz-Date, then ``SigV4Auth`` canonical request -> string to sign -> signature.
Each figure is the best of several timed rounds, to read through noise on a shared machine.
"""

from __future__ import annotations

import argparse
import calendar
import hmac
import sys
import time
from collections.abc import Callable
from pathlib import Path
from timeit import Timer
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials
from multidict import CIMultiDict

from wsgateway.sigv4 import SigV4Verifier

ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
BUDGET_US = 20.0
ROUNDS = 5
ROUND_S = 0.1  # target duration of one timed round, in seconds

Wire = tuple[str, str, str, CIMultiDict[str], bytes]


class _EmptyBody:
    def stream(self) -> Any:
        yield b""


def captured_requests(payloads: list[bytes]) -> list[Wire]:
    """post_to_connection calls from a real boto3 client, as the management edge receives them."""
    requests = []

    def capture(request: Any, **_: Any) -> AWSResponse:
        requests.append(request)
        return AWSResponse(request.url, 200, {}, _EmptyBody())

    client = boto3.client(
        "apigatewaymanagementapi",
        endpoint_url="http://127.0.0.1:8080/prod",
        region_name="eu-west-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
    )
    client.meta.events.register("before-send.apigatewaymanagementapi", capture)
    for data in payloads:
        client.post_to_connection(ConnectionId="L0SM9cOFvHcCIhw=", Data=data)
    return [_as_received(request) for request in requests]


def _as_received(request: Any) -> Wire:
    parts = urlsplit(request.url)
    headers = CIMultiDict([("Host", parts.netloc), ("Accept-Encoding", "identity")])
    for name, value in request.headers.items():
        headers.add(name, value.decode() if isinstance(value, bytes) else value)
    return request.method, parts.path, parts.query, headers, request.body


def botocore_verify(method: str, raw_path: str, raw_query: str, headers: Any, body: bytes) -> str:
    """The baseline: re-sign the received request with botocore's SigV4Auth and compare."""
    fields = dict(
        part.strip().split("=", 1) for part in headers["Authorization"].split(" ", 1)[1].split(",")
    )
    access_key, _day, region, service, _ = fields["Credential"].split("/")
    signed = fields["SignedHeaders"].split(";")
    url = f"http://{headers['Host']}{raw_path}" + (f"?{raw_query}" if raw_query else "")
    request = AWSRequest(method, url, {name: headers[name] for name in signed}, body)
    request.context["timestamp"] = headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials(access_key, SECRET), service, region)
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(signature, fields["Signature"]):
        raise ValueError("botocore baseline refused the request")
    return access_key


def rate(verify: Callable[..., str], wire: Wire) -> float:
    """Best verifications per second over ROUNDS rounds of about ROUND_S each."""
    timer = Timer(lambda: verify(*wire))
    number = max(1, int(ROUND_S / min(timer.repeat(repeat=3, number=200)) * 200))
    return number / min(timer.repeat(repeat=ROUNDS, number=number))


def report(label: str, ours_rate: float, botocore_rate: float) -> None:
    print(
        f"{label:<34} ours {ours_rate:>9,.0f}/s ({1e6 / ours_rate:5.1f} µs)   "
        f"botocore {botocore_rate:>8,.0f}/s ({1e6 / botocore_rate:5.1f} µs)   "
        f"ratio {ours_rate / botocore_rate:4.1f}x"
    )


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split())).parse_args(argv)
    print(f"SigV4 verification, best of {ROUNDS} rounds; python {sys.version.split()[0]}")
    typical = b'{"action":"update","id":42}'
    scenarios = [(f"POST {len(typical)} B (typical boto3)", typical), ("POST 4 KiB", bytes(4096)),
                 ("POST 128 KiB (max payload)", bytes(131072))]  # fmt: skip
    wires = captured_requests([data for _, data in scenarios])
    amz_date = wires[0][3]["X-Amz-Date"]
    signed_at = float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))

    def fresh() -> SigV4Verifier:
        return SigV4Verifier({ACCESS_KEY: SECRET}, region="eu-west-1", clock=lambda: signed_at)

    ours = fresh()
    rates = []
    for (label, _), wire in zip(scenarios, wires, strict=True):
        assert ours.verify(*wire) == ACCESS_KEY == botocore_verify(*wire)  # both accept it
        rates.append((rate(ours.verify, wire), rate(botocore_verify, wire)))
        report(label, *rates[-1])
    cold = rate(lambda *wire: fresh().verify(*wire), wires[0])
    report("  typical, new verifier each time", cold, rates[0][1])
    per_verify_us = 1e6 / rates[0][0]
    verdict = "within" if per_verify_us < BUDGET_US else "OVER"
    print(f"typical POST: {per_verify_us:.1f} µs each, {verdict} the {BUDGET_US:.0f} µs budget")
    return 0 if per_verify_us < BUDGET_US else 1


if __name__ == "__main__":
    sys.exit(main())
