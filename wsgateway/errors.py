"""Every error wsgateway raises on purpose, modelled by what the caller does next.

::

    GatewayError
    ├── ConfigError            bad config file or value: start-up stops, the message names the key
    ├── AuthError              handshake refused with .status (401 missing/invalid token, 403 not allowed)
    ├── Disconnect             a handler raises it to close its own connection with .code/.reason
    ├── HandlerTimeout         a handler ran past its route's time limit (client: "Endpoint request timed out")
    ├── HandlerExit            a Python handler raised SystemExit / KeyboardInterrupt: fails the call, not the node
    ├── IntegrationError       an HTTP or Lambda backend failed (.kind, .reason); the client sees a 500
    ├── RemoteNodeError        the node holding a connection failed handling a call: a bare 500
    └── ManagementError        an AWS-shaped answer: .status + .error_type (x-amzn-ErrorType)
        ├── BadRequestError           400 BadRequestException   (malformed id, bad parameter)
        ├── ForbiddenError            403 ForbiddenException    (unsigned, bad signature, unknown path)
        │   └── SignatureError        403, the SigV4 check failed (reason is logged, never sent)
        ├── NotFoundError             404 NotFoundException     (no such management path)
        ├── GoneError                 410 GoneException         (no such connection, or not open yet)
        │   └── MovedError            not here any more: its reliable session moved to .node_id
        ├── PayloadTooLargeError      413 PayloadTooLargeException (over 128 KiB)
        ├── LimitExceededError        429 LimitExceededException (outbound queue full; clients retry)
        └── RegistryUnavailableError  503 ServiceUnavailableException (Redis unreachable; clients retry)

Internal errors (anything else) are logged with the request id and answered with a bare 500
or an ``Internal server error`` frame: their text never reaches a client.

Close codes used by the gateway are the ``CLOSE_*`` constants below; they are part of the
documented contract (docs/configuration.md, "Close codes").
"""

from __future__ import annotations

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_SERVICE_RESTART",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOKEN_EXPIRED",
    "CLOSE_UNSUPPORTED_DATA",
    "AuthError",
    "BadRequestError",
    "ConfigError",
    "Disconnect",
    "ForbiddenError",
    "GatewayError",
    "GoneError",
    "HandlerExit",
    "HandlerTimeout",
    "IntegrationError",
    "LimitExceededError",
    "ManagementError",
    "MovedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RegistryUnavailableError",
    "RemoteNodeError",
    "SignatureError",
]

CLOSE_NORMAL = 1000  # delete_connection, or the client closed normally
CLOSE_GOING_AWAY = 1001  # idle timeout, max connection duration, node shutdown
CLOSE_PROTOCOL_ERROR = 1002  # frames sent before the upgrade that did not read
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_ABNORMAL = 1006  # no close frame: the peer vanished, or its node died
CLOSE_SLOW_CONSUMER = 1008  # stayed over limits.max_queued_bytes past the grace period
CLOSE_TOKEN_EXPIRED = 1008  # policy violation: the connection outlived its token (auth.on_expiry)
CLOSE_MESSAGE_TOO_BIG = 1009  # a message over limits.max_message_bytes
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012  # this node was declared dead by the others: reconnect elsewhere


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A config file or value is invalid; ``key`` names the offending key (dotted path)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


class AuthError(GatewayError):
    """The handshake is refused with HTTP ``status``; ``reason`` is logged, not sent."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# The codes a close frame may carry (RFC 6455 7.4, as websockets checks them), besides 3000-4999.
_CLOSE_FRAME_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
_MAX_REASON_BYTES = 123  # a close frame's 125 bytes of payload, less the code


class Disconnect(GatewayError):
    """Raised by a handler to close its connection with ``code`` and ``reason``.

    ``code`` must be one a close frame may carry (1000-1003, 1007-1014 or 3000-4999), else
    ValueError (the handler fails: the client gets the error frame, the socket stays open);
    a ``reason`` longer than a close frame holds (123 bytes of UTF-8) is cut to fit."""

    def __init__(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if type(code) is not int or not (code in _CLOSE_FRAME_CODES or 3000 <= code <= 4999):
            raise ValueError(f"Disconnect code must be 1000-1003, 1007-1014 or 3000-4999, got {code!r}")
        encoded = ("" if reason is None else str(reason)).encode("utf-8", "replace")
        if len(encoded) > _MAX_REASON_BYTES:
            reason = encoded[:_MAX_REASON_BYTES].decode("utf-8", "ignore")
        elif type(reason) is not str or not encoded.isascii():
            reason = encoded.decode("utf-8")  # a lone surrogate becomes "?"
        super().__init__(f"disconnect {code} {reason}".strip())
        self.code = code
        self.reason = reason


class HandlerTimeout(GatewayError):
    """A route's function ran past ``limits.handler_timeout_s``; the message names its target."""


class HandlerExit(GatewayError):
    """A Python handler raised SystemExit, KeyboardInterrupt or another BaseException that is
    not a cancellation (``sys.exit()`` in it or in a library it calls): that call fails as if
    it had raised an Exception. Left as it was, it would stop the node's event loop."""

    def __init__(self, target: str, raised: BaseException) -> None:
        super().__init__(f"{target} raised {type(raised).__name__}")


class IntegrationError(GatewayError):
    """A backend (``kind`` "http" or "lambda") failed: ``reason`` is a short metric label
    ("connect", "5xx", "redirect", ...), ``retryable`` says whether sending the same event
    again may succeed. The message (with the target) is logged; the client gets a 500."""

    def __init__(self, kind: str, reason: str, detail: str, *, retryable: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.reason = reason
        self.retryable = retryable


class ManagementError(GatewayError):
    """An error answered in AWS's shape: ``status`` plus the ``x-amzn-ErrorType`` header."""

    status = 500
    error_type = "InternalServerErrorException"
    send_message = True  # False: empty body, as AWS sends 410

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.error_type)
        self.message = message


class BadRequestError(ManagementError):
    status = 400
    error_type = "BadRequestException"


class ForbiddenError(ManagementError):
    status = 403
    error_type = "ForbiddenException"


class SignatureError(ForbiddenError):
    """The SigV4 check failed; the reason is for the log, the client only sees Forbidden."""


class NotFoundError(ManagementError):
    status = 404
    error_type = "NotFoundException"


class GoneError(ManagementError):
    """The connection does not exist (any more), or its ``$connect`` has not finished."""

    status = 410
    error_type = "GoneException"
    send_message = False


class MovedError(GoneError):
    """The connection's reliable session resumed on node ``node_id`` a moment ago: ask there
    (the registry does). Anyone who does not know it sees the 410 it derives from."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id


class PayloadTooLargeError(ManagementError):
    status = 413
    error_type = "PayloadTooLargeException"


class LimitExceededError(ManagementError):
    """The connection's outbound queue is full; boto3 retries 429 on its own."""

    status = 429
    error_type = "LimitExceededException"


class RegistryUnavailableError(ManagementError):
    """The shared registry cannot answer now; the call may be retried (never a false 410).
    ``node_id``: the node asked, which did not answer in time and may have acted."""

    status = 503
    error_type = "ServiceUnavailableException"

    def __init__(self, message: str = "", *, node_id: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id


class RemoteNodeError(GatewayError):
    """The node holding a connection failed while handling a request from this one (its log
    has the details); answered as an internal error, its text never reaches a client."""
