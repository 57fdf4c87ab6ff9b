"""The ASGI application: Django for HTTP (the views), the consumer at ``/ws/``."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loadtest.peers.channels_app.settings")

from django.core.asgi import get_asgi_application  # after the settings variable above

_django = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from loadtest.peers.channels_app.consumers import LoadConsumer  # noqa: E402

__all__ = ["application"]

application = ProtocolTypeRouter(
    {"http": _django, "websocket": URLRouter([path("ws/", LoadConsumer.as_asgi())])}
)
