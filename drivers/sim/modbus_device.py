"""A simulated Modbus load-control terminal on a pymodbus server.

Register map (device side, 0-based):
- coils 0..n-1: output i closed (True = load supplied); writable
- input registers 0-1: total active power in W, u32 big-endian word order
- input registers 2..2+n-1: output i active power in 0.1 kW, u16
- holding register 0: power limit in 0.1 kW (set by the master, informational)

Fault: ``local_mode`` — the terminal is switched to local control: it
acknowledges writes to its holding registers and keeps their values, as a real
one does, so only a read-back shows that a write did not take.
"""

from __future__ import annotations

import random

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.sim.meter import load_profile

FC_READ_COILS = 1
FC_READ_INPUT = 4
FC_WRITE_COIL = 5
FC_WRITE_COILS = 15
FC_WRITE_REGISTER = 6
FC_WRITE_REGISTERS = 16
POWER_LIMIT_ADDRESS = 0


class LoadControlTerminal:
    def __init__(
        self, name: str, unit_id: int, *, outputs: int = 4, power_kw: float = 50.0, seed: int = 1
    ) -> None:
        self.name = name
        self.unit_id = unit_id
        self.outputs = outputs
        self.power_kw = power_kw
        self._rng = random.Random(f"{seed}:{name}")
        self.coil_word = (1 << outputs) - 1  # all outputs closed at start
        self.power_limit_raw = 0  # holding register 0 as the terminal holds it
        self.local_mode = False  # fault: writes acknowledged, values kept
        self.device = SimDevice(
            unit_id,
            simdata=(
                [SimData(0, values=[True] * outputs, datatype=DataType.BITS)],
                [SimData(0, values=[False], datatype=DataType.BITS)],
                [SimData(0, values=[0], datatype=DataType.REGISTERS)],
                [SimData(0, values=[0] * (2 + outputs), datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    def closed(self, output: int) -> bool:
        return bool(self.coil_word >> output & 1)

    def output_power_kw(self, output: int, hour: float) -> float:
        if not self.closed(output):
            return 0.0
        return self.power_kw * load_profile(hour) * self._rng.uniform(0.95, 1.05)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code in (FC_WRITE_REGISTER, FC_WRITE_REGISTERS) and set_values:
            offset = address - start_address
            if self.local_mode:
                # pymodbus applies set_values after this hook: keep what is there
                set_values[:] = registers[offset : offset + len(set_values)]  # type: ignore[assignment]
            if address <= POWER_LIMIT_ADDRESS < address + len(set_values):
                self.power_limit_raw = int(set_values[POWER_LIMIT_ADDRESS - address])
        elif function_code in (FC_READ_COILS, FC_WRITE_COIL, FC_WRITE_COILS) and set_values is None:
            self.coil_word = registers[0]
        elif function_code == FC_READ_INPUT:
            import datetime as dt

            now = dt.datetime.now()
            hour = now.hour + now.minute / 60
            per = [self.output_power_kw(i, hour) for i in range(self.outputs)]
            total_w = round(sum(per) * 1000)
            registers[0] = total_w >> 16 & 0xFFFF
            registers[1] = total_w & 0xFFFF
            for i, p in enumerate(per):
                registers[2 + i] = min(0xFFFF, round(p * 10))
        return None

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "outputs": [self.closed(i) for i in range(self.outputs)],
            "power_limit_raw": self.power_limit_raw,
            "local_mode": self.local_mode,
        }


class ModbusDeviceServer:
    """One pymodbus TCP server carrying the simulated devices of one bus."""

    def __init__(self, host: str, port: int, devices: list[LoadControlTerminal]) -> None:
        self.host = host
        self.port = port
        self.devices = devices
        self._server = ModbusTcpServer([d.device for d in devices], address=(host, port))

    async def start(self) -> None:
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        await self._server.shutdown()

    @property
    def description(self) -> str:
        return f"tcp://{self.host}:{self.port}"
