"""The local control channel (DESIGN §7): msgpack frames over a Unix socket.

Every ``gridctl`` process that takes requests from another on the same machine
(the service for ``gridctl status``, the simulators for ``gridctl sim fault``)
serves one of these. Each message is one length-prefixed msgpack map
(``controller.msgpack_frames``, the framing of every local channel); the reply
is one map with ``ok`` and either the result fields or ``error``.

The socket's mode is set before it listens, never left to the umask: 0600 (this
user only), or 0660 with a ``group`` so an operator group can ask too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from controller.msgpack_frames import FrameDecoder, FrameError, encode
from controller.unix_socket import SocketPathError, bind_listening_socket, group_id

_log = logging.getLogger("gridctl.local_channel")

# A control message is small; anything bigger is a mistake or an attack.
MAX_MESSAGE_BYTES = 65536
# Replies may carry a status report of every bus and task.
MAX_REPLY_BYTES = 4 * 1024 * 1024
CLIENT_TIMEOUT_S = 5.0

OWNER_ONLY = 0o600
OWNER_AND_GROUP = 0o660

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    """``group``: a group name whose members may connect too (mode 0660); empty:
    this user only (mode 0600). ``what`` names the setting in error messages."""

    def __init__(
        self, path: Path, handler: Handler, *, group: str = "", what: str = "control socket"
    ) -> None:
        self.path = path
        self.group = group
        self.what = what
        self._handler = handler
        self._server: asyncio.Server | None = None

    @property
    def mode(self) -> int:
        return OWNER_AND_GROUP if self.group else OWNER_ONLY

    async def start(self) -> None:
        """Listen; raises SocketPathError naming the path or the group when it cannot."""
        try:
            gid = group_id(self.group) if self.group else None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            sock = bind_listening_socket(self.path, self.mode, gid)
        except SocketPathError as exc:
            raise SocketPathError(f"{self.what}: {exc}") from None
        try:
            self._server = await asyncio.start_unix_server(self._client, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        if self._server is None:
            return  # never listened: the path may belong to another process
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(MAX_MESSAGE_BYTES)
        try:
            while data := await reader.read(4096):
                for message in decoder.feed(data):
                    if not isinstance(message, dict):
                        reply: dict[str, Any] = {"ok": False, "error": "message must be a map"}
                    else:
                        try:
                            reply = await self._handler(message)
                        except KeyError as exc:  # str(KeyError) is the repr of its key
                            reply = {"ok": False, "error": str(exc.args[0] if exc.args else exc)}
                        except ValueError as exc:
                            reply = {"ok": False, "error": str(exc)}
                        except Exception as exc:  # a bug in one handler must not end the channel
                            _log.exception("control request %r failed", message.get("op"))
                            reply = {"ok": False, "error": f"internal error: {exc!r}"}
                    writer.write(encode(reply))
                    await writer.drain()
        except (ConnectionError, FrameError):
            pass  # an oversized or malformed frame ends the connection
        finally:
            writer.close()


async def request(
    path: Path | str, message: dict[str, Any], timeout: float = CLIENT_TIMEOUT_S
) -> dict[str, Any]:
    """Send one control message and return the reply."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(encode(message))
            await writer.drain()
            decoder = FrameDecoder(MAX_REPLY_BYTES)
            while data := await reader.read(65536):
                for reply in decoder.feed(data):
                    return dict(reply)
            raise ConnectionError("control socket closed without a reply")
        finally:
            writer.close()
