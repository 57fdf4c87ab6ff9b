"""Handshake authentication: a token becomes a :class:`Principal`, or :class:`AuthError`.

This module knows nothing of sockets: the server hands :meth:`Authenticator.authenticate` the
upgrade request's headers, query parameters and offered subprotocols.

With ``auth.type = "jwt"`` the token comes from the first configured source that is present
(``header:NAME``, ``query:NAME``, or ``subprotocol:NAME`` where the client offers
``["NAME", "<token>"]``). Its signature is checked by PyJWT against keys chosen only by
configuration: the token's ``alg`` must be pinned in ``auth.algorithms``, and it picks the key
*family* (HS* -> the configured secret only; RS*/PS* -> RSA keys; ES* -> EC keys of the matching
curve; EdDSA -> OKP keys). ``jku``/``x5u``/``jwk``/``x5c`` headers are never looked at.

Asymmetric keys come from ``auth.public_key_file`` (parsed once at construction) or from
``auth.jwks_url``. JWKS keys are cached by (issuer, kid); an unknown kid triggers a refetch at
most once per ``jwks_min_refresh_s``, and concurrent handshakes share one in-flight fetch. A
token without ``kid`` uses the key set's only key that fits its ``alg``; a token whose kid is
unknown may use a kid-less key under the same "only key" rule.

Statuses: 401 for a missing or invalid token, 403 for a valid token without a usable tenant,
503 when the JWKS cannot be fetched and the kid is unknown. The reason is for the log; it never
contains the token.

With ``auth.type = "authorizer"`` a :class:`~wsgateway.authorizer.Authorizer` decides instead
(401, 403 or 500, see :mod:`wsgateway.authorizer`); the tenant is the allowed context's
``auth.tenant_key`` value: missing, empty or not a string or integer is a 500 (the authorizer
is broken), longer than :data:`MAX_TENANT_CHARS` a 403, as a JWT's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jwt
import orjson
from jwt.algorithms import HMACAlgorithm

from .authorizer import Allowed, Authorizer, HandshakeRequest
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

__all__ = ["MAX_TENANT_CHARS", "Authenticator", "Principal"]

logger = logging.getLogger(__name__)

_HMAC = ("HS256", "HS384", "HS512")

# The longest tenant name, at the handshake and on the management API alike: a tenant that
# could connect but never be addressed would be unreachable by its backends.
MAX_TENANT_CHARS = 256
_MAX_TOKEN_CHARS = 8192  # longer than any sane JWT; bounds PyJWT's per-character parsing
_NO_CONTEXT: Mapping[str, Any] = MappingProxyType({})


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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who opened a connection; immutable for the connection's lifetime."""

    principal_id: str  # the token's "sub" ("" with auth off)
    tenant: str  # value of the tenant claim (a non-empty string)
    context: Mapping[str, Any]  # each configured context claim present in the token
    expires_at: float | None = None  # token exp (epoch s)

    def authorizer(self) -> dict[str, Any]:
        """A fresh ``requestContext.authorizer``: ``{"principalId", "tenant", **context}``.

        A context claim named ``principalId`` or ``tenant`` never overrides the identity.
        """
        result: dict[str, Any] = {"principalId": self.principal_id, "tenant": self.tenant}
        for name, value in self.context.items():
            result.setdefault(name, value)
        return result


