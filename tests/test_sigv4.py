"""SigV4Verifier against botocore: every request botocore signs is accepted, nothing else is.

Requests are signed by botocore itself (``SigV4Auth``/``SigV4QueryAuth`` on an
``AWSRequest``, and a real boto3 ``apigatewaymanagementapi`` client whose prepared requests
are captured on ``before-send``), then handed to the verifier the way the management edge
will: raw path and raw query as sent on the wire, headers in a case-insensitive multidict.
Accepting botocore's signature while refusing the same request with one hex digit changed
proves that the verifier computes exactly botocore's signature. No sockets are opened.
"""

from __future__ import annotations

import calendar
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from wsgateway import sigv4
from wsgateway.errors import ForbiddenError, SignatureError
from wsgateway.sigv4 import SigV4Verifier

ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
OTHER_KEY = "AKIDOTHER"
OTHER_SECRET = "another/secret+value"
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token=="
CREDENTIALS = {ACCESS_KEY: SECRET, OTHER_KEY: OTHER_SECRET}
ENDPOINT = "http://127.0.0.1:8080"


class Wire(NamedTuple):
    """A request as the management edge sees it."""

    method: str
    raw_path: str
    raw_query: str
    headers: CIMultiDictProxy[str]
    body: bytes


def _host(url: str) -> str:
    """The Host header an HTTP client sends for ``url`` (botocore signs the same value)."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _wire(
    method: str, url: str, header_items: Iterable[tuple[str, str | bytes]], body: bytes
) -> Wire:
    parts = urlsplit(url)
    headers = CIMultiDict([("Host", _host(url))])
    for name, value in header_items:
        headers.add(name, _text(value))
    return Wire(method, parts.path, parts.query, CIMultiDictProxy(headers), body)


def sign(
    method: str = "POST",
    path: str = "/prod/@connections/L0SM9cOFvHcCIhw%3D",
    query: str = "",
    body: bytes = b'{"msg":"h\xc3\xa9llo"}',
    *,
    endpoint: str = ENDPOINT,
    headers: list[tuple[str, str]] | None = None,
    access_key: str = ACCESS_KEY,
    secret: str = SECRET,
    token: str | None = None,
    region: str = "eu-west-1",
    service: str = "execute-api",
) -> Wire:
    """Sign a request with botocore's SigV4Auth and return it as it goes on the wire."""
    url = f"{endpoint}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body)
    for name, value in headers or []:
        request.headers[name] = value  # email-style headers: assigning twice repeats the name
    SigV4Auth(Credentials(access_key, secret, token), service, region).add_auth(request)
    return _wire(method, url, request.headers.items(), body)


def presign(
    method: str = "GET",
    path: str = "/prod/@connections/L0SM9cOFvHcCIhw%3D",
    query: str = "",
    *,
    expires: int = 60,
    token: str | None = None,
    region: str = "eu-west-1",
) -> Wire:
    """A presigned URL made by botocore's SigV4QueryAuth, requested with only a Host header."""
    url = f"{ENDPOINT}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url)
    signer = SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET, token), "execute-api", region, expires)
    signer.add_auth(request)
    return _wire(method, request.url, (), b"")


def signed_at(wire: Wire) -> float:
    """The instant botocore signed at: X-Amz-Date as POSIX seconds."""
    amz_date = wire.headers.get("X-Amz-Date") or _query_param(wire.raw_query, "X-Amz-Date")
    return float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))


def _query_param(raw_query: str, name: str) -> str:
    return next(v for k, _, v in (p.partition("=") for p in raw_query.split("&")) if k == name)


def verifier(wire: Wire, offset_s: float = 0.0, **options: object) -> SigV4Verifier:
    """A verifier whose clock reads the request's signing instant plus ``offset_s``."""
    now = signed_at(wire) + offset_s
    return SigV4Verifier(CREDENTIALS, clock=lambda: now, **options)  # type: ignore[arg-type]


def verify(wire: Wire, **options: object) -> str:
    return verifier(wire, **options).verify(*wire)


def replace(wire: Wire, **changes: object) -> Wire:
    return wire._replace(**changes)


