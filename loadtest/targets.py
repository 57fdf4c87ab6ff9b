"""The systems a run compares, and how to deploy each one for a scenario.

Every target runs the same work through its own adapter (``loadtest/peers/``): the clients'
``echo`` and ``whoami`` actions, ``POST /@connections/{id}`` and
``POST /@tenants/{tenant}/messages``, an HS256 token checked on every handshake.

=================== ======== ===============================================================
target              dialect  what runs
=================== ======== ===============================================================
wsgateway           plain    ``python -m wsgateway serve`` (routes in ``peers/gw_handlers.py``),
                             SigV4 on the management API, memory registry (Redis across nodes)
wsgateway-          plain    the same, its Redis a private three-master Redis Cluster
redis-cluster                (``redis+cluster://``) wherever it needs one
wsgateway-          plain    the same, with an operator console page open on node 0's overview
console                      and refreshing (``console_watch.py``): what the console costs
wsgateway-reliable  reliable the same server, its clients on ``wsgateway.reliable.v1``
                             (numbered envelopes, an ack every 64 messages): what it costs
wsgateway-nosig     plain    the same with SigV4 off (``auth = "none"``): the management POST
                             alone, against ``raw``
bare                plain    ``peers/bare.py``: websockets + aiohttp, no gateway features (ceiling)
raw                 plain    ``peers/raw.py``: bare's websockets side; a minimal httptools endpoint
                             and a raw RESP PUBLISH/SUBSCRIBE relay (publish and forget): the
                             ceilings of a management POST and of the cross-node hop
raw-acked           plain    the same relay answering a cross-node post once its owner did (200
                             written / 410 not here): the cross-node ceiling with AWS's exact answer
socketio            socketio ``peers/socketio_app.py``: python-socketio + AsyncRedisManager
channels            plain    ``peers/channels_app``: Django Channels + channels_redis, uvicorn
socketio-node       socketio ``peers/socketio_node/server.js``: Socket.IO + @socket.io/redis-adapter
=================== ======== ===============================================================

The peers always run with their Redis backend (that is how they are deployed for more than one
process), so their single-node figures include it; wsgateway and bare use Redis only across
nodes. Call :func:`resolve` to turn ``--target`` into targets, then :meth:`Target.deploy`.
"""

from __future__ import annotations

import importlib.util
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from loadtest import npm
from loadtest.clients import Endpoint
from loadtest.servers import (
    REPO_ROOT,
    ServerError,
    ServerProcess,
    free_port,
    python_argv,
    start_redis,
    start_redis_cluster,
    start_server,
)
from loadtest.wire import Dialect

__all__ = ["TARGETS", "Deployment", "Node", "Target", "Topology", "gateway_config", "resolve"]

_NPM_DIR = REPO_ROOT / "loadtest" / ".npm"
_NODE_APP = REPO_ROOT / "loadtest" / "peers" / "socketio_node"


@dataclass(frozen=True)
class Topology:
    """What a scenario needs deployed: nodes, server processes per node, a Redis bus."""

    nodes: int = 1
    workers: int = 1
    bus: bool = False
    compression: bool = False  # permessage-deflate on (clients offer it too)
    backend: bool = False  # an HTTP echo backend (peers/echo_backend.py) that echo goes through
    plans: bool = False  # wsgateway: usage plans on every tenant, figures no run reaches


@dataclass(frozen=True)
class Node:
    """Where clients connect to one node and where its management API listens."""

    endpoint: Endpoint
    mgmt_url: str


@dataclass
class Deployment:
    """A deployed target: its nodes, its processes (servers first, Redis last), its secrets."""

    target: str
    nodes: list[Node]
    servers: list[ServerProcess]
    jwt_secret: str
    sigv4: tuple[str, str] | None = None
    redis: ServerProcess | None = None
    redis_more: list[ServerProcess] = field(default_factory=list)  # a Redis Cluster's other masters
    notes: list[str] = field(default_factory=list)
    # Processes beside the servers (never sampled as the server's): a console page's calls.
    helpers: list[ServerProcess] = field(default_factory=list)

    @property
    def redis_servers(self) -> list[ServerProcess]:
        """Every redis-server of the deployment (one, or a cluster's masters)."""
        return ([self.redis] if self.redis is not None else []) + self.redis_more

    def stop(self) -> None:
        """Stop the helpers, every server, then Redis; safe to call twice."""
        for helper in self.helpers:
            helper.stop()
        for server in self.servers:
            server.stop()
        for redis in self.redis_servers:
            redis.stop()


