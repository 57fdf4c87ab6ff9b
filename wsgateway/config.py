"""Configuration: frozen dataclasses read from one TOML file plus secrets from the environment.

Call :func:`load_config` once at start-up (the CLI does), log what :func:`config_warnings`
returns, and hand the :class:`GatewayConfig` down. Every value is checked here, once: nothing
downstream re-validates and nothing mutates a config after start. A bad file or value raises
:class:`~wsgateway.errors.ConfigError` with a one-line message naming the dotted key
(``listen.port: must be an integer from 0 to 65535, got 'abc'``). Unknown keys are errors
too, so a typo never silently leaves a default in force.

The checks are data, not one ``if`` per key:

- a field's type annotation gives its type check (``bool`` is never a number, an integer is
  fine where a float is expected, a list field also takes a single string);
- every number must be > 0 (sizes, counts, timeouts) unless ``_RANGES`` says otherwise;
- ``_CHECKS`` adds a regex the typed value must match (choices, names, URLs), by dotted key;
- ``_FILES`` are paths: resolved against the config file's folder, stored absolute, must exist;
- a field with ``repr=False`` is a secret: it may instead be given as ``<name>_env = "VAR"``;
- ``_CROSS`` holds the checks that span several keys of one section.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, get_type_hints
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = ["AuthConfig", "Credential", "GatewayConfig", "LimitsConfig", "ListenConfig", "LogConfig",
           "ManagementConfig", "RegistryConfig", "RoutesConfig", "config_warnings", "load_config",
           "parse_config"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ListenConfig:
    """``[listen]``: the WebSocket listener clients connect to."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 = pick a free port
    ssl_certfile: str | None = None  # PEM chain; with ssl_keyfile the listener serves wss://
    ssl_keyfile: str | None = None  # PEM key; both or neither (absolute once loaded)
    compression: bool = False  # permessage-deflate
    ping_interval_s: float = 20.0  # seconds between protocol pings; 0 disables keepalive
    ping_timeout_s: float = 20.0  # seconds without a pong -> peer is half-open -> close
    backlog: int = 2048  # pending TCP connections (listen(2))


@dataclass(frozen=True, slots=True)
class Credential:
    """One management API key pair (``[[management.credentials]]``); the secret never prints."""

    access_key_id: str
    secret_access_key: str = field(repr=False)  # or secret_access_key_env = "VAR"


@dataclass(frozen=True, kw_only=True, slots=True)
class ManagementConfig:
    """``[management]``: the ``@connections`` HTTP API backends call."""

    host: str = "127.0.0.1"
    port: int = 8081  # 0 = pick a free port
    auth: str = "none"  # "none" | "sigv4"; "sigv4" needs at least one credential
    credentials: tuple[Credential, ...] = ()
    region: str | None = None  # pin the SigV4 region; None accepts any region
    max_clock_skew_s: float = 300.0  # seconds a signed request's date may be off
    max_post_bytes: int = 131072  # bytes; larger POST bodies answer 413
    # Bounds before any auth, and who may call (docs/security.md, "Management port").
    header_timeout_s: float = 10.0  # from a request's first byte to the end of its head -> 408
    request_timeout_s: float = 30.0  # from a request's first byte to its last body byte -> 408
    idle_timeout_s: float = 75.0  # a keep-alive connection with no request for this long closes
    max_connections: int = 1024  # open management connections; more are answered 503
    allowed_hosts: tuple[str, ...] = ()  # Host names (no port); () = loopback + host if auth="none", any if sigv4; "*" = any
    allowed_origins: tuple[str, ...] = ()  # browser origins allowed to call; () = refuse any request with Origin
    metrics_auth: str = "none"  # /metrics: "none" | "bearer" (metrics_token) | "sigv4" (needs auth = "sigv4")
    metrics_token: str | None = field(default=None, repr=False)  # or metrics_token_env = "VAR"


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthConfig:
    """``[auth]``: how a handshake's token becomes a principal (checked only if type = "jwt")."""

    type: str = "none"  # "none" | "jwt"
    sources: tuple[str, ...] = ("header:Authorization", "query:token")  # first present wins
    algorithms: tuple[str, ...] = ("RS256",)  # HS* xor asymmetric ones; never "none"
    secret: str | None = field(default=None, repr=False)  # HS*; or secret_env = "VAR"
    public_key_file: str | None = None  # RS*/PS*/ES*/EdDSA: PEM file (absolute once loaded) ...
    jwks_url: str | None = None  # ... or a JWKS URL: https://, http:// for loopback only
    issuer: str | None = None  # required "iss"; None = not checked
    audience: tuple[str, ...] = ()  # accepted "aud" values; () = not checked
    leeway_s: float = 30.0  # seconds of clock skew allowed on exp/nbf/iat
    tenant_claim: str = "tenant"
    context_claims: tuple[str, ...] = ()  # copied into requestContext.authorizer
    required_claims: tuple[str, ...] = ("exp",)
    jwks_min_refresh_s: float = 60.0  # seconds; refetch on an unknown kid at most this often


