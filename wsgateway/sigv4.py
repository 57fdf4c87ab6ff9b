"""AWS Signature Version 4 verification for the management API.

The management edge calls :meth:`SigV4Verifier.verify` once per request, before routing it,
with the request exactly as it came off the wire. The verifier rebuilds the canonical request
with the rules of botocore's signer (``botocore.auth.SigV4Auth``), so every request that
boto3, aioboto3 or another SDK signs for ``execute-api`` is accepted, and nothing else is.

Why not call botocore here: verifying through its signer ran at about half the unsigned
request rate (the team's performance notes), and botocore is not a runtime dependency.
What is written here is only the canonical request and the HMAC chain over it; hashing and
percent-encoding come from ``hashlib``, ``hmac`` and ``urllib.parse`` (botocore uses the same
``quote``). ``tests/test_sigv4.py`` proves that the signatures are the ones botocore computes.

Everything in this module is pure: no I/O, time comes from the injected ``clock``.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import string
import time
from collections.abc import Callable, Mapping
from datetime import date
from hashlib import sha256
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, unquote_to_bytes

from multidict import istr

from .errors import SignatureError

__all__ = ["SigV4Verifier"]

_ALGORITHM = "AWS4-HMAC-SHA256"
_TERMINATOR = "aws4_request"
_EMPTY_SHA256 = sha256(b"").hexdigest()
# Header names as multidict's case-insensitive keys: a lookup with one skips folding the name's
# case (the signed names of a scope are kept so too).
_CONTENT_SHA256 = istr("x-amz-content-sha256")
_AUTHORIZATION = istr("authorization")
_AMZ_DATE = istr("x-amz-date")
_SCOPE_CACHE_SIZE = 256  # about one per (access key, day, region) in use
_MAX_EXPIRES_S = 604_800  # AWS caps a presigned URL at 7 days
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# botocore's canonical URI is quote(path, safe="/~") over the path as sent (so "%3D" becomes
# "%253D"). A path of only the characters quote() keeps, "%" and "@" (what SDKs send:
# "/@connections/", ids percent-encoded) is encoded by replacing those two; others go through
# quote() itself.
_KEPT_BY_QUOTE = string.ascii_letters + string.digits + "_.~/-"
_COMMON_PATH = _KEPT_BY_QUOTE + "%@"


class _Scope(NamedTuple):
    """A checked Credential + SignedHeaders pair, with the signing key derived for it."""

    access_key: str
    day: str  # YYYYMMDD, as in the credential scope
    day_start: int  # POSIX seconds at 00:00:00Z on that day
    scope: str  # YYYYMMDD/region/service/aws4_request
    signed_headers: str
    names: tuple[str, ...]
    body_hash_signed: bool  # x-amz-content-sha256 is among the signed headers
    keyed: Any  # an HMAC keyed with the signing key; each request signs on a copy
    known: bool  # False: an unknown access key, keyed with the decoy secret


class _Head(NamedTuple):
    """What the request's head says about its signature, checked as far as it can be."""

    scope: _Scope
    signature: str
    canonical_query: str
    canonical_headers: str
    amz_date: str
    remember: str | tuple[str, str] | None  # the cache key to store the scope under once it matched


# _Head's constructor without its Python-level __new__ (a frame per request).
_new_head: Callable[[tuple[Any, ...]], _Head] = functools.partial(tuple.__new__, _Head)


