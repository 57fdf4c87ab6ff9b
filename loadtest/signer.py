"""SigV4 signing for the load generator's management POSTs, with the signing key cached.

Why not botocore's ``SigV4Auth`` per request: it costs the generator ~30 µs a request (an
``AWSRequest``, header maps, and four HMACs to derive the signing key every time), which on a
two-core machine is as much as the server's whole request and made the generator the limit.
What a long-running SDK client could do instead is done here: the signing key is derived
once per (day, region) and reused, and each request pays two SHA-256 and one HMAC.

The rules are botocore's, for the one request shape the generator sends (``POST``, no query,
``host`` and ``x-amz-date`` signed, payload hashed as over plain HTTP). :meth:`Signer.check`
signs a request with botocore's own signer and with this one and raises unless the headers
are identical; :class:`~loadtest.backend.Backend` calls it once when it starts, so a
signature that botocore would not compute never reaches a target.

Pure: no I/O; time comes from the injected ``clock``.
"""

from __future__ import annotations

import calendar
import hmac
import time
from collections.abc import Callable
from hashlib import sha256
from urllib.parse import quote

__all__ = ["REGION", "SERVICE", "Signer"]

REGION = "us-east-1"
SERVICE = "execute-api"
_ALGORITHM = "AWS4-HMAC-SHA256"
_PATH_CACHE = 100_000  # canonical paths kept (one per posted connection id)


class Signer:
    """Signs ``POST`` requests for one access key; build one per backend connection pool."""

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        region: str = REGION,
        service: str = SERVICE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._access_key = access_key
        self._secret = secret_key
        self._region = region
        self._service = service
        self._clock = clock
        self._keys: dict[str, bytes] = {}  # day -> signing key
        self._paths: dict[str, str] = {}  # raw path -> canonical path
        self._second = -1
        self._amz_date = ""

    def headers(self, host: str, path: str, body: bytes) -> str:
        """Return the ``X-Amz-Date`` and ``Authorization`` header lines (CRLF-terminated).

        ``host`` is the Host header as sent (``127.0.0.1:8081``); ``path`` is the raw,
        already percent-encoded request path, without a query.
        """
        amz_date = self._date()
        day = amz_date[:8]
        canonical_path = self._paths.get(path)
        if canonical_path is None:
            if len(self._paths) >= _PATH_CACHE:
                self._paths.clear()
            # botocore quotes the path as sent, so "%3D" becomes "%253D" (non-S3 services).
            canonical_path = self._paths[path] = quote(path, safe="/~")
        canonical = (
            f"POST\n{canonical_path}\n\nhost:{host}\nx-amz-date:{amz_date}\n\nhost;x-amz-date\n"
            f"{sha256(body).hexdigest()}"
        )
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign = f"{_ALGORITHM}\n{amz_date}\n{scope}\n{sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(day), to_sign.encode(), sha256).hexdigest()
        return (
            f"X-Amz-Date: {amz_date}\r\nAuthorization: {_ALGORITHM} Credential={self._access_key}/{scope}, "
            f"SignedHeaders=host;x-amz-date, Signature={signature}\r\n"
        )

    def check(self, host: str, path: str, body: bytes) -> None:
        """Sign one request with botocore and with this signer; raise ``ValueError`` unless
        both produce the same ``X-Amz-Date`` and ``Authorization``.

        Call once before a run (botocore must be importable: the ``loadtest`` extra has it).
        """
        from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
        from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
        from botocore.credentials import Credentials  # type: ignore[import-untyped]

        request = AWSRequest(method="POST", url=f"http://{host}{path}", data=body)
        SigV4Auth(Credentials(self._access_key, self._secret), self._service, self._region).add_auth(request)
        amz_date = request.headers["X-Amz-Date"]  # botocore reads its own clock
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        expected = f"X-Amz-Date: {amz_date}\r\nAuthorization: {request.headers['Authorization']}\r\n"
        mine = Signer(self._access_key, self._secret, region=self._region, service=self._service,
                      clock=lambda: signed_at).headers(host, path, body)  # fmt: skip
        if mine != expected:
            raise ValueError(f"SigV4 signer disagrees with botocore:\n{mine!r}\n{expected!r}")

    def _date(self) -> str:
        now = int(self._clock())
        if now != self._second:  # formatted once a second, not once a request
            self._second = now
            self._amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        return self._amz_date

    def _key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = ("AWS4" + self._secret).encode()
            for part in (day, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), sha256).digest()
            self._keys = {day: key}  # one day at a time; midnight derives the next
        return key
