"""Tests for wsgateway.auth: token sources, JWT checks, key pinning and the JWKS cache.

Unit tests open no sockets; the JWKS tests serve the key set from a real aiohttp server on
127.0.0.1 port 0 and count its fetches. Time is a fake clock injected into the Authenticator.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm
from websockets.datastructures import Headers

from wsgateway.auth import Authenticator, Principal
from wsgateway.config import AuthConfig
from wsgateway.errors import AuthError, ConfigError

SECRET = "s3cret-for-tests-only-0123456789abcdef"  # 38 bytes: above HS256's 32-byte minimum
NOW = 1_800_000_000.0


class Clock:
    """A settable clock, injected as ``clock=``."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- keys and tokens

@functools.cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private_key: Any) -> bytes:
    pem: bytes = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def claims(**overrides: Any) -> dict[str, Any]:
    base = {"sub": "user-1", "tenant": "acme", "exp": int(NOW) + 600, "iat": int(NOW)}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(secret: str = SECRET, /, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm="HS256")


def signed(key: Any, alg: str, kid: str | None = None, headers: dict[str, Any] | None = None, **overrides: Any) -> str:
    extra = dict(headers or {})
    if kid is not None:
        extra["kid"] = kid
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=extra or None)


class _RawHMAC(HMACAlgorithm):
    """HS256 that accepts any bytes as the secret, as an attacker's signer would."""

    def prepare_key(self, key: str | bytes) -> bytes:
        return key if isinstance(key, bytes) else key.encode()


def forge_hs256(secret_bytes: bytes, payload: dict[str, Any]) -> str:
    """An HS256 token whose HMAC secret is ``secret_bytes`` (e.g. a public PEM); PyJWT's own
    encoder refuses such a secret, so a PyJWS gets a permissive HS256 registered."""
    jws = jwt.PyJWS()
    jws.unregister_algorithm("HS256")
    jws.register_algorithm("HS256", _RawHMAC(HMACAlgorithm.SHA256))
    return jws.encode(json.dumps(payload).encode(), secret_bytes, algorithm="HS256")


def config(**overrides: Any) -> AuthConfig:
    values: dict[str, Any] = {"type": "jwt", "algorithms": ("HS256",), "secret": SECRET}
    values.update(overrides)
    return AuthConfig(**values)


async def auth(
    authenticator: Authenticator,
    headers: dict[str, str] | Headers | None = None,
    query: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
) -> Principal:
    if not isinstance(headers, Headers):
        headers = Headers(headers or {})
    return await authenticator.authenticate(headers, query or {}, subprotocols or [])


