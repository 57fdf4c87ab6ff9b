"""The console's JSON answers, built from the gateway: the cluster through ``Gateway.survey``
(every node's :mod:`wsgateway.history`), tenants and connections through the same calls the
management API makes. Each function returns a JSON-able value or raises a
:class:`~wsgateway.errors.ManagementError` (the console answers its status).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BadRequestError
from ..history import merge_samples
from ..records import ConnectionInfo, iso8601

if TYPE_CHECKING:
    from ..gateway import Gateway

__all__ = ["connection", "failures", "overview", "tenant", "tenant_connections", "tenants"]

MAX_FAILURES = 200
_SORTS = {"connections": 0, "traffic": 1, "throttled": 2, "name": -1}
_MAX_TENANTS_SHOWN = 500


async def overview(gateway: Gateway, since: float) -> dict[str, Any]:
    """Every node (answering or not), cluster totals of the last sample, and the cluster's
    samples after epoch second ``since`` (0: the whole 15 minutes)."""
    answers = await gateway.survey({"what": "overview", "since": since})
    nodes: list[dict[str, Any]] = []
    samples = []
    for node_id in sorted(answers):
        answer = answers[node_id]
        if answer is None:
            nodes.append({"node": node_id, "answering": False})
            continue
        nodes.append({**answer["node"], "answering": True})
        samples.append(answer["samples"])
    series = merge_samples(samples)
    totals = {
        "nodes": len(nodes),
        "answering": sum(1 for n in nodes if n["answering"]),
        "connections": sum(n.get("connections", 0) for n in nodes),
    }
    return {"servedBy": gateway.node_id, "nodes": nodes, "totals": totals, "samples": series}


async def tenants(gateway: Gateway, sort: str) -> dict[str, Any]:
    """Every tenant with a connection or recent traffic on any node: connections, messages in
    and out in the last minute, calls its plan refused; sorted by ``sort`` (descending), the
    first 500 shown."""
    if sort not in _SORTS:
        raise BadRequestError(f"sort must be one of {', '.join(_SORTS)}")
    answers = await gateway.survey({"what": "tenants"})
    merged: dict[str, list[int]] = {}
    for answer in answers.values():
        if answer is None:
            continue
        for name, (conns, traffic, throttled) in answer["tenants"].items():
            row = merged.setdefault(name, [0, 0, 0, 0])
            row[0] += conns
            row[1] += traffic
            row[2] += throttled
            row[3] += 1 if conns else 0
    column = _SORTS[sort]
    ordered = sorted(merged.items(), key=lambda item: (-item[1][column] if column >= 0 else 0, item[0]))
    rows = [{"tenant": name, "connections": r[0], "trafficPerMin": r[1], "throttled": r[2], "nodes": r[3]}
            for name, r in ordered[:_MAX_TENANTS_SHOWN]]
    missing = sorted(node for node, answer in answers.items() if answer is None)
    return {"tenants": rows, "total": len(merged), "sort": sort, "nodesNotAnswering": missing}


async def tenant(gateway: Gateway, name: str) -> dict[str, Any]:
    """The tenant's plan and usage today (as ``GET /@tenants/{t}/usage``), its messages in and
    out in the last minute and the calls its plan refused, all nodes together."""
    usage = await gateway.tenant_usage(name)
    answers = await gateway.survey({"what": "tenant", "tenant": name})
    counted = [answer["tenant"] for answer in answers.values() if answer is not None]
    return {"tenant": name, **usage, "trafficPerMin": sum(c[1] for c in counted),
            "throttled": sum(c[2] for c in counted),
            "nodesNotAnswering": sorted(node for node, answer in answers.items() if answer is None)}


async def tenant_connections(gateway: Gateway, name: str, limit: int, next_token: str | None) -> dict[str, Any]:
    """One page of the tenant's connections on every node (as the listing API)."""
    page = await gateway.list_tenant(name, limit, next_token)
    return {"connections": [c.to_listing_json() for c in page.connections], "nextToken": page.next_token}


async def connection(gateway: Gateway, connection_id: str) -> dict[str, Any]:
    """A connection's whole record, wherever it is; raises GoneError (410)."""
    return _record_json(await gateway.connection_info(connection_id))


async def failures(gateway: Gateway) -> dict[str, Any]:
    """The last 200 failures on all nodes together, newest first."""
    answers = await gateway.survey({"what": "failures"})
    rows = [f for answer in answers.values() if answer is not None for f in answer["failures"]]
    rows.sort(key=lambda f: f["time"], reverse=True)
    shown = [{**f, "at": iso8601(f["time"])} for f in rows[:MAX_FAILURES]]
    missing = sorted(node for node, answer in answers.items() if answer is None)
    return {"failures": shown, "nodesNotAnswering": missing}


def _record_json(info: ConnectionInfo) -> dict[str, Any]:
    rec = info.record
    return {
        "connectionId": rec.connection_id,
        "tenant": rec.tenant,
        "principalId": rec.principal_id,
        "nodeId": rec.node_id,
        "connectedAt": iso8601(rec.connected_at),
        "lastActiveAt": iso8601(info.last_active_at),
        "sourceIp": rec.source_ip,
        "userAgent": rec.user_agent,
        "authorizer": dict(rec.authorizer),
    }
