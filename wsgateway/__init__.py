"""wsgateway: a self-hosted WebSocket push gateway, wire-compatible with AWS API Gateway's
WebSocket API (``$connect``/``$disconnect``/``$default`` routes, Lambda-proxy events, the
``@connections`` management API), plus tenant fan-out, and many nodes on one Redis.

Handlers import what they need from here: ``GoneError`` (a gone connection), ``Disconnect``
(raise it to close your own connection), the other management errors, and ``FanoutResult``
(what the handler context's fan-out calls return: an ``int`` with ``unreachable_nodes``).
"""

from .errors import (
    Disconnect,
    GatewayError,
    GoneError,
    LimitExceededError,
    PayloadTooLargeError,
    RegistryUnavailableError,
)
from .fanout import FanoutResult

__all__ = [
    "Disconnect",
    "FanoutResult",
    "GatewayError",
    "GoneError",
    "LimitExceededError",
    "PayloadTooLargeError",
    "RegistryUnavailableError",
    "__version__",
]

__version__ = "0.1.0"
