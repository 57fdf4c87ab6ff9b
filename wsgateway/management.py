"""The management edge: AWS's ``@connections`` API plus fan-out, groups and probes.

Routes (each also under ``/{stage}``; ``@`` may arrive as ``%40``; ids arrive URL-encoded):

=======  ==================================  =====================================================
POST     /@connections/{id}                  deliver the raw body as one frame -> 200
GET      /@connections/{id}                  connectedAt, lastActiveAt, identity -> 200
DELETE   /@connections/{id}                  close with 1000 -> 204
POST     /@tenants/{tenant}/messages         to every connection of the tenant -> {"delivered": N, "unreachableNodes": K}
POST     /@tenants/{tenant}/users/{user}/messages    ... to every connection of one user (token sub)
POST     /@tenants/{tenant}/groups/{group}/messages  ... to every connection in a group
PUT      /@connections/{id}/groups/{group}   add the connection to a group of its tenant -> 204
DELETE   /@connections/{id}/groups/{group}   take it out -> 204
GET      /@tenants/{tenant}/connections      {"connections": [...], "nextToken": ...} (?limit=&nextToken=)
GET      /@tenants/{tenant}/usage            its usage plan, connections and today's counts (docs/configuration.md)
GET      /health                             no auth; 200 once started and until draining, else 503
GET      /ready                              no auth; 200 only while the registry is reachable and settled
GET      /metrics                            Prometheus text of the node's counters; ``metrics_auth`` decides who
=======  ==================================  =====================================================

A fan-out answers 200 when every node holding the tenant confirmed, 207 when some did not
(``unreachableNodes`` > 0: their clients did not get it, retrying duplicates it for the
others), 503 when nobody got it.

Errors are what botocore parses: the status, ``x-amzn-ErrorType`` and a JSON body (empty for
410, as AWS). The path is parsed from the raw request line, so ``%2F`` inside an id never
splits it, and SigV4 is checked against exactly the bytes the client signed.

What can be decided from a request's head is decided there, before its body is read
(:meth:`ManagementServer._check_head`): ``.`` and ``..`` path segments (400, so a signature
made for one path never runs as another that normalises to it; empty segments are dropped,
as SigV4 drops them), the Host and Origin headers (403: DNS rebinding, web pages posting),
and every SigV4 check but the signature itself. A failed SigV4 check is answered as AWS
answers it, one message whatever the reason (with a Date, from which SDKs correct a skewed
clock); the reason is logged. docs/security.md says what this does and does not cover.

What the HTTP server refuses itself (a malformed, late or oversize request, an upgrade, a
connection past the cap) is answered in the same shape, counted and logged as every other
refusal (:meth:`ManagementServer._server_refusal`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Coroutine
from importlib.machinery import EXTENSION_SUFFIXES
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import orjson
from multidict import istr

from .accesslog import bounded
from .auth import MAX_TENANT_CHARS
from .console import Console, is_console_path
from .errors import (
    BadRequestError,
    ForbiddenError,
    ManagementError,
    NotFoundError,
    PayloadTooLargeError,
    RegistryUnavailableError,
    SignatureError,
)
from .http import Deferred, HttpServer, Request, Response
from .ids import is_connection_id, new_request_id
from .replay import replay_key
from .sigv4 import SigV4Verifier

if TYPE_CHECKING:
    from .config import ManagementConfig
    from .gateway import Gateway

__all__ = ["COMPILED", "ManagementServer"]

log = logging.getLogger("wsgateway.management")

# Whether the management edge (this module, http and sigv4, compiled together or not at all:
# setup.py) runs as mypyc's native code; a compiled module's file is the extension's.
COMPILED = __file__.endswith(tuple(EXTENSION_SUFFIXES))

_CONNECTIONS = frozenset({"@connections", "%40connections"})
_TENANTS = frozenset({"@tenants", "%40tenants"})
_JSON = "application/json"
_POSTED_HEAD = f"Content-Type: {_JSON}\r\nx-amzn-RequestId: %s\r\n".encode()
# Header names looked up in every request, made case-insensitive once (not per lookup).
_HOST, _ORIGIN = istr("Host"), istr("Origin")
_PROBES = frozenset({"health", "ready", "metrics"})
_HOST_ANSWERS = 64  # distinct Host values whose answer is kept
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
# What AWS answers a request that is unsigned / whose signature fails any check. One answer
# for every failure, unknown access key included, so that none can be told from another.
_UNSIGNED = (b'{"message":"Missing Authentication Token"}', "MissingAuthenticationTokenException")
_BAD_SIGNATURE = (
    (b'{"message":"The request signature we calculated does not match the signature you provided.'
     b' Check your AWS Secret Access Key and signing method.'
     b' Consult the service documentation for details."}'),
    "InvalidSignatureException",
)
# The HTTP server's own refusals (see _server_refusal): status -> x-amzn-ErrorType.
_SERVER_REFUSALS = {
    400: BadRequestError.error_type,
    408: "RequestTimeoutException",
    413: PayloadTooLargeError.error_type,
    431: "RequestHeaderFieldsTooLargeException",
    500: ManagementError.error_type,
    503: RegistryUnavailableError.error_type,  # ServiceUnavailableException: SDKs retry it
}
# (method, sub-resource or False) -> operation
_CONNECTION_OPS = {
    ("POST", False): "PostToConnection", ("GET", False): "GetConnection", ("DELETE", False): "DeleteConnection",
    ("PUT", "groups"): "JoinGroup", ("DELETE", "groups"): "LeaveGroup",
}
_CONNECTION_OPERATIONS = frozenset(_CONNECTION_OPS.values())  # their target is a connection id
# (method, *the fixed segments after the tenant) -> operation
_TENANT_OPS = {
    ("POST", "messages"): "PostToTenant", ("GET", "connections"): "ListTenantConnections",
    ("POST", "users", "messages"): "PostToUser", ("POST", "groups", "messages"): "PostToGroup",
    ("GET", "usage"): "GetTenantUsage",
}


class ManagementServer:
    """The management listener of one node."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        cfg = gateway.config.management
        self._stage = gateway.config.stage
        self._verifier: SigV4Verifier | None = None
        self._replay_skew_s = cfg.max_clock_skew_s if cfg.replay_protection else None
        if cfg.auth == "sigv4":
            self._verifier = SigV4Verifier(
                {c.access_key_id: c.secret_access_key for c in cfg.credentials},
                region=cfg.region,
                max_skew_s=cfg.max_clock_skew_s,
            )
        self._cfg = cfg
        self._hosts = _allowed_hosts(cfg)
        # The console is not signed: SigV4's "any Host" does not hold for it (DNS rebinding).
        self._console_hosts = _allowed_hosts(cfg, signed=False)
        self._host_answers: dict[str, bool] = {}  # Host header value -> allowed (_host_value_allowed)
        self._origins = frozenset(cfg.allowed_origins)
        self._metrics_token = f"Bearer {cfg.metrics_token}".encode() if cfg.metrics_token else b""
        self._server: HttpServer | None = None
        self.port = 0
        # /console on this port (docs/console.md): its own login instead of SigV4
        self.console = Console(gateway) if gateway.config.console_enabled else None

    async def start(self, *, sock: socket.socket) -> int:
        """Serve on a listening socket; return its port."""
        cfg = self._cfg
        self._server = HttpServer(
            self._handle,
            max_body=cfg.max_post_bytes,
            idle_timeout_s=cfg.idle_timeout_s,
            header_timeout_s=cfg.header_timeout_s,
            request_timeout_s=cfg.request_timeout_s,
            max_connections=cfg.max_connections,
            head_check=self._check_head,
            refusal=self._server_refusal,
        )
        self.port = await self._server.start(sock)
        if self.console is not None:
            self.console.port = self.port
        return self.port

    async def close(self) -> None:
        """Stop accepting and finish requests in progress (bounded); idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.close(timeout=5.0)

    # ---------------------------------------------------------------- request

    def _check_head(self, request: Request) -> Response | None:
        """Called by the HTTP server once a request's head is in: an answer refuses the
        request before its body is read (and buffered); None lets it through to _handle.
        A refusal's latency is counted from when it is decided (a request let through,
        nearly all, reads no clock here)."""
        headers = request.headers
        try:
            if self.console is not None and request.raw_path[:8] == "/console" and is_console_path(request.raw_path):
                if len(headers.getall("Host", ())) > 1 or not self._console_host_allowed(headers.get("Host", "")):
                    raise ForbiddenError(f"Host {headers.get('Host', '')[:80]!r} is not allowed")
                request.head_state = "console"
                return self.console.check_head(request)
            segments = self._segments(request.raw_path)
            probe = _probe_of(request.method, segments) if len(segments) == 1 else None
            hosts = headers.getall(_HOST, ())
            if len(hosts) > 1:
                raise BadRequestError("Host header is repeated")
            if _ORIGIN in headers and (origin := headers[_ORIGIN]) not in self._origins:
                raise ForbiddenError(f"Origin {origin[:80]!r} is not allowed")  # backends send none
            host = hosts[0] if hosts else ""
            if not (self._host_answers.get(host) or self._host_value_allowed(host)):
                raise ForbiddenError(f"Host {host[:80]!r} is not allowed")
            route: tuple[str, str, str] | ManagementError | None = None
            if probe is None:
                metrics_auth = ""
                try:
                    route = self._route(request.method, segments)
                except ManagementError as exc:
                    route = exc  # answered after the body and the signature, as AWS orders them
            else:
                metrics_auth = self._cfg.metrics_auth if probe == "metrics" else ""
                if metrics_auth == "bearer" and not self._bearer_ok(request):
                    started = time.perf_counter()
                    response = Response(401, b'{"message":"Unauthorized"}',
                                        [("Content-Type", _JSON), ("WWW-Authenticate", "Bearer")])
                    return self._finish(request, new_request_id(), "", "", response, started)
            # A post to a connection is ordered by its handler's first step (the frame
            # queued here, or the request to its owner published): the next pipelined one may
            # start while it waits for the other node's answer, and a local one is answered
            # by that step, with no task. Not with replay protection, whose check awaits
            # Redis before the post.
            request.concurrent = post = (
                type(route) is tuple and route[0] == "PostToConnection" and self._replay_skew_s is None
            )
            signed = None
            if self._verifier is not None and (probe is None or metrics_auth == "sigv4"):
                signed = self._verifier.check_head(request.raw_query, headers)
            # _handle parses none of it again; ``post``: it answers the request itself
            request.head_state = (probe, route, signed, post)
        except ManagementError as exc:
            started = time.perf_counter()
            request_id = new_request_id()
            return self._finish(request, request_id, "", "", self._refusal(request, exc, request_id), started)
        except Exception:
            started = time.perf_counter()
            request_id = new_request_id()
            log.exception("management request head check failed (requestId=%s)", request_id)
            response = _error_response(ManagementError("Internal server error"), request_id)
            return self._finish(request, request_id, "", "", response, started)
        return None

    def _server_refusal(self, status: int, reason: str, request: Request) -> Response:
        """The HTTP server refuses ``request`` itself (see http.Refusal): its answer in AWS's
        shape, counted and logged as every other refusal; under the operation the head
        check named, if it ran (a post's 413 is counted as when its body is drained)."""
        started = time.perf_counter()
        request_id = new_request_id()
        if status == 413:
            reason = "Message too long"  # what every 413 of this API says
        elif status == 500:  # a handler failed: its error was logged by the server, this says the id
            log.error("management request failed (requestId=%s)", request_id)
        error_type = _SERVER_REFUSALS.get(status, ManagementError.error_type)
        body = orjson.dumps({"message": reason})
        response = Response(status, body, [("Content-Type", _JSON), ("x-amzn-ErrorType", error_type),
                                           ("x-amzn-RequestId", request_id)])
        operation, target = "", ""
        state = request.head_state
        if type(state) is tuple and type(state[1]) is tuple:
            operation, target = state[1][0], state[1][1]
        return self._finish(request, request_id, operation, target, response, started)

    def _handle(self, request: Request) -> Response | Deferred | Coroutine[Any, Any, Response]:
        """Serve a request whose head passed :meth:`_check_head`. A post to a connection
        without replay protection (nearly every request) is served here, as :meth:`_serve`
        would serve it: answered at once when the connection is held here, else from the
        callback its owner's answer arrives in (a :class:`_RemotePost`); every other request
        by the coroutine :meth:`_serve`."""
        state = request.head_state
        if type(state) is not tuple or not state[3]:
            return self._serve(request)
        started = time.perf_counter()
        request_id = new_request_id()
        target = state[1][1]
        try:
            if request.body_too_large:
                raise PayloadTooLargeError("Message too long")
            if self._verifier is not None:
                self._verifier.verify(request.method, request.raw_path, request.raw_query, request.headers, request.body,
                                      head=state[2])
            elsewhere = self.gateway.post_here(target, request.body)
            if elsewhere is not None:
                remote = _RemotePost(self, request, request_id, target, started)
                self.gateway.post_elsewhere(target, *elsewhere, remote)
                return remote
            response = _posted(request_id)
        except Exception as exc:  # noqa: BLE001 - answered as _serve answers it
            response = self._failure(request, exc, request_id)
        return self._finish(request, request_id, "PostToConnection", target, response, started)

    async def _serve(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = new_request_id()
        operation, target = "", ""
        claimed: str | None = None  # the signature's one-time key, once replay protection took it
        if request.head_state == "console" and self.console is not None:
            return await self.console.handle(request)
        try:
            assert isinstance(request.head_state, tuple)  # _check_head always ran first
            probe, route, signed, _ = request.head_state
            if probe is not None and (probe != "metrics" or self._cfg.metrics_auth != "sigv4"):
                return await self._probe(probe)  # bearer metrics were checked with the head
            if request.body_too_large:
                if type(route) is tuple:  # counted and logged as the fast path counts a post's
                    operation, target = route[0], route[1]
                raise PayloadTooLargeError("Message too long")
            if self._verifier is not None:
                self._verifier.verify(request.method, request.raw_path, request.raw_query, request.headers, request.body,
                                      head=signed)
                if self._replay_skew_s is not None and probe is None:
                    key, ttl_s = replay_key(request.headers, request.raw_query, self._replay_skew_s)
                    await self.gateway.refuse_replay(key, ttl_s)
                    claimed = key
            if probe is not None:
                return await self._probe(probe)
            if isinstance(route, ManagementError):
                raise route
            operation, target, qualifier = route
            response = await self._execute(operation, target, qualifier, request.raw_query, request.body)
            response.headers.append(("x-amzn-RequestId", request_id))
        except Exception as exc:  # noqa: BLE001 - every failure is answered, in AWS's shape
            response = self._failure(request, exc, request_id)
        if claimed is not None and (response.status == 429 or response.status >= 500):
            await self.gateway.allow_retry(claimed)  # SDKs retry these, signed alike
        return self._finish(request, request_id, operation, target, response, started)

    def _segments(self, raw_path: str) -> list[str]:
        """The path's segments, empty ones dropped and the stage too; 400 for ``.`` or ``..``
        (see _normalised)."""
        segments = raw_path.split("/")[1:]
        if raw_path[:1] != "/" or "" in segments or "." in segments or ".." in segments or (
            "%" in raw_path and any(unquote(segment) in (".", "..") for segment in segments)
        ):
            segments = _normalised(raw_path, segments)
        if segments[0] == self._stage and len(segments) > 1:
            segments = segments[1:]
        return segments

    def _console_host_allowed(self, host: str) -> bool:
        """Whether the console may answer a request naming ``host``: as the unsigned API
        by default (loopback names, ``management.host``, any IP address), whatever
        ``management.auth``; a page of a rebound name must not reach an open console."""
        name = _host_name(host)
        return "*" in self._console_hosts or name in self._console_hosts or (
            not self._cfg.allowed_hosts and _is_ip(name))

    def _host_value_allowed(self, host: str) -> bool:
        """Whether a Host header's value may be served; answers are kept, as callers send the
        same few values with every request."""
        allowed = self._host_answers.get(host)
        if allowed is None:
            name = _host_name(host)
            # By default an IP address is fine too: DNS rebinding needs a name to rebind.
            allowed = "*" in self._hosts or name in self._hosts or (not self._cfg.allowed_hosts and _is_ip(name))
            if len(self._host_answers) >= _HOST_ANSWERS:
                self._host_answers.clear()  # a bound, trivially; refilled from the callers' few values
            self._host_answers[host] = allowed
        return allowed

    def _bearer_ok(self, request: Request) -> bool:
        given = request.headers.get("Authorization", "").encode("latin-1")
        return hmac.compare_digest(given, self._metrics_token)

    def _failure(self, request: Request, exc: BaseException, request_id: str) -> Response:
        """The answer to a request that failed with ``exc``: a ManagementError's own, else a
        500 with the error logged (never its text to the caller)."""
        if isinstance(exc, ManagementError):
            return self._refusal(request, exc, request_id)
        log.error("management request failed (requestId=%s)", request_id, exc_info=exc)
        return _error_response(ManagementError("Internal server error"), request_id)

    def _refusal(self, request: Request, exc: ManagementError, request_id: str) -> Response:
        """The answer to a ManagementError; a SigV4 failure gets AWS's own, reason logged."""
        if exc.status == 403:
            log.info("management request from %s refused: %s (requestId=%s)", request.peer, exc, request_id)
        if not isinstance(exc, SignatureError):
            # A refused Host or Origin is logged above; the client gets AWS's bare "Forbidden".
            return _error_response(ForbiddenError("Forbidden") if exc.status == 403 else exc, request_id)
        unsigned = "authorization" not in request.headers and "X-Amz-Signature=" not in request.raw_query
        body, error_type = _UNSIGNED if unsigned else _BAD_SIGNATURE
        # The HTTP server adds Date, from which an SDK whose clock is off (JS v3, Java v2, Go
        # v2, .NET) sets its clock offset and signs its retry anew.
        return Response(403, body, [("Content-Type", _JSON), ("x-amzn-ErrorType", error_type),
                                    ("x-amzn-RequestId", request_id)])

    def _finish(
        self, request: Request, request_id: str, operation: str, target: str, response: Response, started: float
    ) -> Response:
        """Count and log an answered request; returns ``response``."""
        gateway, status = self.gateway, response.status
        stats = gateway.stats
        stats.management[(operation or "Unknown", status)] += 1
        if status < 300 and operation.startswith("PostTo"):  # delivered: POST-to-client latency
            stats.post_took(time.perf_counter() - started)
        elif status >= 500:
            stats.failed("management", operation or request.method, status, request_id)
        if gateway.access.enabled:
            self._log(request, request_id, operation, target, status, started)
        return response

    def _route(self, method: str, segments: list[str]) -> tuple[str, str, str]:
        """Name the operation, its target (connection id or tenant) and its qualifier (group
        or user, else ""), or raise 400/404."""
        n = len(segments)
        if n in (2, 4) and segments[0] in _CONNECTIONS:
            operation = _CONNECTION_OPS.get((method, n == 4 and segments[2]))
            if operation is not None:
                cid = segments[1]
                if "%" in cid:
                    cid = unquote(cid)
                if not is_connection_id(cid):
                    raise BadRequestError("Invalid connectionId")
                return operation, cid, _name(segments[3], "group") if n == 4 else ""
        elif n in (3, 5) and segments[0] in _TENANTS:
            operation = _TENANT_OPS.get((method, *segments[2:n:2]))
            if operation is not None:
                qualifier = _name(segments[3], segments[2][:-1]) if n == 5 else ""
                return operation, _name(segments[1], "tenant", MAX_TENANT_CHARS), qualifier
        raise NotFoundError(f"No method found matching route {'/'.join(segments)} for http method {method}")

    async def _execute(
        self, operation: str, target: str, qualifier: str, raw_query: str, body: bytes
    ) -> Response:
        gateway = self.gateway
        if operation == "PostToConnection":
            await gateway.post_to_connection(target, body)
            return _ok(200)
        if operation == "GetConnection":
            return _ok(200, orjson.dumps(await gateway.get_connection(target)))
        if operation == "DeleteConnection":
            await gateway.delete_connection(target)
            return Response(204, b"", [])
        if operation in ("JoinGroup", "LeaveGroup"):
            await (gateway.join_group if operation == "JoinGroup" else gateway.leave_group)(target, qualifier)
            return Response(204, b"", [])
        if operation == "GetTenantUsage":
            return _ok(200, orjson.dumps(await gateway.tenant_usage(target)))
        if operation.startswith("PostTo"):
            kind = {"PostToUser": "user", "PostToGroup": "group"}.get(operation)
            result = await gateway.post_to_tenant(target, body, **({kind: qualifier} if kind else {}))
            # 207, not an error: some clients got it, so a caller must not simply retry.
            return _ok(200 if result.complete else 207, orjson.dumps(result.to_json()))
        limit, token = _page_params(raw_query)
        page = await gateway.list_tenant(target, limit, token)
        out = {"connections": [c.to_listing_json() for c in page.connections], "nextToken": page.next_token}
        return _ok(200, orjson.dumps(out))

    async def _probe(self, kind: str) -> Response:
        if kind == "metrics":
            from .exposition import CONTENT_TYPE, exposition  # prometheus_client: with the first scrape

            return Response(200, exposition(self.gateway.stats, self.gateway.hub), [("Content-Type", CONTENT_TYPE)])
        health = await self.gateway.health()
        return _ok(200 if health["ready" if kind == "ready" else "live"] else 503, orjson.dumps(health))

    def _log(
        self, request: Request, request_id: str, operation: str, target: str, status: int, started: float
    ) -> None:
        self.gateway.access.write(
            "management",
            requestId=request_id,
            connectionId=target if operation in _CONNECTION_OPERATIONS else "",
            routeKey=operation or request.method,
            method=request.method,
            status=status,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            tenant=target if operation in _TENANT_OPS.values() else "",
            sourceIp=request.peer,
            userAgent=bounded(request.headers.get("User-Agent", "")),  # a caller may send 8 KB
        )


class _RemotePost(Deferred):
    """The answer to a post to another node's connection: the registry tells it the owner's
    answer (see ``registry.posted``), from the callback that answer arrives in."""

    __slots__ = ("request", "request_id", "server", "started", "target")

    def __init__(self, server: ManagementServer, request: Request, request_id: str, target: str, started: float) -> None:
        super().__init__()
        self.server = server
        self.request = request
        self.request_id = request_id
        self.target = target
        self.started = started

    def posted(self, error: BaseException | None) -> None:
        """The rest of :meth:`ManagementServer._handle` for a connection of another node."""
        server, request, request_id = self.server, self.request, self.request_id
        try:
            response = _posted(request_id) if error is None else server._failure(request, error, request_id)
            response = server._finish(request, request_id, "PostToConnection", self.target, response, self.started)
        except Exception:  # a bug here must not leave the request unanswered
            log.exception("management request failed (requestId=%s)", request_id)
            response = _error_response(ManagementError("Internal server error"), request_id)
        self.resolve(response)


def _posted(request_id: str) -> Response:
    """A delivered post's answer, its header lines made here at once (most answers are it)."""
    return Response(200, b"", [], _POSTED_HEAD % request_id.encode())


def _ok(status: int, body: bytes = b"") -> Response:
    return Response(status, body, [("Content-Type", _JSON)])


def _error_response(exc: ManagementError, request_id: str) -> Response:
    body = orjson.dumps({"message": exc.message or exc.error_type}) if exc.send_message else b""
    return Response(
        exc.status,
        body,
        [("Content-Type", _JSON), ("x-amzn-ErrorType", exc.error_type), ("x-amzn-RequestId", request_id)],
    )


def _allowed_hosts(cfg: ManagementConfig, *, signed: bool = True) -> frozenset[str]:
    """Host names (lower-case, no port) requests may name; "*" = any. By default, any with
    SigV4 (the Host header is signed) for ``signed`` requests, else loopback names and the
    configured host."""
    if cfg.allowed_hosts:
        return frozenset(cfg.allowed_hosts)
    if signed and cfg.auth == "sigv4":
        return frozenset({"*"})
    host = cfg.host.lower()
    return _LOOPBACK_NAMES | {f"[{host}]" if ":" in host else host}


def _host_name(host: str) -> str:
    """A Host header's name, lower-case, without its port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rpartition(":")[0] if ":" in host else host


def _is_ip(name: str) -> bool:
    """Whether a Host name is an IP address."""
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _normalised(raw_path: str, segments: list[str]) -> list[str]:
    """A path's segments without its empty ones, which SigV4 drops too, so the route is the
    path that was signed (the JS SDK v3 sends ``/prod//@connections/…`` for an endpoint that
    ends in ``/``). 400 for ``.`` and ``..``, which SigV4 resolves and routing would not (a
    signature re-targeted by them), and for a path that is not absolute or has no segment."""
    kept = [segment for segment in segments if segment]
    if raw_path[:1] != "/" or not kept:
        raise BadRequestError("Invalid request path")
    if any(segment in (".", "..") or ("%" in segment and unquote(segment) in (".", "..")) for segment in kept):
        raise BadRequestError("Invalid request path: '.' or '..' segment")
    return kept


def _probe_of(method: str, segments: list[str]) -> str | None:
    """The probe a request asks for, if any: GET, or HEAD (the status and headers alone,
    which some load balancers' health checks send)."""
    if len(segments) == 1 and (method == "GET" or method == "HEAD") and segments[0] in _PROBES:
        return segments[0]
    return None


def _name(segment: str, what: str, limit: int = 128) -> str:
    """A URL-decoded tenant, user or group name; 400 if empty or too long."""
    name = unquote(segment)
    if not name or len(name) > limit:
        raise BadRequestError(f"Invalid {what}")
    return name


def _page_params(raw_query: str) -> tuple[int, str | None]:
    """``limit`` and ``nextToken`` from the query; the registry checks the limit's range."""
    params = dict(parse_qsl(raw_query, keep_blank_values=True))
    try:
        limit = int(params.get("limit", "100"))
    except ValueError:
        raise BadRequestError("limit must be an integer from 1 to 1000") from None
    return limit, params.get("nextToken") or None
