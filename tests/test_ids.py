from wsgateway.ids import is_connection_id, new_connection_id, new_node_id, new_request_id


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