async def refused(authenticator: Authenticator, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await auth(authenticator, {"Authorization": f"Bearer {token}"})
    return info.value


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hs(clock: Clock) -> Authenticator:
    return Authenticator(config(context_claims=("role", "plan")), clock=clock)


@pytest.fixture
def rsa_pem_file(tmp_path: Any) -> str:
    path = tmp_path / "rsa.pem"
    path.write_bytes(public_pem(rsa_key("pem")))
    return str(path)


# ---------------------------------------------------------------- auth off

async def test_none_takes_tenant_from_query() -> None:
    """With auth off no token is needed and the tenant comes from ?tenant=."""
    authenticator = Authenticator(AuthConfig(type="none"))
    principal = await auth(authenticator, query={"tenant": "blue"})
    assert principal == Principal("", "blue", {}, None)
    assert principal.authorizer() == {"principalId": "", "tenant": "blue"}


@pytest.mark.parametrize("query", [{}, {"tenant": ""}])
async def test_none_defaults_tenant(query: dict[str, str]) -> None:
    """A missing or empty tenant parameter means the "default" tenant."""
    principal = await auth(Authenticator(AuthConfig(type="none")), bearer("garbage"), query)
    assert (principal.principal_id, principal.tenant) == ("", "default")


# ---------------------------------------------------------------- a valid token

async def test_valid_token_gives_principal(hs: Authenticator) -> None:
    """sub, tenant, the configured context claims that are present, and exp."""
    token = hs256(role="admin", other="not copied")
    principal = await auth(hs, bearer(token))
    assert principal.principal_id == "user-1"
    assert principal.tenant == "acme"
    assert dict(principal.context) == {"role": "admin"}
    assert principal.expires_at == NOW + 600
    assert principal.authorizer() == {"principalId": "user-1", "tenant": "acme", "role": "admin"}


async def test_context_is_read_only(hs: Authenticator) -> None:
    principal = await auth(hs, bearer(hs256(role="admin")))
    with pytest.raises(TypeError):
        principal.context["role"] = "root"  # type: ignore[index]


def test_authorizer_identity_wins_over_context() -> None:
    """A context claim named like an identity key never replaces the identity."""
    principal = Principal("u", "t", {"principalId": "x", "tenant": "y", "k": 1})
    assert principal.authorizer() == {"principalId": "u", "tenant": "t", "k": 1}


async def test_token_without_sub_has_empty_principal_id(hs: Authenticator) -> None:
    assert (await auth(hs, bearer(hs256(sub=None)))).principal_id == ""


# ---------------------------------------------------------------- sources

@pytest.mark.parametrize("prefix", ["Bearer ", "bearer ", "BEARER  ", ""])
async def test_header_bearer_prefix_any_case(hs: Authenticator, prefix: str) -> None:
    principal = await auth(hs, {"authorization": prefix + hs256()})
    assert principal.tenant == "acme"


async def test_query_source(hs: Authenticator) -> None:
    assert (await auth(hs, query={"token": hs256()})).principal_id == "user-1"


async def test_subprotocol_source() -> None:
    """The token is the entry right after NAME; NAME (never the token) is what to echo."""
    authenticator = Authenticator(config(sources=("subprotocol:bearer",)), clock=Clock())
    token = hs256()
    offered = ["chat", "bearer", token]
    assert (await auth(authenticator, subprotocols=offered)).tenant == "acme"
    assert authenticator.token_subprotocol(offered) == "bearer"
    assert authenticator.token_subprotocol(["chat"]) is None


async def test_subprotocol_name_without_token_is_missing() -> None:
    authenticator = Authenticator(config(sources=("subprotocol:bearer",)), clock=Clock())
    with pytest.raises(AuthError) as info:
        await auth(authenticator, subprotocols=["bearer"])
    assert (info.value.status, info.value.reason) == (401, "missing token")


def test_token_subprotocol_without_subprotocol_source(hs: Authenticator) -> None:
    assert hs.token_subprotocol(["bearer", "x"]) is None


async def test_first_present_source_wins(hs: Authenticator) -> None:
    """The header is tried first and, being present, decides: no fallback to the query."""
    with pytest.raises(AuthError) as info:
        await auth(hs, bearer("not-a-jwt"), {"token": hs256()})
    assert info.value.status == 401
    reversed_order = Authenticator(config(sources=("query:token", "header:Authorization")), clock=Clock())
    assert (await auth(reversed_order, bearer("not-a-jwt"), {"token": hs256()})).tenant == "acme"


async def test_empty_source_falls_through(hs: Authenticator) -> None:
    """An empty header (or a bare "Bearer ") is not a present token."""
    for value in ("Bearer  ", "bearer", ""):
        assert (await auth(hs, {"Authorization": value}, {"token": hs256()})).tenant == "acme"


async def test_missing_token(hs: Authenticator) -> None:
    with pytest.raises(AuthError) as info:
        await auth(hs, {"Other": "x"}, {"tenant": "acme"}, ["chat"])
    assert (info.value.status, info.value.reason) == (401, "missing token")


async def test_repeated_header_refused(hs: Authenticator) -> None:
    """Two Authorization headers are ambiguous: refused, not one of them picked."""
    headers = Headers([("Authorization", f"Bearer {hs256()}"), ("Authorization", "Bearer x")])
    with pytest.raises(AuthError) as info:
        await auth(hs, headers)
    assert info.value.status == 401


async def test_token_too_long(hs: Authenticator) -> None:
    error = await refused(hs, hs256(pad="x" * 9000))
    assert error.status == 401 and error.reason.startswith("token too long")


# ---------------------------------------------------------------- invalid tokens

@pytest.mark.parametrize("token", ["abc", "a.b.c", "e30.e30", "!!!.???.###"])
async def test_malformed(hs: Authenticator, token: str) -> None:
    error = await refused(hs, token)
    assert error.status == 401 and error.reason.startswith("malformed token")


async def test_bad_signature(hs: Authenticator) -> None:
    error = await refused(hs, hs256("another-secret-that-is-long-enough-000"))
    assert (error.status, error.reason) == (401, "bad signature")


async def test_configured_secret_is_checked_once_not_per_token(
    hs: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyJWT's key-confusion checks on the HMAC secret ran at start; a handshake skips them
    (14 µs each) and still verifies the signature."""
    good, forged = hs256(), hs256("another-secret-that-is-long-enough-000")  # signing prepares keys too
    calls: list[object] = []
    stock = HMACAlgorithm.prepare_key
    monkeypatch.setattr(HMACAlgorithm, "prepare_key", lambda self, key: calls.append(key) or stock(self, key))
    for _ in range(3):
        assert (await auth(hs, bearer(good))).tenant == "acme"
    error = await refused(hs, forged)
    assert (error.status, error.reason) == (401, "bad signature")
    assert calls == []


async def test_expired_with_leeway(hs: Authenticator, clock: Clock) -> None:
    token = hs256(exp=int(NOW) - 10)
    assert (await auth(hs, bearer(token))).tenant == "acme"  # within the 30 s leeway
    clock.now = NOW + 21
    assert (await refused(hs, token)).reason == "token expired"
    assert (await refused(hs, token)).status == 401


@pytest.mark.parametrize("name", ["nbf", "iat"])
async def test_not_yet_valid(hs: Authenticator, name: str) -> None:
    assert (await auth(hs, bearer(hs256(**{name: int(NOW) + 29})))).tenant == "acme"
    error = await refused(hs, hs256(**{name: int(NOW) + 31}))
    assert (error.status, error.reason) == (401, f"token not yet valid ({name} in the future)")


@pytest.mark.parametrize("exp", [float("nan"), float("inf"), "2000000000", True,
                                 pytest.param(10**400, id="int-past-float")])
async def test_exp_must_be_a_finite_number(hs: Authenticator, exp: Any) -> None:
    """NaN compares false with everything: it must not become "never expires". An integer past
    a float's range (valid JSON) raised OverflowError: a 500 and a traceback."""
    error = await refused(hs, hs256(exp=exp))
    assert (error.status, error.reason) == (401, "malformed token: exp is not a finite number")


@pytest.mark.parametrize("name", ["nbf", "iat"])
async def test_time_claims_past_a_float_are_malformed(hs: Authenticator, name: str) -> None:
    error = await refused(hs, hs256(**{name: -(10**400)}))
    assert (error.status, error.reason) == (401, f"malformed token: {name} is not a finite number")


async def test_missing_required_claim(clock: Clock) -> None:
    authenticator = Authenticator(config(required_claims=("exp", "jti")), clock=clock)
    assert (await refused(authenticator, hs256(exp=None))).reason == "missing claim 'exp'"
    error = await refused(authenticator, hs256())
    assert (error.status, error.reason) == (401, "missing claim 'jti'")
    assert (await auth(authenticator, bearer(hs256(jti="j1")))).tenant == "acme"


async def test_issuer(clock: Clock) -> None:
    authenticator = Authenticator(config(issuer="https://idp.test"), clock=clock)
    assert (await auth(authenticator, bearer(hs256(iss="https://idp.test")))).tenant == "acme"
    assert (await refused(authenticator, hs256(iss="https://evil.test"))).reason == "wrong issuer"
    error = await refused(authenticator, hs256())
    assert (error.status, error.reason) == (401, "missing claim 'iss'")


async def test_audience(clock: Clock) -> None:
    authenticator = Authenticator(config(audience=("wsgw", "other")), clock=clock)
    assert (await auth(authenticator, bearer(hs256(aud="wsgw")))).tenant == "acme"
    assert (await auth(authenticator, bearer(hs256(aud=["x", "other"])))).tenant == "acme"
    error = await refused(authenticator, hs256(aud="evil"))
    assert (error.status, error.reason) == (401, "wrong audience")
    assert (await refused(authenticator, hs256())).reason == "missing claim 'aud'"


async def test_audience_in_token_but_none_configured(hs: Authenticator) -> None:
    """RFC 7519 4.1.3: a token meant for a named audience is refused by a gateway that has none."""
    error = await refused(hs, hs256(aud="someone-else"))
    assert (error.status, error.reason) == (401, "wrong audience")


@pytest.mark.parametrize("tenant", [None, "", 42, ["acme"]])
async def test_tenant_claim_must_be_non_empty_string(hs: Authenticator, tenant: Any) -> None:
    error = await refused(hs, hs256(tenant=tenant))
    assert error.status == 403


async def test_tenant_claim_of_256_characters_is_the_limit(hs: Authenticator) -> None:
    """The management API addresses tenants of up to 256 characters: a longer one is a 403."""
    assert (await auth(hs, bearer(hs256(tenant="t" * 256)))).tenant == "t" * 256
    error = await refused(hs, hs256(tenant="t" * 257))
    assert error.status == 403


async def test_tenant_query_longer_than_256_is_refused_with_auth_off() -> None:
    authenticator = Authenticator(AuthConfig(type="none"))
    assert (await auth(authenticator, query={"tenant": "t" * 256})).tenant == "t" * 256
    with pytest.raises(AuthError) as info:
        await auth(authenticator, query={"tenant": "t" * 7000})
    assert info.value.status == 403


@pytest.mark.parametrize("sub", [42, 1.5, ["u"], {"id": "u"}, True])
async def test_non_string_sub_is_401_whatever_pyjwt_checks(clock: Clock, sub: Any) -> None:
    """The gateway checks "sub" itself, whatever the installed PyJWT version checks."""
    authenticator = Authenticator(config(), clock=clock)
    error = await refused(authenticator, hs256(sub=sub))
    assert error.status == 401


async def test_custom_tenant_claim(clock: Clock) -> None:
    authenticator = Authenticator(config(tenant_claim="org"), clock=clock)
    assert (await auth(authenticator, bearer(hs256(tenant=None, org="o1")))).tenant == "o1"
    assert (await refused(authenticator, hs256())).status == 403


# ---------------------------------------------------------------- algorithm pinning

async def test_unpinned_algorithm_refused(hs: Authenticator) -> None:
    token = jwt.encode(claims(), SECRET + "x" * 30, algorithm="HS512")
    error = await refused(hs, token)
    assert (error.status, error.reason) == (401, "algorithm not allowed")
    assert (await refused(hs, "e30.e30.")).reason == "algorithm not allowed"  # header without alg


def none_token() -> str:
    return jwt.encode(claims(), "", algorithm="none")


async def test_alg_none_refused(hs: Authenticator, rsa_pem_file: str) -> None:
    """Refused whether one key serves every pinned algorithm or the header is read first."""
    assert (await refused(hs, none_token())).status == 401
    mixed = Authenticator(config(algorithms=("RS256", "HS256"), public_key_file=rsa_pem_file), clock=Clock())
    error = await refused(mixed, none_token())
    assert (error.status, error.reason) == (401, "algorithm not allowed: 'none'")


async def test_alg_confusion_hs256_signed_with_rsa_public_pem(rsa_pem_file: str, clock: Clock) -> None:
    """The classic attack: HS256 with the server's RSA public key (PEM bytes) as the secret."""
    pem = public_pem(rsa_key("pem"))
    forged = forge_hs256(pem, claims())
    rs_only = Authenticator(config(algorithms=("RS256",), secret=None, public_key_file=rsa_pem_file), clock=clock)
    assert (await auth(rs_only, bearer(signed(rsa_key("pem"), "RS256")))).tenant == "acme"
    assert (await refused(rs_only, forged)).status == 401
    # Even with HS256 pinned too, HS* only ever verifies with the configured secret.
    mixed = Authenticator(config(algorithms=("RS256", "HS256"), public_key_file=rsa_pem_file), clock=clock)
    assert (await auth(mixed, bearer(hs256()))).tenant == "acme"
    assert (await auth(mixed, bearer(signed(rsa_key("pem"), "RS256")))).tenant == "acme"
    error = await refused(mixed, forged)
    assert (error.status, error.reason) == (401, "bad signature")


def test_public_key_is_never_an_hmac_secret() -> None:
    with pytest.raises(ConfigError) as info:
        Authenticator(config(secret=public_pem(rsa_key("pem")).decode()))
    assert info.value.key == "auth.secret"


async def test_pem_keys_by_family(tmp_path: Any, clock: Clock) -> None:
    """An RSA file verifies RS*/PS*; an EC P-256 file verifies ES256 only."""
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(public_pem(rsa_key("pem")))
    rsa_config = config(algorithms=("RS256", "PS256"), secret=None, public_key_file=str(rsa_file))
    rsa_auth = Authenticator(rsa_config, clock=clock)
    for alg in ("RS256", "PS256"):
        assert (await auth(rsa_auth, bearer(signed(rsa_key("pem"), alg)))).tenant == "acme"
    ec_file = tmp_path / "ec.pem"
    ec_file.write_bytes(public_pem(ec_key("pem")))
    ec_auth = Authenticator(config(algorithms=("ES256",), secret=None, public_key_file=str(ec_file)), clock=clock)
    assert (await auth(ec_auth, bearer(signed(ec_key("pem"), "ES256")))).tenant == "acme"
    assert (await refused(ec_auth, signed(ec_key("other"), "ES256"))).reason == "bad signature"
    assert (await refused(ec_auth, signed(rsa_key("pem"), "RS256"))).reason == "algorithm not allowed"


async def test_eddsa_pem(tmp_path: Any, clock: Clock) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "ed.pem"
    path.write_bytes(public_pem(private))
    authenticator = Authenticator(config(algorithms=("EdDSA",), secret=None, public_key_file=str(path)), clock=clock)
    assert (await auth(authenticator, bearer(signed(private, "EdDSA")))).tenant == "acme"


# ---------------------------------------------------------------- configuration errors

@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"type": "jwt-ish"}, "auth.type"),
        ({"algorithms": ("none",)}, "auth.algorithms[0]"),  # AuthConfig's own field rule
        ({"secret": None}, "auth.secret"),
        ({"sources": ("cookie:token",)}, "auth.sources[0]"),
        ({"algorithms": ("RS256",), "secret": None}, "auth.algorithms"),
        ({"algorithms": ("RS256",), "jwks_url": "http://idp.example/jwks"}, "auth.jwks_url"),
        ({"algorithms": ("RS256",), "jwks_url": "ftp://127.0.0.1/jwks"}, "auth.jwks_url"),
        ({"algorithms": ("RS256",), "public_key_file": "/nonexistent/key.pem"}, "auth.public_key_file"),
    ],
)
def test_config_errors(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Authenticator(config(**overrides))
    assert info.value.key == key


async def test_no_pinned_algorithm_refuses_every_token(clock: Clock) -> None:
    """An empty ``algorithms`` is the loader's error; built in code, it fails closed."""
    authenticator = Authenticator(config(algorithms=()), clock=clock)
    error = await refused(authenticator, hs256())
    assert (error.status, error.reason) == (401, "algorithm not allowed: 'HS256'")


def test_config_key_must_fit_pinned_algorithms(tmp_path: Any) -> None:
    """An EC P-256 file cannot serve ES384; a small RSA key is refused outright."""
    path = tmp_path / "ec.pem"
    path.write_bytes(public_pem(ec_key("pem")))
    with pytest.raises(ConfigError) as info:
        Authenticator(config(algorithms=("ES384",), public_key_file=str(path)))
    assert info.value.key == "auth.algorithms"
    path.write_bytes(public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(ConfigError) as info:
        Authenticator(config(algorithms=("RS256",), public_key_file=str(path)))
    assert info.value.key == "auth.public_key_file"


@pytest.mark.parametrize("url", ["https://idp.example/jwks", "http://127.0.0.1:1/jwks", "http://[::1]/j",
                                 "http://localhost/j"])
def test_jwks_url_accepted(url: str) -> None:
    Authenticator(config(algorithms=("RS256",), secret=None, jwks_url=url))


# ---------------------------------------------------------------- JWKS over a real server

@dataclass
class JwksServer:
    """A JWKS endpoint on 127.0.0.1:0 whose answer the test changes; counts requests."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    fetches: int = 0
    other_hits: int = 0
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.status == 302:
            raise web.HTTPFound("/elsewhere")
        return web.json_response({"keys": self.keys}, status=self.status)

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.other_hits += 1
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks", server.handle)
    app.router.add_get("/elsewhere", server.elsewhere)
    app.router.add_get("/attacker", server.elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}/jwks"
    yield server
    await runner.cleanup()


def rsa_jwk(name: str, kid: str | None, **extra: Any) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(rsa_key(name).public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    return {**jwk, **extra}


def ec_jwk(name: str, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(ec_key(name).public_key(), as_dict=True), "kid": kid}


@pytest.fixture
async def make_jwks(jwks_server: JwksServer, clock: Clock) -> AsyncIterator[Callable[..., Any]]:
    made: list[Authenticator] = []

    async def make(**overrides: Any) -> Authenticator:
        values = {"algorithms": ("RS256", "ES256"), "secret": None, "jwks_url": jwks_server.url, **overrides}
        authenticator = Authenticator(config(**values), clock=clock)
        made.append(authenticator)
        await authenticator.start()
        return authenticator

    yield make
    for authenticator in made:
        await authenticator.close()


async def test_jwks_fetched_once_and_cached(jwks_server: JwksServer, make_jwks: Callable[..., Any]) -> None:
    jwks_server.keys = [rsa_jwk("k1", "k1"), ec_jwk("e1", "e1")]
    authenticator = await make_jwks()
    assert jwks_server.fetches == 1  # the prefetch in start()
    for _ in range(5):
        assert (await auth(authenticator, bearer(signed(rsa_key("k1"), "RS256", kid="k1")))).tenant == "acme"
        assert (await auth(authenticator, bearer(signed(ec_key("e1"), "ES256", kid="e1")))).tenant == "acme"
    assert jwks_server.fetches == 1


async def test_unknown_kid_refetch_rate_limited(
    jwks_server: JwksServer, make_jwks: Callable[..., Any], clock: Clock
) -> None:
    """An unknown kid refetches at most once per jwks_min_refresh_s."""
    jwks_server.keys = [rsa_jwk("k1", "k1")]
    authenticator = await make_jwks(jwks_min_refresh_s=60.0)
    clock.now += 60
    error = await refused(authenticator, signed(rsa_key("k2"), "RS256", kid="nope"))
    assert (error.status, jwks_server.fetches) == (401, 2)
    assert error.reason == "unknown key id 'nope' for RS256"
    clock.now += 59
    for kid in ("nope", "nope2", "nope3"):
        assert (await refused(authenticator, signed(rsa_key("k2"), "RS256", kid=kid))).status == 401
    assert jwks_server.fetches == 2
    clock.now += 1
    assert (await refused(authenticator, signed(rsa_key("k2"), "RS256", kid="nope"))).status == 401
    assert jwks_server.fetches == 3


async def test_key_rotation(jwks_server: JwksServer, make_jwks: Callable[..., Any], clock: Clock) -> None:
    """A new kid appears after a refetch; a key dropped from the set stops working."""
    jwks_server.keys = [rsa_jwk("k1", "k1")]
    authenticator = await make_jwks()
    jwks_server.keys = [rsa_jwk("k2", "k2")]
    clock.now += 60
    assert (await auth(authenticator, bearer(signed(rsa_key("k2"), "RS256", kid="k2")))).tenant == "acme"
    assert jwks_server.fetches == 2
    error = await refused(authenticator, signed(rsa_key("k1"), "RS256", kid="k1"))
    assert (error.status, jwks_server.fetches) == (401, 2)  # rate-limited: no third fetch


async def test_concurrent_handshakes_share_one_fetch(
    jwks_server: JwksServer, make_jwks: Callable[..., Any], clock: Clock
) -> None:
    jwks_server.keys = [rsa_jwk("k1", "k1")]
    authenticator = await make_jwks()
    jwks_server.keys = [rsa_jwk("k1", "k1"), rsa_jwk("k2", "k2")]
    jwks_server.gate, jwks_server.entered = asyncio.Event(), asyncio.Event()
    clock.now += 60
    token = signed(rsa_key("k2"), "RS256", kid="k2")
    tasks = [asyncio.create_task(auth(authenticator, bearer(token))) for _ in range(20)]
    await asyncio.wait_for(jwks_server.entered.wait(), 2)
    jwks_server.gate.set()
    principals = await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert {p.tenant for p in principals} == {"acme"}
    assert jwks_server.fetches == 2


async def test_jwks_unavailable(jwks_server: JwksServer, make_jwks: Callable[..., Any], clock: Clock) -> None:
    """A failed prefetch is not fatal; an unknown kid then gets 503, a cached kid still works."""
    jwks_server.status = 500
    authenticator = await make_jwks()
    error = await refused(authenticator, signed(rsa_key("k1"), "RS256", kid="k1"))
    assert (error.status, error.reason) == (503, "key source unavailable")
    jwks_server.status, jwks_server.keys = 200, [rsa_jwk("k1", "k1")]
    clock.now += 60
    assert (await auth(authenticator, bearer(signed(rsa_key("k1"), "RS256", kid="k1")))).tenant == "acme"
    jwks_server.status = 500
    clock.now += 60
    assert (await refused(authenticator, signed(rsa_key("k2"), "RS256", kid="k2"))).status == 503
    assert (await auth(authenticator, bearer(signed(rsa_key("k1"), "RS256", kid="k1")))).tenant == "acme"
    assert jwks_server.fetches == 3


async def test_jwks_redirect_not_followed(jwks_server: JwksServer, make_jwks: Callable[..., Any]) -> None:
    jwks_server.status, jwks_server.keys = 302, [rsa_jwk("k1", "k1")]
    authenticator = await make_jwks()
    assert (await refused(authenticator, signed(rsa_key("k1"), "RS256", kid="k1"))).status == 503
    assert jwks_server.other_hits == 0


async def test_keys_without_kid(jwks_server: JwksServer, make_jwks: Callable[..., Any], clock: Clock) -> None:
    """The set's only key of the right type serves tokens without kid; two such keys do not."""
    jwks_server.keys = [rsa_jwk("k1", None), ec_jwk("e1", "e1")]
    authenticator = await make_jwks()
    assert (await auth(authenticator, bearer(signed(rsa_key("k1"), "RS256")))).tenant == "acme"
    assert (await auth(authenticator, bearer(signed(ec_key("e1"), "ES256")))).tenant == "acme"
    jwks_server.keys = [rsa_jwk("k1", None), rsa_jwk("k2", None)]
    clock.now += 60
    authenticator = await make_jwks()
    error = await refused(authenticator, signed(rsa_key("k1"), "RS256"))
    assert (error.status, error.reason) == (401, "token has no kid and 2 keys fit RS256")


async def test_jwks_key_type_pinned(jwks_server: JwksServer, make_jwks: Callable[..., Any]) -> None:
    """A kid names a key only for its own family; "enc" keys and symmetric keys are never used."""
    oct_secret = "attacker-known-secret-0123456789abcdef"
    oct_key = {"kty": "oct", "kid": "o1", "k": jwt.utils.base64url_encode(oct_secret.encode()).decode()}
    jwks_server.keys = [ec_jwk("e1", "shared"), rsa_jwk("k3", "enc", use="enc"), oct_key,
                        rsa_jwk("k1", "k1")]
    authenticator = await make_jwks(algorithms=("RS256", "ES256"))
    assert (await refused(authenticator, signed(rsa_key("k2"), "RS256", kid="shared"))).status == 401
    assert (await refused(authenticator, signed(rsa_key("k3"), "RS256", kid="enc"))).status == 401
    error = await refused(authenticator, jwt.encode(claims(), oct_secret, algorithm="HS256", headers={"kid": "o1"}))
    assert (error.status, error.reason) == (401, "algorithm not allowed: 'HS256'")


async def test_jwk_alg_restricts_key(jwks_server: JwksServer, make_jwks: Callable[..., Any]) -> None:
    jwks_server.keys = [rsa_jwk("k1", "k1", alg="PS256")]
    authenticator = await make_jwks(algorithms=("RS256", "PS256"))
    assert (await auth(authenticator, bearer(signed(rsa_key("k1"), "PS256", kid="k1")))).tenant == "acme"
    assert (await refused(authenticator, signed(rsa_key("k1"), "RS256", kid="k1"))).status == 401


async def test_token_headers_never_supply_keys(jwks_server: JwksServer, make_jwks: Callable[..., Any]) -> None:
    """jku/x5u URLs are never fetched and an embedded jwk is never trusted."""
    jwks_server.keys = [rsa_jwk("k1", "k1")]
    authenticator = await make_jwks()
    attacker = jwks_server.url.replace("/jwks", "/attacker")
    headers = {"jku": attacker, "x5u": attacker, "jwk": rsa_jwk("evil", "evil")}
    token = signed(rsa_key("evil"), "RS256", kid="evil", headers=headers)
    assert (await refused(authenticator, token)).status == 401
    token = signed(rsa_key("evil"), "RS256", kid="k1", headers=headers)
    assert (await refused(authenticator, token)).reason == "bad signature"
    assert jwks_server.other_hits == 0


async def test_close_is_idempotent(jwks_server: JwksServer, clock: Clock) -> None:
    jwks_server.keys = [rsa_jwk("k1", "k1")]
    authenticator = Authenticator(config(algorithms=("RS256",), secret=None, jwks_url=jwks_server.url), clock=clock)
    await authenticator.start()
    await authenticator.close()
    await authenticator.close()
    await Authenticator(config()).close()


async def test_reasons_and_logs_never_hold_the_token(
    jwks_server: JwksServer, make_jwks: Callable[..., Any], clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    jwks_server.keys = [rsa_jwk("k1", "k1")]
    authenticator = await make_jwks()
    good = signed(rsa_key("k1"), "RS256", kid="k1")
    header, payload, signature = good.split(".")
    jwks_server.status = 500
    clock.now += 60
    tokens = [
        f"{header}.{payload}.{signature[::-1]}",  # bad signature
        f"{header}.{payload}x.{signature}",  # malformed payload
        signed(rsa_key("k2"), "RS256", kid="k9"),  # unknown kid, JWKS down
        signed(rsa_key("k1"), "RS256", kid="k1", exp=int(NOW) - 60),  # expired
        forge_hs256(public_pem(rsa_key("k1")), claims()),  # alg confusion
    ]
    for token in tokens:
        error = await refused(authenticator, token)
        for part in token.split("."):
            assert len(part) < 20 or part not in str(error)
            assert len(part) < 20 or part not in caplog.text
