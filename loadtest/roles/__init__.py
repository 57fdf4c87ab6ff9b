"""What one client worker process does in a run, and what it reports back.

One module per role; :mod:`~loadtest.roles.spec` holds what goes into a worker and what comes
back, :mod:`~loadtest.roles.base` what every role shares, :mod:`~loadtest.roles.pacing` the
open loop's schedule.

A scenario is built from roles, each run by one or more worker processes:

``hold``     open connections and keep them (idle)
``dial``     open connections as fast as allowed, or at an offered rate (connect)
``echo``     send ``echo`` actions and time the replies (echo)
``unicast``  POST to its own connections through the management API; time POST-to-client
``listen``   sit in a tenant and time every pushed message; some may be ``stalled`` (slow)
``publish``  POST to the tenant; holds one *sentinel* listener that paces the closed loop

Without a rate a role runs a closed loop (the next operation starts when the last one is
done, per connection or per sender), which measures the most the target does. With a rate it
runs an open loop: operations start on a fixed schedule and carry their *intended* start
time, so a stalled server shows up in the latency instead of hiding it (no coordinated
omission). Every latency is measured from the timestamp the sender put in the message.
"""

from __future__ import annotations

from loadtest.roles.base import Role
from loadtest.roles.dial import DialRole
from loadtest.roles.echo import EchoRole
from loadtest.roles.hold import HoldRole
from loadtest.roles.listen import ListenRole
from loadtest.roles.publish import PublishRole
from loadtest.roles.spec import WorkerResult, WorkerSpec
from loadtest.roles.unicast import UnicastRole

__all__ = ["ROLES", "Role", "WorkerResult", "WorkerSpec"]

ROLES: dict[str, type[Role]] = {
    "hold": HoldRole,
    "dial": DialRole,
    "echo": EchoRole,
    "unicast": UnicastRole,
    "listen": ListenRole,
    "publish": PublishRole,
}
"""Role name -> class, as named in :class:`WorkerSpec`."""
