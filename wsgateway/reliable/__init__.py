"""Reliable connections (the ``wsgateway.reliable.v1`` subprotocol): the connection id and
every message survive a dropped socket; the client resumes on any node.

``protocol`` is the wire format (pure), ``session`` one session's numbering and buffer,
``sessions`` this node's sessions: drops, resumes, handovers between nodes and their end,
``moves`` a session on its way between two nodes as each of them keeps it, ``dropped`` the
bounds on how many dropped sessions a node keeps (pure).
The browser client ships beside them (``wsgateway-client.js``, served at ``GET /client.js``).
"""

from __future__ import annotations

from .protocol import SUBPROTOCOL, ResumeRequest, new_token, parse_resume
from .session import ReliableConnection
from .sessions import SessionHost, Sessions

__all__ = ["SUBPROTOCOL", "ReliableConnection", "ResumeRequest", "SessionHost", "Sessions", "new_token", "parse_resume"]