def with_header(wire: Wire, name: str, value: str | None) -> Wire:
    """The wire request with header ``name`` replaced (or removed when ``value`` is None)."""
    headers = CIMultiDict(wire.headers)
    headers.popall(name, None)
    if value is not None:
        headers.add(name, value)
    return replace(wire, headers=CIMultiDictProxy(headers))


def signature_of(wire: Wire) -> str:
    return wire.headers["Authorization"].rpartition("Signature=")[2]


def with_signature(wire: Wire, signature: str) -> Wire:
    authorization = wire.headers["Authorization"]
    return with_header(wire, "Authorization", authorization.replace(signature_of(wire), signature))


def _flip(hex_digit: str) -> str:
    return "0" if hex_digit != "0" else "1"


def assert_exact_signature(wire: Wire, **options: object) -> None:
    """Ours accepts botocore's signature and refuses it with any one of three digits changed.

    Both paths run: a fresh verifier parses the header and derives the key, then the same
    verifier finds the scope in its cache.
    """
    checker = verifier(wire, **options)
    assert checker.verify(*wire) == ACCESS_KEY  # cold
    assert checker.verify(*wire) == ACCESS_KEY  # cached scope and key
    signature = signature_of(wire)
    for i in (0, 31, 63):
        altered = with_signature(wire, signature[:i] + _flip(signature[i]) + signature[i + 1 :])
        for attempt in (checker, verifier(wire, **options)):  # warm, then cold
            with pytest.raises(SignatureError, match="signature does not match"):
                attempt.verify(*altered)


# -- equality with botocore ----------------------------------------------------------------

PATHS = [
    "/@connections/L0SM9cOFvHcCIhw%3D",  # endpoint_url without a stage
    "/prod/@connections/L0SM9cOFvHcCIhw%3D",
    "/prod/%40connections/L0SM9cOFvHcCIhw%3D",  # '@' encoded by the client
    "/a/b/@connections/JC1dgf9yoAMCK-g%3D",
    "/prod/@connections/a%2Fb%2Bc%20d",  # ConnectionId "a/b+c d"
    "/prod/@connections/%C3%A9~_.-",  # ConnectionId "é~_.-"
    "/prod/@connections/x%2520y",  # an id that itself contains "%20"
    "/prod/@connections/%3d%2f",  # lower-case escapes are signed as sent
    "/prod/@connections/",  # ConnectionId ""
    "/",
    "/prod/@connections/!$&'()*+,;=:@",  # every sub-delim allowed raw in a path
    "/prod//@connections/x",  # botocore drops empty segments
    "/prod/./@connections/../@connections/x/",  # and dot segments
    "/prod/@connections/é",  # raw non-ASCII (aiohttp refuses it, other callers may not)
    "/p/" + "".join(chr(c) for c in range(33, 127) if chr(c) not in "?#"),  # all printable ASCII
]
QUERIES = [
    "",
    "limit=10&nextToken=a%2Bb",
    "b=2&a=1&a=0",  # sorted by key, then value
    "flag&x=",  # no value, empty value
    "k%20ey=v%C3%A9&Z=~",
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("query", QUERIES)
def test_paths_and_queries_give_botocores_signature(path: str, query: str) -> None:
    index = PATHS.index(path) + QUERIES.index(query)
    method = ("POST", "GET", "DELETE")[index % 3]
    body = b'{"msg":"h\xc3\xa9llo"}' if method == "POST" else b""
    assert_exact_signature(sign(method, path, query, body))


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE", "PUT", "PATCH"])
@pytest.mark.parametrize(
    "body", [b"", b"\x00\xff binary", bytes(range(256)) * 512], ids=["empty", "small", "128KiB"]
)
@pytest.mark.parametrize("token", [None, TOKEN], ids=["long-term", "session-token"])
@pytest.mark.parametrize("region", ["eu-west-1", "us-east-1", "ap-southeast-2"])
def test_methods_bodies_tokens_regions_give_botocores_signature(
    method: str, body: bytes, token: str | None, region: str
) -> None:
    wire = sign(method, body=body, token=token, region=region)
    assert ("X-Amz-Security-Token" in wire.headers) == (token is not None)
    assert_exact_signature(wire)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8080",
        "https://abc123.execute-api.eu-west-1.amazonaws.com",  # default port: Host has none
        "http://[::1]:9000",
        "http://GATEWAY.example:80",  # botocore signs the lower-cased host, no default port
    ],
)
def test_hosts_give_botocores_signature(endpoint: str) -> None:
    assert_exact_signature(sign(endpoint=endpoint))


