"""The value types every layer shares: what the cluster knows about one connection.

They sit at the bottom of the package so that the hub, the connection and the event builder
can name a connection without importing the registry (the port that stores them).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConnectionInfo", "ConnectionRecord", "iso8601"]


def iso8601(epoch_s: float) -> str:
    """``2024-05-01T12:34:56.789Z``: the timestamp form every AWS SDK parses."""
    millis = int(epoch_s * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """What the cluster knows about one accepted connection; immutable for its lifetime.

    It carries everything a surviving node needs to build the ``$disconnect`` event of a
    connection whose node died (identity and authorizer context included).
    """

    connection_id: str
    node_id: str
    tenant: str
    principal_id: str
    connected_at: float  # epoch seconds
    source_ip: str
    user_agent: str
    authorizer: Mapping[str, Any] = field(default_factory=dict)  # requestContext.authorizer
    domain_name: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A record plus when it last carried a data frame (epoch seconds); what GET answers."""

    record: ConnectionRecord
    last_active_at: float

    def to_json(self) -> dict[str, Any]:
        """The GetConnection body, camelCase and ISO-8601 as AWS clients parse it."""
        rec = self.record
        return {
            "connectedAt": iso8601(rec.connected_at),
            "lastActiveAt": iso8601(self.last_active_at),
            "identity": {"sourceIp": rec.source_ip, "userAgent": rec.user_agent},
        }

    def to_listing_json(self) -> dict[str, Any]:
        """One entry of a tenant listing: the GetConnection body plus who it is."""
        body = self.to_json()
        rec = self.record
        body["connectionId"] = rec.connection_id
        body["tenant"] = rec.tenant
        body["principalId"] = rec.principal_id
        body["nodeId"] = rec.node_id
        return body
