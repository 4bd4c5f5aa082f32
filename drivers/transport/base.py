"""The link interface shared by serial and TCP transports.

A link moves bytes and nothing else: framing is the deframer's job, timing
the bus owner's. Received chunks are buffered by an asyncio protocol so that
no byte is lost between transactions, and a waiting reader is woken without a
task per read.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

from drivers.errors import TransportClosed

# Bytes buffered while nobody reads; a chattering line cannot grow memory.
MAX_RX_BUFFER = 65536


class _LinkProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.overflowed = 0
        self.closed_reason: str | None = None
        self.transport: asyncio.BaseTransport | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_RX_BUFFER:
            drop = len(self.buffer) - MAX_RX_BUFFER
            del self.buffer[:drop]
            self.overflowed += drop
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_reason = str(exc) if exc else "connection closed"
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_data(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Link(ABC):
    """An open-able, close-able byte pipe with a timed read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._protocol: _LinkProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    @abstractmethod
    async def _connect(self, protocol: _LinkProtocol) -> asyncio.Transport: ...

    async def open(self) -> None:
        """Open the port; raises TransportClosed when it cannot be opened."""
        if self.is_open:
            return
        protocol = _LinkProtocol()
        try:
            self._transport = await self._connect(protocol)
        except (OSError, ValueError, RuntimeError) as exc:
            raise TransportClosed(f"{self.name}: cannot open: {exc}") from exc
        self._protocol = protocol

    @property
    def is_open(self) -> bool:
        p = self._protocol
        return p is not None and p.closed_reason is None and self._transport is not None

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        self._protocol = None
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)

    def _require_open(self) -> _LinkProtocol:
        p = self._protocol
        if p is None or self._transport is None:
            raise TransportClosed(f"{self.name}: not open")
        if p.closed_reason is not None:
            raise TransportClosed(f"{self.name}: {p.closed_reason}")
        return p

    def write(self, data: bytes) -> None:
        self._require_open()
        assert self._transport is not None
        try:
            self._transport.write(data)
        except (OSError, RuntimeError) as exc:
            raise TransportClosed(f"{self.name}: write failed: {exc}") from exc
        self.bytes_sent += len(data)

    def discard_input(self) -> int:
        """Drop bytes that arrived outside a transaction (late replies, noise)."""
        p = self._protocol
        if p is None:
            return 0
        n = len(p.buffer)
        p.buffer.clear()
        return n

    async def read_some(self, deadline: float) -> bytes:
        """Whatever has arrived, waiting until ``deadline`` (loop time) for at least one byte.

        Returns b"" at the deadline; raises TransportClosed when the link drops."""
        p = self._require_open()
        if not p.buffer:
            loop = asyncio.get_running_loop()
            delay = deadline - loop.time()
            if delay <= 0:
                return b""
            try:
                async with asyncio.timeout_at(deadline):
                    await p.wait_data()
            except TimeoutError:
                pass
            p = self._require_open() if not p.buffer else p
        data = bytes(p.buffer)
        p.buffer.clear()
        self.bytes_received += len(data)
        return data
