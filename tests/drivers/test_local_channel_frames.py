"""The control socket's framing under attack: length-prefixed msgpack, bounded."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

from controller.msgpack_frames import FrameDecoder, encode
from drivers.local_channel import MAX_MESSAGE_BYTES, ControlServer, request


async def _server(tmp_path: Path) -> tuple[ControlServer, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def handler(message: dict[str, Any]) -> dict[str, Any]:
        seen.append(message)
        return {"ok": True, "echo": message.get("op")}

    server = ControlServer(tmp_path / "c.sock", handler)
    await server.start()
    return server, seen


async def _raw(path: Path, data: bytes) -> bytes:
    """Send raw bytes, return all the server sends until it closes (or 2 s of silence)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 2.0):
            out += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
    return out


async def test_a_request_gets_its_reply_in_one_frame(tmp_path: Path) -> None:
    server, seen = await _server(tmp_path)
    try:
        assert await request(server.path, {"op": "ping"}) == {"ok": True, "echo": "ping"}
        assert seen == [{"op": "ping"}]
    finally:
        await server.stop()


async def test_an_oversized_header_is_refused_before_its_body_and_serving_goes_on(
    tmp_path: Path,
) -> None:
    server, seen = await _server(tmp_path)
    try:
        # announces 64 KiB + 1 (one more than a control message may be): the server
        # closes without reading a body or calling the handler
        header = struct.pack(">I", MAX_MESSAGE_BYTES + 1)
        assert await _raw(server.path, header + b"\x80" * 16) == b""
        assert seen == []
        assert await request(server.path, {"op": "after"}) == {"ok": True, "echo": "after"}
    finally:
        await server.stop()


async def test_a_body_that_is_not_msgpack_ends_the_connection(tmp_path: Path) -> None:
    server, seen = await _server(tmp_path)
    try:
        # 0xc1 is the one byte msgpack never uses
        assert await _raw(server.path, struct.pack(">I", 1) + b"\xc1") == b""
        assert seen == []
    finally:
        await server.stop()


async def test_a_message_that_is_not_a_map_gets_an_error_reply(tmp_path: Path) -> None:
    server, seen = await _server(tmp_path)
    try:
        out = await _raw(server.path, encode([1, 2, 3]) + encode({"op": "next"}))
        replies = list(FrameDecoder(1 << 16).feed(out))
        assert replies == [
            {"ok": False, "error": "message must be a map"},
            {"ok": True, "echo": "next"},
        ]
        assert seen == [{"op": "next"}]
    finally:
        await server.stop()


def test_frames_split_anywhere_decode_whole() -> None:
    # header 00 00 00 0a, then the 10-byte map {"op": "split"}: 81 a2 6f 70 a5 73 70 6c 69 74
    data = encode({"op": "split"})
    assert data[:4] == b"\x00\x00\x00\x0a"
    assert data[4:] == bytes.fromhex("81a26f70a573706c6974")
    decoder = FrameDecoder(64)
    got = []
    for i in range(len(data)):
        got += list(decoder.feed(data[i : i + 1]))
    assert got == [{"op": "split"}]
    assert decoder.buffered == 0