class Target:
    """One system under test. Subclasses say how to start a node."""

    name = ""
    dialect: Dialect = "plain"
    path = "/"
    always_redis = False
    redis_cluster = False  # its Redis, when it needs one, is a three-master Redis Cluster
    _compression = False
    compression_arg: str | None = "--compression"  # how a node is told to offer deflate
    reuse_port = True  # several processes may share a node's ports (--workers)
    sigv4 = False
    _backend_url = ""  # set by deploy when the topology has an HTTP echo backend
    forwards_http = False  # its echo can go through an HTTP backend (the echohttp scenario)

    def unavailable(self) -> str | None:
        """Return why this target cannot run here, or ``None`` if it can."""
        return None

    def node_argv(self, ready_file: Path, index: int, redis_url: str, secret: str, workdir: Path) -> list[str]:
        """Return the argv that starts node ``index``."""
        raise NotImplementedError

    def deploy(self, topo: Topology, workdir: Path, cpu: int | None) -> Deployment:
        """Start Redis if needed and every node; raises ``ServerError``."""
        if topo.backend and not self.forwards_http:  # it would measure plain echo under this name
            raise ServerError(f"{self.name} has no adapter that forwards to an HTTP backend")
        secret = secrets.token_hex(32)
        self._compression = topo.compression
        redis, more, redis_url = None, [], ""
        if self.redis_cluster and topo.bus:
            redis, *more = start_redis_cluster(workdir, cpu)
            redis_url = redis.ready["cluster_url"]
        elif self.always_redis or topo.bus:
            redis = start_redis(workdir, cpu)
            redis_url = redis.ready["url"]
        dep = Deployment(self.name, [], [], secret, redis=redis, redis_more=more)
        self._backend_url = ""
        try:
            if topo.backend:  # on the server's core: its work is part of every echo, for both targets
                ready = workdir / f"{self.name}-backend.ready"
                server = start_server(f"{self.name}-backend", python_argv(
                    "loadtest.peers.echo_backend", "--ready-file", str(ready)), workdir, ready_file=ready, cpu=cpu)
                dep.servers.append(server)
                self._backend_url = f"http://127.0.0.1:{server.port}/echo"
            for i in range(topo.nodes):
                self._start_node(dep, topo, i, redis_url, workdir, cpu)
        except BaseException:
            dep.stop()
            raise
        return dep

    def _start_node(
        self, dep: Deployment, topo: Topology, i: int, redis_url: str, workdir: Path, cpu: int | None
    ) -> None:
        shared: list[str] = []
        if topo.workers > 1:
            # Several independent processes on one pair of ports (SO_REUSEPORT).
            shared = ["--port", str(free_port()), "--management-port", str(free_port()), "--reuse-port"]
        first: ServerProcess | None = None
        for w in range(topo.workers):
            ready = workdir / f"{self.name}-node{i}-w{w}.ready"
            argv = self.node_argv(ready, i, redis_url, dep.jwt_secret, workdir) + shared
            if topo.compression and self.compression_arg:
                argv.append(self.compression_arg)
            server = start_server(f"{self.name}-node{i}-w{w}", argv, workdir, ready_file=ready, cpu=cpu)
            dep.servers.append(server)
            first = first or server
        assert first is not None
        endpoint = Endpoint("127.0.0.1", first.port, self.dialect, self.path, topo.compression)
        dep.nodes.append(Node(endpoint, f"http://127.0.0.1:{first.management_port}"))


# Every check of usage plans runs (caps reserved, buckets, quota counts, route gates,
# per-connection buckets) with figures no load run reaches: what they cost, never a 429.
_GENEROUS_PLANS = """
[[plans]]
name = "loadtest"
tenants = ["*"]
max_connections = 10000000
max_connections_per_principal = 10000000
messages_per_s = 100000000
messages_burst = 100000000
posts_per_s = 100000000
posts_burst = 100000000
quota_per_day = 1000000000000

[route_settings.echo]
rate_per_s = 100000000
burst = 100000000
max_concurrency = 10000000
"""


