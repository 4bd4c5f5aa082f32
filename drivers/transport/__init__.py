"""Thin byte links: a serial port through pyserial, or a TCP connection."""

from drivers.transport.base import Link
from drivers.transport.serial import SerialTransport
from drivers.transport.tcp import TcpTransport

__all__ = ["Link", "SerialTransport", "TcpTransport", "open_link"]


def open_link(config: object) -> Link:
    """The transport a link config names: ``tcp://host:port`` or a serial device path."""
    from drivers.config import LinkConfig

    assert isinstance(config, LinkConfig)
    if config.is_tcp:
        host, port = config.tcp_endpoint
        return TcpTransport(host, port)
    return SerialTransport(
        config.port,
        baud=config.baud,
        byte_size=config.byte_size,
        parity=config.parity,
        stop_bits=config.stop_bits,
    )
