"""The simulator's local control socket: msgpack messages over a Unix socket.

Each message is one msgpack map; the reply is one map with ``ok`` and either
the result fields or ``error``. Requests:

- ``{"op": "ping"}``
- ``{"op": "fault", "meter": ADDR, "kind": KIND, "on": bool, "bus": NAME|None}``
- ``{"op": "state", "meter": ADDR, "bus": NAME|None}`` → the meter's simulated state
- ``{"op": "buses"}`` → names, wires and meter counts
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack

# A control message is small; anything bigger is a mistake or an attack.
MAX_MESSAGE_BYTES = 65536
CLIENT_TIMEOUT_S = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE_BYTES)
        try:
            while data := await reader.read(4096):
                unpacker.feed(data)
                for message in unpacker:
                    if not isinstance(message, dict):
                        reply: dict[str, Any] = {"ok": False, "error": "message must be a map"}
                    else:
                        try:
                            reply = await self._handler(message)
                        except (KeyError, ValueError) as exc:
                            reply = {"ok": False, "error": str(exc).strip("'\"")}
                    writer.write(msgpack.packb(reply, use_bin_type=True))
                    await writer.drain()
        except (ConnectionError, msgpack.exceptions.BufferFull, ValueError):
            pass
        finally:
            writer.close()


async def request(
    path: Path | str, message: dict[str, Any], timeout: float = CLIENT_TIMEOUT_S
) -> dict[str, Any]:
    """Send one control message and return the reply."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(msgpack.packb(message, use_bin_type=True))
            await writer.drain()
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE_BYTES)
            while data := await reader.read(4096):
                unpacker.feed(data)
                for reply in unpacker:
                    return dict(reply)
            raise ConnectionError("control socket closed without a reply")
        finally:
            writer.close()
