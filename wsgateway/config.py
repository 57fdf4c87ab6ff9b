"""Configuration: frozen dataclasses read from one TOML file plus secrets from the environment.

Call :func:`load_config` once at start-up (the CLI does), log what :func:`config_warnings`
returns, and hand the :class:`GatewayConfig` down. Every value is checked once, when it is
built: nothing downstream re-validates and nothing mutates a config after start. A bad file or
value raises :class:`~wsgateway.errors.ConfigError` with a one-line message naming the dotted
key (``listen.port: must be an integer from 0 to 65535, got 'abc'``). Unknown keys are errors
too, so a typo never silently leaves a default in force.

Each rule sits beside its field, and :mod:`wsgateway.schema` applies them:

- a field's annotation is its type check; with no metadata a number must be > 0 (sizes,
  counts, timeouts), so most fields are one plain line: ``backlog: int = 2048``;
- ``metadata=`` names any other rule: ``NON_NEGATIVE``, ``PORT``, ``FILLED``, ``FILE`` (a
  path, stored absolute) or ``rule(regex, "what it must be")``;
- a field with ``repr=False`` is a secret: it may instead be given as ``<name>_env = "VAR"``;
- rules that span several fields of a section are its ``check()`` method, right after the
  fields; the loader calls it. Field rules also hold for a section built in code
  (``__post_init__``); ``check()`` runs only at load.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .schema import (
    FILE,
    FILLED,
    NON_NEGATIVE,
    NOT_IN_FILE,
    PORT,
    build,
    check_fields,
    read_toml,
    rule,
)

__all__ = ["AuthConfig", "ConsoleConfig", "Credential", "GatewayConfig", "HttpIntegrationConfig", "IntegrationsConfig",
           "LambdaIntegrationConfig", "LimitsConfig", "ListenConfig", "LogConfig", "ManagementConfig", "PlanConfig",
           "RegistryConfig", "ReliableConfig",
           "RouteSettings", "RouteSettingsConfig", "RoutesConfig", "config_warnings", "load_config",
           "parse_config"]

# Rules several fields share; every other rule is written out beside its field.
_NAME = rule(r"[A-Za-z0-9_-]{1,128}", "1 to 128 of A-Z a-z 0-9 _ -")
_HOST = rule(r"[^\s/]+", "a host name or IP address")
_IDENT = r"[^\W\d]\w*"
_PORT_PATH = r"(:\d{1,5})?([/?]\S*)?"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
# The three kinds of route target (docs/integrations.md); integrations/ tells them apart the same way.
_LAMBDA_NAME = r"[A-Za-z0-9_-]{1,64}(:[A-Za-z0-9$_-]{1,128})?"  # NAME[:QUALIFIER]
_LAMBDA_ARN = rf"arn:aws[a-z-]*:lambda:(?P<region>[a-z0-9-]+):\d{{12}}:function:{_LAMBDA_NAME}"
_TARGET = (rf"{_IDENT}(\.{_IDENT})*:{_IDENT}|https?://[^/\s?#@]+{_PORT_PATH}"
           rf"|lambda:({_LAMBDA_ARN}|{_LAMBDA_NAME})")
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # the digest size, as PyJWT warns


@dataclass(frozen=True, kw_only=True, slots=True)
class ListenConfig:
    """``[listen]``: the WebSocket listener clients connect to."""

    host: str = field(default="127.0.0.1", metadata=_HOST)
    port: int = field(default=8080, metadata=PORT)  # 0 = pick a free port
    # PEM chain; with ssl_keyfile the listener serves wss://
    ssl_certfile: str | None = field(default=None, metadata=FILE)
    ssl_keyfile: str | None = field(default=None, metadata=FILE)  # PEM key; both or neither
    compression: bool = False  # permessage-deflate
    # compress each message alone (server_no_context_takeover): fan-out compresses once
    compression_no_context_takeover: bool = False
    # seconds between protocol pings; 0 disables keepalive
    ping_interval_s: float = field(default=20.0, metadata=NON_NEGATIVE)
    # seconds without a pong -> peer is half-open -> close
    ping_timeout_s: float = field(default=20.0, metadata=NON_NEGATIVE)
    backlog: int = 2048  # pending TCP connections (listen(2))
    # /health and /ready here say node id, connection count and registry state; else {"status"}
    health_details: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "listen")

    def check(self) -> None:
        """Rules across fields; the loader calls it. Raises ConfigError."""
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            unset = "ssl_keyfile" if self.ssl_keyfile is None else "ssl_certfile"
            raise ConfigError(f"listen.{unset}", "set both ssl_certfile and ssl_keyfile, or neither")


@dataclass(frozen=True, slots=True)
class Credential:
    """One management API key pair (``[[management.credentials]]``); the secret never prints."""

    # "/" would break the SigV4 credential scope, which is split on it
    access_key_id: str = field(metadata=rule(r"[^\s/]{1,128}", "1 to 128 chars, no space or /"))
    secret_access_key: str = field(repr=False, metadata=FILLED)  # or secret_access_key_env = "VAR"

    def __post_init__(self) -> None:
        check_fields(self, "management.credentials")


@dataclass(frozen=True, kw_only=True, slots=True)
class ManagementConfig:
    """``[management]``: the ``@connections`` HTTP API backends call."""

    host: str = field(default="127.0.0.1", metadata=_HOST)
    port: int = field(default=8081, metadata=PORT)  # 0 = pick a free port
    # "none" | "sigv4"; "sigv4" needs at least one credential
    auth: str = field(default="none", metadata=rule("none|sigv4", '"none" or "sigv4"'))
    credentials: tuple[Credential, ...] = ()
    # pin the SigV4 region; None accepts any region
    region: str | None = field(default=None, metadata=rule(r"[a-z0-9-]{1,32}", 'a region name like "us-east-1"'))
    max_clock_skew_s: float = 300.0  # seconds a signed request's date may be off
    max_post_bytes: int = 131072  # bytes; larger POST bodies answer 413
    # Bounds before any auth, and who may call (docs/security.md, "Management port").
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its head -> 408
    request_timeout_s: float = 30.0  # from a request's first byte to its last body byte -> 408
    idle_timeout_s: float = 75.0  # a keep-alive connection with no request for this long closes
    max_connections: int = 1024  # open management connections; more are answered 503
    # Host names (no port); () = loopback + host if auth="none", any if sigv4; "*" = any
    allowed_hosts: tuple[str, ...] = field(default=(), metadata=rule(
        r"\*|[a-z0-9.-]+|\[[0-9a-f:.]+\]", '"*" or a lower-case host name or IP, no port'))
    # browser origins allowed to call; () = refuse any request with an Origin header
    allowed_origins: tuple[str, ...] = field(default=(), metadata=rule(
        r"[a-z][a-z0-9+.-]*://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:\d{1,5})?",
        'a lower-case origin like "https://ops.example.com"'))
    # /metrics: "none" | "bearer" (metrics_token) | "sigv4" (needs auth = "sigv4")
    metrics_auth: str = field(default="none", metadata=rule("none|bearer|sigv4", '"none", "bearer" or "sigv4"'))
    # or metrics_token_env = "VAR"
    metrics_token: str | None = field(default=None, repr=False, metadata=rule(
        r"\S{16,}", "at least 16 characters without spaces"))
    replay_protection: bool = False  # sigv4: a signature used twice answers 403 (cluster-wide)

    def __post_init__(self) -> None:
        check_fields(self, "management")

    def check(self) -> None:
        """Rules across fields; the loader calls it. Raises ConfigError."""
        if self.auth == "sigv4" and not self.credentials:
            raise ConfigError("management.credentials", 'auth = "sigv4" needs at least one credential')
        if self.metrics_auth == "bearer" and self.metrics_token is None:
            raise ConfigError("management.metrics_token", 'metrics_auth = "bearer" needs metrics_token')
        if self.metrics_auth == "sigv4" and self.auth != "sigv4":
            raise ConfigError("management.metrics_auth", '"sigv4" needs auth = "sigv4"')
        if self.header_timeout_s > self.request_timeout_s:
            raise ConfigError("management.header_timeout_s", "must be <= request_timeout_s")
        ids = [cred.access_key_id for cred in self.credentials]
        for i, key_id in enumerate(ids):
            if key_id in ids[:i]:
                raise ConfigError(f"management.credentials[{i}].access_key_id",
                                  f"{key_id!r} is listed twice")


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthConfig:
    """``[auth]``: how a handshake becomes a principal: no check, a JWT, or a Lambda-style
    REQUEST authorizer (the JWT keys are checked only if type = "jwt", the authorizer keys
    only if type = "authorizer")."""

    type: str = field(default="none", metadata=rule("none|jwt|authorizer", '"none", "jwt" or "authorizer"'))
    # first present wins
    sources: tuple[str, ...] = field(default=("header:Authorization", "query:token"), metadata=rule(
        r"(header|query|subprotocol):[!#$%&'*+.^_`|~0-9A-Za-z-]+",
        '"header:NAME", "query:NAME" or "subprotocol:NAME"'))
    # HS* xor asymmetric ones; "none" (any case) fails: it would switch signature checks off
    algorithms: tuple[str, ...] = field(default=("RS256",), metadata=rule(
        r"(HS|RS|PS|ES)(256|384|512)|EdDSA",
        "one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384/512, EdDSA"))
    secret: str | None = field(default=None, repr=False, metadata=FILLED)  # HS*; or secret_env
    public_key_file: str | None = field(default=None, metadata=FILE)  # RS*/PS*/ES*/EdDSA PEM ...
    # ... or a JWKS URL: https://, http:// for loopback only
    jwks_url: str | None = field(default=None, metadata=rule(
        rf"https://[^/\s?#@]+{_PORT_PATH}|http://(localhost|127(\.\d{{1,3}}){{3}}|\[::1\]){_PORT_PATH}",
        "an https:// URL (http:// only for 127.0.0.0/8, ::1 or localhost)"))
    issuer: str | None = field(default=None, metadata=FILLED)  # required "iss"; None = not checked
    audience: tuple[str, ...] = field(default=(), metadata=FILLED)  # accepted "aud"; () = any
    leeway_s: float = field(default=30.0, metadata=NON_NEGATIVE)  # clock skew on exp/nbf/iat
    tenant_claim: str = field(default="tenant", metadata=FILLED)
    # copied into requestContext.authorizer
    context_claims: tuple[str, ...] = field(default=(), metadata=FILLED)
    required_claims: tuple[str, ...] = field(default=("exp",), metadata=FILLED)
    jwks_min_refresh_s: float = 60.0  # seconds; refetch on an unknown kid at most this often
    # "ignore": exp counts at the handshake only (AWS); "close": close 1008 once exp + leeway_s passes
    on_expiry: str = field(default="ignore", metadata=rule("ignore|close", '"ignore" or "close"'))
    # a message selecting this route key renews the token ({"action": KEY, "token": "..."});
    # "" = off, so that no application message is ever taken away from its route by default
    refresh_action: str = field(default="", metadata=rule(
        r"(?s)([^$].*)?", '"" or a custom route key (not starting with "$")'))
    # type = "authorizer": a "module:function" called as an AWS Lambda REQUEST authorizer
    authorizer: str | None = field(default=None, metadata=rule(
        rf"{_IDENT}(\.{_IDENT})*:{_IDENT}", '"dotted.module:function"'))
    # AWS syntax; each must be present and non-empty, else 401 without calling the authorizer
    identity_sources: tuple[str, ...] = field(default=("route.request.header.Authorization",), metadata=rule(
        r"route\.request\.(header\.[!#$%&'*+.^_`|~0-9A-Za-z-]+|querystring\.[^\s&=#]+)",
        '"route.request.header.NAME" or "route.request.querystring.NAME"'))
    # seconds a result (Allow or Deny) is reused for the same identity values; 0 = off
    cache_ttl_s: float = field(default=300.0, metadata=rule(numbers=("from 0 to 3600", lambda x: 0 <= x <= 3600)))
    tenant_key: str = field(default="tenant", metadata=FILLED)  # the returned context's tenant
    # the methodArn's region and account: arn:aws:execute-api:{region}:{account_id}:{api_id}/{stage}/$connect
    region: str = field(default="us-east-1", metadata=rule(r"[a-z0-9-]{1,32}", 'a region name like "us-east-1"'))
    account_id: str = field(default="000000000000", metadata=rule(r"\d{12}", "12 digits"))

    def __post_init__(self) -> None:
        check_fields(self, "auth")

    def check(self) -> None:
        """Rules across fields, for type = "jwt" or "authorizer"; the loader calls it. Raises
        ConfigError."""
        # Without a token's exp these would protect nothing, silently.
        if self.type != "jwt" and self.on_expiry == "close":
            raise ConfigError("auth.on_expiry", '"close" needs tokens: auth.type = "jwt"')
        if self.refresh_action and self.type != "jwt":  # only a JWT can be checked again here
            raise ConfigError("auth.refresh_action", 'needs auth.type = "jwt"')
        if self.type == "authorizer":
            self._check_authorizer()
        if self.type != "jwt":
            return
        for name in ("sources", "algorithms"):
            if not getattr(self, name):
                raise ConfigError(f"auth.{name}", 'must not be empty when type = "jwt"')
        algorithms = self.algorithms
        hmac = all(a.startswith("HS") for a in algorithms)
        if not hmac and any(a.startswith("HS") for a in algorithms):  # a public key as HMAC secret
            raise ConfigError("auth.algorithms", "must not mix HS* and asymmetric ones (key confusion)")
        key_file, url = self.public_key_file is not None, self.jwks_url is not None
        secret = self.secret is not None
        if hmac and not secret:
            raise ConfigError("auth.secret", f"{algorithms[0]} needs auth.secret or auth.secret_env")
        if not hmac and not (key_file or url):
            raise ConfigError("auth.public_key_file",
                              f"{algorithms[0]} needs auth.public_key_file or auth.jwks_url")
        if key_file and url:
            raise ConfigError("auth.jwks_url", "give public_key_file or jwks_url, not both")
        # Keys the algorithms cannot use are refused: they would hide which key really checks tokens.
        if hmac and (key_file or url):
            key = "auth.public_key_file" if key_file else "auth.jwks_url"
            raise ConfigError(key, "is for asymmetric algorithms, but auth.algorithms are HS*")
        if not hmac and secret:
            raise ConfigError("auth.secret", "is for HS* algorithms, but auth.algorithms has none")

    def _check_authorizer(self) -> None:
        if self.authorizer is None:
            raise ConfigError("auth.authorizer", 'type = "authorizer" needs authorizer = "module:function"')
        # As AWS: a cached result must be keyed by something the request carries.
        if not self.identity_sources and self.cache_ttl_s:
            raise ConfigError("auth.identity_sources", "must not be empty while cache_ttl_s > 0")


_DEFAULT_ROUTES: Mapping[str, str] = MappingProxyType(
    {
        "$connect": "wsgateway.examples.dashboard:on_connect",
        "$disconnect": "wsgateway.examples.dashboard:on_disconnect",
        "$default": "wsgateway.examples.echo:handler",
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutesConfig:
    """``[routes]``: every key but ``selection_expression`` maps a route key to its target:
    ``"module.path:function"``, an ``http(s)://`` URL or ``"lambda:..."`` (see
    :class:`IntegrationsConfig`). Naming any route replaces the defaults wholesale."""

    # Light on purpose: routing.py parses the expression; this only catches plain mistakes.
    selection_expression: str = field(default="$request.body.action", metadata=rule(
        r"\$request\.body.*|.*\$\{request\.body.*|[^$]+",
        '"$request.body...", text with "${request.body...}" or static text'))
    # read-only; the keys are the rest of the [routes] table
    routes: Mapping[str, str] = field(default_factory=lambda: _DEFAULT_ROUTES, metadata=rule(
        _TARGET, '"dotted.module:function", an http(s):// URL, "lambda:NAME[:QUALIFIER]" '
                 'or "lambda:arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]"',
        keys=(r"(?s)\$connect|\$disconnect|\$default|[^$].*", ("$connect, $disconnect, $default "
              'or a custom route key (non-empty, not starting with "$")'))))

    def __post_init__(self) -> None:
        check_fields(self, "routes")


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpIntegrationConfig:
    """``[integrations.http]``: routes whose target is an ``http://`` or ``https://`` URL."""

    # HMAC-SHA256 key for X-Wsgateway-Signature; None = requests go unsigned; or signing_secret_env
    signing_secret: str | None = field(default=None, repr=False, metadata=FILLED)
    max_connections: int = 100  # pooled keep-alive connections to backends, per node
    allow_plain_http: bool = False  # false: http:// only to 127.0.0.0/8, ::1 or localhost
    disconnect_retry_s: float = 30.0  # seconds $disconnect is retried on a refusal or a 5xx

    def __post_init__(self) -> None:
        check_fields(self, "integrations.http")