def gateway_config(
    *, secret: str, access_key: str, secret_key: str, redis_url: str = "", compression: bool = False,
    backend_url: str = "",
    plans: bool = False,
    console_password: str = "",
    sigv4: bool = True,
) -> str:
    """Return a wsgateway TOML config for load runs (pure: no I/O).

    JWT (HS256, ``?token=``, tenant claim ``tenant``) and SigV4 on; routes from
    ``loadtest.peers.gw_handlers`` (``echo`` an HTTP integration to ``backend_url`` if set);
    access log off; memory registry unless ``redis_url``; permessage-deflate only with
    ``compression``; SigV4 off without ``sigv4``; with ``plans`` a generous usage plan on every tenant, a route setting on
    ``echo`` and a per-connection rate; with ``console_password`` the console behind that
    password (without, the console is as a default install has it: on, nobody looking).
    """
    per_connection = "messages_per_s_per_connection = 10000000\nmessages_burst_per_connection = 10000000\n"
    registry = f'backend = "redis"\nredis_url = "{redis_url}"' if redis_url else 'backend = "memory"'
    echo = backend_url or "loadtest.peers.gw_handlers:echo"
    console = f'\n[console]\npassword = "{console_password}"\n' if console_password else ""
    return f"""stage = "prod"

[listen]
host = "127.0.0.1"
port = 0
compression = {"true" if compression else "false"}

[management]
host = "127.0.0.1"
port = 0
auth = "{"sigv4" if sigv4 else "none"}"

[[management.credentials]]
access_key_id = "{access_key}"
secret_access_key = "{secret_key}"

[auth]
type = "jwt"
algorithms = ["HS256"]
secret = "{secret}"
sources = ["query:token"]
tenant_claim = "tenant"

[routes]
"$connect" = "loadtest.peers.gw_handlers:connect"
"echo" = "{echo}"
"whoami" = "loadtest.peers.gw_handlers:whoami"

[registry]
{registry}

[log]
access_log = ""
{console}
[limits]
{per_connection if plans else ""}
{_GENEROUS_PLANS if plans else ""}"""


class WsGateway(Target):
    """wsgateway itself, through its CLI; ``--workers`` is the gateway's own."""

    name = "wsgateway"
    compression_arg = None  # [listen] compression in its config
    reuse_port = False
    _plans = False
    sigv4 = True
    forwards_http = True

    def unavailable(self) -> str | None:
        return _gateway_cli_missing()

    def deploy(self, topo: Topology, workdir: Path, cpu: int | None) -> Deployment:
        self._keys = ("AKID" + secrets.token_hex(8).upper(), secrets.token_hex(20))
        self._workers = topo.workers
        # The gateway's own --workers share the ports and need the Redis registry.
        self._plans = topo.plans
        dep = super().deploy(Topology(topo.nodes, 1, topo.bus or topo.workers > 1, topo.compression, topo.backend,
                                      topo.plans),
                             workdir, cpu)
        dep.sigv4 = self._keys
        return dep

    def node_argv(self, ready_file: Path, index: int, redis_url: str, secret: str, workdir: Path) -> list[str]:
        config = workdir / f"wsgateway-node{index}.toml"
        access_key, secret_key = self._keys
        config.write_text(gateway_config(secret=secret, access_key=access_key, secret_key=secret_key,
                                         redis_url=redis_url, compression=self._compression,
                                         backend_url=self._backend_url, plans=self._plans, sigv4=self.sigv4))
        argv = python_argv("wsgateway", "serve", "--config", str(config), "--ready-file", str(ready_file))
        return argv + (["--workers", str(self._workers)] if self._workers > 1 else [])


class WsGatewayRedisCluster(WsGateway):
    """wsgateway with its Redis registry on a three-master Redis Cluster (``redis+cluster://``)
    wherever it needs Redis: the same nodes as ``wsgateway``, another Redis."""

    name = "wsgateway-redis-cluster"
    redis_cluster = True


class WsGatewayNoSig(WsGateway):
    """wsgateway with SigV4 off on its management API (the generator still signs: the same
    work on its side): what the management POST costs without the signature check."""

    name = "wsgateway-nosig"
    sigv4 = False


class WsGatewayReliable(WsGateway):
    """wsgateway with reliable clients: compare with ``wsgateway`` in the same run."""

    name = "wsgateway-reliable"
    dialect: Dialect = "reliable"


class WsGatewayConsole(WsGateway):
    """wsgateway with its console open on node 0's overview, refreshing as the page does."""

    name = "wsgateway-console"

    def deploy(self, topo: Topology, workdir: Path, cpu: int | None) -> Deployment:
        self._password = secrets.token_hex(16)
        dep = super().deploy(topo, workdir, cpu)
        try:
            ready = workdir / "console-watch.ready"
            # Not on the server's core: the page runs on the operator's machine.
            dep.helpers.append(start_server(
                "console-watch", python_argv("loadtest.console_watch", "--url", dep.nodes[0].mgmt_url,
                                             "--ready-file", str(ready)),
                workdir, ready_file=ready, env={"WSGW_CONSOLE_PASSWORD": self._password}))
        except BaseException:
            dep.stop()
            raise
        return dep

    def node_argv(self, ready_file: Path, index: int, redis_url: str, secret: str, workdir: Path) -> list[str]:
        argv = super().node_argv(ready_file, index, redis_url, secret, workdir)
        config = workdir / f"wsgateway-node{index}.toml"
        access_key, secret_key = self._keys
        config.write_text(gateway_config(secret=secret, access_key=access_key, secret_key=secret_key,
                                         redis_url=redis_url, compression=self._compression,
                                         backend_url=self._backend_url, plans=self._plans,
                                         console_password=self._password))
        return argv


