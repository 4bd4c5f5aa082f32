"""The local channel between the controller and the OPC UA server process.

A Unix socket carrying length-prefixed msgpack frames: a 4-byte big-endian
length, then one msgpack map with a ``t`` (message type) key. Each end checks
the other's pid (SO_PEERCRED) before the first frame: the controller serves
only the server process it spawned, the server process talks only to its parent.

Controller → server process (``opcua_server.feed.ImageFeed``):

- ``hello``: ``buses`` and ``tasks`` (first diagnostics, the model needs them
  to build) and ``alarms``. Nothing the server process can read itself:
  its ``[opcua]`` table (users, password hashes) comes from the config file,
  its state directory and history file from its command line;
- ``tags``: ``defs`` — ``[id, name, unit, description, value, quality, reason,
  source_time, server_time, code, setpoint]`` rows (``code``: the ``Reason`` as an int),
  the tag's definition and current value; ids
  are per connection and name the tag in every later ``changes`` frame;
  ``setpoint`` is ``[role, minimum, maximum]`` for a tag clients may write
  (the least role, the values the device can hold, nil for no bound), nil for
  a read-only one; a row of 10 fields (without it) is a read-only tag;
- ``synced``: every tag defined at connect time has been sent;
- ``changes``: ``c`` — ``[id, value, quality, reason, source_time, server_time,
  code]`` rows, in image order; ``dropped``/``coalesced``: the feed's counters;
- ``status``: ``buses`` (bus snapshots as maps), ``tasks`` (cycle task stats);
- ``commands``: ``states`` — ``{id: [state, reason]}`` of commands submitted
  over the channel whose state changed, sent after every ``changes`` frame
  holding a tag change made before the state was seen (a relay's read-back
  comes before the ``confirmed`` it led to);
- ``alarms``: ``list`` — every alarm an operator must see, sent when it changes;
- ``reply``: ``id`` of the request, ``ok``, then ``result`` or ``error``
  (an exception name from :data:`ERRORS`) and ``message``.

Server process → controller:

- ``ready``: ``endpoint``, ``pid``, ``model_nodes``, ``model_build_s``,
  ``model_rss_bytes`` (resident memory the server's start added);
- ``stats``: every 0.5 s, the server's counters: ``time`` (epoch s), ``applied``
  (rows applied to the mirror), ``published`` (values written into the address
  space), ``notified``, ``sampled_coalesced``, ``coalesced``, ``dropped``,
  ``queue_length``, ``batches``, ``last_batch_latency_s``, ``rss_bytes``;
- ``login_failures``: after a ``stats`` frame when logins were refused since the
  last one: ``counts`` (``{reason: n}``), ``records`` (``[at, user, peer,
  reason]``, at most 256) and ``lost`` (records beyond that, counted only);
- ``request``: ``id``, ``op`` (``submit``, ``acknowledge``, ``shelve``) and its
  arguments.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from controller import msgpack_frames as frames
from controller.api import CommandRefused, RefusalReason

HEADER = frames.HEADER
# A change batch is at most a few hundred kB and the tag definitions go in
# chunks; anything larger is a bug on the other side, not data to buffer.
MAX_FRAME_BYTES = 64 * 1024 * 1024


class ChannelError(RuntimeError):
    """The channel is down, a frame is malformed, or the other side did not answer."""


# Exceptions that cross the channel by name and are raised again as themselves,
# so the OPC UA methods map them to the same status codes as in-process; a
# refusal carries its reason code alongside.
ERRORS: dict[str, type[Exception]] = {
    "CommandRefused": CommandRefused,
    "KeyError": KeyError,
    "ValueError": ValueError,
}


def error_name(exc: BaseException) -> str:
    """The most specific :data:`ERRORS` name ``exc`` is an instance of (else InternalError)."""
    for name, kind in ERRORS.items():  # subclasses are listed before their bases
        if isinstance(exc, kind):
            return name
    return "InternalError"


def error_message(exc: BaseException) -> str:
    # str(KeyError("x")) is "'x'": send the key itself
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


def error_reason(exc: BaseException) -> str | None:
    """A refusal's reason code, for the reply's ``reason`` field."""
    return exc.reason.value if isinstance(exc, CommandRefused) else None


def raise_error(name: str, message: str, reason: str | None = None) -> None:
    kind = ERRORS.get(name)
    if kind is None:
        raise ChannelError(f"controller error ({name}): {message}")
    if kind is CommandRefused:
        try:
            code = RefusalReason(str(reason))
        except ValueError:
            raise ChannelError(
                f"controller refusal with reason {reason!r} (not one of "
                f"{', '.join(RefusalReason)}): {message}"
            ) from None
        raise CommandRefused(code, message)
    raise kind(message)


def encode(message: dict[str, Any]) -> bytes:
    return frames.encode(message)


class FrameDecoder:
    """Incremental decoder: feed bytes, iterate complete channel messages (maps with a
    ``t`` key); anything else, or a frame over ``max_frame``, is a ChannelError."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._frames = frames.FrameDecoder(max_frame)

    @property
    def max_frame(self) -> int:
        return self._frames.max_frame

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        try:
            for message in self._frames.feed(data):
                if not isinstance(message, dict) or "t" not in message:
                    raise ChannelError("a channel message must be a map with a 't' key")
                yield message
        except frames.FrameError as exc:
            raise ChannelError(str(exc)) from None
