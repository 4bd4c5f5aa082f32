"""The simulator's control requests, served on the local control channel.

- ``{"op": "ping"}``
- ``{"op": "fault", "meter": ADDR, "kind": KIND, "on": bool, "bus": NAME|None}``
- ``{"op": "relay", "meter": ADDR, "open": bool, "bus": NAME|None}`` → move the relay
  without a command (what was commanded stays as it was)
- ``{"op": "state", "meter": ADDR, "bus": NAME|None}`` → the meter's simulated state
- ``{"op": "buses"}`` → names, wires and meter counts

Fault injection changes what the controller sees, so the socket is 0600: this
user's processes only (``ControlServer`` without a group).
"""

from drivers.local_channel import ControlServer, request

__all__ = ["ControlServer", "request"]