class Authenticator:
    """Turns a handshake's credentials into a :class:`Principal`; one per gateway.

    Build it at start-up (it reads and parses keys, raising :class:`ConfigError` naming the
    key), ``await start()`` before the first handshake and ``await close()`` at shutdown.
    ``clock`` (epoch seconds) drives token expiry checks and the JWKS refetch interval.
    """

    def __init__(
        self, config: AuthConfig, *, clock: Callable[[], float] = time.time, authorizer: Authorizer | None = None
    ) -> None:
        if config.type == "authorizer" and authorizer is None:
            raise ConfigError("auth.authorizer", 'type = "authorizer" needs authorizer = "module:function"')
        self._authorizer = authorizer if config.type == "authorizer" else None
        self._tenant_key = config.tenant_key
        self._enabled = config.type == "jwt"
        self._clock = clock
        self._sources = _parse_sources(config.sources)
        self._subprotocol_names = tuple(name for kind, name in self._sources if kind == "subprotocol")
        self._tenant_claim = config.tenant_claim
        self._context_claims = config.context_claims
        self._leeway = config.leeway_s
        self._pinned = tuple(config.algorithms)
        self._alg_lists = {alg: [alg] for alg in self._pinned}
        self._issuer = config.issuer
        self._audience = tuple(config.audience) or None
        # Time claims are checked below against the injected clock, not PyJWT's wall clock;
        # "sub" in _principal, the same whichever PyJWT version is installed.
        self._jwt = jwt.PyJWT(
            options={"require": list(config.required_claims), "verify_exp": False, "verify_nbf": False,
                     "verify_iat": False, "verify_sub": False}
        )
        self._keys: dict[str, Any] = {}  # alg -> key; HS* -> secret bytes, others -> key object
        self._jwks: JwksCache | None = None
        self._direct_key: Any = None  # set when one key serves every pinned alg: no header pre-parse
        if self._enabled:
            self._load_keys(config)

    def _load_keys(self, config: AuthConfig) -> None:
        if any(alg in _HMAC for alg in self._pinned):
            secret = _hmac_secret(config.secret)
            self._keys.update((alg, secret) for alg in self._pinned if alg in _HMAC)
            self._checked_once(secret)
        asymmetric = [alg for alg in self._pinned if alg not in _HMAC]
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
        if self._jwks is None and len(distinct) == 1 and len(self._keys) == len(self._alg_lists):
            self._direct_key = next(iter(self._keys.values()))

    def _checked_once(self, secret: bytes) -> None:
        """Verify HS* tokens without PyJWT re-checking the configured secret on every decode
        (``prepare_key``'s key-confusion checks: 14 µs, 5% of a handshake); they ran once in
        ``_hmac_secret``. Uses PyJWS's public algorithm registry on this PyJWT's own PyJWS; a
        PyJWT without one keeps its stock algorithms."""
        jws = getattr(self._jwt, "_jws", None)
        if not isinstance(jws, jwt.PyJWS):
            return
        for alg in self._pinned:
            if alg in _HMAC:
                jws.unregister_algorithm(alg)
                jws.register_algorithm(alg, _CheckedSecretHMAC(_HMAC_HASHES[alg], secret))

    async def start(self) -> None:
        """Open the JWKS client and prefetch the key set; a failed fetch is logged, not raised."""
        if not self._enabled and self._authorizer is None:
            logger.warning('auth.type = "none": every handshake is accepted without a token')
        elif self._jwks is not None:
            await self._jwks.start()

    async def close(self) -> None:
        """Stop any JWKS fetch and close the HTTP client; idempotent."""
        if self._jwks is not None:
            await self._jwks.close()

    def token_subprotocol(self, subprotocols: Sequence[str]) -> str | None:
        """The ``subprotocol:NAME`` source the client offered, for the server to echo in the 101.

        Echoing NAME (never the token after it) satisfies browsers, which require the server to
        pick one of the offered values. Returns None when no such source is offered.
        """
        for name in self._subprotocol_names:
            if name in subprotocols:
                return name
        return None

    async def authenticate(
        self,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        subprotocols: Sequence[str],
        handshake: HandshakeRequest | None = None,
    ) -> Principal:
        """Check a handshake's token and return its :class:`Principal`.

        ``headers`` is case-insensitive (websockets' ``Headers``); ``query`` holds each
        parameter's first value; ``subprotocols`` the offered values in order. ``handshake``
        (the whole request and its connection id) is what an authorizer's event is built from:
        without it, type = "authorizer" refuses with 500.
        Raises :class:`AuthError` with status 401, 403, 500 or 503 (see the module docstring).
        """
        if self._authorizer is not None:
            if handshake is None:
                raise AuthError(500, "no handshake request to build the authorizer event from")
            return self._authorized(await self._authorizer.authorize(handshake))
        if not self._enabled:
            return Principal("", _addressable(query.get("tenant") or "default", "tenant"), _NO_CONTEXT)
        token = self._find_token(headers, query, subprotocols)
        if token is None:
            raise AuthError(401, "missing token")
        return await self.verify_token(token)

    async def verify_token(self, token: str) -> Principal:
        """Check a token given on a live connection (a token refresh) exactly as
        :meth:`authenticate` checks a handshake's: length, pinned algorithm and key,
        signature, audience, issuer, exp/nbf/iat with leeway, tenant claim.

        Returns its :class:`Principal`; raises :class:`AuthError` (401, 403 or 503), also
        when ``auth.type`` is not "jwt" (there is no token to check then).
        """
        if not self._enabled:
            raise AuthError(401, "no token authentication configured")
        if len(token) > _MAX_TOKEN_CHARS:
            raise AuthError(401, f"token too long ({len(token)} characters)")
        if self._direct_key is not None:
            claims = self._decode(token, self._direct_key, self._pinned)
        else:
            key, alg = await self._select_key(token)
            claims = self._decode(token, key, self._alg_lists[alg])
        return self._principal(claims)

    def _authorized(self, allowed: Allowed) -> Principal:
        tenant = allowed.context.get(self._tenant_key)
        if isinstance(tenant, int) and not isinstance(tenant, bool):
            tenant = str(tenant)  # a numeric id, as AWS passes context values on: as text
        if not isinstance(tenant, str) or not tenant:
            raise AuthError(500, f"authorizer context {self._tenant_key!r} is missing or not a non-empty string or integer")
        tenant = _addressable(tenant, f"authorizer context {self._tenant_key!r} is")
        return Principal(allowed.principal_id, tenant, allowed.context)

    def _find_token(
        self, headers: Mapping[str, str], query: Mapping[str, str], subprotocols: Sequence[str]
    ) -> str | None:
        for kind, name in self._sources:
            if kind == "header":
                try:
                    value = headers.get(name)
                except LookupError:  # websockets' Headers: the header was sent twice
                    raise AuthError(401, f"{name} header sent more than once") from None
            elif kind == "query":
                value = query.get(name)
            else:
                value = _after(subprotocols, name)
            token = _strip_bearer(value) if value else ""
            if token:
                return token
        return None

    async def _select_key(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(401, _reason(exc)) from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._alg_lists:
            raise AuthError(401, f"algorithm not allowed: {show(alg)}")
        key = self._keys.get(alg)
        if key is None and self._jwks is not None:
            kid = header.get("kid")  # a str: PyJWT rejects any other kid type
            key = self._jwks.cached(kid, alg)
            if key is None:
                key = await self._jwks.fetch_key(kid, alg)
        return key, alg

    def _decode(self, token: str, key: Any, algorithms: Sequence[str]) -> dict[str, Any]:
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

    def _principal(self, claims: dict[str, Any]) -> Principal:
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise AuthError(403, f"claim {self._tenant_claim!r} is missing or not a non-empty string")
        tenant = _addressable(tenant, f"claim {self._tenant_claim!r} is")
        subject = claims.get("sub", "")
        if not isinstance(subject, str):  # whatever the PyJWT version checked
            raise AuthError(401, "claim 'sub' is not a string")
        context = {name: claims[name] for name in self._context_claims if name in claims}
        try:  # the connection's record, events and access log carry them as JSON (orjson)
            orjson.dumps([subject, context])
        except TypeError:  # PyJWT's json reads "\ud800" and 2**64 alike; orjson writes neither
            raise AuthError(401, "malformed token: 'sub' or a context claim JSON cannot carry") from None
        exp = claims.get("exp")
        return Principal(
            subject,
            tenant,
            MappingProxyType(context) if context else _NO_CONTEXT,
            float(exp) if exp is not None else None,
        )



def _addressable(tenant: str, what: str) -> str:
    """``tenant``, unless the management API could never address it: 403 past
    :data:`MAX_TENANT_CHARS` or not text UTF-8 can encode (a lone surrogate, which a JWT's
    JSON may hold: no path names it, and the registry and access log cannot write it)
    (``what`` names where it came from, for the log)."""
    if len(tenant) > MAX_TENANT_CHARS:
        raise AuthError(403, f"{what} longer than {MAX_TENANT_CHARS} characters")
    if not tenant.isascii():
        try:
            tenant.encode()
        except UnicodeEncodeError:
            raise AuthError(403, f"{what} not valid Unicode (a lone surrogate)") from None
    return tenant

# ---------------------------------------------------------------- configuration and keys

def _parse_sources(sources: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``"kind:NAME"`` pairs; AuthConfig's rule on ``sources`` has checked their form."""
    return tuple((kind, name) for kind, _, name in (source.partition(":") for source in sources))


def _hmac_secret(secret: str | None) -> bytes:
    if not secret:
        raise ConfigError("auth.secret", "HS* algorithms need a secret")
    try:
        # PyJWT refuses PEM/SSH/DER public keys and JWK JSON as HMAC secrets (key confusion).
        return HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError as exc:
        raise ConfigError("auth.secret", f"is not usable as an HMAC secret: {exc}") from None


# ---------------------------------------------------------------- token helpers

def _after(values: Sequence[str], name: str) -> str | None:
    """The value right after ``name`` in ``values``: the token of a subprotocol source."""
    try:
        return values[values.index(name) + 1]
    except (ValueError, IndexError):
        return None


def _strip_bearer(value: str) -> str:
    value = value.strip()
    if value[:6].lower() == "bearer" and value[6:7] in ("", " ", "\t"):
        return value[6:].lstrip()  # a bare "Bearer" leaves "": no token here
    return value


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


