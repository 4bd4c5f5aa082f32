"""Serial port through pyserial (asyncio via pyserial-asyncio-fast)."""

from __future__ import annotations

import asyncio
import os
import termios

import serial
import serial_asyncio_fast

from drivers.transport.base import Link, _LinkProtocol

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialTransport(Link):
    def __init__(
        self,
        path: str,
        *,
        baud: int = 2400,
        byte_size: int = 8,
        parity: str = "E",
        stop_bits: int = 1,
    ) -> None:
        super().__init__(path)
        # a pseudo-terminal (simulated bus) has no parity bit, and some kernels
        # reject PARENB on one; the simulator models the 11-bit timing instead
        self.pseudo_terminal = False
        self.path = path
        self.baud = baud
        self.byte_size = byte_size
        self.parity = parity
        self.stop_bits = stop_bits

    async def _connect(self, protocol: _LinkProtocol) -> asyncio.Transport:
        self.pseudo_terminal = os.path.realpath(self.path).startswith("/dev/pts/")
        parity = serial.PARITY_NONE if self.pseudo_terminal else _PARITY[self.parity]
        try:
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                asyncio.get_running_loop(),
                lambda: protocol,
                self.path,
                baudrate=self.baud,
                bytesize=self.byte_size,
                parity=parity,
                stopbits=self.stop_bits,
                exclusive=True,  # one owner per wire, enforced by the OS lock
            )
        except (serial.SerialException, termios.error) as exc:
            raise OSError(str(exc)) from exc
        return transport