class SigV4Verifier:
    """Checks SigV4 signatures made with one of a fixed set of access keys.

    ``credentials`` maps access key id to secret access key; it is copied. ``service`` is the
    signing name clients use (``execute-api`` for ``apigatewaymanagementapi``). ``region``
    pins the region of the credential scope; ``None`` accepts any region, because a
    self-hosted gateway has no region of its own and boto3 requires clients to invent one.
    ``max_skew_s`` bounds the distance between ``X-Amz-Date`` and ``clock()``.

    What stays the same across a client's requests is cached: the parsed, checked scope and
    the signing key derived for (access key, date, region, service), keyed by the text of the
    Authorization header before its ``Signature=``. Entries are added only after a signature
    made with them has matched, so forged requests cannot churn the cache.
    """

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        service: str = "execute-api",
        region: str | None = None,
        max_skew_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = dict(credentials)
        for access_key, secret in self._credentials.items():
            if not (isinstance(access_key, str) and isinstance(secret, str)):
                raise ValueError("credentials: access key ids and secrets must be strings")
            if not (access_key and secret):
                raise ValueError("credentials: access key ids and secrets must not be empty")
        if not service:
            raise ValueError("service must not be empty")
        if region == "":
            raise ValueError("region must be None (any) or a region name")
        if max_skew_s < 0:
            raise ValueError("max_skew_s must be >= 0")
        self._service = service
        self._region = region
        self._max_skew_s = max_skew_s
        self._clock = clock
        self._scopes: dict[str | tuple[str, str], _Scope] = {}
        self._last_date = ("", 0)  # (X-Amz-Date, its POSIX seconds), see _timestamp
        self._decoy = secrets.token_hex(32)  # signs for unknown access keys; never matches

    def verify(
        self, method: str, raw_path: str, raw_query: str, headers: Mapping[str, str], body: bytes,
        *, head: object = None,
    ) -> str:
        """Check the request's signature; call it before acting on a management request.

        ``raw_path`` and ``raw_query`` are the request target as received, percent-encoding
        untouched, split at ``?`` (the management server's ``Request.raw_path`` and
        ``Request.raw_query``). ``headers`` is case-insensitive and may repeat names (a
        ``CIMultiDict``, as ``Request.headers``). Accepts the ``Authorization`` header form
        and the presigned query-string form.

        Returns the access key id that signed the request. Raises :class:`SignatureError`
        (answered as 403) when the request is unsigned, malformed, signed with an unknown key,
        for another service or pinned region, outside the time window, without ``host``
        among the signed headers, or when anything signed was altered. Its text says which,
        for the log only: the client must get one answer whatever the reason.

        ``head`` is what :meth:`check_head` returned for this request, if it ran: the head is
        then not parsed twice.
        """
        parsed = head if isinstance(head, _Head) else self.check_head(raw_query, headers)
        self._check(parsed, method, raw_path, headers, body)
        if parsed.remember is not None:
            self._remember(parsed.remember, parsed.scope)
        return parsed.scope.access_key

    def check_head(self, raw_query: str, headers: Mapping[str, str]) -> _Head:
        """Everything :meth:`verify` checks that does not need the body; call it when a
        request's head has arrived, to refuse before reading (and buffering) the body.

        Raises :class:`SignatureError` as :meth:`verify` does. An unknown access key passes
        here on purpose: refusing it sooner than a known key with a wrong signature would
        tell an attacker which keys exist. :meth:`verify` must still be called; hand it the
        returned value as ``head=`` so it does not parse the head again.
        """
        getall = getattr(headers, "getall", None)  # a multidict's: repeated names seen
        authorization = _single(headers, getall, _AUTHORIZATION)
        if authorization is None:
            if "X-Amz-Signature=" in raw_query:
                return self._presigned_head(raw_query, headers)
            raise SignatureError("request is not signed")
        # SDKs put Signature last, so the text before it names the scope: a cache key.
        cache_key, _, signature = authorization.rpartition("Signature=")
        scope = self._scopes.get(cache_key)
        remember = scope is None
        if scope is None:
            credential, signed_headers, signature = _parse_authorization(authorization)
            scope = self._new_scope(credential, signed_headers)
            # Cache only when Signature comes last, so the key holds everything but the signature.
            remember = authorization == f"{cache_key}Signature={signature}"
        amz_date = _single(headers, getall, _AMZ_DATE)
        if amz_date is None:
            raise SignatureError("X-Amz-Date header is missing")
        if abs(self._clock() - self._timestamp(amz_date, scope)) > self._max_skew_s:
            raise SignatureError("X-Amz-Date is too far from the server clock")
        canonical_headers = _canonical_headers(headers, getall, scope.names)  # missing ones: refused here
        return _new_head((scope, signature, _canonical_query(raw_query) if raw_query else "", canonical_headers,
                          amz_date, cache_key if remember else None))

    def _presigned_head(self, raw_query: str, headers: Mapping[str, str]) -> _Head:
        """The X-Amz-* query parameters stand in for the Authorization and X-Amz-Date headers."""
        params = _auth_params(raw_query)
        if params.get("X-Amz-Algorithm") != _ALGORITHM:
            raise SignatureError("presigned: X-Amz-Algorithm missing or unsupported")
        try:
            credential = params["X-Amz-Credential"]
            amz_date = params["X-Amz-Date"]
            signed_headers = params["X-Amz-SignedHeaders"]
            signature = params["X-Amz-Signature"]
            expires_text = params["X-Amz-Expires"]
        except KeyError as exc:
            raise SignatureError(f"presigned: {exc.args[0]} is missing") from None
        if not (expires_text.isascii() and expires_text.isdigit()):
            raise SignatureError("presigned: X-Amz-Expires is not a number of seconds")
        expires = int(expires_text)
        if not 1 <= expires <= _MAX_EXPIRES_S:
            raise SignatureError("presigned: X-Amz-Expires out of range")
        cache_key = (credential, signed_headers)
        scope = self._scopes.get(cache_key)
        remember = scope is None
        if scope is None:
            scope = self._new_scope(credential, signed_headers)
        timestamp, now = self._timestamp(amz_date, scope), self._clock()
        if now < timestamp - self._max_skew_s:
            raise SignatureError("presigned: X-Amz-Date is in the future")
        if now > timestamp + expires:
            raise SignatureError("presigned: URL has expired")
        canonical_query = _canonical_query(raw_query, presigned=True)
        canonical_headers = _canonical_headers(headers, getattr(headers, "getall", None), scope.names)
        return _Head(scope, signature, canonical_query, canonical_headers, amz_date,
                     cache_key if remember else None)

    def _new_scope(self, credential: str, signed_headers: str) -> _Scope:
        """Parse and check a scope the cache does not hold; derives its signing key."""
        parts = credential.split("/")
        if len(parts) != 5 or parts[4] != _TERMINATOR or not all(parts):
            raise SignatureError("credential scope is malformed")
        access_key, day, region, service, _ = parts
        if service != self._service:
            raise SignatureError(f"credential scope is for service {service[:40]!r}")
        if self._region is not None and region != self._region:
            raise SignatureError(f"credential scope is for region {region[:40]!r}")
        secret = self._credentials.get(access_key)
        day_start = _day_start(day)
        names = _signed_header_names(signed_headers)
        # Checked before paying 4 HMACs. An unknown key is signed for with a random secret,
        # so that it is refused exactly when, and as slowly as, a wrong signature.
        key = _signing_key(self._decoy if secret is None else secret, day, region, service)
        return _Scope(
            access_key, day, day_start, "/".join(parts[1:]), signed_headers, names,
            _CONTENT_SHA256 in names, _keyed_hmac(key), secret is not None,
        )  # fmt: skip

    def _check(
        self, head: _Head, method: str, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Rebuild the canonical request and compare signatures; raise unless they match."""
        scope, signature, amz_date = head.scope, head.signature, head.amz_date
        # The payload hash. botocore would sign whatever x-amz-content-sha256 says
        # (UNSIGNED-PAYLOAD included); refusing anything but the real hash keeps the body
        # covered by the signature.
        body_hash = sha256(body).hexdigest() if body else _EMPTY_SHA256
        if scope.body_hash_signed and headers.get(_CONTENT_SHA256, "").strip() != body_hash:
            raise SignatureError("x-amz-content-sha256 does not match the body")
        canonical_request = "\n".join((
            method, _canonical_uri(raw_path), head.canonical_query, head.canonical_headers, scope.signed_headers,
            body_hash,
        ))  # fmt: skip
        try:
            request_hash = sha256(canonical_request.encode()).hexdigest()
        except UnicodeEncodeError:  # lone surrogates in a caller's str (invalid UTF-8 decoded so)
            raise SignatureError("signed data is not valid UTF-8") from None
        mac = scope.keyed.copy()  # copying the keyed state skips re-keying per request
        mac.update(f"{_ALGORITHM}\n{amz_date}\n{scope.scope}\n{request_hash}".encode())
        # compare_digest takes ASCII str only; anything else cannot be a hex signature anyway.
        matches = signature.isascii() and hmac.compare_digest(mac.hexdigest(), signature)
        if not scope.known:  # checked only now, so it costs what a known key costs
            raise SignatureError(f"unknown access key id {scope.access_key[:40]!r}")
        if not matches:
            raise SignatureError("signature does not match")

    def _timestamp(self, amz_date: str, scope: _Scope) -> int:
        """``_timestamp``, the last answer kept: a caller sends the same X-Amz-Date all second."""
        last = self._last_date
        if last[0] == amz_date and amz_date[:8] == scope.day:  # the scope's day: as checked then
            return last[1]
        timestamp = _timestamp(amz_date, scope)
        self._last_date = (amz_date, timestamp)
        return timestamp

    def _remember(self, cache_key: str | tuple[str, str], scope: _Scope) -> None:
        if len(self._scopes) >= _SCOPE_CACHE_SIZE:
            self._scopes.clear()  # entries are cheap to derive again; keeps the bound trivial
        self._scopes[cache_key] = scope


def _single(headers: Mapping[str, str], getall: Callable[..., Any] | None, name: str) -> str | None:
    """The header's only value, None if absent; a repeated auth header is refused, not guessed.
    ``getall`` is the headers' own, if they are a multidict."""
    if getall is None:
        return headers.get(name)
    values = getall(name, None)
    if values is None:
        return None
    if len(values) != 1:
        raise SignatureError(f"{name} header is repeated")
    return str(values[0])


def _parse_authorization(value: str) -> tuple[str, str, str]:
    """``AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`` -> its 3 fields."""
    scheme, _, rest = value.partition(" ")
    if scheme != _ALGORITHM:
        raise SignatureError("Authorization is not AWS4-HMAC-SHA256")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, field = part.strip().partition("=")
        if not sep or name in fields:
            raise SignatureError("Authorization is malformed")
        fields[name] = field
    if fields.keys() != {"Credential", "SignedHeaders", "Signature"}:
        raise SignatureError("Authorization needs exactly Credential, SignedHeaders, Signature")
    return fields["Credential"], fields["SignedHeaders"], fields["Signature"]


def _day_start(day: str) -> int:
    """``YYYYMMDD`` -> POSIX seconds at its midnight UTC; refuses what is not a real date."""
    try:
        if not (len(day) == 8 and day.isascii() and day.isdigit()):
            raise ValueError(day)
        ordinal = date(int(day[:4]), int(day[4:6]), int(day[6:])).toordinal()
    except ValueError:
        raise SignatureError("credential scope date is not YYYYMMDD") from None
    return (ordinal - _EPOCH_ORDINAL) * 86400


def _timestamp(amz_date: str, scope: _Scope) -> int:
    """``YYYYMMDDTHHMMSSZ`` -> POSIX seconds; its date must be the credential scope's."""
    clock = amz_date[9:15]
    if not (len(amz_date) == 16 and amz_date[8] == "T" and amz_date[15] == "Z"
            and clock.isascii() and clock.isdigit()):  # fmt: skip
        raise SignatureError("X-Amz-Date is not YYYYMMDDTHHMMSSZ")
    if amz_date[:8] != scope.day:
        raise SignatureError("credential scope date differs from X-Amz-Date")
    hhmmss = int(clock)
    hour, minute, second = hhmmss // 10000, hhmmss // 100 % 100, hhmmss % 100
    if hour > 23 or minute > 59 or second > 59:
        raise SignatureError("X-Amz-Date is not a valid time")
    return scope.day_start + hour * 3600 + minute * 60 + second


def _signed_header_names(signed_headers: str) -> tuple[str, ...]:
    """Validate SignedHeaders: lowercase, sorted, unique, non-empty, and including ``host``."""
    names = signed_headers.split(";")
    if signed_headers.lower() != signed_headers or "" in names or names != sorted(set(names)):
        raise SignatureError("SignedHeaders is not a sorted list of lowercase names")
    if "host" not in names:
        raise SignatureError("host is not a signed header")
    return tuple([istr(name) for name in names])


def _canonical_uri(raw_path: str) -> str:
    """botocore's ``quote(normalize_url_path(path), safe="/~")``: encoded again, never decoded."""
    if raw_path[:1] != "/" or "//" in raw_path or "/." in raw_path:
        raw_path = _remove_dot_segments(raw_path)
    if not raw_path.strip(_COMMON_PATH):  # every character is one of them
        return raw_path.replace("%", "%25").replace("@", "%40")
    return quote(raw_path, safe="/~")


def _remove_dot_segments(path: str) -> str:
    """botocore.utils.normalize_url_path: drop ``.``, ``..`` and empty segments ("//")."""
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and segments else ""
    return first + "/".join(segments) + last


def _canonical_query(raw_query: str, *, presigned: bool = False) -> str:
    """Pairs re-encoded with ``quote(safe="-_.~")`` and sorted by key, then value.

    Each name and value is percent-decoded first, so the result is the SigV4 encoding of the
    received parameters: for what SDKs send (already encoded so) it equals botocore's
    canonical query, byte for byte. ``+`` is a literal plus (RFC 3986), not a space. The
    presigned form leaves X-Amz-Signature out, as its signer did.
    """
    if not raw_query:
        return ""
    pairs = []
    for item in raw_query.split("&"):
        name, _, value = item.partition("=")
        name = quote(unquote_to_bytes(name), safe="-_.~")
        if presigned and name == "X-Amz-Signature":
            continue
        pairs.append((name, quote(unquote_to_bytes(value), safe="-_.~")))
    pairs.sort()
    return "&".join([f"{name}={value}" for name, value in pairs])


def _auth_params(raw_query: str) -> dict[str, str]:
    """The decoded X-Amz-* parameters of a presigned URL; a repeated one is refused."""
    params: dict[str, str] = {}
    for item in raw_query.split("&"):
        name, _, value = item.partition("=")
        name = unquote(name)
        if name.startswith("X-Amz-"):
            if name in params:
                raise SignatureError(f"presigned: {name[:40]!r} is repeated")
            params[name] = unquote(value)
    return params


def _canonical_headers(headers: Mapping[str, str], getall: Callable[..., Any] | None, names: tuple[str, ...]) -> str:
    """``name:value\\n`` per signed header: inner whitespace collapsed, repeats joined by ','.
    ``getall`` is the headers' own, if they are a multidict."""
    lines = []
    for name in names:
        if getall is not None:
            values = getall(name, None)
        else:
            value = headers.get(name)
            values = None if value is None else [value]
        if values is None:
            raise SignatureError(f"signed header {name[:40]!r} is missing")
        if len(values) == 1:  # the usual case, without a join over a generator
            lines.append(f"{name}:{' '.join(values[0].split())}\n")
        else:
            lines.append(f"{name}:{','.join([' '.join(v.split()) for v in values])}\n")
    return "".join(lines)


_openssl_hmac: Callable[..., Any] | None
try:
    import _hashlib

    _openssl_hmac = _hashlib.hmac_new
except ImportError:  # a Python built without OpenSSL's hashlib
    _openssl_hmac = None


def _keyed_hmac(key: bytes) -> Any:
    """An HMAC-SHA256 keyed with ``key``, to be copied per request: OpenSSL's HMAC object
    itself when this Python has it (its copy, update and hexdigest are C calls, where
    ``hmac.HMAC``'s are Python methods around it: four more frames per request), else the
    stdlib's."""
    if _openssl_hmac is not None:
        try:
            return _openssl_hmac(key, digestmod="sha256")
        except ValueError:  # an OpenSSL that refuses it here (a restricted provider)
            pass
    return hmac.new(key, digestmod=sha256)


def _signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    """The SigV4 key chain: HMAC the date, region, service and terminator in turn."""
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, _TERMINATOR):
        key = hmac.digest(key, part.encode(), "sha256")
    return key
