"""The raw cross-node relay keeping AWS's exact answer: ``peers/raw.py`` with ``acked``.

A post to another node's connection is answered 200 only once its owner wrote the frame,
410 once the owner said it does not hold the id, as the gateway answers. Run: ``python -m
loadtest.peers.raw_acked --ready-file PATH [--jwt-secret S] [--redis-url URL]``.
"""

from __future__ import annotations

from loadtest.peers.raw import main as _main

__all__ = ["main"]


def main() -> None:
    """Run the node until it is killed (SIGTERM / SIGINT)."""
    _main(acked=True)


if __name__ == "__main__":
    main()