def test_extra_signed_headers_are_trimmed_collapsed_and_joined() -> None:
    wire = sign(
        headers=[
            ("Content-Type", "application/octet-stream"),
            ("X-Custom", "  a   b \t c  "),
            ("X-Repeated", "one"),
            ("X-Repeated", " two  three "),
        ]
    )
    assert wire.headers.getall("X-Repeated") == ["one", " two  three "]
    assert "content-type;host;x-amz-date;x-custom;x-repeated" in wire.headers["Authorization"]
    assert_exact_signature(wire)


def test_signed_content_sha256_equal_to_the_body_hash_is_accepted() -> None:
    body = b"payload"
    wire = sign(body=body, headers=[("X-Amz-Content-SHA256", hashlib.sha256(body).hexdigest())])
    assert_exact_signature(wire)


def test_any_region_or_only_the_pinned_one() -> None:
    wire = sign(region="us-west-2")
    assert verify(wire) == ACCESS_KEY
    assert verify(wire, region="us-west-2") == ACCESS_KEY
    with pytest.raises(SignatureError, match="region 'us-west-2'"):
        verify(wire, region="eu-west-1")


def test_returns_the_access_key_that_signed() -> None:
    assert verify(sign(access_key=OTHER_KEY, secret=OTHER_SECRET)) == OTHER_KEY


@pytest.mark.parametrize("openssl", ["absent", "refuses"])
def test_without_openssls_hmac_the_stdlib_one_gives_the_same_answers(
    monkeypatch: pytest.MonkeyPatch, openssl: str
) -> None:
    """The per-request HMAC is OpenSSL's own object when this Python has it; a Python
    without it (or an OpenSSL that refuses it) falls back to hmac.HMAC: same signatures."""
    def refusing(key: bytes, digestmod: str) -> None:
        raise ValueError("unsupported hash type")

    monkeypatch.setattr(sigv4, "_openssl_hmac", None if openssl == "absent" else refusing)
    wire = sign()
    assert_exact_signature(wire)
    assert verify(sign(access_key=OTHER_KEY, secret=OTHER_SECRET)) == OTHER_KEY


def test_many_scopes_through_one_verifier() -> None:
    # More scopes than the cache holds: eviction must never change an answer.
    wires = [sign(region=f"region-{i}") for i in range(300)]
    checker = verifier(wires[0])
    for wire in wires + wires[:3]:
        assert checker.verify(*wire) == ACCESS_KEY


def test_plain_mapping_with_lowercase_names_is_accepted() -> None:
    wire = sign(token=TOKEN)
    plain = {name.lower(): value for name, value in wire.headers.items()}
    assert verifier(wire).verify(*replace(wire, headers=plain)) == ACCESS_KEY


def test_query_encoded_differently_from_the_canonical_form_is_accepted() -> None:
    # Servers decode the query and encode it again: "%7e", "%7E" and "~" are one character.
    wire = sign(query="a=%2F~&b=x~y")
    assert verify(replace(wire, raw_query="b=x%7ey&a=/~")) == ACCESS_KEY


def test_plus_in_the_query_is_a_literal_plus() -> None:
    # SigV4 encodes a space as %20, never "+": a raw "+" is read as the character itself.
    wire = sign(query="nextToken=a%2Bb")
    assert verify(replace(wire, raw_query="nextToken=a+b")) == ACCESS_KEY
    with pytest.raises(SignatureError, match="signature does not match"):
        verify(replace(wire, raw_query="nextToken=a%20b"))


# -- a real boto3 client, captured before sending --------------------------------------------


class _EmptyBody:
    def stream(self) -> Iterator[bytes]:
        yield b""


Capture = Callable[..., tuple[Any, list[AWSRequest]]]


