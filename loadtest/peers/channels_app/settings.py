"""Django settings for the Channels peer: the least Django needs, the layer from the env."""

from __future__ import annotations

import os

SECRET_KEY = "loadtest-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "loadtest.peers.channels_app.views"
DATABASES: dict[str, object] = {}
USE_TZ = True
ASGI_APPLICATION = "loadtest.peers.channels_app.asgi.application"
LOGGING_CONFIG = None
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py's default pool (100) runs dry when hundreds of clients connect at once.
        "CONFIG": {"hosts": [{"address": os.environ.get("LT_REDIS_URL", ""), "max_connections": 2000}]},
    }
}
