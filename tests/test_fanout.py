"""Tests for wsgateway.fanout: what handlers and the management edge get from a fan-out."""

from __future__ import annotations

import json

from wsgateway import FanoutResult


def test_a_result_is_the_delivered_count_for_handlers_that_use_an_int() -> None:
    """Handlers written when the fan-out calls returned an int keep working."""
    result = FanoutResult(3, 1)
    assert isinstance(result, int)
    assert result + 1 == 4 and result > 2 and result == 3
    assert json.dumps({"n": result}) == '{"n": 3}'
    assert (result.delivered, result.unreachable_nodes, result.complete) == (3, 1, False)


def test_equality_counts_both_numbers_between_results() -> None:
    assert FanoutResult(2, 0) == FanoutResult(2)
    assert FanoutResult(2, 1) != FanoutResult(2, 0)
    assert FanoutResult(2, 1) == 2  # a plain int compares with the delivered count
    assert hash(FanoutResult(2, 1)) == hash(2)


def test_local_deliveries_add_to_the_remote_result() -> None:
    total = FanoutResult(2, 1).plus_local(3)
    assert (total.delivered, total.unreachable_nodes) == (5, 1)
    assert total.to_json() == {"delivered": 5, "unreachableNodes": 1}
    assert FanoutResult().complete and FanoutResult().to_json() == {"delivered": 0, "unreachableNodes": 0}
