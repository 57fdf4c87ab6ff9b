"""Who may use the console: password check, sessions with their CSRF tokens, and the lockout
of an address that guesses. Pure state with an injected clock; no I/O.

A session is a token signed with the process's key (HMAC-SHA256) in an ``HttpOnly``,
``SameSite=Strict`` cookie: it carries its expiry, so every worker of ``serve --workers``
(which share the key) accepts it, and the node keeps no state per login. Its CSRF token is
another MAC of the token, which the page reads from ``GET /console/api/session`` and sends
back in the ``X-CSRF-Token`` header of every state-changing call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["KEY_ENV", "LOCK_S", "MAX_WRONG", "Lockout", "Session", "Sessions", "password_matches", "session_key"]

MAX_WRONG = 5  # wrong passwords from one address within LOCK_S lock it out
LOCK_S = 60.0
_MAX_SESSIONS = 10_000  # logged-out tokens remembered; the oldest is dropped past this
KEY_ENV = "WSGATEWAY_CONSOLE_KEY"  # hex, set by the --workers supervisor for its workers
_MAX_ADDRESSES = 10_000  # addresses with recent wrong passwords kept


def password_matches(given: str, expected: str) -> bool:
    """Compare in constant time (for equal lengths; the digests make them equal)."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


@dataclass(frozen=True, slots=True)
class Session:
    """One login: when it ends (epoch s) and its CSRF token."""

    expires_at: float
    csrf: str

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


def session_key() -> bytes:
    """The key that signs session tokens: the one ``wsgateway serve --workers`` hands every
    worker in :data:`KEY_ENV` (a login then holds on whichever worker a request reaches),
    else a random one for this process."""
    shared = os.environ.get(KEY_ENV, "")
    return bytes.fromhex(shared) if len(shared) == 64 else secrets.token_bytes(32)


class Sessions:
    """Signed session tokens: ``<expiry>.<nonce>.<mac>``, valid until the expiry in every
    process that holds the key. A logout is remembered here until the token would expire."""

    def __init__(self, lifetime_s: float, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self._lifetime_s = lifetime_s
        self._key = key
        self._clock = clock
        self._closed: dict[str, float] = {}  # digest of a logged-out token -> its expiry

    def open(self) -> tuple[str, Session]:
        """A new session: (the cookie's token, the session)."""
        expires = int(self._clock() + self._lifetime_s)
        body = f"{expires}.{secrets.token_urlsafe(18)}"
        token = f"{body}.{self._mac('session', body)}"
        return token, Session(float(expires), self._mac("csrf", token))

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, else None (forged, expired or logged out)."""
        body, _, mac = (token or "").rpartition(".")
        expiry, _, nonce = body.partition(".")
        if not nonce or not expiry.isdigit() or not hmac.compare_digest(mac.encode(), self._mac("session", body).encode()):
            return None
        if int(expiry) <= self._clock() or _digest(body) in self._closed:
            return None
        return Session(float(expiry), self._mac("csrf", body + "." + mac))

    def close(self, token: str | None) -> None:
        """Log out: refuse the token from now on in this process (idempotent)."""
        session = self.get(token)
        if session is None or token is None:
            return
        now = self._clock()
        if len(self._closed) >= _MAX_SESSIONS:
            self._closed = {d: t for d, t in self._closed.items() if t > now}
            if len(self._closed) >= _MAX_SESSIONS:
                del self._closed[next(iter(self._closed))]
        self._closed[_digest(token.rpartition(".")[0])] = session.expires_at

    def _mac(self, purpose: str, text: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\n{text}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Lockout:
    """Wrong passwords by address: :data:`MAX_WRONG` of them within :data:`LOCK_S` lock the
    address out until the first of them is LOCK_S old (right password or not)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._wrong: dict[str, deque[float]] = {}

    def locked(self, address: str) -> bool:
        """Whether ``address`` may not try a password now."""
        times = self._recent(address, self._clock())
        return times is not None and len(times) >= MAX_WRONG

    def wrong(self, address: str) -> None:
        """Count one wrong password from ``address``."""
        now = self._clock()
        times = self._recent(address, now)
        if times is None:
            if len(self._wrong) >= _MAX_ADDRESSES:
                self._prune(now)
                if len(self._wrong) >= _MAX_ADDRESSES:
                    del self._wrong[next(iter(self._wrong))]
            times = self._wrong[address] = deque(maxlen=MAX_WRONG)
        times.append(now)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._wrong.get(address)
        if times is None:
            return None
        while times and times[0] <= now - LOCK_S:
            times.popleft()
        if not times:
            del self._wrong[address]
            return None
        return times

    def _prune(self, now: float) -> None:
        for address in list(self._wrong):
            self._recent(address, now)
