"""wsgateway.tokens: a token's signature, algorithm, key and time claims, checked directly
(tests/test_auth.py drives the same checks through the Authenticator and real handshakes).

Tokens whose claims no JSON encoder of PyJWT's would write (NaN, 1e400, integers past a
float) are assembled by hand and signed with the same HMAC, so that only the claim differs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import replace
from typing import Any

import jwt
import pytest

from wsgateway.config import AuthConfig
from wsgateway.errors import AuthError, ConfigError
from wsgateway.tokens import TokenChecker

SECRET = "a-secret-long-enough-for-every-hs-algorithm-0123456789"
NOW = 1_800_000_000.0
HS256 = AuthConfig(type="jwt", algorithms=("HS256",), secret=SECRET, leeway_s=30.0)


def _checker(config: AuthConfig = HS256, now: float = NOW) -> TokenChecker:
    return TokenChecker(config, lambda: now)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hand_made(payload: bytes, secret: str = SECRET) -> str:
    """An HS256 token around ``payload`` exactly as written (PyJWT's encoder would refuse it)."""
    signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(payload)
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


async def _check(checker: TokenChecker, token: str) -> dict[str, Any]:
    """As the Authenticator checks a token: the direct key when there is one."""
    if checker.direct_key is not None:
        return checker.decode(token, checker.direct_key, checker.pinned)
    key, alg = await checker.select_key(token)
    return checker.decode(token, key, checker.alg_lists[alg])


async def _refused(checker: TokenChecker, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        await _check(checker, token)
    assert caught.value.status == 401
    return caught.value.reason


async def test_a_valid_token_gives_its_claims() -> None:
    token = jwt.encode({"sub": "u1", "tenant": "t1", "exp": NOW + 60}, SECRET, algorithm="HS256")
    assert await _check(_checker(), token) == {"sub": "u1", "tenant": "t1", "exp": NOW + 60}


async def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = jwt.encode({"exp": NOW + 60}, "another-secret-long-enough-for-every-hs-algorithm-012345", algorithm="HS256")
    assert await _refused(_checker(), token) == "bad signature"


@pytest.mark.parametrize("alg", ["HS384", "none"])
async def test_an_algorithm_that_is_not_pinned_is_refused(alg: str) -> None:
    token = jwt.encode({"exp": NOW + 60}, SECRET if alg != "none" else None, algorithm=alg)
    reason = await _refused(_checker(), token)
    assert "algorithm not allowed" in reason
    two = _checker(replace(HS256, algorithms=("HS256", "HS512")))
    assert "algorithm not allowed" in await _refused(two, token)


@pytest.mark.parametrize(("exp", "valid"), [(NOW - 30, False), (NOW - 29.5, True), (NOW + 1, True)])
async def test_exp_counts_with_the_leeway_against_the_injected_clock(exp: float, valid: bool) -> None:
    token = jwt.encode({"exp": exp}, SECRET, algorithm="HS256")
    if valid:
        assert (await _check(_checker(), token))["exp"] == exp
    else:
        assert await _refused(_checker(), token) == "token expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_a_token_from_the_future_is_refused_past_the_leeway(claim: str) -> None:
    within = jwt.encode({"exp": NOW + 600, claim: NOW + 30}, SECRET, algorithm="HS256")
    assert (await _check(_checker(), within))[claim] == NOW + 30
    beyond = jwt.encode({"exp": NOW + 600, claim: NOW + 31}, SECRET, algorithm="HS256")
    assert await _refused(_checker(), beyond) == f"token not yet valid ({claim} in the future)"


@pytest.mark.parametrize("exp", [b"NaN", b"Infinity", b"1e400", b"1" + b"0" * 400, b"true", b'"2099"'])
async def test_an_exp_that_is_not_a_finite_number_never_passes(exp: bytes) -> None:
    token = _hand_made(b'{"sub":"u1","exp":' + exp + b"}")
    assert await _refused(_checker(), token) == "malformed token: exp is not a finite number"


async def test_a_required_claim_missing_is_named() -> None:
    token = jwt.encode({"sub": "u1"}, SECRET, algorithm="HS256")
    assert await _refused(_checker(), token) == "missing claim 'exp'"
    optional = _checker(replace(HS256, required_claims=()))
    assert await _check(optional, token) == {"sub": "u1"}


async def test_issuer_and_audience_are_checked_when_configured() -> None:
    config = replace(HS256, issuer="https://issuer.example", audience=("dashboards",))
    good = {"exp": NOW + 60, "iss": "https://issuer.example", "aud": "dashboards"}
    assert await _check(_checker(config), jwt.encode(good, SECRET, algorithm="HS256")) == good
    wrong_aud = jwt.encode({**good, "aud": "billing"}, SECRET, algorithm="HS256")
    assert await _refused(_checker(config), wrong_aud) == "wrong audience"
    wrong_iss = jwt.encode({**good, "iss": "https://evil.example"}, SECRET, algorithm="HS256")
    assert await _refused(_checker(config), wrong_iss) == "wrong issuer"


async def test_garbage_is_a_malformed_token_and_its_reason_never_holds_it() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.not-base64-json.c2ln"
    reason = await _refused(_checker(), token)
    assert reason.startswith("malformed token")
    assert token not in reason


def test_one_secret_for_every_pinned_algorithm_is_used_without_reading_the_header() -> None:
    both = _checker(replace(HS256, algorithms=("HS256", "HS384")))
    assert both.direct_key == SECRET.encode()
    assert both.alg_lists == {"HS256": ["HS256"], "HS384": ["HS384"]}


@pytest.mark.parametrize(("config", "key", "words"), [
    (replace(HS256, secret=None), "auth.secret", "need a secret"),
    (replace(HS256, secret="-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----"), "auth.secret",
     "not usable as an HMAC secret"),
    (replace(HS256, algorithms=("RS256",), secret=None), "auth.algorithms", "no configured key can verify RS256"),
])
def test_keys_that_cannot_serve_are_refused_at_start_up(config: AuthConfig, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _checker(config)
    assert caught.value.key == key
    assert words in caught.value.problem
