"""One running gateway node: the core and its two edges, started and stopped in order.

Start: gateway (routes, auth keys, registry), then the client listener, then the management
listener. Stop (idempotent): refuse new handshakes, close every client with 1001 and run its
``$disconnect``, stop the management listener, then close the registry (removing this node's
records so that other nodes answer 410 at once) and the rest in reverse order.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

from .gateway import Gateway
from .management import COMPILED, ManagementServer
from .server import ClientServer

if TYPE_CHECKING:
    from .config import GatewayConfig

__all__ = ["MANAGEMENT_URL_ENV", "Node", "listen_socket"]

log = logging.getLogger("wsgateway")

# Handlers written for AWS build their apigatewaymanagementapi client from this variable.
MANAGEMENT_URL_ENV = "WSGATEWAY_MANAGEMENT_URL"
_USER_SET_URL = MANAGEMENT_URL_ENV in os.environ


def listen_socket(host: str, port: int, *, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket; with ``reuse_port`` several processes share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog, reuse_port=reuse_port)


class Node:
    """Use as ``async with Node(config) as node:``; ``node.port`` / ``node.management_port``."""

    def __init__(self, config: GatewayConfig, *, node_id: str | None = None, reuse_port: bool = False) -> None:
        self.config = config
        self.gateway = Gateway(config, node_id=node_id)
        self.client = ClientServer(self.gateway)
        self.management = ManagementServer(self.gateway)
        self._reuse_port = reuse_port
        self._stopped = False

    @property
    def node_id(self) -> str:
        return self.gateway.node_id

    @property
    def port(self) -> int:
        return self.client.port

    @property
    def management_port(self) -> int:
        return self.management.port

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the core, then both listeners; on failure, undo what started."""
        try:
            await self.gateway.start()
            cfg = self.config
            client_sock = listen_socket(
                cfg.listen.host, cfg.listen.port, reuse_port=self._reuse_port, backlog=cfg.listen.backlog
            )
            await self.client.start(sock=client_sock)
            mgmt_sock = listen_socket(cfg.management.host, cfg.management.port, reuse_port=self._reuse_port)
            await self.management.start(sock=mgmt_sock)
        except BaseException:
            await self.stop()
            raise
        if not _USER_SET_URL:
            host = cfg.management.host if cfg.management.host not in ("0.0.0.0", "::") else "127.0.0.1"
            os.environ[MANAGEMENT_URL_ENV] = f"http://{host}:{self.management_port}/{cfg.stage}"
        log.info(
            "node %s ready: clients on %s:%d (stage /%s), management on %s:%d, registry %s, management edge %s",
            self.node_id, cfg.listen.host, self.port, cfg.stage, cfg.management.host,
            self.management_port, self.gateway.registry.kind, "compiled" if COMPILED else "Python",
        )

    def reload(self, config: GatewayConfig) -> None:
        """Apply ``config``'s plans, route settings and allowed origins (SIGHUP); everything
        else in it is ignored until a restart. Open connections are kept."""
        self.gateway.reload_plans(config)
        self.client.set_origins(config.limits.allowed_origins)

    async def stop(self) -> None:
        """Drain and stop; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.gateway.begin_drain()
        try:
            await self.client.close()
            await self.management.close()
        finally:
            await self.gateway.stop()
