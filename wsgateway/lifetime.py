"""Token lifetime on a live connection: ``[auth] on_expiry`` and ``[auth] refresh_action``.

AWS API Gateway checks a token at the handshake only (``on_expiry = "ignore"``, the default).
With ``on_expiry = "close"`` a connection's *deadline* is its token's ``exp`` plus
``auth.leeway_s``, on the wall clock; the gateway's sweep closes it with 1008 ``Token expired``
once that has passed (a token without ``exp`` sets none). Any :class:`~wsgateway.auth.Principal`
with ``expires_at`` gets one, whatever authenticated it.

With ``refresh_action`` set, a text message whose selected route key equals it is answered by
the gateway and never reaches a handler, even when a route has that key: the message's
``token`` field is checked as a handshake's token is, and must name the connection's principal
and tenant; the deadline then becomes the new token's. This module decides; the dispatcher
sends the answer and :mod:`wsgateway.gateway`'s sweep does the closing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .errors import CLOSE_TOKEN_EXPIRED, AuthError
from .routing import SelectionExpression, json_object

if TYPE_CHECKING:
    from .auth import Principal
    from .config import AuthConfig
    from .records import ConnectionRecord

__all__ = ["CLOSE_TOKEN_EXPIRED", "TOKEN_EXPIRED", "TokenLifetime"]

TOKEN_EXPIRED = "Token expired"  # the close reason, and $disconnect's disconnectReason



class TokenLifetime:
    """One gateway's policy for tokens on open connections; build it at start, after the
    routes (the selection expression is known to be valid then).

    ``verify`` checks a token as at the handshake (``Authenticator.verify_token``); ``clock``
    is the wall clock (epoch seconds) deadlines are read against.
    """

    __slots__ = ("action", "clock", "_close", "_leeway", "_selection", "_verify")

    def __init__(
        self,
        config: AuthConfig,
        selection_expression: str,
        verify: Callable[[str], Awaitable[Principal]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.action = config.refresh_action  # "" = refresh off
        self.clock = clock
        self._close = config.on_expiry == "close"
        self._leeway = config.leeway_s
        self._selection = SelectionExpression(selection_expression) if self.action else None
        self._verify = verify

    def deadline(self, expires_at: float | None) -> float | None:
        """The deadline (epoch s) of a connection whose token expires at ``expires_at``:
        ``exp`` + leeway with ``on_expiry = "close"``, else (or without ``exp``) None."""
        if not self._close or expires_at is None:
            return None
        return expires_at + self._leeway

    def is_refresh(self, message: str | bytes, route_key: str | None) -> bool:
        """Whether a client message is a token refresh; call once per message, before
        running a route, with the key the router selected for it (None: none, not even
        ``$default``). Binary frames never are. A message the router sent to ``$default``
        (or nowhere) is parsed again here, since the router compares only configured keys.
        """
        action = self.action
        if not action or not isinstance(message, str):
            return False
        if route_key == action:
            return True
        if route_key is not None and route_key != "$default":
            return False
        body = json_object(message)
        assert self._selection is not None  # compiled whenever action is set
        return body is not None and self._selection.evaluate(body) == action

    async def renew(self, record: ConnectionRecord, message: str, deadline: float | None) -> Principal:
        """Check the token a refresh ``message`` carries for the connection of ``record``
        whose current deadline is ``deadline``; return the token's principal.

        Raises :class:`AuthError` (its reason is for the log only) when the deadline has
        already passed, the body has no ``token`` string, the token fails any handshake
        check, or it names another principal or tenant.
        """
        if deadline is not None and deadline <= self.clock():
            raise AuthError(401, "the connection's token had already expired")
        body = json_object(message)
        token = None if body is None else body.get("token")
        if not isinstance(token, str) or not token:
            raise AuthError(401, 'no "token" string in the refresh message')
        principal = await self._verify(token)
        if principal.principal_id != record.principal_id:
            raise AuthError(401, "the new token names another principal (sub)")
        if principal.tenant != record.tenant:
            raise AuthError(403, "the new token names another tenant")
        return principal


