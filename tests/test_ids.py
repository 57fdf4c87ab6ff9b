import pytest

from wsgateway.ids import MAX_NODE_ID, is_connection_id, new_connection_id, new_node_id, new_request_id, node_of


def test_connection_ids_are_96_bit_base64url():
    ids = {new_connection_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for cid in list(ids)[:100]:
        assert len(cid) == 16 and is_connection_id(cid)


def test_request_and_node_ids():
    assert len(new_request_id()) == 16
    assert new_node_id() != new_node_id()


def test_malformed_ids_are_refused():
    for good in ("L0SM9cOFvHcCIhw=", "JC1dgf9yoAMCK-g=", "abc"):
        assert is_connection_id(good)
    for bad in ("", "a b", "a/b!", "é", "x" * 200, "../etc"):
        assert not is_connection_id(bad)


def test_connection_ids_may_name_their_node():
    for node in ("n0", "nAbC_x-1", "-", "_" * 64, "worker-" + "x" * 64 + "-12", "a.b"[:1]):
        cid = new_connection_id(node)
        assert cid[16] == "." and cid.endswith(node) and len(cid) <= 128
        assert is_connection_id(cid)
        assert node_of(cid) == node
    # the random part is drawn fresh each time, whatever the node is called
    randoms = {new_connection_id("n1")[:16] for _ in range(10_000)}
    assert len(randoms) == 10_000


def test_node_ids_that_cannot_be_named_are_refused():
    for bad in ("", "a.b", "a b", "é", "x" * (MAX_NODE_ID + 1), "a/b"):
        with pytest.raises(ValueError):
            new_connection_id(bad)


def test_ids_that_name_no_node():
    for cid in (new_connection_id(), "L0SM9cOFvHcCIhw=", "abc", "x" * 17, "0123456789abcdef.", "0123456789abcde.n1"):
        assert node_of(cid) is None
    assert node_of("0123456789abcdef.n1.x") is None  # not ours: looked up, never parsed loosely
    for bad in ("0123456789abcdef..", "../etc", "0123456789abcdef." + "x" * 120, ".0123456789abcdef"):
        assert not is_connection_id(bad)


def test_a_node_named_again_is_answered_alike_and_a_malformed_one_never_kept():
    """node_of keeps the node parts it found well-formed (no regex the next time): asked
    again, and after many other nodes, it answers the same; a malformed part stays None."""
    for _ in range(2):
        assert node_of("0123456789abcdef.n1") == "n1"
        assert node_of("0123456789abcdef.n1.x") is None and node_of("0123456789abcdef.n 1") is None
    for i in range(3000):  # more than are kept
        assert node_of(f"0123456789abcdef.n{i}") == f"n{i}"
    assert node_of("0123456789abcdef.n1") == "n1" and node_of("0123456789abcdef.n1.x") is None
