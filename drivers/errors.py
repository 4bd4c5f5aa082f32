"""Driver exceptions: one small hierarchy so callers can catch by meaning.

``DriverError``
  ``TransportError``   the link itself failed
      ``TransportClosed``  port closed / connection lost (a fault, not a crash)
  ``TransactionError`` one request/response went wrong; may be retried
      ``BusTimeout``       no (complete) reply before the deadline
      ``FrameCorrupt``     reply arrived but failed its checksum / framing
  ``MeterException``   the meter answered with an exception reply (ERR bits)
      ``MeterUnauthorised`` ERR bit 2: wrong password, or no valid ESAM MAC
  ``MeterQuarantined`` the meter is in back-off; nothing was sent
  ``EsamError``        the ESAM adapter could not seal a frame; nothing was sent
  ``ModbusDeviceError`` a Modbus exception response
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every driver error."""


class TransportError(DriverError):
    """The link failed (open, read or write)."""


class TransportClosed(TransportError):
    """The port is closed or the connection was lost."""


class TransactionError(DriverError):
    """A request/response exchange failed in a way that a retry may fix."""


class BusTimeout(TransactionError):
    """No complete reply arrived before the transaction deadline."""


class FrameCorrupt(TransactionError):
    """A reply arrived but failed its checksum or framing."""


# DL/T 645-2007 ERR byte bits (exception reply, C | 0xC0).
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_PASSWORD = 0x04
ERR_BAUD = 0x08
ERR_ZONES = 0x10
ERR_PERIODS = 0x20
ERR_TARIFFS = 0x40

_ERR_NAMES = {
    ERR_OTHER: "other error",
    ERR_NO_DATA: "no requested data",
    ERR_PASSWORD: "password error / unauthorised",
    ERR_BAUD: "baud rate cannot change",
    ERR_ZONES: "too many time zones",
    ERR_PERIODS: "too many periods",
    ERR_TARIFFS: "too many tariffs",
}


def err_bit_names(err_bits: int) -> list[str]:
    return [name for bit, name in _ERR_NAMES.items() if err_bits & bit] or ["unknown error"]


class MeterException(DriverError):
    """The meter answered with an exception reply; retrying the same request is hopeless."""

    def __init__(self, address: str, function: int, err_bits: int, di: str | None = None) -> None:
        self.address = address
        self.function = function
        self.err_bits = err_bits
        self.di = di
        what = f" DI {di}" if di else ""
        super().__init__(
            f"meter {address} refused function 0x{function:02X}{what}: "
            f"{', '.join(err_bit_names(err_bits))} (ERR=0x{err_bits:02X})"
        )

    @property
    def no_data(self) -> bool:
        return bool(self.err_bits & ERR_NO_DATA)


class MeterUnauthorised(MeterException):
    """ERR bit 2 (password error / unauthorised): the meter wants authentication it did not get.

    A wrong password, or on a meter with an ESAM a frame without a valid MAC
    (plaintext, or sealed with another key). It did not act."""


def meter_exception(
    address: str, function: int, err_bits: int, di: str | None = None
) -> MeterException:
    """The exception for an exception reply, by its ERR bits."""
    kind = MeterUnauthorised if err_bits & ERR_PASSWORD else MeterException
    return kind(address, function, err_bits, di)


class MeterQuarantined(DriverError):
    """The meter is in back-off after repeated failures; nothing was sent."""

    def __init__(self, address: str, until: float) -> None:
        self.address = address
        self.until = until
        super().__init__(f"meter {address} quarantined until t={until:.1f}")


class EsamError(DriverError):
    """The ESAM adapter failed (authentication, sealing, timeout) before the frame was sent."""


class ModbusDeviceError(DriverError):
    """A Modbus exception response (or an unusable reply) from a device."""


class CommandRejected(DriverError):
    """A command could not be queued (queue full, bus stopped, unknown meter)."""
