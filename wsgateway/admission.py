"""Admission: a bounded number of places, reserved before the work that fills them.

A handshake awaits authentication and ``$connect`` before its connection reaches the hub, so a
limit checked against the hub alone lets every handshake in flight through at once. The
client edge therefore takes a :class:`Slot` at admission and gives it back on every way out:
a refused or failed handshake, a client that left mid-``$connect``, or the connection's close.
Caps on other scopes (per tenant, per usage plan) reuse :class:`Slots` the same way.

Use from the event loop only: taking and releasing are plain counter updates, no locks.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Hold", "Slot", "Slots"]


class Hold:
    """A place held somewhere else (a usage plan's cluster-wide connection cap): like a
    :class:`Slot`, :meth:`release` gives it back exactly once, by calling ``give_back``."""

    __slots__ = ("_give_back",)

    def __init__(self, give_back: Callable[[], object] | None) -> None:
        self._give_back = give_back  # None: nothing was taken (no cap applies)

    def release(self) -> None:
        """Give the place back; call on every exit path. Idempotent."""
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()


class Slot:
    """One reserved place in :class:`Slots`; :meth:`release` gives it back exactly once."""

    __slots__ = ("_slots",)

    def __init__(self, slots: Slots) -> None:
        self._slots: Slots | None = slots

    @property
    def held(self) -> bool:
        """True until :meth:`release` has run."""
        return self._slots is not None

    def release(self) -> None:
        """Give the place back; call on every exit path. Idempotent: a second call (say, the
        handshake's failure path and the socket's close both reaching it) does nothing."""
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._in_use -= 1


class Slots:
    """At most ``limit`` places held at once (0: no limit, places are still counted)."""

    __slots__ = ("_in_use", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit
        self._in_use = 0

    @property
    def in_use(self) -> int:
        """Places taken and not yet released (handshakes in flight plus open connections)."""
        return self._in_use

    def try_take(self) -> Slot | None:
        """Reserve a place before starting the work it stands for; None when all are taken
        (the caller refuses, e.g. with 503). The caller must release the returned slot."""
        if self.limit and self._in_use >= self.limit:
            return None
        self._in_use += 1
        return Slot(self)
