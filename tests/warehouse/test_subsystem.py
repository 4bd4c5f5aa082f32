"""The warehouse inside the service: simulated PLC from the simulated plant, tags, commands."""

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest

from controller.api import CommandRefused
from controller.commands import CommandState
from controller.config import load_config, validate_config
from controller.service import Service
from drivers.sim.plant import SimulatedPlant

FAST_CRANE = dict(vx_m_s=50.0, ax_m_s2=1000.0, vy_m_s=50.0, ay_m_s2=1000.0, fork_cycle_s=0.05)
FAST_CONVEYOR = dict(zones=2, zone_travel_s=0.05, jam_timeout_s=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Request:
    """A CommandRequest with the ``args`` the OPC UA methods pass."""

    target: str
    kind: str
    reason: str = "demo"
    user: str = "operator"
    role: str = "operator"
    token: str = ""
    armed_at: float = 0.0
    source: str = "test"
    args: dict[str, Any] = field(default_factory=dict)


def config(tmp_path):
    return validate_config(
        {
            "service": {"state_dir": str(tmp_path / "var"), "control_socket": ""},
            "tasks": {"gc_freeze": False},
            "journal": {"path": str(tmp_path / "var" / "journal.sqlite")},
            "metrics": {"enabled": False},
            "opcua": {"enabled": False},
            "sim": {"control_socket": str(tmp_path / "sim.sock")},
            "warehouse": {
                "plc": f"tcp://127.0.0.1:{free_port()}",
                "rows": 2,
                "bays": 10,
                "levels": 6,
                "demo_boxes": 6,
                "poll_s": 0.01,
                "cranes": [FAST_CRANE],
                "inbound": FAST_CONVEYOR,
                "outbound": FAST_CONVEYOR,
            },
        }
    )


async def wait_for(cond, timeout=20.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def running(tmp_path):
    cfg = config(tmp_path)
    sim = SimulatedPlant(cfg)  # what `gridctl sim` runs: the warehouse PLC is one of its wires
    await sim.start()
    svc = Service(cfg)
    try:
        await svc.start()
        yield svc, sim
    finally:
        await svc.stop()
        await sim.stop()


def test_demo_config_has_a_warehouse():
    cfg = load_config("config/demo.toml")
    assert cfg.warehouse is not None and cfg.warehouse.demo_boxes > 0
    assert cfg.warehouse.plc.startswith("tcp://127.0.0.1:")


async def test_service_comes_up_with_the_warehouse_and_moves_a_box(running):
    svc, sim = running
    assert [s.name for s in svc.subsystems] == ["warehouse"]
    assert svc.image.get("warehouse/slots/occupied").value == 6
    for tag in ("warehouse/cranes/1/state", "warehouse/conveyors/1-out/loads"):
        assert tag in svc.image, tag
    assert "warehouse/" in svc.router.prefixes
    cid = await svc.router.submit(
        Request(
            "warehouse",  # the OPC UA methods live on the Warehouse root object
            "create_order",
            token="t-1",
            args={"kind": "outbound_verification", "params": {"batch": "B1", "boxes": 1}},
        )
    )
    await wait_for(lambda: svc.commands.get(cid).state is CommandState.CONFIRMED)
    cmd = svc.commands.get(cid)
    assert cmd.who == "operator" and cmd.why == "demo"
    assert [t.state for t in cmd.history] == [
        CommandState.QUEUED,
        CommandState.SENT,
        CommandState.CONFIRMED,
    ]
    assert svc.image.get("warehouse/slots/occupied").value == 5
    assert svc.image.get("warehouse/orders/completed").value == 1
    assert sim.warehouse.plant.conveyors[(1, True)].delivered == ["NEW00000"]
    # every crane and conveyor command went over the PLC's bus and its read-back matched
    plc = svc.plant.bus("warehouse_plc")
    assert plc.unconfirmed == 0
    # a retry with the same token is the same command, not a second order
    again = await svc.router.submit(
        Request(
            "warehouse",
            "create_order",
            token="t-1",
            args={"kind": "outbound_verification", "params": {"batch": "B1", "boxes": 1}},
        )
    )
    assert again == cid


async def test_cancel_and_bad_arguments_are_refused_naming_the_argument(running):
    svc, _sim = running
    sub = svc.subsystems[0]
    await sub.wh.stop()  # cranes idle: the order stays released, so it can be cancelled
    with pytest.raises(CommandRefused, match=r"distribution_outbound\.boxes: 1 requested"):
        await svc.router.submit(
            Request(
                "warehouse/orders",
                "create_order",
                token="t-2",
                args={"kind": "distribution_outbound", "items": ["D1", "1"]},
            )
        )
    # refused by the order book after journaling: the record says so
    assert svc.commands.get("t-2").state is CommandState.REFUSED  # no qualified boxes yet
    cid = await svc.router.submit(
        Request(
            "warehouse/orders",
            "create_order",
            args={"kind": "outbound_verification", "items": ["B2", "2"]},
        )
    )
    order_id = sub._orders[cid]
    done = await svc.router.submit(
        Request("warehouse/orders", "cancel_order", args={"order_id": str(order_id)})
    )
    assert svc.commands.get(done).state is CommandState.CONFIRMED
    await wait_for(lambda: svc.commands.get(cid).state is CommandState.FAILED)
    assert "cancelled" in svc.commands.get(cid).reason
    assert svc.image.get("warehouse/orders/cancelled").value == 1

    cases = [
        ({"kind": "teleport", "params": {}}, "argument 'kind'"),
        ({"kind": "inbound"}, "argument 'params'"),
        ({"kind": "inbound", "params": []}, "argument 'params'"),
        ({"kind": "inbound", "params": {}, "priority": 500}, "argument 'priority'"),
        ({"kind": "relocation", "items": []}, "argument 'items'"),
        ({"kind": "outbound_verification", "items": ["B3", "many"]}, "argument 'items'"),
        ({"kind": "rejected_outbound", "items": ["two"]}, "argument 'items'"),
    ]
    for args, needle in cases:
        with pytest.raises(CommandRefused, match=needle):
            await svc.router.submit(Request("warehouse/orders", "create_order", args=args))
    with pytest.raises(CommandRefused, match=r"outbound_verification\.boxes"):
        await svc.router.submit(
            Request(
                "warehouse/orders",
                "create_order",
                args={"kind": "outbound_verification", "params": {"batch": "B4", "boxes": 999}},
            )
        )
    # rejected boxes out by CreateOrder(kind, items): refused by the order book
    # here (the demo rack holds no rejected boxes), after journaling
    with pytest.raises(CommandRefused, match=r"rejected_outbound\.boxes: 1 requested"):
        await svc.router.submit(
            Request(
                "warehouse/orders",
                "create_order",
                token="t-rej",
                args={"kind": "rejected_outbound", "items": ["1"]},
            )
        )
    assert svc.commands.get("t-rej").state is CommandState.REFUSED
    with pytest.raises(CommandRefused, match="argument 'order_id'"):
        await svc.router.submit(Request("warehouse/orders", "cancel_order", args={"order_id": "x"}))
    with pytest.raises(CommandRefused, match="order_id: unknown order 4242"):
        await svc.router.submit(
            Request("warehouse/orders", "cancel_order", args={"order_id": "4242"})
        )
    with pytest.raises(CommandRefused, match="kind: the warehouse takes"):
        await svc.router.submit(Request("warehouse/orders", "trip"))


async def test_restart_keeps_inventory_and_does_not_seed_again(tmp_path, caplog):
    caplog.set_level("INFO", logger="gridctl.warehouse")
    cfg = config(tmp_path)
    sim = SimulatedPlant(cfg)
    await sim.start()
    try:
        for _ in range(2):
            svc = Service(cfg)
            await svc.start()
            try:
                assert svc.image.get("warehouse/slots/occupied").value == 6
                events = svc.subsystems[0].wh.inv.events("demo_stock")
                assert len(events) == 1
            finally:
                await svc.stop()
        assert "rack scan matches the inventory (120 slots)" in caplog.text
        # a fresh simulator (the demo restarted) has the demo stock back: the check says so
        svc = Service(cfg)
        await svc.start()
        try:
            await svc.router.submit(
                Request(
                    "warehouse",
                    "create_order",
                    token="t-9",
                    args={"kind": "outbound_verification", "items": ["B9", "1"]},
                )
            )
            await wait_for(lambda: svc.commands.get("t-9").state is CommandState.CONFIRMED)
        finally:
            await svc.stop()
        await sim.stop()
        sim = SimulatedPlant(cfg)
        await sim.start()
        svc = Service(cfg)
        await svc.start()
        await svc.stop()
        assert "differs from the inventory in 1 of 120 slots" in caplog.text
    finally:
        await sim.stop()


async def test_the_plc_is_a_bus_of_the_plant_and_the_programs_run_on_the_fast_task(running):
    svc, _sim = running
    snaps = {s.name: s for s in svc.bus_snapshots()}
    plc = snaps["warehouse_plc"]
    assert (plc.protocol, plc.connected, plc.meters_total) == ("modbus_tcp", True, 1)
    # the crane's status as the bus polled it: the simulated crane starts idle at (0, 0)
    prefix = "buses/warehouse_plc/devices/plc/cranes/1/"
    assert (svc.image.value(prefix + "state"), svc.image.value(prefix + "x")) == (0, 0.0)
    names = [name for name, _p, _c in svc.fast._programs]
    assert [n for n in names if n.startswith("warehouse ")] == [
        "warehouse conveyor-1-in",
        "warehouse conveyor-1-out",
        "warehouse crane-1",
        "warehouse program stats",
    ]
    wh = svc.subsystems[0].wh
    # scan times are exported once a second per program
    await wait_for(lambda: (svc.image.value("warehouse/programs/crane-1/scans") or 0) > 0)
    assert svc.image.get("warehouse/programs/crane-1/scan_max_s").quality.name == "GOOD"
    # an intent is a promise: the inventory commits with synchronous=FULL (2), not NORMAL (1)
    assert wh.inv.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
