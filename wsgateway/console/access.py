"""Who may use the console: password check, sessions with their CSRF tokens, and the lockout
of an address that guesses. Pure state with an injected clock; no I/O.

A session is a random token in an ``HttpOnly``, ``SameSite=Strict`` cookie; the server keeps
only its SHA-256 (a lookup by it tells a timing observer nothing), its expiry and its CSRF
token, which the page reads from ``GET /console/api/session`` and sends back in the
``X-CSRF-Token`` header of every state-changing call.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LOCK_S", "MAX_WRONG", "Lockout", "Session", "Sessions", "password_matches"]

MAX_WRONG = 5  # wrong passwords from one address within LOCK_S lock it out
LOCK_S = 60.0
_MAX_SESSIONS = 1000  # the oldest is dropped past this
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


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """Live sessions of one node, by their cookie token's digest."""

    def __init__(self, lifetime_s: float, *, clock: Callable[[], float] = time.time) -> None:
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._by_digest: dict[str, Session] = {}

    def open(self) -> tuple[str, Session]:
        """A new session: (the cookie's token, the session)."""
        now = self._clock()
        self._prune(now)
        if len(self._by_digest) >= _MAX_SESSIONS:
            del self._by_digest[next(iter(self._by_digest))]  # oldest first: dicts keep insertion order
        token = secrets.token_urlsafe(32)
        session = Session(now + self._lifetime_s, secrets.token_urlsafe(32))
        self._by_digest[_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, else None (unknown or expired)."""
        if not token:
            return None
        session = self._by_digest.get(_digest(token))
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._by_digest[_digest(token)]
            return None
        return session

    def close(self, token: str | None) -> None:
        """Log out: forget the session (idempotent)."""
        if token:
            self._by_digest.pop(_digest(token), None)

    def _prune(self, now: float) -> None:
        expired = [d for d, s in self._by_digest.items() if s.expires_at <= now]
        for digest in expired:
            del self._by_digest[digest]


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