class Bare(Target):
    """The ceiling (``peers/bare.py``)."""

    name = "bare"
    forwards_http = True
    module = "loadtest.peers.bare"

    def node_argv(self, ready_file: Path, index: int, redis_url: str, secret: str, workdir: Path) -> list[str]:
        argv = python_argv(self.module, "--ready-file", str(ready_file), "--jwt-secret", secret,
                           "--node-id", f"n{index}")
        argv += ["--backend-url", self._backend_url] if self.forwards_http and self._backend_url else []
        return argv + (["--redis-url", redis_url] if redis_url else [])


class Raw(Bare):
    """The raw ceilings (``peers/raw.py``): a minimal HTTP endpoint and a raw RESP relay."""

    name = "raw"
    forwards_http = False
    module = "loadtest.peers.raw"


class RawAcked(Raw):
    """The raw cross-node relay waiting for the owner's answer (``peers/raw_acked.py``)."""

    name = "raw-acked"
    module = "loadtest.peers.raw_acked"


class SocketIO(Target):
    """python-socketio with AsyncRedisManager (``peers/socketio_app.py``)."""

    name = "socketio"
    dialect: Dialect = "socketio"
    always_redis = True

    def unavailable(self) -> str | None:
        return _missing("socketio", "python-socketio (pip install '.[peers]')")

    def node_argv(self, ready_file: Path, index: int, redis_url: str, secret: str, workdir: Path) -> list[str]:
        return python_argv("loadtest.peers.socketio_app", "--ready-file", str(ready_file), "--jwt-secret", secret,
                           "--redis-url", redis_url, "--node-id", f"n{index}")


class Channels(Target):
    """Django Channels + channels_redis under uvicorn (``peers/channels_app``)."""

    name = "channels"
    path = "/ws/"
    always_redis = True
    reuse_port = False

    def unavailable(self) -> str | None:
        for module in ("channels", "channels_redis", "django", "uvicorn"):
            if reason := _missing(module, f"{module} (pip install '.[peers]')"):
                return reason
        return None

    def node_argv(self, ready_file: Path, index: int, redis_url: str, secret: str, workdir: Path) -> list[str]:
        return python_argv("loadtest.peers.channels_app.serve", "--ready-file", str(ready_file), "--jwt-secret", secret,
                           "--redis-url", redis_url, "--node-id", f"n{index}")


class SocketIONode(Target):
    """Socket.IO on Node.js with @socket.io/redis-adapter, npm-installed into loadtest/.npm."""

    name = "socketio-node"
    compression_arg = None  # not wired: --compression runs it uncompressed
    dialect: Dialect = "socketio"
    always_redis = True
    reuse_port = False

    def unavailable(self) -> str | None:
        if shutil.which("node") is None or shutil.which("npm") is None:
            return "node and npm are not installed"
        return _npm_install()

    def node_argv(self, ready_file: Path, index: int, redis_url: str, secret: str, workdir: Path) -> list[str]:
        return ["env", f"NODE_PATH={_NPM_DIR / 'node_modules'}", "node", str(_NODE_APP / "server.js"),
                "--ready-file", str(ready_file), "--jwt-secret", secret, "--redis-url", redis_url,
                "--node-id", f"n{index}"]


def _missing(module: str, what: str) -> str | None:
    return None if importlib.util.find_spec(module) else f"{what} is not installed"


@cache
def _gateway_cli_missing() -> str | None:
    try:
        run = subprocess.run([sys.executable, "-m", "wsgateway", "serve", "--help"], cwd=REPO_ROOT, check=False,
                             capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`python -m wsgateway serve --help` timed out"
    if run.returncode != 0:
        return "`python -m wsgateway serve` is not available yet: " + run.stderr.decode(errors="replace").strip()[-200:]
    return None


@cache
def _npm_install() -> str | None:
    """Install the Node peer's packages into loadtest/.npm once (git-ignored)."""
    failure = npm.install(_NODE_APP, _NPM_DIR)
    return None if failure is None else failure.reason


TARGETS: dict[str, Target] = {
    t.name: t for t in (
        WsGateway(), WsGatewayRedisCluster(), WsGatewayNoSig(), WsGatewayReliable(), WsGatewayConsole(), Bare(), Raw(),
        RawAcked(), SocketIO(), Channels(), SocketIONode(),
    )
}
"""Every target by name, in report order."""


def resolve(spec: str) -> list[Target]:
    """Return the targets named by ``--target`` (a comma list or ``all``).

    Raises ``ValueError`` naming an unknown target. Ratios in the report need ``bare`` in
    the same run.
    """
    names = list(TARGETS) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise ValueError(f"unknown target(s): {', '.join(unknown)} (known: {', '.join(TARGETS)}, all)")
    return [TARGETS[n] for n in dict.fromkeys(names)]