@dataclass(frozen=True, kw_only=True, slots=True)
class LambdaIntegrationConfig:
    """``[integrations.lambda]``: routes whose target is ``"lambda:..."``."""

    # for "lambda:NAME" targets; an ARN target names its own region
    region: str = field(default="", metadata=rule(r"([a-z0-9-]{1,32})?", '"" or a region like "us-east-1"'))
    # "" = AWS; e.g. http://127.0.0.1:3001, what `sam local start-lambda` serves
    endpoint_url: str = field(default="", metadata=rule(r"(https?://\S+)?", '"" or an http(s):// URL'))

    def __post_init__(self) -> None:
        check_fields(self, "integrations.lambda")


@dataclass(frozen=True, kw_only=True, slots=True)
class IntegrationsConfig:
    """``[integrations]``: settings of the route targets that are not Python functions.

    The Lambda sub-table is the field ``lambda_`` (``lambda`` is a Python keyword)."""

    http: HttpIntegrationConfig = field(default_factory=HttpIntegrationConfig)
    lambda_: LambdaIntegrationConfig = field(default_factory=LambdaIntegrationConfig)

    def __post_init__(self) -> None:
        check_fields(self, "integrations")


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsConfig:
    """``[limits]``: per-connection and per-node limits."""

    max_message_bytes: int = 131072  # inbound message limit; larger closes with 1009
    idle_timeout_s: float = 600.0  # no data frame either way for this long -> close 1001
    max_connection_s: float = 7200.0  # connection age -> close 1001
    handler_timeout_s: float = 29.0  # seconds a handler may run
    max_queued_bytes: int = 1048576  # per-connection outbound queue
    slow_consumer_grace_s: float = 5.0  # over max_queued_bytes this long -> close 1008
    # Browsers send the Origin scheme and host lower-cased, and server.py compares exactly.
    allowed_origins: tuple[str, ...] = field(default=("*",), metadata=rule(
        r"\*|[a-z][a-z0-9+.-]*://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:\d{1,5})?",
        '"*" or a lower-case origin like "https://app.example.com" (scheme://host[:port], no path)'))
    require_origin: bool = False  # refuse handshakes without an Origin header
    # what a client may send before its upgrade is accepted (request line and headers; AWS
    # takes 10,240 bytes), and how long its request may take from the connection's start -> 431 / 408
    max_handshake_bytes: int = 16384
    handshake_timeout_s: float = 10.0
    # per node; 0 = no limit; beyond it handshakes answer 503
    max_connections: int = field(default=0, metadata=NON_NEGATIVE)
    close_timeout_s: float = 5.0  # seconds to wait for the peer's close frame
    shutdown_timeout_s: float = 10.0  # seconds to drain connections on stop
    handler_threads: int = 16  # thread pool for sync handlers
    # SO_SNDBUF of client sockets; 0 = the kernel's autotuning
    socket_send_buffer_bytes: int = field(default=0, metadata=NON_NEGATIVE)
    # a token bucket per connection: messages/s it refills at (0 = off), and its size
    messages_per_s_per_connection: float = field(default=0.0, metadata=NON_NEGATIVE)
    messages_burst_per_connection: int = field(default=0, metadata=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self, "limits")

    def check(self) -> None:
        """Rules across fields; the loader calls it. Raises ConfigError."""
        _check_burst("limits.", "messages_burst_per_connection", self.messages_burst_per_connection,
                     self.messages_per_s_per_connection)


