"""Verification keys for handshake tokens: a PEM file, or a JWKS fetched and cached.

Keys are chosen by algorithm *family* and never by what a token says beyond its ``alg`` and
``kid``: RS*/PS* use RSA keys (2048 bits and more), ES* EC keys of the matching curve, EdDSA
OKP keys. A JWKS is fetched over HTTPS (plain http only for a loopback host), with a timeout,
a size cap and no redirects; its keys are cached by (issuer, kid), and an unknown kid makes
it refetch at most once per ``jwks_min_refresh_s``, one fetch shared by every handshake that
waits for it. A failed fetch keeps the keys already known. aiohttp is imported when a JWKS
client starts: most nodes fetch none, and it is a large share of a node's start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

import jwt
import orjson
import yarl
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import AuthError, ConfigError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["EC_BY_CURVE", "RSA_ALGORITHMS", "JwksCache", "PublicKey", "algorithms_for", "describe", "jwks_url",
           "read_public_key", "show"]

logger = logging.getLogger("wsgateway.auth")

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
_MIN_RSA_BITS = 2048  # below this PyJWT warns on every verify; NIST SP 800-131A
_JWKS_TIMEOUT_S = 5.0
_JWKS_MAX_BYTES = 1 << 20
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


def show(value: object) -> str:
    """A value taken from a token, quoted and cut short so that it cannot forge log lines."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def read_public_key(path: str) -> PublicKey:
    try:
        with open(path, "rb") as file:
            key = load_pem_public_key(file.read())
    except OSError as exc:
        raise ConfigError("auth.public_key_file", f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError("auth.public_key_file", f"{path} is not a PEM public key") from None
    if not isinstance(key, PublicKey):
        raise ConfigError("auth.public_key_file", f"{path} holds an unsupported key type")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise ConfigError("auth.public_key_file", f"RSA key of {key.key_size} bits; need {_MIN_RSA_BITS}+")
    return key


def algorithms_for(key: object, pinned: Sequence[str]) -> frozenset[str]:
    """The pinned algorithms a public key may verify: its family, and for EC its curve."""
    if isinstance(key, rsa.RSAPublicKey):
        family: Sequence[str] = RSA_ALGORITHMS if key.key_size >= _MIN_RSA_BITS else ()
    elif isinstance(key, ec.EllipticCurvePublicKey):
        family = (EC_BY_CURVE.get(key.curve.name, ""),)
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        family = ("EdDSA",)
    else:  # HMAC secrets and private keys never come from a key file or a JWKS
        family = ()
    return frozenset(alg for alg in pinned if alg in family)


@dataclass(frozen=True, slots=True)
class _Jwk:
    kid: str | None
    algorithms: frozenset[str]  # pinned algorithms this key may verify
    key: PublicKey


class JwksCache:
    """The keys published at one JWKS URL, by (issuer, kid)."""

    def __init__(self, url: yarl.URL, issuer: str | None, pinned: Sequence[str], min_refresh_s: float,
                 clock: Callable[[], float]) -> None:
        self._url = url
        self._issuer = issuer
        self._pinned = tuple(pinned)
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._by_kid: dict[tuple[str | None, str], list[_Jwk]] = {}
        self._by_alg: dict[str, list[_Jwk]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._last_attempt: float | None = None
        self._last_ok = False

    async def start(self) -> None:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(headers={"Accept": "application/json"})
            await self._refresh()

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        self._last_ok = False
        if session is not None:
            await session.close()

    def cached(self, kid: str | None, alg: str) -> PublicKey | None:
        """The cached key for ``kid`` that can verify ``alg``, or None (no I/O)."""
        if kid is not None:
            for jwk in self._by_kid.get((self._issuer, kid), ()):
                if alg in jwk.algorithms:
                    return jwk.key
        fitting = self._by_alg.get(alg, ())
        if len(fitting) == 1 and (kid is None or fitting[0].kid is None):
            return fitting[0].key
        if kid is None and fitting:
            raise AuthError(401, f"token has no kid and {len(fitting)} keys fit {alg}")
        return None

    async def fetch_key(self, kid: str | None, alg: str) -> PublicKey:
        """Refetch the set (rate-limited, shared) and look again; raise 401 or 503 if absent."""
        if self._inflight is not None or self._may_fetch():
            await self._refresh()
            key = self.cached(kid, alg)
            if key is not None:
                return key
        if not self._last_ok:
            raise AuthError(503, "key source unavailable")
        raise AuthError(401, f"unknown key id {show(kid)} for {alg}")

    def _may_fetch(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self._min_refresh_s

    async def _refresh(self) -> None:
        task = self._inflight
        if task is None:
            self._last_attempt = self._clock()
            task = self._inflight = asyncio.create_task(self._fetch())
            task.add_done_callback(self._fetch_done)
        # wait() neither raises nor cancels the shared fetch if this handshake is cancelled.
        await asyncio.wait((task,))

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch(self) -> None:
        try:
            keys = _parse_jwks(await self._download(), self._pinned)
        except Exception as exc:  # noqa: BLE001 - any failure means "unavailable", and is logged
            self._last_ok = False
            logger.warning("JWKS fetch from %s failed: %s", self._url, describe(exc))
            return
        self._by_kid = {}
        self._by_alg = {alg: [jwk for jwk in keys if alg in jwk.algorithms] for alg in self._pinned}
        for jwk in keys:
            if jwk.kid is not None:
                self._by_kid.setdefault((self._issuer, jwk.kid), []).append(jwk)
        self._last_ok = True
        logger.info("JWKS from %s: %d usable keys", self._url, len(keys))

    async def _download(self) -> Any:
        session = self._session
        if session is None:
            raise RuntimeError("the authenticator is not started, or closed")
        jwks_url(str(self._url), "auth.jwks_url")  # again, right where the request is made
        async with asyncio.timeout(_JWKS_TIMEOUT_S):
            # No redirects: a 30x could lead an https URL to plain http or elsewhere.
            async with session.get(self._url, allow_redirects=False) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > _JWKS_MAX_BYTES:
                        raise ValueError(f"larger than {_JWKS_MAX_BYTES} bytes")
        return orjson.loads(body)


def _parse_jwks(document: Any, pinned: Sequence[str]) -> list[_Jwk]:
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('not a JWK set (no "keys" list)')
    keys = [jwk for entry in entries if (jwk := _parse_jwk(entry, pinned)) is not None]
    if not keys:
        raise ValueError(f"no key usable for {', '.join(pinned)} among {len(entries)}")
    return keys


def _parse_jwk(entry: Any, pinned: Sequence[str]) -> _Jwk | None:
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
        return None
    kid, alg = entry.get("kid"), entry.get("alg")
    if not isinstance(kid, str | None) or not isinstance(alg, str | None):
        return None
    try:
        key = jwt.PyJWK(entry).key
    except Exception as exc:  # noqa: BLE001 - one malformed key must not take the set down
        logger.warning("JWKS key %s skipped: %s", show(kid), describe(exc))
        return None
    algorithms = algorithms_for(key, pinned)
    if alg is not None:  # a key that names its algorithm is used for that one only
        algorithms = algorithms & {alg}
    return _Jwk(kid, algorithms, key) if algorithms else None


def jwks_url(url: str, key: str) -> yarl.URL:
    parsed = yarl.URL(url)  # the parser aiohttp itself uses, so both agree on the host
    if (parsed.scheme == "https" and parsed.host) or (parsed.scheme == "http" and _is_loopback(parsed.host)):
        return parsed
    raise ConfigError(key, "must be an https:// URL (http:// only for a loopback host)")


def _is_loopback(host: str | None) -> bool:
    host = (host or "").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


