"""``wsgateway serve|check-config|routes``; the only place the event loop (uvloop) is chosen.

``serve`` runs one node, or with ``--workers N`` a supervisor of N node processes that share
the client and management ports through SO_REUSEPORT (Redis registry only: each worker is a
node of the shared registry, so a management call reaching any worker finds any connection).
SIGTERM / SIGINT drain: clients are closed with 1001, every ``$disconnect`` runs, exit 0.
SIGHUP reloads the config file's ``[[plans]]``, ``[route_settings]`` and
``limits.allowed_origins`` without dropping a connection; a bad file is logged and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import GatewayConfig, config_warnings, load_config
from .errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("wsgateway")
_DESCRIPTION = "A self-hosted WebSocket push gateway, wire-compatible with AWS API Gateway's WebSocket API."


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms without it
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _write_ready_file(path: str, data: dict[str, Any]) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # readers never see a half-written file


def _tune_gc() -> None:
    # Long-lived connection objects make every full collection walk the whole heap: move
    # what start-up allocated out of the collector's sight and collect young objects less
    # often (handshakes/s improves markedly at thousands of live connections).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def _serve(config: GatewayConfig, args: argparse.Namespace) -> int:
    from .node import Node

    node = Node(config, node_id=args.node_id or None, reuse_port=args.reuse_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, node, args.config)
    await node.start()
    _tune_gc()
    try:  # a ready file that cannot be written stops the node too: it leaves the registry
        if args.ready_file:
            _write_ready_file(
                args.ready_file,
                {"node_id": node.node_id, "port": node.port, "management_port": node.management_port, "pid": os.getpid()},
            )
        await stop.wait()
        log.info("node %s stopping: draining %d connections", node.node_id, len(node.gateway.hub))
    finally:
        await node.stop()
    return 0


def _reload(node: Any, path: str | None) -> None:
    """SIGHUP: re-read the config file and apply its [[plans]], [route_settings] and
    limits.allowed_origins; connections stay open. A bad file changes nothing (one log line)."""
    if path is None:
        log.warning("SIGHUP ignored: the node runs on the embedded defaults, no config file to reload")
        return
    try:
        config = load_config(path)
    except ConfigError as exc:
        log.error("SIGHUP: config not reloaded, the old settings stay: %s", exc)
        return
    node.reload(config)
    log.info("SIGHUP: reloaded plans (%d), route settings (%d) and allowed origins from %s",
             len(config.plans), len(config.route_settings.routes), config.source)


def _cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.listen_port is not None or args.management_port is not None:
        from dataclasses import replace

        listen = replace(config.listen, port=args.listen_port if args.listen_port is not None else config.listen.port)
        mgmt = replace(
            config.management,
            port=args.management_port if args.management_port is not None else config.management.port,
        )
        config = replace(config, listen=listen, management=mgmt)
    _setup_logging(config)
    if not args.worker:
        for warning in config_warnings(config):
            log.warning("WARNING: %s", warning)
    if args.workers > 1:
        from .workers import supervise

        return supervise(config, args)
    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        return runner.run(_serve(config, args))


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for warning in config_warnings(config):
        print(f"warning: {warning}")
    print(f"config OK: {config.source}")
    return 0


def _cmd_routes(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from .integrations import target_kind

    print(f"selection expression: {config.routes.selection_expression}")
    for key, target in config.routes.routes.items():
        print(f"{key:>16}  {target_kind(target):<6}  {target}")
    return 0


def _setup_logging(config: GatewayConfig) -> None:
    logging.basicConfig(
        level=config.log.level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))


def _worker_count(text: str) -> int:
    """``--workers``: 1 or more; 0 or a negative number is refused, not run as one process."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return count


def _parser() -> argparse.ArgumentParser:
    # What a user needs from --help, not the module docstring's note for whoever edits this file.
    parser = argparse.ArgumentParser(prog="wsgateway", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a gateway node")
    serve.add_argument("--config", help="TOML config file (default: embedded defaults)")
    serve.add_argument("--ready-file", help="write {node_id, port, management_port} here once listening")
    serve.add_argument("--workers", type=_worker_count, default=1,
                       help="processes sharing the ports (redis registry only)")
    # Set by the --workers supervisor for its children; not for direct use.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--node-id", default="", help=argparse.SUPPRESS)
    serve.add_argument("--listen-port", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--management-port", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)
    check = sub.add_parser("check-config", help="validate a config file and print warnings")
    check.add_argument("--config", help="TOML config file")
    check.set_defaults(func=_cmd_check_config)
    routes = sub.add_parser("routes", help="print the route table")
    routes.add_argument("--config", help="TOML config file")
    routes.set_defaults(func=_cmd_routes)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsgateway`` console script and ``python -m wsgateway``."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"wsgateway: config error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wsgateway: cannot start: {exc}", file=sys.stderr)
        return 1
