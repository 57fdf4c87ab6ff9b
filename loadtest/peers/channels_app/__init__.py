"""Django Channels peer: a consumer plus two async views, channels_redis, run by uvicorn.

Run: ``python -m loadtest.peers.channels_app.serve --ready-file PATH --redis-url URL``.
"""

__all__: list[str] = []
