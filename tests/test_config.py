"""wsgateway.config: defaults, the contract example, and one error message per kind of mistake.

Pure tests: no sockets; files only under tmp_path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from wsgateway.config import (
    AuthConfig,
    Credential,
    GatewayConfig,
    LimitsConfig,
    ListenConfig,
    LogConfig,
    ManagementConfig,
    RegistryConfig,
    ReliableConfig,
    RoutesConfig,
    config_warnings,
    load_config,
    parse_config,
)
from wsgateway.errors import ConfigError

EXAMPLE = """\
stage = "prod"
[listen]
host = "127.0.0.1"
port = 8080
[management]
host = "127.0.0.1"
port = 8081
auth = "sigv4"
[[management.credentials]]
access_key_id = "AKIDGATEWAY"
secret_access_key = "management-secret"
[auth]
type = "jwt"
sources = ["header:Authorization", "query:token"]
algorithms = ["RS256"]
public_key_file = "key.pem"
issuer = "https://issuer.example"
audience = "dashboards"
leeway_s = 30
tenant_claim = "practice_id"
context_claims = ["role"]
[routes]
selection_expression = "$request.body.action"
"$connect" = "handlers.dashboard:on_connect"
"$disconnect" = "handlers.dashboard:on_disconnect"
"$default" = "handlers.echo:handler"
[limits]
max_message_bytes = 131072
idle_timeout_s = 600
max_connection_s = 7200
handler_timeout_s = 29
max_queued_bytes = 1048576
allowed_origins = ["*"]
[registry]
backend = "redis"
redis_url = "redis://127.0.0.1:6379/0"
key_prefix = "wsgw"
node_id = ""
heartbeat_s = 2
node_ttl_s = 10
"""

HS_SECRET = "s" * 64
JWT_HS = {"type": "jwt", "algorithms": ["HS256"], "secret": HS_SECRET}


@pytest.fixture(scope="session")
def public_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def example(tmp_path: Path, public_pem: bytes) -> Path:
    (tmp_path / "key.pem").write_bytes(public_pem)
    path = tmp_path / "gateway.toml"
    path.write_text(EXAMPLE)
    return path


def config_error(data: Mapping[str, Any], **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env=kwargs.pop("env", {}), **kwargs)
    return info.value


def as_document(config: Any) -> dict[str, Any]:
    """A config as the TOML document that would produce it (None = key left out)."""
    doc: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "source" or value is None:
            continue
        if dataclasses.is_dataclass(value):
            value = as_document(value)
        elif isinstance(value, Mapping):  # [routes]: route keys sit beside selection_expression
            doc.update(value)
            continue
        elif isinstance(value, tuple):
            value = [as_document(v) if dataclasses.is_dataclass(v) else v for v in value]
        doc[f.name.removesuffix("_") if f.name == "lambda_" else f.name] = value  # a keyword in the file
    return doc


# ---------------------------------------------------------------- defaults


def test_defaults_are_the_documented_literals() -> None:
    """GatewayConfig() is the embedded default config, with the documented values."""
    config = GatewayConfig()
    assert config.stage == "prod" and config.api_id == "wsgateway" and config.domain_name == ""
    assert config.listen == ListenConfig(host="127.0.0.1", port=8080, ping_interval_s=20.0)
    assert config.management.port == 8081 and config.management.auth == "none"
    assert config.auth.sources == ("header:Authorization", "query:token")
    assert config.auth.algorithms == ("RS256",) and config.auth.required_claims == ("exp",)
    assert config.auth.on_expiry == "ignore" and config.auth.refresh_action == ""  # AWS's behaviour
    assert dict(config.routes.routes) == {
        "$connect": "wsgateway.examples.dashboard:on_connect",
        "$disconnect": "wsgateway.examples.dashboard:on_disconnect",
        "$default": "wsgateway.examples.echo:handler",
    }
    assert config.limits.max_message_bytes == 131072 and config.limits.allowed_origins == ("*",)
    assert config.log == LogConfig(access_log="-", level="INFO")
    assert config.registry.backend == "memory" and config.registry.node_ttl_s == 10.0
    assert config.reliable == ReliableConfig(
        enabled=True, resume_window_s=60.0, max_unacked_bytes=1048576, max_dropped_sessions=10000)
    assert config.source == "<defaults>"


def test_load_config_none_and_empty_document_give_the_defaults() -> None:
    """No file means defaults; an empty document means defaults from "<data>"."""
    assert load_config(None) == GatewayConfig()
    assert parse_config({}, env={}) == dataclasses.replace(GatewayConfig(), source="<data>")


def test_defaults_pass_their_own_checks() -> None:
    """Writing every default out explicitly loads back to the same config."""
    document = as_document(GatewayConfig())
    assert parse_config(document, env={}) == dataclasses.replace(GatewayConfig(), source="<data>")


def test_configs_are_frozen_and_routes_read_only() -> None:
    """Nothing can mutate a config after load."""
    config = GatewayConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listen.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.routes.routes["$default"] = "x:y"  # type: ignore[index]


def test_secrets_never_show_in_repr() -> None:
    """Secrets are repr=False, so logging a config does not leak them."""
    config = parse_config({"auth": JWT_HS, "registry": {"password": "redis-pw"},
                           "management": {"auth": "sigv4", "credentials": [
                               {"access_key_id": "AK", "secret_access_key": "mgmt-secret"}]}}, env={})
    text = repr(config)
    assert HS_SECRET not in text and "redis-pw" not in text and "mgmt-secret" not in text
    assert "AK" in text


# ---------------------------------------------------------------- the contract example


def test_contract_example_loads(example: Path) -> None:
    """The documented example loads; relative paths become absolute; ints become floats."""
    config = load_config(example, env={})
    assert config.source == str(example)
    assert config.management.credentials == (Credential("AKIDGATEWAY", "management-secret"),)
    assert config.auth.public_key_file == str(example.parent / "key.pem")
    assert config.auth.audience == ("dashboards",)
    assert config.auth.context_claims == ("role",)
    assert config.auth.tenant_claim == "practice_id"
    assert config.auth.leeway_s == 30.0 and isinstance(config.auth.leeway_s, float)
    assert config.limits.idle_timeout_s == 600.0 and isinstance(config.limits.idle_timeout_s, float)
    assert config.registry.backend == "redis" and config.registry.heartbeat_s == 2.0
    assert dict(config.routes.routes) == {
        "$connect": "handlers.dashboard:on_connect",  # the examples, as a user's clone names them
        "$disconnect": "handlers.dashboard:on_disconnect",
        "$default": "handlers.echo:handler",
    }
    assert config_warnings(config) == [
        'limits.allowed_origins has "*" while auth is on: any web page can open connections '
        "with its visitors' tokens; list your origins",
        CONSOLE_OPEN,
    ]


def test_contract_example_with_unset_secret_env_names_the_key(tmp_path: Path) -> None:
    """The HS256 variant of the example fails on a missing variable, naming auth.secret_env."""
    text = EXAMPLE.replace('algorithms = ["RS256"]\npublic_key_file = "key.pem"',
                           'algorithms = ["HS256"]\nsecret_env = "JWT_SECRET"')
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == "auth.secret_env: environment variable JWT_SECRET is not set"
    assert info.value.key == "auth.secret_env"
    assert load_config(path, env={"JWT_SECRET": HS_SECRET}).auth.secret == HS_SECRET


def test_load_config_reads_os_environ_by_default(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """env=None means os.environ."""
    example.write_text(example.read_text().replace(
        'secret_access_key = "management-secret"', 'secret_access_key_env = "WSGW_TEST_MGMT_SECRET"'))
    monkeypatch.setenv("WSGW_TEST_MGMT_SECRET", "from-environ")
    assert load_config(example).management.credentials[0].secret_access_key == "from-environ"


# ---------------------------------------------------------------- file problems


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('stage = "prod"\n[listen]\nport = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: invalid TOML: Invalid value (at line 3, column 8)"


@pytest.mark.parametrize("name", ["missing.toml", "."])
def test_unreadable_file_names_the_path(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ConfigError) as info:
        load_config(path)
    reason = "No such file or directory" if name == "missing.toml" else "Is a directory"
    assert str(info.value) == f"{os.path.abspath(path)}: cannot read config file: {reason}"


def test_non_utf8_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('stage = "pr\xf6d"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: config file is not UTF-8 text"


# ---------------------------------------------------------------- bad values name their key


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # types: bool is never a number, floats never integers, lists hold strings
        ({"listen": {"port": "abc"}}, "listen.port: must be an integer from 0 to 65535, got 'abc'"),
        ({"listen": {"port": 65536}}, "listen.port: must be an integer from 0 to 65535, got 65536"),
        ({"management": {"port": True}}, "management.port: must be an integer from 0 to 65535, got true"),
        ({"listen": {"backlog": 1.5}}, "listen.backlog: must be an integer > 0, got 1.5"),
        ({"limits": {"idle_timeout_s": True}}, "limits.idle_timeout_s: must be a number > 0, got true"),
        ({"limits": {"idle_timeout_s": float("inf")}},
         "limits.idle_timeout_s: must be a number > 0, got inf"),
        ({"limits": {"idle_timeout_s": float("nan")}},
         "limits.idle_timeout_s: must be a number > 0, got nan"),
        ({"limits": {"idle_timeout_s": 10**400}},
         f"limits.idle_timeout_s: must be a number > 0, got {repr(10**400)[:77]}..."),
        ({"listen": {"compression": 1}}, "listen.compression: must be true or false, got 1"),
        ({"stage": 5}, "stage: must be a string, got 5"),
        ({"auth": {"sources": ["header:A", 3]}},
         "auth.sources: must be a string or a list of strings, got ['header:A', 3]"),
        # ranges: sizes and counts > 0, timeouts > 0, a few >= 0
        ({"limits": {"max_message_bytes": 0}}, "limits.max_message_bytes: must be an integer > 0, got 0"),
        ({"limits": {"handler_threads": -1}}, "limits.handler_threads: must be an integer > 0, got -1"),
        ({"limits": {"max_connections": -1}}, "limits.max_connections: must be an integer >= 0, got -1"),
        ({"limits": {"close_timeout_s": 0}}, "limits.close_timeout_s: must be a number > 0, got 0"),
        ({"listen": {"ping_timeout_s": -0.5}}, "listen.ping_timeout_s: must be a number >= 0, got -0.5"),
        ({"auth": {"leeway_s": -1}}, "auth.leeway_s: must be a number >= 0, got -1"),
        ({"management": {"max_post_bytes": 0}}, "management.max_post_bytes: must be an integer > 0, got 0"),
        # choices and patterns
        ({"stage": "prod/v1"}, "stage: must be 1 to 128 of A-Z a-z 0-9 _ -, got 'prod/v1'"),
        ({"domain_name": "https://x.example"},
         "domain_name: must be a host name (and port) without scheme or path, got 'https://x.example'"),
        ({"listen": {"host": ""}}, "listen.host: must be a host name or IP address, got ''"),
        ({"management": {"auth": "basic"}}, 'management.auth: must be "none" or "sigv4", got \'basic\''),
        ({"management": {"region": "US East"}},
         "management.region: must be a region name like \"us-east-1\", got 'US East'"),
        ({"auth": {"type": "JWT"}}, "auth.type: must be \"none\", \"jwt\" or \"authorizer\", got 'JWT'"),
        ({"auth": {"sources": ["header:Authorization", "cookie:session"]}},
         'auth.sources[1]: must be "header:NAME", "query:NAME" or "subprotocol:NAME", '
         "got 'cookie:session'"),
        ({"auth": {"algorithms": ["RS256", "None"]}},
         "auth.algorithms[1]: must be one of HS256/384/512, RS256/384/512, PS256/384/512, "
         "ES256/384/512, EdDSA, got 'None'"),
        ({"auth": {"algorithms": "HS1"}},
         "auth.algorithms[0]: must be one of HS256/384/512, RS256/384/512, PS256/384/512, "
         "ES256/384/512, EdDSA, got 'HS1'"),
        ({"auth": {"jwks_url": "http://keys.example/jwks"}},
         "auth.jwks_url: must be an https:// URL (http:// only for 127.0.0.0/8, ::1 or localhost), "
         "got 'http://keys.example/jwks'"),
        ({"auth": {"jwks_url": "http://127.0.0.1.evil.example/jwks"}},
         "auth.jwks_url: must be an https:// URL (http:// only for 127.0.0.0/8, ::1 or localhost), "
         "got 'http://127.0.0.1.evil.example/jwks'"),
        ({"auth": {"audience": ["a", ""]}}, "auth.audience[1]: must be non-empty, got ''"),
        ({"auth": {"tenant_claim": ""}}, "auth.tenant_claim: must be non-empty, got ''"),
        ({"auth": {"on_expiry": "kick"}}, 'auth.on_expiry: must be "ignore" or "close", got \'kick\''),
        ({"auth": {"refresh_action": "$default"}},
         'auth.refresh_action: must be "" or a custom route key (not starting with "$"), got \'$default\''),
        ({"routes": {"selection_expression": "$request.header.x"}},
         'routes.selection_expression: must be "$request.body...", text with "${request.body...}" '
         "or static text, got '$request.header.x'"),
        ({"limits": {"allowed_origins": ["https://app.example.com/"]}},
         'limits.allowed_origins[0]: must be "*" or a lower-case origin like "https://app.example.com" '
         "(scheme://host[:port], no path), got 'https://app.example.com/'"),
        ({"limits": {"allowed_origins": ["https://*.example.com"]}},
         'limits.allowed_origins[0]: must be "*" or a lower-case origin like "https://app.example.com" '
         "(scheme://host[:port], no path), got 'https://*.example.com'"),
        ({"log": {"level": "verbose"}},
         'log.level: must be "DEBUG", "INFO", "WARNING" or "ERROR", got \'verbose\''),
        ({"registry": {"backend": "etcd"}}, 'registry.backend: must be "memory" or "redis", got \'etcd\''),
        ({"registry": {"redis_url": "http://127.0.0.1:6379"}},
         "registry.redis_url: must be a redis://, rediss:// or unix:// URL, redis+sentinel://host:port,host:port/service[/db], "
         "or redis+cluster://host:port,host:port/, got 'http://127.0.0.1:6379'"),
        ({"registry": {"key_prefix": "ws gw"}},
         "registry.key_prefix: must be made of A-Z a-z 0-9 : _ -, got 'ws gw'"),
        ({"registry": {"node_id": "n" * 65}},
         f"registry.node_id: must be \"\" or 1 to 64 of A-Z a-z 0-9 _ -, got '{'n' * 65}'"),
        ({"reliable": {"resume_window_s": 0}}, "reliable.resume_window_s: must be a number > 0, got 0"),
        ({"reliable": {"max_unacked_bytes": -1}}, "reliable.max_unacked_bytes: must be an integer > 0, got -1"),
        ({"reliable": {"enabled": "yes"}}, "reliable.enabled: must be true or false, got 'yes'"),
        ({"reliable": {"max_dropped_sessions": 0}}, "reliable.max_dropped_sessions: must be an integer > 0, got 0"),
        # sections and credentials
        ({"listen": 8080}, "listen: must be a table ([listen]), got 8080"),
        ({"management": {"credentials": {"access_key_id": "A"}}},
         "management.credentials: must be a list of tables ([[management.credentials]]), "
         "got {'access_key_id': 'A'}"),
        ({"management": {"credentials": [{"secret_access_key": "x"}]}},
         "management.credentials[0].access_key_id: is required"),
        ({"management": {"credentials": [{"access_key_id": "A"}]}},
         "management.credentials[0].secret_access_key: is required (or secret_access_key_env)"),
        ({"management": {"credentials": [{"access_key_id": "AK/1", "secret_access_key": "x"}]}},
         "management.credentials[0].access_key_id: must be 1 to 128 chars, no space or /, got 'AK/1'"),
    ],
)
def test_bad_value_names_its_key(data: dict[str, Any], message: str) -> None:
    error = config_error(data)
    assert str(error) == message
    assert error.key == message.split(": ", 1)[0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"listen": {"ssl_certfile": "cert.pem"}},
         "listen.ssl_certfile: must name an existing file (looked for {dir}/cert.pem), got 'cert.pem'"),
        ({"auth": {"public_key_file": "keys/pub.pem"}},
         "auth.public_key_file: must name an existing file (looked for {dir}/keys/pub.pem), "
         "got 'keys/pub.pem'"),
    ],
)
def test_missing_file_names_key_and_resolved_path(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    assert str(config_error(data, base_dir=tmp_path)) == message.format(dir=tmp_path)


def test_relative_files_resolve_against_base_dir_and_are_stored_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """base_dir anchors relative paths; without it the current directory does."""
    (tmp_path / "tls").mkdir()
    for name in ("cert.pem", "key.pem"):
        (tmp_path / "tls" / name).write_text("pem")
    data = {"listen": {"ssl_certfile": "tls/cert.pem", "ssl_keyfile": str(tmp_path / "tls/key.pem")}}
    listen = parse_config(data, env={}, base_dir=tmp_path).listen
    assert listen.ssl_certfile == str(tmp_path / "tls/cert.pem")
    assert listen.ssl_keyfile == str(tmp_path / "tls/key.pem")
    monkeypatch.chdir(tmp_path / "tls")
    assert parse_config({"listen": {"ssl_certfile": "cert.pem", "ssl_keyfile": "key.pem"}},
                        env={}).listen.ssl_certfile == str(tmp_path / "tls/cert.pem")


def test_secret_values_are_not_echoed_in_errors() -> None:
    """A mistyped secret is described by its type only."""
    error = config_error({"auth": {"secret": 12345678}})
    assert str(error) == "auth.secret: must be a string, got <hidden int>"
    assert str(config_error({"registry": {"password": ""}})) == (
        "registry.password: must be non-empty, got <hidden str>")


# ---------------------------------------------------------------- checks across keys


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"listen": {"ssl_keyfile": "{pem}"}},
         "listen.ssl_certfile: set both ssl_certfile and ssl_keyfile, or neither"),
        ({"management": {"auth": "sigv4"}},
         'management.credentials: auth = "sigv4" needs at least one credential'),
        ({"management": {"credentials": [{"access_key_id": "A", "secret_access_key": "x"},
                                         {"access_key_id": "A", "secret_access_key": "y"}]}},
         "management.credentials[1].access_key_id: 'A' is listed twice"),
        ({"auth": {"type": "jwt", "algorithms": []}}, 'auth.algorithms: must not be empty when type = "jwt"'),
        ({"auth": {"type": "jwt", "sources": []}}, 'auth.sources: must not be empty when type = "jwt"'),
        ({"auth": {"type": "jwt", "algorithms": ["HS256", "RS256"], "secret": HS_SECRET}},
         "auth.algorithms: must not mix HS* and asymmetric ones (key confusion)"),
        ({"auth": {"type": "jwt", "algorithms": ["HS512"]}},
         "auth.secret: HS512 needs auth.secret or auth.secret_env"),
        ({"auth": {"type": "jwt", "algorithms": ["ES256"]}},
         "auth.public_key_file: ES256 needs auth.public_key_file or auth.jwks_url"),
        ({"auth": {"type": "jwt", "public_key_file": "{pem}", "jwks_url": "https://idp.example/jwks"}},
         "auth.jwks_url: give public_key_file or jwks_url, not both"),
        ({"auth": {**JWT_HS, "jwks_url": "https://idp.example/jwks"}},
         "auth.jwks_url: is for asymmetric algorithms, but auth.algorithms are HS*"),
        ({"auth": {"type": "jwt", "public_key_file": "{pem}", "secret": HS_SECRET}},
         "auth.secret: is for HS* algorithms, but auth.algorithms has none"),
        ({"auth": {"on_expiry": "close"}}, 'auth.on_expiry: "close" needs tokens: auth.type = "jwt"'),
        ({"auth": {"refresh_action": "refreshToken"}}, 'auth.refresh_action: needs auth.type = "jwt"'),
        ({"registry": {"heartbeat_s": 6}}, "registry.node_ttl_s: must be >= 2 * heartbeat_s (12), got 10"),
        ({"management": {"port": 8080}}, "management.port: must differ from listen.port (8080)"),
        ({"listen": {"host": "0.0.0.0", "port": 9000}, "management": {"port": 9000}},
         "management.port: must differ from listen.port (9000)"),
    ],
)
def test_cross_key_checks(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    pem = tmp_path / "pub.pem"
    pem.write_text("pem")
    data = {s: {k: (str(pem) if v == "{pem}" else v) for k, v in t.items()} for s, t in data.items()}
    assert str(config_error(data)) == message


def test_jwt_settings_are_not_cross_checked_while_auth_is_off() -> None:
    """type = "none" ignores the JWT settings (their own value checks still run)."""
    assert parse_config({"auth": {"algorithms": ["HS256"]}}, env={}).auth.secret is None


def test_listen_and_management_may_share_a_port_number_on_different_hosts() -> None:
    data = {"listen": {"host": "127.0.0.1", "port": 9000}, "management": {"host": "127.0.0.2", "port": 9000}}
    assert parse_config(data, env={}).management.port == 9000


def test_port_zero_is_allowed_for_both_listeners() -> None:
    config = parse_config({"listen": {"port": 0}, "management": {"port": 0}}, env={})
    assert (config.listen.port, config.management.port) == (0, 0)


# ---------------------------------------------------------------- secrets from the environment


def test_secrets_come_from_named_environment_variables() -> None:
    data = {
        "auth": {"type": "jwt", "algorithms": ["HS256"], "secret_env": "JWT_SECRET"},
        "management": {"auth": "sigv4",
                       "credentials": [{"access_key_id": "AK", "secret_access_key_env": "MGMT"}]},
        "registry": {"password_env": "REDIS_PW"},
    }
    config = parse_config(data, env={"JWT_SECRET": HS_SECRET, "MGMT": "m-secret", "REDIS_PW": "r-secret"})
    assert config.auth.secret == HS_SECRET
    assert config.management.credentials == (Credential("AK", "m-secret"),)
    assert config.registry.password == "r-secret"


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        ({"auth": {"secret": "a", "secret_env": "JWT_SECRET"}}, {},
         "auth.secret: give secret or secret_env, not both"),
        ({"auth": {"secret_env": "JWT_SECRET"}}, {"JWT_SECRET": ""},
         "auth.secret_env: environment variable JWT_SECRET is empty"),
        ({"auth": {"secret_env": ""}}, {}, "auth.secret_env: must name an environment variable, got ''"),
        ({"registry": {"password_env": "REDIS_PW"}}, {},
         "registry.password_env: environment variable REDIS_PW is not set"),
        ({"management": {"credentials": [{"access_key_id": "AK", "secret_access_key_env": "NOPE"}]}}, {},
         "management.credentials[0].secret_access_key_env: environment variable NOPE is not set"),
    ],
)
def test_bad_env_secrets_name_their_key(data: dict[str, Any], env: dict[str, str], message: str) -> None:
    assert str(config_error(data, env=env)) == message


def test_env_secret_is_checked_like_an_inline_one() -> None:
    """An HS algorithm with a secret from the environment passes the same cross-checks."""
    data = {"auth": {"type": "jwt", "algorithms": ["HS256"], "secret_env": "S"}}
    assert parse_config(data, env={"S": HS_SECRET}).auth.secret == HS_SECRET


# ---------------------------------------------------------------- routes


def test_naming_any_route_replaces_the_defaults() -> None:
    """So that $disconnect (or any default route) can be removed."""
    data = {"routes": {"$connect": "app.ws:connect", "chat": "app.chat:on_message"}}
    routes = parse_config(data, env={}).routes
    assert dict(routes.routes) == {"$connect": "app.ws:connect", "chat": "app.chat:on_message"}
    assert routes.selection_expression == "$request.body.action"


def test_selection_expression_alone_keeps_the_default_routes() -> None:
    routes = parse_config({"routes": {"selection_expression": "${request.body.type}"}}, env={}).routes
    assert routes.selection_expression == "${request.body.type}"
    assert routes.routes == RoutesConfig().routes


def test_static_selection_expression_is_accepted() -> None:
    routes = parse_config({"routes": {"selection_expression": "all"}}, env={}).routes
    assert routes.selection_expression == "all"


BAD_ROUTE_KEY = ('must be $connect, $disconnect, $default or a custom route key '
                 '(non-empty, not starting with "$")')


BAD_TARGET = ('must be "dotted.module:function", an http(s):// URL, "lambda:NAME[:QUALIFIER]" '
              'or "lambda:arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]"')


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"$conect": "a:b"},
         "routes.$conect: " + BAD_ROUTE_KEY),
        ({"": "a:b"},
         'routes."": ' + BAD_ROUTE_KEY),
        ({"$Default": "a:b"}, "routes.$Default: " + BAD_ROUTE_KEY),
        ({"$connect ": "a:b"}, 'routes."$connect ": ' + BAD_ROUTE_KEY),
        ({"chat": "app.chat"}, "routes.chat: " + BAD_TARGET + ", got 'app.chat'"),
        ({"chat": "app..chat:f"}, "routes.chat: " + BAD_TARGET + ", got 'app..chat:f'"),
        ({"chat": "app.chat:on-message"},
         "routes.chat: " + BAD_TARGET + ", got 'app.chat:on-message'"),
        ({"send message": 3}, 'routes."send message": must be a string, got 3'),
    ],
)
def test_bad_routes_name_their_key(routes: dict[str, Any], message: str) -> None:
    assert str(config_error({"routes": routes})) == message


@pytest.mark.parametrize("key", ["", "$join", "$Default", "$connect "])
def test_route_key_rule_holds_for_routes_built_in_code(key: str) -> None:
    """The Router trusts its keys: RoutesConfig refuses bad ones however it is built."""
    with pytest.raises(ConfigError) as info:
        RoutesConfig(routes={key: "a:b"})
    assert info.value.problem == BAD_ROUTE_KEY


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lsiten": {}}, "lsiten: unknown key (did you mean listen?)"),
        ({"source": "x.toml"}, "source: unknown key"),
        ({"listen": {"prot": 8080}}, "listen.prot: unknown key (did you mean port?)"),
        ({"auth": {"algorithm": ["RS256"]}}, "auth.algorithm: unknown key (did you mean algorithms?)"),
        ({"auth": {"public_key_env": "K"}},
         "auth.public_key_env: unknown key (did you mean public_key_file?)"),
        ({"management": {"credentials": [{"access_key_id": "A", "secret_key": "x"}]}},
         "management.credentials[0].secret_key: unknown key (did you mean secret_access_key?)"),
        ({"limits": {"zzz": 1}}, "limits.zzz: unknown key"),
    ],
)
def test_unknown_keys_are_errors(data: dict[str, Any], message: str) -> None:
    assert str(config_error(data)) == message


# ---------------------------------------------------------------- warnings

AUTH_OFF = 'auth.type = "none": authentication is OFF: anyone who can reach the port can connect'
CONSOLE_OPEN = ("console.password is not set: the console (/console on the management port) is OPEN to anyone "
                "who can reach that port, to look at every tenant and close connections; set console.password_env")


def test_default_config_warns_that_auth_is_off_and_the_console_open() -> None:
    assert config_warnings(GatewayConfig()) == [AUTH_OFF, CONSOLE_OPEN]


def test_console_defaults_follow_the_management_host() -> None:
    assert GatewayConfig().console_enabled  # loopback: on, open, warned about (above)
    off = parse_config({"management": {"host": "0.0.0.0"}}, env={})
    assert not off.console_enabled
    assert CONSOLE_OPEN not in config_warnings(off)
    on = parse_config({"management": {"host": "0.0.0.0"}, "console": {"enabled": True, "password_env": "PW"}},
                      env={"PW": "correct horse"})
    assert on.console_enabled and on.console.password == "correct horse"
    assert "correct horse" not in repr(on)
    assert not parse_config({"console": {"enabled": False}}, env={}).console_enabled


def test_console_off_loopback_needs_a_password() -> None:
    error = config_error({"management": {"host": "0.0.0.0"}, "console": {"enabled": True}})
    assert str(error) == ("console.password: required when management.host (0.0.0.0) is not loopback "
                          "(set password_env), or set console.enabled = false")
    assert str(config_error({"console": {"enabled": "yes"}})) == "console.enabled: must be true or false, got 'yes'"
    assert str(config_error({"console": {"password": "short"}})).startswith("console.password: must be 8 to 1024")


def test_locked_down_config_has_no_warnings() -> None:
    config = parse_config({
        "listen": {"host": "::1"},
        "auth": {**JWT_HS, "audience": "app"},
        "limits": {"allowed_origins": ["https://app.example.com"]},
        "management": {"host": "localhost"},
        "console": {"password": "a long console password"},
    }, env={})
    assert config_warnings(config) == []


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        ({"management": {"host": "0.0.0.0"}},
         'management.auth = "none" on non-loopback host 0.0.0.0: anyone who can reach it can post to '
         "and close every connection"),
        ({"management": {"credentials": [{"access_key_id": "A", "secret_access_key": "x"}]}},
         'management.credentials are set but management.auth = "none": they are ignored'),
        ({"listen": {"host": "10.0.0.5"}},
         "listen.host = 10.0.0.5 without TLS: tokens and messages cross the network in clear text "
         "unless a proxy in front terminates TLS"),
        ({"auth": {**JWT_HS, "secret": "short"}},
         "auth.secret is 5 bytes; use at least 32 random bytes for the configured HS* algorithms"),
        ({"auth": {"type": "jwt", "jwks_url": "https://idp.example/jwks"}},
         "auth.audience is empty: tokens the JWKS issuer minted for other applications are accepted"),
        ({"registry": {"backend": "redis", "redis_url": "redis://:hunter2@cache:6379/0"}},
         "registry.redis_url contains a password, which shows wherever the URL is logged; "
         "use registry.password_env"),
    ],
)
def test_risky_settings_warn(data: dict[str, Any], warning: str) -> None:
    assert warning in config_warnings(parse_config(data, env={}))


def test_public_key_without_audience_warns(tmp_path: Path, public_pem: bytes) -> None:
    """A public key, like a JWKS, usually serves an issuer with other applications too."""
    (tmp_path / "key.pem").write_bytes(public_pem)
    auth = {"type": "jwt", "public_key_file": "key.pem"}
    warning = ("auth.audience is empty: tokens the public key's issuer minted for other "
               "applications are accepted")
    assert warning in config_warnings(parse_config({"auth": auth}, env={}, base_dir=tmp_path))
    with_audience = parse_config({"auth": {**auth, "audience": "app"}}, env={}, base_dir=tmp_path)
    assert not [w for w in config_warnings(with_audience) if w.startswith("auth.audience")]
    # An HS* secret is normally this gateway's alone: no audience warning for it.
    assert not [w for w in config_warnings(parse_config({"auth": JWT_HS}, env={}))
                if w.startswith("auth.audience")]


def test_listen_health_details_is_off_by_default() -> None:
    assert GatewayConfig().listen.health_details is False
    assert parse_config({"listen": {"health_details": True}}, env={}).listen.health_details is True
    with pytest.raises(ConfigError):
        parse_config({"listen": {"health_details": "yes"}}, env={})


def test_star_origin_warns_only_when_auth_is_on() -> None:
    star = 'limits.allowed_origins has "*" while auth is on'
    assert not any(w.startswith(star) for w in config_warnings(GatewayConfig()))
    assert any(w.startswith(star) for w in config_warnings(parse_config({"auth": JWT_HS}, env={})))


def test_section_classes_build_with_keywords_only() -> None:
    """Every section is constructible with no arguments, and only by keyword."""
    for cls in (ListenConfig, ManagementConfig, AuthConfig, RoutesConfig, LimitsConfig, LogConfig,
                RegistryConfig, ReliableConfig, GatewayConfig):
        assert cls() == cls()
        with pytest.raises(TypeError):
            cls("positional")  # type: ignore[misc]


# ---------------------------------------------------------------- [auth] type = "authorizer"

AUTHORIZER = {"type": "authorizer", "authorizer": "tests.seed_authorizer:handler"}


def test_authorizer_section_as_the_issue_writes_it() -> None:
    auth = parse_config({"auth": {
        **AUTHORIZER,
        "identity_sources": ["route.request.header.Authorization", "route.request.querystring.practice"],
        "cache_ttl_s": 3600,
        "tenant_key": "practice_id",
        "region": "eu-west-2",
        "account_id": "123456789012",
    }}, env={}).auth
    assert auth.type == "authorizer"
    assert auth.identity_sources == ("route.request.header.Authorization", "route.request.querystring.practice")
    assert (auth.cache_ttl_s, auth.tenant_key, auth.region, auth.account_id) == (3600, "practice_id", "eu-west-2",
                                                                                  "123456789012")


def test_authorizer_defaults() -> None:
    auth = parse_config({"auth": AUTHORIZER}, env={}).auth
    assert auth.identity_sources == ("route.request.header.Authorization",)
    assert (auth.cache_ttl_s, auth.tenant_key, auth.region, auth.account_id) == (300, "tenant", "us-east-1",
                                                                                  "000000000000")


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"cache_ttl_s": 3601}, "auth.cache_ttl_s: must be a number from 0 to 3600, got 3601"),
        ({"cache_ttl_s": -1}, "auth.cache_ttl_s: must be a number from 0 to 3600, got -1"),
        ({"identity_sources": ["method.request.header.Authorization"]},
         'auth.identity_sources[0]: must be "route.request.header.NAME" or "route.request.querystring.NAME", '
         "got 'method.request.header.Authorization'"),
        ({"identity_sources": ["$request.header.Authorization"]},
         'auth.identity_sources[0]: must be "route.request.header.NAME" or "route.request.querystring.NAME", '
         "got '$request.header.Authorization'"),
        ({"identity_sources": ["route.request.context.authorizer"]},
         'auth.identity_sources[0]: must be "route.request.header.NAME" or "route.request.querystring.NAME", '
         "got 'route.request.context.authorizer'"),
        ({"authorizer": "no_function_here"},
         "auth.authorizer: must be \"dotted.module:function\", got 'no_function_here'"),
        ({"account_id": "12345"}, "auth.account_id: must be 12 digits, got '12345'"),
        ({"tenant_key": ""}, "auth.tenant_key: must be non-empty, got ''"),
        ({"identity_sources": [], "cache_ttl_s": 300}, "auth.identity_sources: must not be empty while cache_ttl_s > 0"),
    ],
)
def test_bad_authorizer_settings_name_their_key(auth: dict[str, Any], message: str) -> None:
    error = config_error({"auth": {**AUTHORIZER, **auth}})
    assert str(error) == message
    assert error.key == message.split(": ", 1)[0]


def test_authorizer_type_needs_its_target() -> None:
    error = config_error({"auth": {"type": "authorizer"}})
    assert (error.key, str(error)) == (
        "auth.authorizer", 'auth.authorizer: type = "authorizer" needs authorizer = "module:function"')


def test_no_identity_source_is_allowed_without_caching() -> None:
    auth = parse_config({"auth": {**AUTHORIZER, "identity_sources": [], "cache_ttl_s": 0}}, env={}).auth
    assert auth.identity_sources == ()


def test_authorizer_counts_as_auth_on_for_warnings() -> None:
    warnings = config_warnings(parse_config({"auth": AUTHORIZER}, env={}))
    assert AUTH_OFF not in warnings
    assert any(w.startswith('limits.allowed_origins has "*" while auth is on') for w in warnings)


# ---------------------------------------------------------------- [integrations] and route targets


def test_three_kinds_of_route_target_and_the_integrations_section() -> None:
    config = parse_config({
        "routes": {"$connect": "https://backend.example/ws/connect", "$disconnect": "http://127.0.0.1:9000/dc",
                   "sendMessage": "lambda:arn:aws:lambda:us-east-1:123456789012:function:chat",
                   "other": "lambda:chat:live", "$default": "handlers.echo:handler"},
        "integrations": {"http": {"signing_secret_env": "HOOK_SECRET", "max_connections": 7},
                         "lambda": {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:3001"}},
    }, env={"HOOK_SECRET": "s3cret-value"})
    http, lam = config.integrations.http, config.integrations.lambda_
    assert (http.signing_secret, http.max_connections, http.allow_plain_http) == ("s3cret-value", 7, False)
    assert http.disconnect_retry_s == 30.0 and "s3cret-value" not in repr(config)
    assert (lam.region, lam.endpoint_url) == ("eu-west-1", "http://127.0.0.1:3001")
    assert len(config.routes.routes) == 5


@pytest.mark.parametrize("host", ["localhost", "127.0.0.2", "[::1]"])
def test_plain_http_to_loopback_needs_no_permission(host: str) -> None:
    assert parse_config({"routes": {"x": f"http://{host}:8000/hook"}}).routes.routes["x"].startswith("http://")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"routes": {"x": "http://backend.example/hook"}},
         "routes.x: http:// to non-loopback host backend.example sends events in clear text: use https://, "
         "or set [integrations.http] allow_plain_http = true"),
        ({"routes": {"x": "lambda:chat"}},
         "routes.x: a lambda target needs a region: give the function's full ARN or set [integrations.lambda] region"),
        ({"routes": {"x": "https://user:pw@backend.example/hook"}}, "routes.x: " + "{bad}" + ", got "
         "'https://user:pw@backend.example/hook'"),
        ({"routes": {"x": "lambda:arn:aws:lambda:us-east-1:12345:function:chat"}}, "routes.x: " + "{bad}" + ", got "
         "'lambda:arn:aws:lambda:us-east-1:12345:function:chat'"),
        ({"integrations": {"http": {"max_connections": 0}}},
         "integrations.http.max_connections: must be an integer > 0, got 0"),
        ({"integrations": {"lambda": {"endpoint_url": "127.0.0.1:3001"}}},
         "integrations.lambda.endpoint_url: must be \"\" or an http(s):// URL, got '127.0.0.1:3001'"),
        ({"integrations": {"lamda": {}}}, "integrations.lamda: unknown key (did you mean lambda?)"),
    ],
)
def test_bad_targets_and_integrations_name_their_key(data: dict[str, Any], message: str) -> None:
    assert str(config_error(data)) == message.replace("{bad}", BAD_TARGET)


def test_plain_http_and_lambda_name_allowed_by_their_settings() -> None:
    config = parse_config({"routes": {"x": "http://backend.example/hook", "y": "lambda:chat"},
                           "integrations": {"http": {"allow_plain_http": True}, "lambda": {"region": "us-east-1"}}})
    assert dict(config.routes.routes) == {"x": "http://backend.example/hook", "y": "lambda:chat"}


def test_unsigned_http_integrations_are_warned_about() -> None:
    unsigned = parse_config({"routes": {"$default": "https://backend.example/ws"}})
    signed = parse_config({"routes": {"$default": "https://backend.example/ws"},
                           "integrations": {"http": {"signing_secret": "s"}}})
    warning = ("HTTP integrations are not signed: backends cannot tell the gateway's requests from anyone "
               "else's; set integrations.http.signing_secret_env")
    assert warning in config_warnings(unsigned)
    assert warning not in config_warnings(signed) and warning not in config_warnings(GatewayConfig())