@pytest.fixture(scope="module")
def captured() -> Capture:
    """A function making boto3 clients whose requests are captured instead of sent."""

    def make(**client_options: object) -> tuple[Any, list[AWSRequest]]:
        requests: list[AWSRequest] = []

        def capture(request: AWSRequest, **_: object) -> AWSResponse:
            requests.append(request)
            return AWSResponse(request.url, 200, {}, _EmptyBody())

        client = boto3.client(
            "apigatewaymanagementapi",
            endpoint_url="http://127.0.0.1:1/prod",
            region_name="eu-west-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET,
            **client_options,
        )
        client.meta.events.register("before-send.apigatewaymanagementapi", capture)
        return client, requests

    return make


@pytest.mark.parametrize("token", [None, TOKEN], ids=["long-term", "session-token"])
def test_boto3_client_requests_are_accepted(captured: Capture, token: str | None) -> None:
    client, requests = captured(aws_session_token=token)
    client.post_to_connection(ConnectionId="L0SM9cOFvHcCIhw=", Data='{"msg":"héllo"}')
    client.post_to_connection(ConnectionId="a/b+c dé", Data=b"")
    client.get_connection(ConnectionId="JC1dgf9yoAMCK-g=")
    client.delete_connection(ConnectionId="é~_.-")
    paths = [urlsplit(r.url).path for r in requests]
    assert paths == [
        "/prod/@connections/L0SM9cOFvHcCIhw%3D",
        "/prod/@connections/a%2Fb%2Bc%20d%C3%A9",
        "/prod/@connections/JC1dgf9yoAMCK-g%3D",
        "/prod/@connections/%C3%A9~_.-",
    ]
    for request in requests:
        wire = _wire(request.method, request.url, request.headers.items(), request.body or b"")
        assert_exact_signature(wire, region="eu-west-1")


def test_boto3_presigned_url_is_accepted(captured: Capture) -> None:
    client, _ = captured(aws_session_token=TOKEN)
    url = client.generate_presigned_url(
        "get_connection", Params={"ConnectionId": "L0SM9cOFvHcCIhw="}, ExpiresIn=60
    )
    wire = _wire("GET", url, (), b"")
    assert wire.raw_path == "/prod/@connections/L0SM9cOFvHcCIhw%3D"
    assert verify(wire, region="eu-west-1") == ACCESS_KEY


# -- presigned query-string form -----------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("token", [None, TOKEN], ids=["long-term", "session-token"])
@pytest.mark.parametrize("query", ["", "limit=10&nextToken=a%2Bb"])
def test_presigned_urls_give_botocores_signature(
    method: str, token: str | None, query: str
) -> None:
    wire = presign(method, query=query, token=token)
    checker = verifier(wire)
    assert checker.verify(*wire) == ACCESS_KEY
    assert checker.verify(*wire) == ACCESS_KEY  # cached scope and key
    signature = _query_param(wire.raw_query, "X-Amz-Signature")
    forged = wire.raw_query.replace(signature, _flip(signature[0]) + signature[1:])
    for attempt in (checker, verifier(wire)):
        with pytest.raises(SignatureError, match="signature does not match"):
            attempt.verify(*replace(wire, raw_query=forged))


def test_presigned_url_is_valid_until_it_expires() -> None:
    wire = presign(expires=60)
    assert verify(wire, offset_s=60) == ACCESS_KEY
    with pytest.raises(SignatureError, match="expired"):
        verify(wire, offset_s=61)
    with pytest.raises(SignatureError, match="in the future"):
        verify(wire, offset_s=-301)


@pytest.mark.parametrize(
    ("old", "new"),
    [("X-Amz-Expires=60", "X-Amz-Expires=3600"), ("%2Feu-west-1%2F", "%2Fus-east-1%2F")],
    ids=["expires", "region"],
)
def test_presigned_url_with_an_edited_parameter_is_refused(old: str, new: str) -> None:
    wire = presign()
    with pytest.raises(SignatureError, match="signature does not match"):
        verify(replace(wire, raw_query=wire.raw_query.replace(old, new)))


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1", "X-Amz-Algorithm"),
        ("X-Amz-Expires=60", "X-Amz-Expires=604801", "out of range"),
        ("X-Amz-Expires=60", "X-Amz-Expires=-1", "number of seconds"),
        ("X-Amz-Expires=60&", "", "X-Amz-Expires is missing"),
        ("X-Amz-Algorithm=", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Algorithm=", "repeated"),
    ],
)
def test_malformed_presigned_url_is_refused(old: str, new: str, reason: str) -> None:
    wire = presign()
    assert old in wire.raw_query
    with pytest.raises(SignatureError, match=reason):
        verify(replace(wire, raw_query=wire.raw_query.replace(old, new)))


