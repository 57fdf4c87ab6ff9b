"""Slots: the reservation the client edge takes at admission (no sockets here)."""

import pytest

from wsgateway.admission import Hold, Slots


def test_places_run_out_at_the_limit_and_come_back_once_each():
    slots = Slots(2)
    a, b = slots.try_take(), slots.try_take()
    assert a is not None and b is not None and slots.in_use == 2
    assert slots.try_take() is None
    a.release()
    a.release()  # a second release (two exit paths reaching it) gives nothing back twice
    assert slots.in_use == 1 and not a.held and b.held
    c = slots.try_take()
    assert c is not None and slots.try_take() is None


def test_zero_means_no_limit_but_still_counts():
    slots = Slots(0)
    taken = [slots.try_take() for _ in range(1000)]
    assert all(s is not None for s in taken) and slots.in_use == 1000
    with pytest.raises(ValueError):
        Slots(-1)


def test_a_hold_gives_its_place_back_exactly_once() -> None:
    given_back: list[int] = []
    hold = Hold(lambda: given_back.append(1))
    hold.release()
    hold.release()  # the handshake's failure path and the close both reach it
    assert given_back == [1]
    Hold(None).release()  # nothing was taken: nothing to give back
