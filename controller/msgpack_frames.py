"""The one framing of gridctl's local channels: length-prefixed msgpack.

Each frame is a 4-byte big-endian length, then one msgpack object (a map on
every channel so far). Used by the control sockets (``gridctl status``, the
simulators' ``gridctl sim fault``) and the channel to the OPC UA server process:
a frame's size is known before its body is read, so a peer that announces too
much is refused at the header instead of being buffered.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import msgpack

HEADER = struct.Struct(">I")


class FrameError(ValueError):
    """A frame larger than the channel allows, or a body that is not msgpack."""


def _plain(obj: Any) -> Any:
    """msgpack fallback for values it has no type for: their text."""
    return str(obj)


_packer = msgpack.Packer(default=_plain, use_bin_type=True)


def encode(message: Any) -> bytes:
    body = _packer.pack(message)
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed bytes, iterate the complete frames' objects."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[Any]:
        buf = self._buf
        buf += data
        pos = 0
        size = HEADER.size
        try:
            while len(buf) - pos >= size:
                (length,) = HEADER.unpack_from(buf, pos)
                if length > self.max_frame:
                    raise FrameError(
                        f"frame of {length} bytes exceeds the limit of {self.max_frame}"
                    )
                if len(buf) - pos - size < length:
                    break
                start = pos + size
                try:
                    message = msgpack.unpackb(
                        bytes(buf[start : start + length]), raw=False, strict_map_key=False
                    )
                except (ValueError, msgpack.exceptions.ExtraData) as exc:
                    raise FrameError(f"frame body is not one msgpack object: {exc}") from None
                pos = start + length
                yield message
        finally:
            del buf[:pos]