# -- refusals ------------------------------------------------------------------------------


def test_signature_error_is_a_403_forbidden() -> None:
    assert issubclass(SignatureError, ForbiddenError)
    assert (SignatureError.status, SignatureError.error_type) == (403, "ForbiddenException")


def test_unsigned_request_is_refused() -> None:
    wire = sign(query="limit=1")
    checker = verifier(wire)
    unsigned = with_header(with_header(wire, "Authorization", None), "X-Amz-Date", None)
    with pytest.raises(SignatureError, match="not signed"):
        checker.verify(*unsigned)


# {A} is the scheme, {C} a valid credential, {H} valid SignedHeaders, {S} the signature,
# {D} the scope date, {K} "AKIDEXAMPLE/", {T} "aws4_request"; each line breaks one thing.
MALFORMED_AUTHORIZATION = [
    ("Bearer abc", "not AWS4-HMAC-SHA256"),
    ("{A}", "malformed"),
    ("{A} Credential={C}, {H}", "exactly"),
    ("{A} Credential={C}, Credential={C}, Signature={S}", "malformed"),
    ("{A} Credential={C}, {H}, Signature={S}, X=1", "exactly"),
    ("{A} Credential={C} {H} Signature={S}", "exactly"),  # no commas
    ("{A} Credential={K}{D}/eu-west-1/execute-api, {H}, Signature={S}", "scope is malformed"),
    ("{A} Credential={K}{D}/eu-west-1/execute-api/aws5_request, {H}, Signature={S}", "malformed"),
    ("{A} Credential={K}{D}//execute-api/aws4_request, {H}, Signature={S}", "scope is malformed"),
    ("{A} Credential={K}20261327/eu-west-1/execute-api/{T}, {H}, Signature={S}", "YYYYMMDD"),
    ("{A} Credential={K}2026112７/eu-west-1/execute-api/{T}, {H}, Signature={S}", "YYYYMMDD"),  # noqa: RUF001 - a non-ASCII digit
    ("{A} Credential={C}, SignedHeaders=x-amz-date;host, Signature={S}", "sorted list"),
    ("{A} Credential={C}, SignedHeaders=Host;X-Amz-Date, Signature={S}", "sorted list"),
    ("{A} Credential={C}, SignedHeaders=host;host;x-amz-date, Signature={S}", "sorted list"),
    ("{A} Credential={C}, SignedHeaders=host;;x-amz-date, Signature={S}", "sorted list"),
    ("{A} Credential={C}, SignedHeaders=x-amz-date, Signature={S}", "host is not a signed header"),
    ("{A} Credential={C}, {H}, Signature={S}é", "signature does not match"),
    ("{A} Credential={C}, {H}, Signature={U}", "signature does not match"),  # upper-case hex
    ("{A} Credential={C}, {H}, Signature=", "signature does not match"),
]


@pytest.mark.parametrize(("template", "reason"), MALFORMED_AUTHORIZATION)
def test_malformed_authorization_is_refused(template: str, reason: str) -> None:
    wire = sign()
    day, signature = wire.headers["X-Amz-Date"][:8], signature_of(wire)
    value = template.format(
        A="AWS4-HMAC-SHA256",
        C=f"{ACCESS_KEY}/{day}/eu-west-1/execute-api/aws4_request",
        H="SignedHeaders=host;x-amz-date",
        S=signature,
        U=signature.upper(),
        D=day,
        K=f"{ACCESS_KEY}/",
        T="aws4_request",
    )
    with pytest.raises(SignatureError, match=reason):
        verify(with_header(wire, "Authorization", value))


def test_unknown_access_key_is_refused() -> None:
    with pytest.raises(SignatureError, match="unknown access key id 'AKIDUNKNOWN'"):
        verify(sign(access_key="AKIDUNKNOWN"))


