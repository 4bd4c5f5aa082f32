"""One Modbus transaction with retries, for the buses that own a pymodbus client.

The Modbus bus (meters' terminals, setpoints) and the warehouse PLC's bus do the
same thing per exchange: run queued control-lane work first, time the wire,
count the outcome, log the record, retry a timeout on a live connection and
treat a lost connection as the link going down. It lives here once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusIOException

from drivers.bus_owner import BusOwner, WireRecord
from drivers.errors import BusTimeout, ModbusDeviceError, TransportClosed


class ModbusClientBus(BusOwner):
    """A ``BusOwner`` whose wire is a pymodbus client (``_client``, set while linked)."""

    _client: Any

    async def _transact(
        self, device: str, who: str, fc: int, call: Callable[[], Awaitable[Any]], retries: int
    ) -> Any:
        """``call`` once, and again up to ``retries`` times on a timeout; ``device`` names
        the wire record, ``who`` the errors (e.g. "device lct1", "warehouse PLC")."""
        loop = asyncio.get_running_loop()
        port = self.link_config.port
        last: Exception | None = None
        for _attempt in range(1 + retries):
            await self._run_controls()
            client = self._client
            if client is None or not client.connected:
                raise TransportClosed(f"{port}: connection lost")
            t0 = loop.time()
            record = WireRecord(t0, device, fc)
            self.wire_log.append(record)
            try:
                response = await call()
            except ConnectionException as exc:
                self.busy_s += loop.time() - t0
                raise TransportClosed(f"{port}: {exc}") from exc
            except (ModbusIOException, TimeoutError) as exc:
                self.busy_s += loop.time() - t0
                self.transactions["timeout"] += 1
                record.outcome = "timeout"
                last = BusTimeout(f"{who}: no reply to function {fc}: {exc}")
                if self._client is None or not self._client.connected:
                    raise TransportClosed(f"{port}: connection lost") from exc
                continue
            self.busy_s += loop.time() - t0
            if response.isError():
                self.transactions["exception"] += 1
                record.outcome = "exception"
                code = getattr(response, "exception_code", None)
                raise ModbusDeviceError(f"{who}: exception {code} to function {fc}")
            self.transactions["ok"] += 1
            record.outcome = "ok"
            return response
        assert last is not None
        raise last
