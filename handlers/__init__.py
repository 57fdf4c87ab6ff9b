"""Example route handlers: copy one, change it, point a route at it in your config."""