def test_unknown_key_fails_at_the_signature_compare_like_a_wrong_secret() -> None:
    # The head passes for an unknown key as for a known one: refusing it sooner would tell.
    for wire in (sign(access_key="AKIDUNKNOWN"), sign(secret="not-the-secret")):
        verifier(wire).check_head(wire.raw_query, wire.headers)
    unknown = sign(access_key="AKIDUNKNOWN")
    checker = verifier(unknown)
    for _ in range(2):  # never cached, however often it is tried
        with pytest.raises(SignatureError, match="unknown access key id 'AKIDUNKNOWN'"):
            checker.verify(*unknown)


def test_check_head_refuses_what_the_head_alone_decides() -> None:
    wire = sign(token=TOKEN)
    verifier(wire).check_head(wire.raw_query, wire.headers)  # a good head passes
    presigned = presign()
    verifier(presigned).check_head(presigned.raw_query, presigned.headers)
    cases = [
        (with_header(with_header(wire, "Authorization", None), "X-Amz-Date", None), "not signed"),
        (with_header(wire, "X-Amz-Security-Token", None), "'x-amz-security-token' is missing"),
        (sign(service="lambda"), "service 'lambda'"),
        (with_header(wire, "Authorization", "Bearer abc"), "not AWS4-HMAC-SHA256"),
    ]
    for bad, reason in cases:
        with pytest.raises(SignatureError, match=reason):
            verifier(wire).check_head(bad.raw_query, bad.headers)
    with pytest.raises(SignatureError, match="too far from the server clock"):
        verifier(wire, 301).check_head(wire.raw_query, wire.headers)


def test_verify_reuses_the_head_check_and_still_checks_the_rest() -> None:
    """The management edge parses a request's head once: verify(head=...) checks the body,
    method and path against it exactly as a fresh parse would."""
    wire = sign(token=TOKEN)
    checker = verifier(wire)
    head = checker.check_head(wire.raw_query, wire.headers)
    assert checker.verify(*wire, head=head) == ACCESS_KEY
    for tampered in (wire._replace(body=wire.body + b"x"), wire._replace(method="DELETE"),
                     wire._replace(raw_path=wire.raw_path + "x")):
        with pytest.raises(SignatureError, match="signature does not match"):
            checker.verify(*tampered, head=head)


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(SignatureError, match="signature does not match"):
        verify(sign(secret=OTHER_SECRET))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda w: replace(w, body=w.body + b" "),
        lambda w: replace(w, body=b""),
        lambda w: replace(w, method="PUT"),
        lambda w: replace(w, raw_path="/prod/@connections/L0SM9cOFvHcCIhw%3E"),
        lambda w: replace(w, raw_path="/prod/@connections/L0SM9cOFvHcCIhw="),  # decoded
        lambda w: replace(w, raw_path="/stage/@connections/L0SM9cOFvHcCIhw%3D"),
        lambda w: replace(w, raw_query="limit=11"),
        lambda w: replace(w, raw_query="limit=10&extra"),
        lambda w: with_header(w, "Host", "127.0.0.1:8081"),
        lambda w: with_header(w, "X-Amz-Security-Token", TOKEN + "x"),
    ],
    ids=[
        "body", "body-dropped", "method", "path", "path-decoded",
        "stage", "query", "query-added", "host", "token",
    ],
)
def test_tampered_request_is_refused(tamper: Callable[[Wire], Wire]) -> None:
    wire = sign(query="limit=10", token=TOKEN)
    checker = verifier(wire)
    assert checker.verify(*wire) == ACCESS_KEY  # the scope is cached now
    for attempt in (checker, verifier(wire)):
        with pytest.raises(SignatureError, match="signature does not match"):
            attempt.verify(*tamper(wire))


def test_missing_signed_header_is_refused() -> None:
    with pytest.raises(SignatureError, match="'x-amz-security-token' is missing"):
        verify(with_header(sign(token=TOKEN), "X-Amz-Security-Token", None))


