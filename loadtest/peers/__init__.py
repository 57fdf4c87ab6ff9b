"""Small adapter apps that do the load generator's work on each target.

Every adapter follows :mod:`loadtest.peers.contract`: it takes ``--ready-file`` and writes
``{"node_id", "port", "management_port"}`` there once both listeners accept, as
``wsgateway serve`` does, and it answers the same client actions (``echo``, ``whoami``) and
management paths (``POST /@connections/{id}``, ``POST /@tenants/{tenant}/messages``).
"""

__all__: list[str] = []