_DEFAULT_ROUTES: Mapping[str, str] = MappingProxyType(
    {
        "$connect": "handlers.dashboard:on_connect",
        "$disconnect": "handlers.dashboard:on_disconnect",
        "$default": "handlers.echo:handler",
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutesConfig:
    """``[routes]``: every key but ``selection_expression`` maps a route key to
    ``"module.path:function"``. Naming any route replaces the defaults wholesale."""

    selection_expression: str = "$request.body.action"
    routes: Mapping[str, str] = field(default_factory=lambda: _DEFAULT_ROUTES)  # read-only


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsConfig:
    """``[limits]``: per-connection and per-node limits."""

    max_message_bytes: int = 131072  # inbound message limit; larger closes with 1009
    idle_timeout_s: float = 600.0  # no data frame either way for this long -> close 1001
    max_connection_s: float = 7200.0  # connection age -> close 1001
    handler_timeout_s: float = 29.0  # seconds a handler may run
    max_queued_bytes: int = 1048576  # per-connection outbound queue
    slow_consumer_grace_s: float = 5.0  # over max_queued_bytes this long -> close 1008
    allowed_origins: tuple[str, ...] = ("*",)  # "scheme://host[:port]" (lower-cased) or "*"
    require_origin: bool = False  # refuse handshakes without an Origin header
    max_connections: int = 0  # per node; 0 = no limit; beyond it handshakes answer 503
    close_timeout_s: float = 5.0  # seconds to wait for the peer's close frame
    shutdown_timeout_s: float = 10.0  # seconds to drain connections on stop
    handler_threads: int = 16  # thread pool for sync handlers
    socket_send_buffer_bytes: int = 0  # SO_SNDBUF of client sockets; 0 = the kernel's autotuning


@dataclass(frozen=True, kw_only=True, slots=True)
class LogConfig:
    """``[log]``."""

    access_log: str = "-"  # "-" stdout, "" off, else a file path (appended)
    level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR (any case in the file)


@dataclass(frozen=True, kw_only=True, slots=True)
class RegistryConfig:
    """``[registry]``: where the cluster-wide connection directory lives."""

    backend: str = "memory"  # "memory" | "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"  # redis://, rediss:// or unix://
    password: str | None = field(default=None, repr=False)  # or password_env; beats the URL's
    key_prefix: str = "wsgw"  # [A-Za-z0-9:_-]+
    node_id: str = ""  # "" = generated per process; else [A-Za-z0-9_-]{1,64}
    heartbeat_s: float = 2.0  # seconds between node heartbeats
    node_ttl_s: float = 10.0  # seconds without a heartbeat -> node dead; >= 2 * heartbeat_s
    activity_flush_s: float = 30.0  # lastActiveAt in Redis lags by at most this; 0 = every beat


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayConfig:
    """The whole configuration; ``GatewayConfig()`` is the embedded default."""

    stage: str = "prod"  # [A-Za-z0-9_-]{1,128}; first segment of management paths
    api_id: str = "wsgateway"  # requestContext.apiId
    domain_name: str = ""  # requestContext.domainName; "" = the handshake's Host header
    listen: ListenConfig = field(default_factory=ListenConfig)
    management: ManagementConfig = field(default_factory=ManagementConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    routes: RoutesConfig = field(default_factory=RoutesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    source: str = "<defaults>"  # the file it came from ("<data>" from parse_config)


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
    try:
        data = tomllib.loads(file.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError("", f"{file}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{file}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:  # its text ends "(at line L, column C)"
        raise ConfigError("", f"{file}: invalid TOML: {exc}") from None
    return replace(parse_config(data, env=env, base_dir=file.parent), source=str(file))


def parse_config(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> GatewayConfig:
    """Check an already-parsed TOML document and build the config (``source`` is "<data>").

    ``env`` defaults to ``os.environ``; relative file paths resolve against ``base_dir``
    (the current directory if None) and are stored absolute. Raises ConfigError.
    """
    ctx = _Context(os.environ if env is None else env, os.path.abspath(base_dir or os.getcwd()))
    if not isinstance(data, Mapping):
        raise ConfigError("", f"the config must be a table, got {_show(data)}")
    return replace(_section(GatewayConfig, data, "", ctx), source="<data>")


def config_warnings(config: GatewayConfig) -> list[str]:
    """Return the risky-but-legal settings, one line each; log them loudly at start-up."""
    auth, mgmt, listen = config.auth, config.management, config.listen
    jwt_on = auth.type == "jwt"
    hmac_bytes = max((_HMAC_MIN_BYTES.get(a, 0) for a in auth.algorithms), default=0)
    secret_bytes = len((auth.secret or "").encode())
    risks = [
        (not jwt_on, 'auth.type = "none": authentication is OFF: '
                     "anyone who can reach the port can connect"),
        (jwt_on and "*" in config.limits.allowed_origins,
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
        (config.registry.backend == "redis" and bool(urlsplit(config.registry.redis_url).password),
         "registry.redis_url contains a password, which shows wherever the URL is logged; "
         "use registry.password_env"),
    ]
    return [message for risky, message in risks if risky]


# ---------------------------------------------------------------- how values are checked

_T = TypeVar("_T")
_NOT_IN_TOML = {"source"}
_WILDCARD_HOSTS = {"", "0.0.0.0", "::"}
_SPECIAL_ROUTES = {"$connect", "$disconnect", "$default"}
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # the digest size, as PyJWT warns

# Number ranges as (text, test); every number not listed must be > 0 (sizes, counts, timeouts).
_POSITIVE = ("> 0", lambda x: x > 0)
_NON_NEGATIVE = (">= 0", lambda x: x >= 0)
_PORT = ("from 0 to 65535", lambda x: 0 <= x <= 65535)
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "listen.port": _PORT,
    "management.port": _PORT,
    "listen.ping_interval_s": _NON_NEGATIVE,  # 0 disables keepalive
    "listen.ping_timeout_s": _NON_NEGATIVE,
    "auth.leeway_s": _NON_NEGATIVE,
    "limits.max_connections": _NON_NEGATIVE,  # 0 = no limit
    "limits.socket_send_buffer_bytes": _NON_NEGATIVE,  # 0 = the kernel decides
    "registry.activity_flush_s": _NON_NEGATIVE,  # 0 = at every heartbeat
}

# Paths: resolved against the config file's folder, stored absolute, must be existing files.
_FILES = {"listen.ssl_certfile", "listen.ssl_keyfile", "auth.public_key_file"}

# Checks on a typed string (on each item of a list): (regex it must fully match, what it must be).
_NAME = (r"[A-Za-z0-9_-]{1,128}", "1 to 128 of A-Z a-z 0-9 _ -")
_HOST = (r"[^\s/]+", "a host name or IP address")
_FILLED = (r"(?s).+", "non-empty")
_IDENT = r"[^\W\d]\w*"
_PORT_PATH = r"(:\d{1,5})?([/?]\S*)?"
_CHECKS: dict[str, tuple[str, str]] = {
    "stage": _NAME,
    "api_id": _NAME,
    "domain_name": (r"[^\s/]*", "a host name (and port) without scheme or path"),
    "listen.host": _HOST,
    "management.host": _HOST,
    "management.auth": ("none|sigv4", '"none" or "sigv4"'),
    # "/" would break the SigV4 credential scope, which is split on it
    "management.credentials.access_key_id": (r"[^\s/]{1,128}", "1 to 128 chars, no space or /"),
    "management.credentials.secret_access_key": _FILLED,
    "management.region": (r"[a-z0-9-]{1,32}", 'a region name like "us-east-1"'),
    "management.allowed_hosts": (r"\*|[a-z0-9.-]+|\[[0-9a-f:.]+\]", '"*" or a lower-case host name or IP, no port'),
    "management.allowed_origins": (r"[a-z][a-z0-9+.-]*://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:\d{1,5})?",
                                   'a lower-case origin like "https://ops.example.com"'),
    "management.metrics_auth": ("none|bearer|sigv4", '"none", "bearer" or "sigv4"'),
    "management.metrics_token": (r"\S{16,}", "at least 16 characters without spaces"),
    "auth.type": ("none|jwt", '"none" or "jwt"'),
    "auth.sources": (r"(header|query|subprotocol):[!#$%&'*+.^_`|~0-9A-Za-z-]+",
                     '"header:NAME", "query:NAME" or "subprotocol:NAME"'),
    # "none" (any case) fails here: it would switch signature checks off
    "auth.algorithms": (r"(HS|RS|PS|ES)(256|384|512)|EdDSA",
                        "one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384/512, EdDSA"),
    "auth.secret": _FILLED,
    "auth.jwks_url": (rf"https://[^/\s?#@]+{_PORT_PATH}"
                      rf"|http://(localhost|127(\.\d{{1,3}}){{3}}|\[::1\]){_PORT_PATH}",
                      "an https:// URL (http:// only for 127.0.0.0/8, ::1 or localhost)"),
    "auth.issuer": _FILLED,
    "auth.audience": _FILLED,
    "auth.tenant_claim": _FILLED,
    "auth.context_claims": _FILLED,
    "auth.required_claims": _FILLED,
    # Light on purpose: routing.py parses the expression; this only catches plain mistakes.
    "routes.selection_expression": (r"\$request\.body.*|.*\$\{request\.body.*|[^$]+",
                                    '"$request.body...", text with "${request.body...}" '
                                    "or static text"),
    "routes.*": (rf"{_IDENT}(\.{_IDENT})*:{_IDENT}", '"dotted.module:function"'),
    # Browsers send the Origin scheme and host lower-cased, and server.py compares exactly.
    "limits.allowed_origins": (r"\*|[a-z][a-z0-9+.-]*://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:\d{1,5})?",
                               '"*" or a lower-case origin like "https://app.example.com" '
                               "(scheme://host[:port], no path)"),
    "log.level": ("DEBUG|INFO|WARNING|ERROR", '"DEBUG", "INFO", "WARNING" or "ERROR"'),
    "registry.backend": ("memory|redis", '"memory" or "redis"'),
    "registry.redis_url": (r"rediss?://\S*|unix://\S+", "a redis://, rediss:// or unix:// URL"),
    "registry.password": _FILLED,
    "registry.key_prefix": (r"[A-Za-z0-9:_-]+", "made of A-Z a-z 0-9 : _ -"),
    "registry.node_id": (r"[A-Za-z0-9_-]{0,64}", '"" or 1 to 64 of A-Z a-z 0-9 _ -'),
}


@dataclass(frozen=True, slots=True)
class _Context:
    env: Mapping[str, str]
    base_dir: str


class _Invalid(Exception):
    """A value failed a check; the text reads "must be ..." and the caller adds key and value."""


def _section(cls: type[_T], raw: Any, prefix: str, ctx: _Context) -> _T:
    """Build one dataclass from its table: unknown keys, each field, then the cross-checks."""
    table = _table(raw, prefix)
    specs = [f for f in fields(cls) if f.name not in _NOT_IN_TOML]  # type: ignore[arg-type]
    secrets = {f.name for f in specs if not f.repr}
    _reject_unknown(table, [f.name for f in specs] + [f"{n}_env" for n in secrets], prefix)
    values: dict[str, Any] = {}
    for f in specs:
        key, hide = _join(prefix, f.name), f.name in secrets
        raw_value = _secret(table, f.name, key, ctx.env) if hide else table.get(f.name, MISSING)
        if raw_value is not MISSING:
            values[f.name] = _field(key, _hints(cls)[f.name], raw_value, ctx, hide=hide)  # type: ignore[arg-type]
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(key, "is required" + (f" (or {f.name}_env)" if hide else ""))
    built = cls(**values)
    if (check := _CROSS.get(cls)) is not None:
        check(built)
    return built


def _field(
    key: str, typ: Any, raw: Any, ctx: _Context, *, hide: bool = False, rule: str = ""
) -> Any:
    """Type-check and check one value; ``rule`` overrides the key used to look checks up."""
    if typ is RoutesConfig:
        return _routes(raw, key, ctx)
    if isinstance(typ, type) and is_dataclass(typ):
        return _section(typ, raw, key, ctx)
    if typ == tuple[Credential, ...]:
        tables = enumerate(_tables(raw, key))
        return tuple(_section(Credential, t, f"{key}[{i}]", ctx) for i, t in tables)
    rule = rule or re.sub(r"\[\d+\]", "", key)  # credentials[1].x is checked as credentials.x
    value = _checked(key, raw, hide, _typed, typ, raw, _RANGES.get(rule, _POSITIVE))
    if isinstance(value, tuple):  # a list field's check applies to each item
        items = enumerate(value)
        return tuple(_checked(f"{key}[{i}]", v, hide, _check, rule, v, ctx) for i, v in items)
    return _checked(key, value, hide, _check, rule, value, ctx)


def _checked(key: str, shown: Any, hide: bool, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, with an _Invalid turned into a ConfigError naming ``key`` and value."""
    try:
        return check(*args)
    except _Invalid as exc:
        raise ConfigError(key, f"{exc}, got {_show(shown, hide)}") from None


def _typed(typ: Any, raw: Any, limits: tuple[str, Callable[[float], bool]]) -> Any:
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        raise _Invalid("must be true or false")
    if typ is int or typ is float:
        number = not isinstance(raw, bool) and isinstance(raw, int if typ is int else (int, float))
        if number and abs(raw) <= sys.float_info.max and limits[1](raw):  # no nan/inf
            return typ(raw)
        raise _Invalid(f"must be {'an integer' if typ is int else 'a number'} {limits[0]}")
    if typ == tuple[str, ...]:
        if isinstance(raw, str):
            return (raw,)
        if isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw):
            return tuple(raw)
        raise _Invalid("must be a string or a list of strings")
    if typ is str or typ == str | None:
        if isinstance(raw, str):
            return raw
        raise _Invalid("must be a string")
    raise TypeError(f"config.py has no check for type {typ!r}")  # a bug here, not in the file


def _check(rule: str, value: str, ctx: _Context) -> str:
    if rule in _FILES:
        path = os.path.abspath(os.path.join(ctx.base_dir, os.path.expanduser(value)))
        if not os.path.isfile(path):
            raise _Invalid(f"must name an existing file (looked for {path})")
        return path
    if rule in _CHECKS and not re.fullmatch(_CHECKS[rule][0], value):
        raise _Invalid(f"must be {_CHECKS[rule][1]}")
    return value


def _routes(raw: Any, prefix: str, ctx: _Context) -> RoutesConfig:
    table = _table(raw, prefix)
    values: dict[str, Any] = {}
    if "selection_expression" in table:
        key = f"{prefix}.selection_expression"
        values["selection_expression"] = _field(key, str, table["selection_expression"], ctx)
    named = {k: v for k, v in table.items() if k != "selection_expression"}
    for route_key in named:
        if not route_key or (route_key[0] == "$" and route_key not in _SPECIAL_ROUTES):
            raise ConfigError(_join(prefix, route_key), "must be $connect, $disconnect, $default "
                              'or a custom route key (non-empty, not starting with "$")')
    if named:  # naming any route replaces the defaults, so that routes can be removed
        values["routes"] = MappingProxyType(
            {k: _field(_join(prefix, k), str, v, ctx, rule="routes.*") for k, v in named.items()})
    return RoutesConfig(**values)


def _secret(table: Mapping[str, Any], name: str, key: str, env: Mapping[str, str]) -> Any:
    """The secret's raw value: inline, from the variable ``<name>_env`` names, or MISSING."""
    if f"{name}_env" not in table:
        return table.get(name, MISSING)
    if name in table:
        raise ConfigError(key, f"give {name} or {name}_env, not both")
    var = table[f"{name}_env"]
    if not isinstance(var, str) or not var:
        raise ConfigError(f"{key}_env", f"must name an environment variable, got {_show(var)}")
    if not env.get(var):
        state = "empty" if var in env else "not set"
        raise ConfigError(f"{key}_env", f"environment variable {var} is {state}")
    return env[var]


def _table(raw: Any, key: str) -> Mapping[str, Any]:
    if isinstance(raw, Mapping):
        return raw
    raise ConfigError(key, f"must be a table ([{key}]), got {_show(raw)}")


def _tables(raw: Any, key: str) -> list[Mapping[str, Any]]:
    if isinstance(raw, (list, tuple)) and all(isinstance(t, Mapping) for t in raw):
        return list(raw)
    raise ConfigError(key, f"must be a list of tables ([[{key}]]), got {_show(raw)}")


def _reject_unknown(table: Mapping[str, Any], known: list[str], prefix: str) -> None:
    for name in table:
        if name not in known:
            near = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(_join(prefix, str(name)), "unknown key" + hint)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _join(prefix: str, name: str) -> str:
    """Dotted key for messages; odd names are quoted as TOML would (``routes."a b"``)."""
    shown = name if re.fullmatch(r"[A-Za-z0-9_$-]+", name) else json.dumps(name)
    return f"{prefix}.{shown}" if prefix else shown


def _show(value: Any, hide: bool = False) -> str:
    """The offending value for a message: TOML-ish, one line, short; secrets are not echoed."""
    if hide:
        return f"<hidden {type(value).__name__}>"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- checks across keys

def _check_listen(c: ListenConfig) -> None:
    if (c.ssl_certfile is None) != (c.ssl_keyfile is None):
        unset = "ssl_keyfile" if c.ssl_keyfile is None else "ssl_certfile"
        raise ConfigError(f"listen.{unset}", "set both ssl_certfile and ssl_keyfile, or neither")


def _check_management(c: ManagementConfig) -> None:
    if c.auth == "sigv4" and not c.credentials:
        raise ConfigError("management.credentials", 'auth = "sigv4" needs at least one credential')
    if c.metrics_auth == "bearer" and c.metrics_token is None:
        raise ConfigError("management.metrics_token", 'metrics_auth = "bearer" needs metrics_token')
    if c.metrics_auth == "sigv4" and c.auth != "sigv4":
        raise ConfigError("management.metrics_auth", '"sigv4" needs auth = "sigv4"')
    if c.header_timeout_s > c.request_timeout_s:
        raise ConfigError("management.header_timeout_s", "must be <= request_timeout_s")
    ids = [cred.access_key_id for cred in c.credentials]
    for i, key_id in enumerate(ids):
        if key_id in ids[:i]:
            raise ConfigError(f"management.credentials[{i}].access_key_id",
                              f"{key_id!r} is listed twice")


def _check_auth(c: AuthConfig) -> None:
    if c.type != "jwt":
        return
    for name in ("sources", "algorithms"):
        if not getattr(c, name):
            raise ConfigError(f"auth.{name}", 'must not be empty when type = "jwt"')
    hmac = all(a.startswith("HS") for a in c.algorithms)
    if not hmac and any(a.startswith("HS") for a in c.algorithms):  # a public key as HMAC secret
        raise ConfigError("auth.algorithms", "must not mix HS* and asymmetric ones (key confusion)")
    key_file, url = c.public_key_file is not None, c.jwks_url is not None
    secret = c.secret is not None
    if hmac and not secret:
        raise ConfigError("auth.secret", f"{c.algorithms[0]} needs auth.secret or auth.secret_env")
    if not hmac and not (key_file or url):
        raise ConfigError("auth.public_key_file",
                          f"{c.algorithms[0]} needs auth.public_key_file or auth.jwks_url")
    if key_file and url:
        raise ConfigError("auth.jwks_url", "give public_key_file or jwks_url, not both")
    # Keys the algorithms cannot use are refused: they would hide which key really checks tokens.
    if hmac and (key_file or url):
        key = "auth.public_key_file" if key_file else "auth.jwks_url"
        raise ConfigError(key, "is for asymmetric algorithms, but auth.algorithms are HS*")
    if not hmac and secret:
        raise ConfigError("auth.secret", "is for HS* algorithms, but auth.algorithms has none")


def _check_registry(c: RegistryConfig) -> None:
    if c.node_ttl_s < 2 * c.heartbeat_s:  # one late heartbeat must not declare a node dead
        twice = f"{2 * c.heartbeat_s:g}"
        raise ConfigError("registry.node_ttl_s",
                          f"must be >= 2 * heartbeat_s ({twice}), got {c.node_ttl_s:g}")


def _check_gateway(c: GatewayConfig) -> None:
    listen, mgmt = c.listen, c.management
    same_host = listen.host == mgmt.host or bool({listen.host, mgmt.host} & _WILDCARD_HOSTS)
    if listen.port and listen.port == mgmt.port and same_host:
        raise ConfigError("management.port", f"must differ from listen.port ({listen.port})")


_CROSS: dict[type, Callable[[Any], None]] = {
    ListenConfig: _check_listen,
    ManagementConfig: _check_management,
    AuthConfig: _check_auth,
    RegistryConfig: _check_registry,
    GatewayConfig: _check_gateway,
}
