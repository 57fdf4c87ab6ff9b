"""JWT checks for ``auth.type = "jwt"``: a token's signature, algorithm, key and time claims.

:class:`TokenChecker` turns a token into its claims or raises :class:`AuthError`; the
:class:`~wsgateway.auth.Authenticator` finds the token and makes the claims a Principal. Its
own module so that PyJWT and cryptography are imported only by a node that checks tokens
(auth.py imports it then): they are a large share of a node's start-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jwt
from jwt.algorithms import HMACAlgorithm

from .errors import AuthError, ConfigError
from .keys import (
    JwksCache,
    algorithms_for,
    jwks_url,
    read_public_key,
    show,
)

if TYPE_CHECKING:
    from .config import AuthConfig

__all__ = ["TokenChecker"]

_HMAC = ("HS256", "HS384", "HS512")
_HMAC_HASHES = {"HS256": HMACAlgorithm.SHA256, "HS384": HMACAlgorithm.SHA384, "HS512": HMACAlgorithm.SHA512}


class _CheckedSecretHMAC(HMACAlgorithm):
    """PyJWT's HMAC algorithm for a secret whose checks already ran: any other key (there is
    none here: keys never come from tokens) goes through PyJWT's checks as before."""

    def __init__(self, hash_alg: Callable[..., Any], secret: bytes) -> None:
        super().__init__(hash_alg)
        self._secret = secret

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._secret:
            return self._secret
        return super().prepare_key(key)


class TokenChecker:
    """The keys and checks of ``auth.type = "jwt"``: built at start-up (it reads and parses
    keys, raising :class:`ConfigError` naming the key), ``await start()`` before the first
    token and ``await close()`` at shutdown. ``clock`` (epoch seconds) drives the time
    claims and the JWKS refetch interval.

    A token is checked by :meth:`decode` with ``direct_key`` when one key serves every pinned
    algorithm (no header parsed first), else with what :meth:`select_key` picks."""

    def __init__(self, config: AuthConfig, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.pinned = tuple(config.algorithms)
        self.alg_lists = {alg: [alg] for alg in self.pinned}
        self._leeway = config.leeway_s
        self._issuer = config.issuer
        self._audience = tuple(config.audience) or None
        # Time claims are checked below against the injected clock, not PyJWT's wall clock;
        # "sub" by the Authenticator, the same whichever PyJWT version is installed.
        self._jwt = jwt.PyJWT(
            options={"require": list(config.required_claims), "verify_exp": False, "verify_nbf": False,
                     "verify_iat": False, "verify_sub": False}
        )
        self._keys: dict[str, Any] = {}  # alg -> key; HS* -> secret bytes, others -> key object
        self._jwks: JwksCache | None = None
        self.direct_key: Any = None  # set when one key serves every pinned alg: no header pre-parse
        self._load_keys(config)

    def _load_keys(self, config: AuthConfig) -> None:
        if any(alg in _HMAC for alg in self.pinned):
            secret = _hmac_secret(config.secret)
            self._keys.update((alg, secret) for alg in self.pinned if alg in _HMAC)
            self._checked_once(secret)
        asymmetric = [alg for alg in self.pinned if alg not in _HMAC]
        if asymmetric and config.jwks_url:
            url = jwks_url(config.jwks_url, "auth.jwks_url")
            self._jwks = JwksCache(url, config.issuer, asymmetric, config.jwks_min_refresh_s, self._clock)
        elif asymmetric and config.public_key_file:
            key = read_public_key(config.public_key_file)
            self._keys.update((alg, key) for alg in algorithms_for(key, asymmetric))
        missing = [alg for alg in asymmetric if alg not in self._keys and self._jwks is None]
        if missing:
            raise ConfigError("auth.algorithms", f"no configured key can verify {', '.join(missing)}")
        distinct = {id(key) for key in self._keys.values()}
        if self._jwks is None and len(distinct) == 1 and len(self._keys) == len(self.alg_lists):
            self.direct_key = next(iter(self._keys.values()))

    def _checked_once(self, secret: bytes) -> None:
        """Verify HS* tokens without PyJWT re-checking the configured secret on every decode
        (``prepare_key``'s key-confusion checks: 14 µs, 5% of a handshake); they ran once in
        ``_hmac_secret``. Uses PyJWS's public algorithm registry on this PyJWT's own PyJWS; a
        PyJWT without one keeps its stock algorithms."""
        jws = getattr(self._jwt, "_jws", None)
        if not isinstance(jws, jwt.PyJWS):
            return
        for alg in self.pinned:
            if alg in _HMAC:
                jws.unregister_algorithm(alg)
                jws.register_algorithm(alg, _CheckedSecretHMAC(_HMAC_HASHES[alg], secret))

    async def start(self) -> None:
        """Open the JWKS client and prefetch the key set; a failed fetch is logged, not raised."""
        if self._jwks is not None:
            await self._jwks.start()

    async def close(self) -> None:
        """Stop any JWKS fetch and close the HTTP client; idempotent."""
        if self._jwks is not None:
            await self._jwks.close()

    async def select_key(self, token: str) -> tuple[Any, str]:
        """The key for ``token`` (by its pinned ``alg`` and its ``kid``) and that alg; raises AuthError."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(401, _reason(exc)) from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.alg_lists:
            raise AuthError(401, f"algorithm not allowed: {show(alg)}")
        key = self._keys.get(alg)
        if key is None and self._jwks is not None:
            kid = header.get("kid")  # a str: PyJWT rejects any other kid type
            key = self._jwks.cached(kid, alg)
            if key is None:
                key = await self._jwks.fetch_key(kid, alg)
        return key, alg

    def decode(self, token: str, key: Any, algorithms: Sequence[str]) -> dict[str, Any]:
        """The claims of ``token`` checked with ``key``; raises AuthError (401)."""
        try:
            claims = self._jwt.decode(token, key, algorithms, audience=self._audience, issuer=self._issuer)
        except jwt.PyJWTError as exc:
            raise AuthError(401, _reason(exc)) from exc
        now = self._clock()
        exp = _numeric(claims, "exp")
        if exp is not None and exp <= now - self._leeway:
            raise AuthError(401, "token expired")
        for name in ("nbf", "iat"):
            value = _numeric(claims, name)
            if value is not None and value > now + self._leeway:
                raise AuthError(401, f"token not yet valid ({name} in the future)")
        return claims


def _hmac_secret(secret: str | None) -> bytes:
    if not secret:
        raise ConfigError("auth.secret", "HS* algorithms need a secret")
    try:
        # PyJWT refuses PEM/SSH/DER public keys and JWK JSON as HMAC secrets (key confusion).
        return HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError as exc:
        raise ConfigError("auth.secret", f"is not usable as an HMAC secret: {exc}") from None


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # NaN compares false with everything, so it would make an "exp" never expire. An integer
    # past a float's range (JSON allows 1e400 written out) makes isfinite() raise OverflowError.
    try:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise AuthError(401, f"malformed token: {name} is not a finite number")
        return float(value)
    except OverflowError:
        raise AuthError(401, f"malformed token: {name} is not a finite number") from None


_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),  # before DecodeError, its base class
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidKeyError, "key unusable for this token"),
    (jwt.DecodeError, "malformed token"),
)


def _reason(exc: jwt.PyJWTError) -> str:
    """A log-safe reason: fixed text, plus PyJWT's message quoted (it never holds the token)."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim!r}"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason if reason != "malformed token" else f"malformed token: {show(str(exc))}"
    return f"invalid token: {show(str(exc))}"


