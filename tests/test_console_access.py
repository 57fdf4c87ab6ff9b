"""wsgateway.console.access: signed sessions, CSRF tokens and the lockout of guessing
addresses. Unit tests with a clock in the test's hands; no sockets."""

from __future__ import annotations

import os

from wsgateway.console.access import (
    KEY_ENV,
    LOCK_S,
    MAX_WRONG,
    Lockout,
    Sessions,
    password_matches,
    session_key,
)

KEY = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lasts_its_lifetime_and_logs_out() -> None:
    clock = Clock()
    sessions = Sessions(43200.0, KEY, clock=clock)
    token, session = sessions.open()
    assert sessions.get(token) == session
    assert session.expires_at == 1000.0 + 43200.0
    assert sessions.get(None) is None and sessions.get("") is None
    clock.now += 43199.0
    assert sessions.get(token) == session
    clock.now += 1.0
    assert sessions.get(token) is None  # 12 h after login
    other, _ = sessions.open()
    sessions.close(other)
    assert sessions.get(other) is None
    sessions.close(other)  # idempotent


def test_a_forged_or_altered_token_is_refused() -> None:
    clock = Clock()
    sessions = Sessions(60.0, KEY, clock=clock)
    token, _ = sessions.open()
    expiry, nonce, mac = token.split(".")
    assert sessions.get(f"{int(expiry) + 3600}.{nonce}.{mac}") is None  # a longer life
    assert sessions.get(f"{expiry}.{nonce}x.{mac}") is None
    assert sessions.get(f"{expiry}.{nonce}.{mac[:-1]}") is None
    assert sessions.get(f"{expiry}.{nonce}") is None and sessions.get("garbage") is None
    assert Sessions(60.0, b"another key" * 3, clock=clock).get(token) is None
    assert Sessions(60.0, KEY, clock=clock).get(token) is not None  # another worker, same key


def test_tokens_and_csrf_tokens_are_fresh_and_compared_whole() -> None:
    sessions = Sessions(60.0, KEY, clock=Clock())
    (t1, s1), (t2, s2) = sessions.open(), sessions.open()
    assert t1 != t2 and s1.csrf != s2.csrf and len(s1.csrf) >= 32
    assert sessions.get(t1).csrf == s1.csrf  # the same token always has the same CSRF token
    assert s1.csrf_matches(s1.csrf)
    assert not s1.csrf_matches(s2.csrf)
    assert not s1.csrf_matches(None) and not s1.csrf_matches("") and not s1.csrf_matches(s1.csrf[:-1])


def test_the_key_comes_from_the_workers_supervisor_or_is_random() -> None:
    shared = "ab" * 32
    os.environ[KEY_ENV] = shared
    try:
        assert session_key() == bytes.fromhex(shared)
    finally:
        del os.environ[KEY_ENV]
    assert session_key() != session_key() and len(session_key()) == 32


def test_five_wrong_passwords_lock_the_address_for_the_minute() -> None:
    clock = Clock()
    lockout = Lockout(clock=clock)
    for _ in range(MAX_WRONG - 1):
        lockout.wrong("198.51.100.7")
        clock.now += 1
    assert MAX_WRONG == 5 and not lockout.locked("198.51.100.7")
    lockout.wrong("198.51.100.7")
    assert lockout.locked("198.51.100.7")
    assert not lockout.locked("198.51.100.8")  # per address
    clock.now = 1000.0 + LOCK_S - 0.5  # the first wrong one is not a minute old yet
    assert lockout.locked("198.51.100.7")
    clock.now = 1000.0 + LOCK_S  # now it is: four in the last minute
    assert not lockout.locked("198.51.100.7")


def test_password_comparison() -> None:
    assert password_matches("correct horse", "correct horse")
    assert not password_matches("correct hors", "correct horse")
    assert not password_matches("", "correct horse")