def test_wrong_service_is_refused() -> None:
    wire = sign(service="lambda")
    with pytest.raises(SignatureError, match="service 'lambda'"):
        verify(wire)
    assert verify(wire, service="lambda") == ACCESS_KEY  # nothing else was wrong


def test_content_sha256_not_matching_the_body_is_refused() -> None:
    # botocore signs whatever the header says; we insist the body be covered.
    wire = sign(headers=[("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")])
    with pytest.raises(SignatureError, match="does not match the body"):
        verify(wire)


def test_missing_x_amz_date_is_refused() -> None:
    wire = sign()
    checker = verifier(wire)
    with pytest.raises(SignatureError, match="X-Amz-Date header is missing"):
        checker.verify(*with_header(wire, "X-Amz-Date", None))


@pytest.mark.parametrize(
    ("time_of_day", "reason"),
    [
        ("T0839Z", "not YYYYMMDDTHHMMSSZ"),
        (" 083926Z", "not YYYYMMDDTHHMMSSZ"),
        ("T08392６Z", "not YYYYMMDDTHHMMSSZ"),  # noqa: RUF001 - a non-ASCII digit
        ("T083926", "not YYYYMMDDTHHMMSSZ"),
        ("T250000Z", "not a valid time"),
        ("T086000Z", "not a valid time"),
    ],
)
def test_malformed_x_amz_date_is_refused(time_of_day: str, reason: str) -> None:
    wire = sign()
    checker = verifier(wire)
    amz_date = wire.headers["X-Amz-Date"][:8] + time_of_day
    with pytest.raises(SignatureError, match=reason):
        checker.verify(*with_header(wire, "X-Amz-Date", amz_date))


@pytest.mark.parametrize("offset_s", [-301.0, 300.5, 86400.0])
def test_clock_skew_beyond_the_limit_is_refused(offset_s: float) -> None:
    with pytest.raises(SignatureError, match="too far from the server clock"):
        verify(sign(), offset_s=offset_s)


@pytest.mark.parametrize("offset_s", [-300.0, 299.0])
def test_clock_skew_within_the_limit_is_accepted(offset_s: float) -> None:
    assert verify(sign(), offset_s=offset_s) == ACCESS_KEY


def test_skew_limit_is_configurable() -> None:
    with pytest.raises(SignatureError, match="too far"):
        verify(sign(), offset_s=31, max_skew_s=30.0)


def test_scope_date_different_from_x_amz_date_is_refused() -> None:
    wire = sign()
    authorization = wire.headers["Authorization"]
    day = wire.headers["X-Amz-Date"][:8]
    other = with_header(wire, "Authorization", authorization.replace(f"/{day}/", "/19991231/"))
    with pytest.raises(SignatureError, match="scope date differs"):
        verify(other)
    checker = verifier(wire)
    assert checker.verify(*wire) == ACCESS_KEY  # the cached scope is bound to its day too
    other_day = with_header(wire, "X-Amz-Date", "19991231" + wire.headers["X-Amz-Date"][8:])
    with pytest.raises(SignatureError, match="scope date differs"):
        checker.verify(*other_day)


@pytest.mark.parametrize("name", ["Authorization", "X-Amz-Date"])
def test_repeated_auth_header_is_refused(name: str) -> None:
    wire = sign()
    headers = CIMultiDict(wire.headers)
    headers.add(name, wire.headers[name])
    with pytest.raises(SignatureError, match="repeated"):
        verify(replace(wire, headers=CIMultiDictProxy(headers)))


def test_undecodable_signed_header_is_refused_not_crashed() -> None:
    # aiohttp decodes invalid UTF-8 header bytes to lone surrogates.
    wire = sign(headers=[("X-Custom", "ok")])
    with pytest.raises(SignatureError, match="not valid UTF-8"):
        verify(with_header(wire, "X-Custom", "caf\udce9"))


@pytest.mark.parametrize(
    "options",
    [{"service": ""}, {"region": ""}, {"max_skew_s": -1.0}],
)
def test_bad_options_are_refused_at_construction(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SigV4Verifier(CREDENTIALS, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("credentials", [{"": "secret"}, {"AKID": ""}])
def test_empty_credentials_are_refused_at_construction(credentials: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="credentials"):
        SigV4Verifier(credentials)
