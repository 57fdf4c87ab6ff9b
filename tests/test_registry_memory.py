"""The registry contract against MemoryRegistry, plus what only the memory registry does."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wsgateway.config import RegistryConfig
from wsgateway.registry import create_registry
from wsgateway.registry.memory import MemoryRegistry

from .registry_contract import CHECKS, Factory, RecordingNode, make_record


@pytest.fixture
def make() -> Factory:
    async def factory(node: RecordingNode) -> MemoryRegistry:
        registry = MemoryRegistry(node.node_id)
        await registry.start(node)
        return registry

    return factory


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_contract(check: Callable[[Factory], object], make: Factory) -> None:
    await check(make)  # type: ignore[misc]


def test_create_registry_defaults_to_memory() -> None:
    registry = create_registry(RegistryConfig(), "n1")
    assert isinstance(registry, MemoryRegistry)
    assert registry.kind == "memory"


async def test_health_names_the_backend() -> None:
    registry = MemoryRegistry("n1")
    await registry.start(RecordingNode("n1"))
    assert await registry.health() == {"backend": "memory", "reachable": True}


async def test_listing_skips_a_connection_the_hub_just_closed() -> None:
    node = RecordingNode("n1")
    registry = MemoryRegistry("n1")
    await registry.start(node)
    closing = node.open(make_record("n1"))
    await registry.add(closing)
    del node.connections[closing.connection_id]  # hub already dropped it, remove() not yet called
    page = await registry.list_tenant("tenant-a", 10, None)
    assert page.connections == []


async def test_claims_are_pruned_as_they_expire() -> None:
    """Memory stays bounded: each claim drops the expired ones; a released key claimed again
    is not dropped early by its first claim's expiry."""
    now = [0.0]
    registry = MemoryRegistry("n1", clock=lambda: now[0])
    await registry.start(RecordingNode("n1"))
    for i in range(1000):
        assert await registry.claim_once(f"k{i}", 10.0)
    await registry.release_once("k0")
    now[0] = 5.0
    assert await registry.claim_once("k0", 10.0) is True  # expires at 15, not at 10
    assert await registry.claim_once("k1", 10.0) is False
    now[0] = 10.0
    assert await registry.claim_once("k1", 10.0) is True
    assert await registry.claim_once("k0", 10.0) is False
    assert len(registry._claimed) == 2  # k0 and k1: the 998 others were pruned
