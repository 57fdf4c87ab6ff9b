"""Example route handlers: copy one, change it, point a route at it in your config.

Inside a clone they import as ``handlers.<module>``; installed, the same files are the
``wsgateway.examples`` package, which the embedded default routes name so that
``wsgateway serve`` runs from any directory.
"""
