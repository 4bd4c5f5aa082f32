"""Simulated warehouse plant: stacker cranes, conveyors, photo-eyes, barcode readers.

It behaves like the warehouse PLC a real WCS talks to: the register map of
``drivers.warehouse_plc_map``, served in-process or over Modbus TCP (pymodbus).
Where slots are, how cranes move and how long loads take on a conveyor come
from the plant's own :class:`~drivers.sim.warehouse_model.WarehouseModel`, never
from the controller. Time comes from the running asyncio loop, so the same
plant runs in real time or in virtual time
(``controller.virtual_time.VirtualTimeLoop``).

Faults on demand: crane drive fault, conveyor jam, barcode misread, a foreign
box in a slot the controller believes empty, and the aisle door.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.sim.tasks import stop_task
from drivers.sim.warehouse_model import (
    ConveyorModel,
    CraneModel,
    Spot,
    WarehouseModel,
    demo_stock,
)
from drivers.warehouse_plc_map import (
    C_ACK_SEQ,
    C_CMD,
    C_CMD_REGS,
    C_CODE,
    C_DONE_RESULT,
    C_DONE_SEQ,
    C_DOOR,
    C_FAULT,
    C_FORK,
    C_STATE,
    C_X,
    C_Y,
    CODE_REGS,
    CONV_BASE,
    CONV_STRIDE,
    CRANE_BASE,
    CRANE_STRIDE,
    H_ACK_SEQ,
    H_AISLE,
    H_CODE,
    H_SEQ,
    HANDOVER_BASE,
    NOREAD,
    REGISTER_COUNT,
    SCAN_BASE,
    SCAN_CODE,
    SCAN_OCCUPIED,
    STATION_IN,
    V_EYES,
    V_MOTOR_CMD,
    V_MOTORS,
    V_READ_CODE,
    V_READ_COUNT,
    V_REREAD,
    V_ZONES,
    CraneState,
    Fault,
    Op,
    Result,
    conveyor_base,
    crane_base,
    decode_code,
    encode_code,
    encode_position,
)


class ChangeListener(Protocol):
    """Told on every plant change (the in-process I/O's watchers)."""

    def kick(self) -> None: ...


@dataclass
class SimCrane:
    aisle: int
    model: CraneModel
    x: float = 0.0
    y: float = 0.0
    state: CraneState = CraneState.IDLE
    fork: str | None = None
    fault: Fault = Fault.NONE
    door_open: bool = False
    ack_seq: int = 0
    done_seq: int = 0
    done_result: Result = Result.OK
    # the move in progress: start point, target, start time, duration
    move_from: tuple[float, float] = (0.0, 0.0)
    move_to: tuple[float, float] = (0.0, 0.0)
    move_t0: float = 0.0
    handle: asyncio.TimerHandle | None = None
    cmd: tuple[Op, Spot] | None = None
    moves: int = 0
    busy_s: float = 0.0  # time spent travelling or forking (utilisation = busy / elapsed)

    def pos_at(self, t: float) -> tuple[float, float]:
        if self.state is not CraneState.MOVING:
            return (self.x, self.y)
        ox, oy = self.model.offset_after(
            self.move_to[0] - self.move_from[0],
            self.move_to[1] - self.move_from[1],
            t - self.move_t0,
        )
        return (self.move_from[0] + ox, self.move_from[1] + oy)


@dataclass
class SimConveyor:
    aisle: int
    outbound: bool
    model: ConveyorModel
    zones: list[str | None] = field(default_factory=list)
    motors: int = 0
    stuck: set[int] = field(default_factory=set)
    transfers: dict[int, asyncio.TimerHandle] = field(default_factory=dict)
    reader_count: int = 0
    reader_code: str = ""
    misreads: int = 0
    feed: list[str] = field(default_factory=list)  # boxes waiting upstream of the induct
    delivered: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.zones = [None] * self.model.zones

    @property
    def eyes(self) -> int:
        return sum(1 << i for i, z in enumerate(self.zones) if z is not None)


class WarehousePlant:
    """The simulated PLC and the physical plant behind it."""

    def __init__(
        self, model: WarehouseModel, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self.model = model
        self._loop = loop
        self.slots: dict[Spot, str] = {}
        self.cranes = [SimCrane(a, c) for a, c in enumerate(model.cranes, start=1)]
        self.conveyors: dict[tuple[int, bool], SimConveyor] = {}
        for aisle in range(1, model.aisles + 1):
            self.conveyors[(aisle, False)] = SimConveyor(aisle, False, model.inbound)
            self.conveyors[(aisle, True)] = SimConveyor(aisle, True, model.outbound)
        self._scan = Spot(1, 1, 1)
        self.handover_seq = 0
        self.handed_over: list[str] = []  # boxes the line pushed onto an induct, in order
        self._watchers: list[ChangeListener] = []
        self.on_deliver: Callable[[int, str], None] | None = None

    # -- time and notification ------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def add_watcher(self, watcher: ChangeListener) -> None:
        self._watchers.append(watcher)

    def _changed(self) -> None:
        for w in self._watchers:
            w.kick()

    # -- census (ground truth, for tests) -------------------------------------
    def census(self) -> dict[str, list[str]]:
        """Every box in the plant and where it physically is (a box twice = a bug)."""
        out: dict[str, list[str]] = {}
        for loc, code in self.slots.items():
            out.setdefault(code, []).append(loc.code)
        for c in self.cranes:
            if c.fork:
                out.setdefault(c.fork, []).append(f"CRANE:{c.aisle}")
        for (aisle, outbound), conv in self.conveyors.items():
            for i, load in enumerate(conv.zones):
                if load:
                    out.setdefault(load, []).append(
                        f"CONV:{aisle}:{'out' if outbound else 'in'}:{i}"
                    )
        return out

    # -- register access -------------------------------------------------------
    def read_registers(self, address: int, count: int) -> list[int]:
        if address < 0 or address + count > REGISTER_COUNT:
            raise ValueError(f"register range {address}+{count} outside 0..{REGISTER_COUNT}")
        regs = [0] * count
        for i in range(count):
            regs[i] = self._reg(address + i)
        return regs

    def _reg(self, addr: int) -> int:
        if CRANE_BASE <= addr < CRANE_BASE + CRANE_STRIDE * len(self.cranes):
            c = self.cranes[(addr - CRANE_BASE) // CRANE_STRIDE]
            off = (addr - CRANE_BASE) % CRANE_STRIDE
            return self._crane_reg(c, off)
        n_conv = 2 * self.model.aisles
        if CONV_BASE <= addr < CONV_BASE + CONV_STRIDE * n_conv:
            k = (addr - CONV_BASE) // CONV_STRIDE
            conv = self.conveyors[(k // 2 + 1, bool(k % 2))]
            off = (addr - CONV_BASE) % CONV_STRIDE
            return self._conv_reg(conv, off)
        if SCAN_BASE <= addr < SCAN_BASE + SCAN_CODE + CODE_REGS:
            off = addr - SCAN_BASE
            code = self.slots.get(self._scan)
            if off < SCAN_OCCUPIED:
                return self._scan[off]  # row, bay, level as written
            if off == SCAN_OCCUPIED:
                return 1 if code else 0
            return encode_code(code or "")[off - SCAN_CODE]
        if addr == HANDOVER_BASE + H_ACK_SEQ:
            return self.handover_seq
        return 0

    def _crane_reg(self, c: SimCrane, off: int) -> int:
        if off == C_STATE:
            return int(c.state)
        if off in (C_X, C_Y):
            x, y = c.pos_at(self.now())
            return encode_position(x if off == C_X else y)
        if off == C_FORK:
            return 1 if c.fork else 0
        if C_CODE <= off < C_CODE + CODE_REGS:
            return encode_code(c.fork or "")[off - C_CODE]
        if off == C_FAULT:
            return int(c.fault)
        if off == C_DONE_SEQ:
            return c.done_seq
        if off == C_DONE_RESULT:
            return int(c.done_result)
        if off == C_DOOR:
            return 1 if c.door_open else 0
        if off == C_ACK_SEQ:
            return c.ack_seq
        return 0

    def _conv_reg(self, conv: SimConveyor, off: int) -> int:
        if off == V_ZONES:
            return len(conv.zones)
        if off == V_EYES:
            return conv.eyes
        if off in (V_MOTORS, V_MOTOR_CMD):
            return conv.motors
        if off == V_READ_COUNT:
            return conv.reader_count & 0xFFFF
        if V_READ_CODE <= off < V_READ_CODE + CODE_REGS:
            return encode_code(conv.reader_code)[off - V_READ_CODE]
        return 0

    def write_registers(self, address: int, values: list[int]) -> None:
        end = address + len(values)
        for c in self.cranes:
            base = crane_base(c.aisle) + C_CMD
            if address <= base and end >= base + C_CMD_REGS:
                op, row, bay, level, seq = values[base - address : base - address + C_CMD_REGS]
                self._crane_command(c, op, Spot(row, bay, level), seq)
        for (aisle, outbound), conv in self.conveyors.items():
            base = conveyor_base(aisle, outbound)
            if address <= base + V_MOTOR_CMD < end:
                self._set_motors(conv, values[base + V_MOTOR_CMD - address])
            if address <= base + V_REREAD < end:
                self._read_barcode(conv)
        if address <= SCAN_BASE and end >= SCAN_BASE + SCAN_OCCUPIED:
            row, bay, level = values[SCAN_BASE - address : SCAN_BASE - address + SCAN_OCCUPIED]
            self._scan = Spot(row, bay, level)
        if address <= HANDOVER_BASE and end >= HANDOVER_BASE + H_SEQ + 1:
            block = values[HANDOVER_BASE - address : HANDOVER_BASE - address + H_SEQ + 1]
            self._handover(
                block[H_AISLE], decode_code(block[H_CODE : H_CODE + CODE_REGS]), block[H_SEQ]
            )
        self._changed()

    # -- crane -------------------------------------------------------------------
    def _finish(self, c: SimCrane, result: Result) -> None:
        c.done_seq = c.ack_seq
        c.done_result = result
        c.cmd = None
        if c.state in (CraneState.MOVING, CraneState.FORKING):
            c.state = CraneState.IDLE
        self._changed()

    def _crane_command(self, c: SimCrane, op_raw: int, loc: Spot, seq: int) -> None:
        if seq == c.ack_seq:
            return  # same command block rewritten: a retry, already latched
        c.ack_seq = seq
        try:
            op = Op(op_raw)
        except ValueError:
            self._finish(c, Result.BAD_TARGET)
            return
        if op is Op.RESET:
            if c.state in (CraneState.FAULT, CraneState.STOPPED) and not c.door_open:
                c.state = CraneState.IDLE
                c.fault = Fault.NONE
            self._finish(c, Result.OK if c.state is CraneState.IDLE else Result.REFUSED_NOT_READY)
            return
        if c.state is not CraneState.IDLE or c.door_open:
            self._finish(c, Result.REFUSED_NOT_READY)
            return
        if not self.model.contains(loc) or (loc.aisle != c.aisle):
            self._finish(c, Result.BAD_TARGET)
            return
        c.cmd = (op, loc)
        c.move_from = (c.x, c.y)
        c.move_to = self.model.position(loc)
        c.move_t0 = self.now()
        dt = c.model.move_time(c.move_to[0] - c.x, c.move_to[1] - c.y)
        c.state = CraneState.MOVING
        c.busy_s += dt
        c.handle = self.loop.call_later(dt, self._arrived, c)
        c.moves += 1

    def _arrived(self, c: SimCrane) -> None:
        c.handle = None
        c.x, c.y = c.move_to
        assert c.cmd is not None
        op, loc = c.cmd
        if op is Op.MOVE:
            self._finish(c, Result.OK)
            return
        # the fork's occupancy check runs before the fork extends
        if op is Op.PUT:
            if c.fork is None:
                self._finish(c, Result.REFUSED_FORK)
                return
            if self._occupied(loc):
                self._finish(c, Result.REFUSED_OCCUPIED)
                return
        elif op is Op.PICK:
            if c.fork is not None:
                self._finish(c, Result.REFUSED_FORK)
                return
            if not self._occupied(loc):
                self._finish(c, Result.REFUSED_EMPTY)
                return
        c.state = CraneState.FORKING
        c.busy_s += c.model.fork_cycle_s
        self._changed()
        c.handle = self.loop.call_later(c.model.fork_cycle_s, self._forked, c)

    def _station_conv(self, loc: Spot) -> tuple[SimConveyor, int]:
        if loc.level == STATION_IN:
            conv = self.conveyors[(loc.bay, False)]
            return conv, len(conv.zones) - 1
        return self.conveyors[(loc.bay, True)], 0

    def _occupied(self, loc: Spot) -> bool:
        if loc.is_station:
            conv, z = self._station_conv(loc)
            return conv.zones[z] is not None
        return loc in self.slots

    def _forked(self, c: SimCrane) -> None:
        c.handle = None
        assert c.cmd is not None
        op, loc = c.cmd
        if loc.is_station:
            conv, z = self._station_conv(loc)
            if op is Op.PICK:
                c.fork, conv.zones[z] = conv.zones[z], None
            else:
                conv.zones[z], c.fork = c.fork, None
            self._update_conveyor(conv)
        elif op is Op.PICK:
            c.fork = self.slots.pop(loc)
        else:
            assert c.fork is not None
            self.slots[loc] = c.fork
            c.fork = None
        self._finish(c, Result.OK)

    def _stop(self, c: SimCrane, state: CraneState, fault: Fault) -> None:
        if c.state is CraneState.MOVING:
            c.x, c.y = c.pos_at(self.now())
            if c.handle:
                c.handle.cancel()
                c.handle = None
            c.state = state
            c.fault = fault
            self._finish(c, Result.ABORTED)
        elif c.state is CraneState.FORKING:
            # a fork stroke is not interrupted (the load would hang half out); stop after it
            handle = c.handle

            def after() -> None:
                self._forked(c)
                c.state, c.fault = state, fault
                self._changed()

            if handle:
                handle.cancel()
                remaining = max(0.0, handle.when() - self.now())
                c.handle = self.loop.call_later(remaining, after)
        else:
            c.state = state
            c.fault = fault
        self._changed()

    # -- faults on demand ------------------------------------------------------------
    def crane_fault(self, aisle: int) -> None:
        self._stop(self.cranes[aisle - 1], CraneState.FAULT, Fault.DRIVE)

    def set_door(self, aisle: int, open_: bool) -> None:
        c = self.cranes[aisle - 1]
        c.door_open = open_
        if open_:
            self._stop(c, CraneState.STOPPED, Fault.DOOR)
        self._changed()

    def jam(self, aisle: int, outbound: bool, zone: int, stuck: bool = True) -> None:
        conv = self.conveyors[(aisle, outbound)]
        if stuck:
            conv.stuck.add(zone)
            handle = conv.transfers.pop(zone, None)
            if handle:
                handle.cancel()
        else:
            conv.stuck.discard(zone)
            self._update_conveyor(conv)
        self._changed()

    def misread(self, aisle: int, count: int = 1) -> None:
        self.conveyors[(aisle, False)].misreads += count

    def place_foreign_box(self, spot: Spot, barcode: str) -> None:
        self.slots[spot] = barcode
        self._changed()

    # -- conveyors -------------------------------------------------------------------
    def _handover(self, aisle: int, barcode: str, seq: int) -> None:
        """The line's out-feed pushes a box onto an induct (once: a box is in one place)."""
        if seq == self.handover_seq:
            return  # the same block rewritten: a retry, already latched
        self.handover_seq = seq
        if not barcode or not 1 <= aisle <= self.model.aisles:
            return
        waiting = {code for conv in self.conveyors.values() for code in conv.feed}
        if barcode in waiting or barcode in self.census():
            return
        self.handed_over.append(barcode)
        self.inject_box(aisle, barcode)

    def inject_box(self, aisle: int, barcode: str) -> None:
        """A box arrives at the inbound induct (queued upstream while the induct is full)."""
        conv = self.conveyors[(aisle, False)]
        conv.feed.append(barcode)
        self._feed(conv)

    def _feed(self, conv: SimConveyor) -> None:
        if conv.feed and conv.zones[0] is None:
            conv.zones[0] = conv.feed.pop(0)
            self._read_barcode(conv)
            self._changed()

    def _read_barcode(self, conv: SimConveyor) -> None:
        conv.reader_count += 1
        if conv.zones[0] is None:
            conv.reader_code = ""
        elif conv.misreads > 0:
            conv.misreads -= 1
            conv.reader_code = NOREAD
        else:
            conv.reader_code = conv.zones[0]
        self._changed()

    def _set_motors(self, conv: SimConveyor, bits: int) -> None:
        conv.motors = bits & ((1 << len(conv.zones)) - 1)
        for z, handle in list(conv.transfers.items()):
            if not (conv.motors >> z) & 1:
                # the load stops where it is; modelled as staying in its zone
                handle.cancel()
                del conv.transfers[z]
        self._update_conveyor(conv)

    def _update_conveyor(self, conv: SimConveyor) -> None:
        n = len(conv.zones)
        for z in range(n):
            if conv.zones[z] is None or z in conv.transfers or z in conv.stuck:
                continue
            if not (conv.motors >> z) & 1:
                continue
            last = z == n - 1
            if last and not conv.outbound:
                continue  # the inbound P&D station is a dead end: the crane takes it
            if not last and not (conv.motors >> (z + 1)) & 1:
                continue
            conv.transfers[z] = self.loop.call_later(
                conv.model.zone_travel_s, self._transferred, conv, z
            )

    def _transferred(self, conv: SimConveyor, z: int) -> None:
        conv.transfers.pop(z, None)
        n = len(conv.zones)
        code = conv.zones[z]
        if z == n - 1:
            conv.zones[z] = None
            if code:
                conv.delivered.append(code)
                if self.on_deliver:
                    self.on_deliver(conv.aisle, code)
        elif conv.zones[z + 1] is None:
            conv.zones[z + 1], conv.zones[z] = code, None
        # else: the next zone is full (a release into an occupied zone): the load
        # presses against it and stays blocked, which the controller sees as a jam
        if z == 0 and not conv.outbound:
            self._feed(conv)
        self._update_conveyor(conv)
        self._changed()


# -- Modbus TCP server ---------------------------------------------------------------


def make_modbus_server(plant: WarehousePlant, host: str, port: int) -> Any:
    """A pymodbus TCP server whose holding registers are the plant's register map."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def action(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        if set_values is None:
            off = address - start_address
            registers[off : off + count] = plant.read_registers(address, count)
        else:
            plant.write_registers(address, [int(v) for v in set_values])

    device = SimDevice(
        id=1,
        simdata=SimData(0, count=REGISTER_COUNT, values=0, datatype=DataType.REGISTERS),
        action=action,
    )
    return ModbusTcpServer(device, address=(host, port))


class WarehouseServer:
    """The simulated warehouse PLC as one wire of the simulated plant (``gridctl sim``).

    Serves the plant over Modbus TCP at ``host:port``; the rack starts with
    ``stock`` (barcode, slot) in its slots, e.g. :func:`demo_stock`.
    """

    def __init__(
        self,
        model: WarehouseModel,
        host: str,
        port: int,
        stock: Iterable[tuple[str, Spot]] = (),
    ) -> None:
        self.host, self.port = host, port
        self.plant = WarehousePlant(model)
        for barcode, spot in stock:
            if not model.contains(spot) or spot.is_station:
                raise ValueError(f"stock: {barcode} at {spot.code} is not a slot of this rack")
            self.plant.slots[spot] = barcode
        self._server: Any = None

    async def start(self) -> None:
        self._server = make_modbus_server(self.plant, self.host, self.port)
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    @property
    def description(self) -> str:
        return f"warehouse PLC tcp://{self.host}:{self.port}"


async def serve(model: WarehouseModel, host: str, port: int, boxes: list[str], aisle: int) -> None:
    plant = WarehousePlant(model)
    server = make_modbus_server(plant, host, port)
    for code in boxes:
        plant.inject_box(aisle, code)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(server.serve_forever())
    await stop.wait()
    await server.shutdown()
    await stop_task(task)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="simulated warehouse PLC (Modbus TCP)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020)
    p.add_argument(
        "--config",
        default="{}",
        help="the plant as JSON, the keys of the [warehouse] table (others are ignored)",
    )
    p.add_argument("--boxes", default="", help="comma-separated barcodes to feed at the induct")
    p.add_argument("--aisle", type=int, default=1)
    a = p.parse_args(argv)
    try:
        model = WarehouseModel.from_table(json.loads(a.config))
    except ValueError as exc:  # JSONDecodeError is one too
        p.error(f"--config: {exc}")
    if not 1 <= a.aisle <= model.aisles:
        p.error(f"--aisle: must be 1..{model.aisles}, got {a.aisle}")
    boxes = [b for b in a.boxes.split(",") if b]
    asyncio.run(serve(model, a.host, a.port, boxes, a.aisle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "Spot",
    "WarehouseModel",
    "WarehousePlant",
    "WarehouseServer",
    "decode_code",
    "demo_stock",
    "make_modbus_server",
]
