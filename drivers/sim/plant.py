"""The simulated field plant: every simulated bus of a config, plus its control socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from drivers.config import (
    FAULT_KINDS,
    Dlt645BusConfig,
    FieldConfig,
    ModbusBusConfig,
    SimBusConfig,
    SimMeterConfig,
    SimModbusDeviceConfig,
)
from drivers.sim.control import ControlServer
from drivers.sim.farm import MeterFarm, PtyWire, TcpWire
from drivers.sim.meter import SimMeter
from drivers.sim.modbus_device import LoadControlTerminal, ModbusDeviceServer
from drivers.sim.tasks import stop_task

# how often meters integrate energy even when nobody reads them
PHYSICS_TICK_S = 5.0


class _Wire(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    @property
    def description(self) -> str: ...


class SimulatedPlant:
    def __init__(
        self,
        config: FieldConfig,
        *,
        fast: bool | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.fast = config.sim.fast if fast is None else fast
        # true time as the meters' clocks see it (tests: a clock placed at midnight)
        self._wall = wall
        self.farms: dict[str, MeterFarm] = {}
        self.modbus: dict[str, ModbusDeviceServer] = {}
        self.warehouse: Any = None  # drivers.sim.warehouse.WarehouseServer
        self._wires: list[_Wire] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.control = ControlServer(Path(config.sim.control_socket), self._handle)
        self._build()

    def _build(self) -> None:
        sim = self.config.sim
        for bus in self.config.buses:
            sb = sim.buses.get(bus.name, SimBusConfig())
            if not sb.simulated:
                continue
            if isinstance(bus, Dlt645BusConfig):
                self._build_dlt645(bus, sb)
            elif isinstance(bus, ModbusBusConfig) and bus.protocol == "modbus_tcp":
                devices = [
                    LoadControlTerminal(
                        d.name,
                        d.unit_id,
                        outputs=sim.modbus_devices.get(d.name, SimModbusDeviceConfig()).outputs,
                        power_kw=sim.modbus_devices.get(d.name, SimModbusDeviceConfig()).power_kw,
                        seed=sim.seed,
                    )
                    for d in bus.devices
                ]
                host, port = bus.tcp_endpoint
                server = ModbusDeviceServer(host, port, devices)
                self.modbus[bus.name] = server
                self._wires.append(server)
        warehouse = getattr(self.config, "warehouse", None)  # GridConfig's [warehouse] table
        if warehouse is not None:
            from drivers.sim.warehouse import WarehouseServer
            from drivers.sim.warehouse_model import WarehouseModel, demo_stock

            # the plant is built from the same [warehouse] table the controller
            # reads, but the simulator interprets it with its own model
            model = WarehouseModel.from_table(warehouse.model_dump())
            host, port = warehouse.plc_endpoint
            self.warehouse = WarehouseServer(
                model, host, port, demo_stock(model, warehouse.demo_boxes)
            )
            self._wires.append(self.warehouse)

    def _build_dlt645(self, bus: Dlt645BusConfig, sb: SimBusConfig) -> None:
        sim = self.config.sim
        passwords = {m.address: m.password for m in bus.meters}
        addresses = [m.address for m in bus.meters] + [
            a for a in sb.extra_meters if a not in passwords
        ]
        meters = [
            SimMeter.from_config(
                address,
                sb.meters.get(address, SimMeterConfig()),
                password=passwords.get(address, "000000"),
                tariff=sim.tariff_yuan_per_kwh,
                time_scale=sim.time_scale,
                seed=sim.seed,
            )
            for address in addresses
        ]
        farm = MeterFarm(
            bus.name,
            meters,
            char_time_s=bus.char_time_s,
            response_delay_s=sb.response_delay_s
            if sb.response_delay_s is not None
            else sim.response_delay_s,
            fast=self.fast,
            max_frame_data=sb.max_frame_data,
            seed=sim.seed,
            wall=self._wall,
        )
        self.farms[bus.name] = farm
        if bus.is_tcp:
            host, port = bus.tcp_endpoint
            self._wires.append(TcpWire(farm, host, port))
        else:
            self._wires.append(PtyWire(farm, Path(bus.port)))

    async def start(self) -> None:
        for wire in self._wires:
            await wire.start()
        for farm in self.farms.values():
            self._tasks.append(asyncio.create_task(farm.run(), name=f"sim-farm-{farm.name}"))
        self._tasks.append(asyncio.create_task(self._physics(), name="sim-physics"))
        await self.control.start()

    async def stop(self) -> None:
        await self.control.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await stop_task(task)
        self._tasks.clear()
        for wire in self._wires:
            with contextlib.suppress(Exception):
                await wire.stop()

    async def _physics(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PHYSICS_TICK_S)
            now, wall = loop.time(), time.time()
            for farm in self.farms.values():
                for meter in farm.meters.values():
                    meter.advance(now, wall)

    def ready_info(self) -> dict[str, Any]:
        return {
            "control_socket": str(self.control.path),
            "wires": [w.description for w in self._wires],
            "fast": self.fast,
        }

    # -- control socket ---------------------------------------------------------
    def _find_meter(self, address: str, bus: str | None) -> tuple[MeterFarm, SimMeter]:
        farms = [self.farms[bus]] if bus else list(self.farms.values())
        if bus and bus not in self.farms:
            raise KeyError(f"bus: no simulated DL/T 645 bus {bus!r} (have {sorted(self.farms)})")
        hits = [(f, f.meters[address]) for f in farms if address in f.meters]
        if not hits:
            raise KeyError(
                f"meter: no simulated meter {address!r}" + (f" on bus {bus!r}" if bus else "")
            )
        if len(hits) > 1:
            raise ValueError(
                f"meter: {address} is on several buses ({[f.name for f, _ in hits]}); give bus"
            )
        return hits[0]

    async def _handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "ping":
            return {"ok": True}
        if op == "buses":
            return {
                "ok": True,
                "buses": {
                    n: {"meters": sorted(f.meters), "requests": f.requests}
                    for n, f in self.farms.items()
                },
                "modbus": {n: s.description for n, s in self.modbus.items()},
            }
        if op == "fault":
            kind = str(msg.get("kind", ""))
            if kind not in FAULT_KINDS:
                raise ValueError(f"kind: must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
            farm, meter = self._find_meter(str(msg.get("meter", "")), msg.get("bus"))
            farm.set_fault(meter.address, kind, bool(msg.get("on", True)))
            return {
                "ok": True,
                "bus": farm.name,
                "meter": meter.address,
                "faults": sorted(meter.faults),
            }
        if op == "relay":
            # The relay moves without a 1C command: a local button, a welded contact, a
            # tamper. What the controller commanded is left as it was, so the
            # controller's relay-mismatch watch has something to find.
            state = msg.get("open")
            if not isinstance(state, bool):
                raise ValueError(f"open: must be true or false, got {state!r}")
            farm, meter = self._find_meter(str(msg.get("meter", "")), msg.get("bus"))
            meter.advance(asyncio.get_running_loop().time(), time.time())
            meter.relay_open = state
            meter._close_at = None
            return {"ok": True, "bus": farm.name, **meter.state()}
        if op == "state":
            farm, meter = self._find_meter(str(msg.get("meter", "")), msg.get("bus"))
            meter.advance(asyncio.get_running_loop().time(), time.time())
            return {"ok": True, "bus": farm.name, **meter.state()}
        raise ValueError(f"op: unknown operation {op!r} (ping, buses, fault, relay, state)")