def _check_burst(prefix: str, name: str, burst: int, rate: float) -> None:
    """A bucket smaller than one second of its rate would never let the rate through."""
    if rate and burst < rate:
        raise ConfigError(f"{prefix}{name}", f"must be >= its rate ({rate:g}) when the rate is set, got {burst}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ReliableConfig:
    """``[reliable]``: connections that offer the ``wsgateway.reliable.v1`` subprotocol keep
    their id across a dropped socket (docs/reliable.md)."""

    enabled: bool = True  # false: the subprotocol is never selected; every client is plain
    resume_window_s: float = 60.0  # a dropped session waits this long for its client to resume
    # frames sent and not yet acknowledged (or buffered while dropped), per session; past it:
    # 1008 slow consumer while connected, 429 to posts while dropped
    max_unacked_bytes: int = 1048576
    # dropped sessions a node keeps of the tenants whose plan sets no max_connections, together
    # (a tenant with one keeps at most that many); past it the oldest of the tenant holding the
    # most ends at once, as when its window runs out
    max_dropped_sessions: int = 10000

    def __post_init__(self) -> None:
        check_fields(self, "reliable")


_TENANT_OR_ANY = rule(r"\*|[^\s]{1,128}", '"*" or a tenant name (1 to 128 characters, no spaces)')


@dataclass(frozen=True, kw_only=True, slots=True)
class PlanConfig:
    """One ``[[plans]]`` entry: the limits of every tenant it names, cluster-wide; 0 = no limit."""

    name: str = field(metadata=_NAME)
    tenants: tuple[str, ...] = field(metadata=_TENANT_OR_ANY)  # "*" = every tenant no other plan names
    max_connections: int = field(default=0, metadata=NON_NEGATIVE)  # of the tenant, all nodes together
    max_connections_per_principal: int = field(default=0, metadata=NON_NEGATIVE)  # per (tenant, principalId)
    messages_per_s: float = field(default=0.0, metadata=NON_NEGATIVE)  # client messages of the tenant
    messages_burst: int = field(default=0, metadata=NON_NEGATIVE)
    posts_per_s: float = field(default=0.0, metadata=NON_NEGATIVE)  # management calls aimed at the tenant
    posts_burst: int = field(default=0, metadata=NON_NEGATIVE)
    quota_per_day: int = field(default=0, metadata=NON_NEGATIVE)  # messages + posts per UTC day

    def __post_init__(self) -> None:
        check_fields(self, "plans")


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteSettingsConfig:
    """``[route_settings."<route key>"]``: throttles of one route; 0 = no limit."""

    rate_per_s: float = field(default=0.0, metadata=NON_NEGATIVE)  # all tenants and nodes together
    burst: int = field(default=0, metadata=NON_NEGATIVE)
    max_concurrency: int = field(default=0, metadata=NON_NEGATIVE)  # handler invocations in flight per node

    def __post_init__(self) -> None:
        check_fields(self, "route_settings")


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteSettings:
    """``[route_settings]``: its keys are route keys, each a table of :class:`RouteSettingsConfig`."""

    routes: Mapping[str, RouteSettingsConfig] = field(default_factory=lambda: MappingProxyType({}), metadata=rule(
        keys=(r"(?s)\$connect|\$disconnect|\$default|[^$].*", "a route key")))

    def check(self) -> None:
        """Rules across fields; the loader calls it. Raises ConfigError."""
        for key, route in self.routes.items():
            _check_burst(f"route_settings.{key}.", "burst", route.burst, route.rate_per_s)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsoleConfig:
    """``[console]``: the operator console at ``/console`` on the management port (docs/console.md)."""

    enabled: bool | None = None  # None: on when management.host is loopback, else off
    # or password_env = "VAR"; required when management.host is not loopback
    password: str | None = field(default=None, repr=False, metadata=rule(r".{8,1024}", "8 to 1024 characters"))
    session_s: float = 43200.0  # a login lasts this long (12 h)

    def __post_init__(self) -> None:
        check_fields(self, "console")


@dataclass(frozen=True, kw_only=True, slots=True)
class LogConfig:
    """``[log]``."""

    access_log: str = "-"  # "-" stdout, "" off, else a file path (appended)
    # any case in the file
    level: str = field(default="INFO", metadata=rule(
        "DEBUG|INFO|WARNING|ERROR", '"DEBUG", "INFO", "WARNING" or "ERROR"'))

    def __post_init__(self) -> None:
        check_fields(self, "log")


@dataclass(frozen=True, kw_only=True, slots=True)
class RegistryConfig:
    """``[registry]``: where the cluster-wide connection directory lives."""

    backend: str = field(default="memory", metadata=rule("memory|redis", '"memory" or "redis"'))
    redis_url: str = field(default="redis://127.0.0.1:6379/0", metadata=rule(
        r"rediss?(\+cluster)?://\S*|unix://\S+|rediss?\+sentinel://([^/@\s]+@)?[^/@\s]+/[^/?\s]+(/\d+)?(\?\S*)?",
        "a redis://, rediss:// or unix:// URL, redis+sentinel://host:port,host:port/service[/db], "
        "or redis+cluster://host:port,host:port/"))
    # the data nodes' (the master's); or password_env; beats the URL's
    password: str | None = field(default=None, repr=False, metadata=FILLED)
    # the Sentinels' (redis+sentinel:// URLs); or sentinel_password_env; None = they need none
    sentinel_password: str | None = field(default=None, repr=False, metadata=FILLED)
    key_prefix: str = field(default="wsgw", metadata=rule(r"[A-Za-z0-9:_-]+", "made of A-Z a-z 0-9 : _ -"))
    # "" = generated per process
    node_id: str = field(default="", metadata=rule(r"[A-Za-z0-9_-]{0,64}", '"" or 1 to 64 of A-Z a-z 0-9 _ -'))
    heartbeat_s: float = 2.0  # seconds between node heartbeats
    node_ttl_s: float = 10.0  # seconds without a heartbeat -> node dead; >= 2 * heartbeat_s
    # lastActiveAt in Redis lags by at most this; 0 = every beat
    activity_flush_s: float = field(default=30.0, metadata=NON_NEGATIVE)
    # a cross-node call whose reply Redis lost waits this long past its 2 s timeout for this
    # node's links to come back and ask the owner what it did; > a failover; 0 = never waits
    outcome_wait_s: float = field(default=40.0, metadata=NON_NEGATIVE)

    def __post_init__(self) -> None:
        check_fields(self, "registry")

    def check(self) -> None:
        """Rules across fields; the loader calls it. Raises ConfigError."""
        if self.sentinel_password is not None and "+sentinel://" not in self.redis_url:
            raise ConfigError("registry.sentinel_password", "is for redis+sentinel:// URLs only")
        if self.node_ttl_s < 2 * self.heartbeat_s:  # one late heartbeat must not declare a node dead
            twice = f"{2 * self.heartbeat_s:g}"
            raise ConfigError("registry.node_ttl_s",
                              f"must be >= 2 * heartbeat_s ({twice}), got {self.node_ttl_s:g}")


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayConfig:
    """The whole configuration; ``GatewayConfig()`` is the embedded default."""

    stage: str = field(default="prod", metadata=_NAME)  # first segment of management paths
    api_id: str = field(default="wsgateway", metadata=_NAME)  # requestContext.apiId
    # requestContext.domainName; "" = the handshake's Host header
    domain_name: str = field(default="", metadata=rule(
        r"[^\s/]*", "a host name (and port) without scheme or path"))
    listen: ListenConfig = field(default_factory=ListenConfig)
    management: ManagementConfig = field(default_factory=ManagementConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    routes: RoutesConfig = field(default_factory=RoutesConfig)
    integrations: IntegrationsConfig = field(default_factory=IntegrationsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    reliable: ReliableConfig = field(default_factory=ReliableConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    plans: tuple[PlanConfig, ...] = ()  # [[plans]]: usage plans per tenant
    route_settings: RouteSettings = field(default_factory=RouteSettings)
    # the file it came from ("<data>" from parse_config)
    source: str = field(default="<defaults>", metadata=NOT_IN_FILE)

    def __post_init__(self) -> None:
        check_fields(self, "")

    def check(self) -> None:
        """Rules across sections; the loader calls it. Raises ConfigError."""
        listen, mgmt = self.listen, self.management
        same_host = listen.host == mgmt.host or bool({listen.host, mgmt.host} & _WILDCARD_HOSTS)
        if listen.port and listen.port == mgmt.port and same_host:
            raise ConfigError("management.port", f"must differ from listen.port ({listen.port})")
        for key, target in self.routes.routes.items():
            _check_target(f"routes.{key}", target, self.integrations)
        _check_plans(self.plans)
        if self.console_enabled and self.console.password is None and not _is_loopback(mgmt.host):
            raise ConfigError("console.password", f"required when management.host ({mgmt.host}) is not loopback "
                                                  "(set password_env), or set console.enabled = false")

    @property
    def console_enabled(self) -> bool:
        """Whether ``/console`` is served: as configured, else when management.host is loopback."""
        enabled = self.console.enabled
        return _is_loopback(self.management.host) if enabled is None else enabled


def _check_target(key: str, target: str, integrations: IntegrationsConfig) -> None:
    """What a route target's form alone cannot say: plain HTTP off loopback, a Lambda region."""
    if target.startswith("http://") and not integrations.http.allow_plain_http:
        host = urlsplit(target).hostname or ""
        if not _is_loopback(host):
            raise ConfigError(key, f"http:// to non-loopback host {host} sends events in clear text: "
                                   "use https://, or set [integrations.http] allow_plain_http = true")
    if target.startswith("lambda:") and not integrations.lambda_.region:
        arn = re.fullmatch(_LAMBDA_ARN, target.removeprefix("lambda:"))
        if arn is None:
            raise ConfigError(key, "a lambda target needs a region: give the function's full ARN "
                                   "or set [integrations.lambda] region")


def _check_plans(plans: tuple[PlanConfig, ...]) -> None:
    """Each tenant (and ``*``) in at most one plan, names unique, bursts at least their rate."""
    owner: dict[str, str] = {}
    names: set[str] = set()
    for i, plan in enumerate(plans):
        key = f"plans[{i}]"
        if plan.name in names:
            raise ConfigError(f"{key}.name", f"{plan.name!r} is used by another plan")
        names.add(plan.name)
        if not plan.tenants:
            raise ConfigError(f"{key}.tenants", 'must name at least one tenant (or "*")')
        for tenant in plan.tenants:
            if tenant in owner:
                raise ConfigError(f"{key}.tenants", f"{tenant!r} is already in plan {owner[tenant]!r}")
            owner[tenant] = plan.name
        _check_burst(f"{key}.", "messages_burst", plan.messages_burst, plan.messages_per_s)
        _check_burst(f"{key}.", "posts_burst", plan.posts_burst, plan.posts_per_s)


def load_config(
    path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and check the TOML file at ``path``; call once at start-up.

    ``None`` returns the defaults. Relative paths inside the file resolve against its folder;
    ``env`` (default ``os.environ``) supplies ``*_env`` secrets. Raises ConfigError for an
    unreadable file, a TOML syntax error (naming file and line) or any bad value.
    """
    if path is None:
        return GatewayConfig()
    file = Path(os.path.abspath(path))
    data = read_toml(file)
    return replace(parse_config(data, env=env, base_dir=file.parent), source=str(file))


def parse_config(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> GatewayConfig:
    """Check an already-parsed TOML document and build the config (``source`` is "<data>").

    ``env`` defaults to ``os.environ``; relative file paths resolve against ``base_dir``
    (the current directory if None) and are stored absolute. Raises ConfigError.
    """
    config = build(GatewayConfig, data, env=os.environ if env is None else env,
                   base_dir=os.path.abspath(base_dir or os.getcwd()))
    return replace(config, source="<data>")


def config_warnings(config: GatewayConfig) -> list[str]:
    """Return the risky-but-legal settings, one line each; log them loudly at start-up."""
    auth, mgmt, listen = config.auth, config.management, config.listen
    jwt_on = auth.type == "jwt"
    auth_on = auth.type != "none"
    hmac_bytes = max((_HMAC_MIN_BYTES.get(a, 0) for a in auth.algorithms), default=0)
    secret_bytes = len((auth.secret or "").encode())
    risks = [
        (not auth_on, 'auth.type = "none": authentication is OFF: '
                      "anyone who can reach the port can connect"),
        (auth_on and "*" in config.limits.allowed_origins,
         'limits.allowed_origins has "*" while auth is on: any web page can open connections '
         "with its visitors' tokens; list your origins"),
        (mgmt.auth == "none" and not _is_loopback(mgmt.host),
         f'management.auth = "none" on non-loopback host {mgmt.host}: '
         "anyone who can reach it can post to and close every connection"),
        (mgmt.auth == "none" and bool(mgmt.credentials),
         'management.credentials are set but management.auth = "none": they are ignored'),
        (not _is_loopback(listen.host) and listen.ssl_certfile is None,
         f"listen.host = {listen.host} without TLS: tokens and messages cross the network "
         "in clear text unless a proxy in front terminates TLS"),
        (jwt_on and auth.secret is not None and secret_bytes < hmac_bytes,
         f"auth.secret is {secret_bytes} bytes; use at least {hmac_bytes} random bytes "
         "for the configured HS* algorithms"),
        (jwt_on and bool(auth.jwks_url) and not auth.audience,
         "auth.audience is empty: tokens the JWKS issuer minted for other applications "
         "are accepted"),
        # A public key, like a JWKS, usually belongs to an issuer that serves many applications;
        # an HS* secret is normally shared with this gateway alone, so it is not warned about.
        (jwt_on and bool(auth.public_key_file) and not auth.audience,
         "auth.audience is empty: tokens the public key's issuer minted for other applications "
         "are accepted"),
        (config.integrations.http.signing_secret is None
         and any(t.startswith(("http://", "https://")) for t in config.routes.routes.values()),
         "HTTP integrations are not signed: backends cannot tell the gateway's requests from anyone "
         "else's; set integrations.http.signing_secret_env"),
        (config.registry.backend == "redis" and bool(urlsplit(config.registry.redis_url).password),
         "registry.redis_url contains a password, which shows wherever the URL is logged; "
         "use registry.password_env"),
        (config.console_enabled and config.console.password is None,
         "console.password is not set: the console (/console on the management port) is OPEN to anyone "
         "who can reach that port, to look at every tenant and close connections; set console.password_env"),
    ]
    return [message for risky, message in risks if risky]


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
