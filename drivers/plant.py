"""`FieldPlant`: every bus of the config, each with its own `BusOwner` task."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller.bus_stats import BusSnapshot
from controller.process_image import ProcessImage
from drivers.bus_owner import BusOwner
from drivers.config import Dlt645BusConfig, FieldConfig, ModbusBusConfig
from drivers.dlt645_bus import Dlt645Bus
from drivers.esam import Esam
from drivers.warehouse_plc import WarehousePlcBus

# The warehouse PLC's bus, built from ``[warehouse] plc`` when the site has a warehouse.
WAREHOUSE_PLC_BUS = "warehouse_plc"

if TYPE_CHECKING:
    from controller.journal import Journal


class FieldPlant:
    def __init__(
        self,
        config: FieldConfig,
        image: ProcessImage,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        journal: Journal | None = None,
        site_tz: dt.tzinfo | None = None,
        commands: Any = None,
    ) -> None:
        self.config = config
        self.image = image
        self._buses: dict[str, BusOwner] = {}
        esam = Esam.from_config(config.esam)
        for bus in config.buses:
            if isinstance(bus, Dlt645BusConfig):
                # the journal remembers meters that refuse block DIs across restarts
                # site_tz: the meters' wall-clock zone; commands: journals clock writes
                self._buses[bus.name] = Dlt645Bus(
                    bus,
                    config.poll_groups,
                    image,
                    clock=clock,
                    wall=wall,
                    esam=esam,
                    journal=journal,
                    site_tz=site_tz,
                    commands=commands,
                )
            elif isinstance(bus, ModbusBusConfig):
                from drivers.modbus_bus import ModbusBus

                self._buses[bus.name] = ModbusBus(bus, image, clock=clock, wall=wall)
        warehouse = getattr(config, "warehouse", None)
        if warehouse is not None:
            if WAREHOUSE_PLC_BUS in self._buses:
                raise ValueError(
                    f"buses: the name {WAREHOUSE_PLC_BUS!r} is the warehouse PLC's bus; "
                    "rename the configured bus"
                )
            host, port = warehouse.plc_endpoint
            self._buses[WAREHOUSE_PLC_BUS] = WarehousePlcBus(
                WAREHOUSE_PLC_BUS,
                image,
                host=host,
                port=port,
                aisles=warehouse.aisles,
                poll_s=warehouse.poll_s,
                response_timeout_s=warehouse.plc_timeout_s,
                clock=clock,
                wall=wall,
            )

    async def start(self) -> None:
        """Open transports and start one owner task per bus; does not wait for readings."""
        for bus in self._buses.values():
            await bus.start()

    async def stop(self) -> None:
        """Abort in-flight transactions and close every port."""
        await asyncio.gather(*(bus.stop() for bus in self._buses.values()))

    def snapshot(self) -> list[BusSnapshot]:
        return [bus.snapshot() for bus in self._buses.values()]

    def clock_faults(self) -> list[tuple[str, str, str]]:
        """(bus, meter address, fault) for every DL/T 645 meter; fault "" = its clock is kept."""
        return [
            (name, address, bus.clock_fault(address))
            for name, bus in self._buses.items()
            if isinstance(bus, Dlt645Bus)
            for address in bus.meters
        ]

    def meters_online(self) -> list[tuple[str, str, bool]]:
        """(bus, meter address, online) for every DL/T 645 meter; offline while quarantined."""
        return [
            (name, address, not bus.quarantined(address))
            for name, bus in self._buses.items()
            if isinstance(bus, Dlt645Bus)
            for address in bus.meters
        ]

    def bus(self, name: str) -> BusOwner:
        try:
            return self._buses[name]
        except KeyError:
            raise KeyError(f"no bus named {name!r} (have {sorted(self._buses)})") from None

    @property
    def buses(self) -> dict[str, BusOwner]:
        return dict(self._buses)
