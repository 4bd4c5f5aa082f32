"""The warehouse inside `gridctl run`: one domain subsystem of the service.

- Inventory, orders and crane tasks live in the service's journal file (the
  ``wh_*`` tables, created by the journal's migrations from
  ``controller.warehouse_schema``), written on a second connection of their own.
- The PLC is a bus of the field plant (``drivers.warehouse_plc``, built from
  ``[warehouse] plc``; with ``[sim] enabled`` the simulator process serves it):
  its status is polled into the image, commands go on its control lane.
- Cranes and conveyors are programs of the service's fast cyclic task; each
  scan reads the image and queues commands, none awaits the wire.
- Tags are published under ``warehouse/...`` in the service's process image,
  all defined by the end of :meth:`WarehouseSubsystem.start` (before the OPC UA
  model is built).
- Commands for ``warehouse/`` (``create_order``, ``cancel_order``) are
  journaled in the service's command log first, then applied: a created order
  is ``sent`` on release and ``confirmed`` when it completes (``failed`` when
  it fails or is cancelled); a bad argument is refused naming the argument.
- Warehouse alarms go to the service's alarm engine: crane sources as
  ``crane_fault``, conveyors and the rest as ``conveyor_fault``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from controller.api import CommandRefused, CommandRequest, RefusalReason
from controller.commands import CommandError, CommandState
from controller.subsystem_context import SubsystemContext
from controller.task_stop import stop_task
from controller.warehouse.config import WarehouseConfig
from controller.warehouse.demo import DEMO_METER_TYPE, demo_stock
from controller.warehouse.inventory import Inventory, open_db
from controller.warehouse.marketing import MarketingError, MarketingInterface
from controller.warehouse.orders import TERMINAL, OrderError, OrderKind, OrderState
from controller.warehouse.plant_io import PlantIOError, PlcImageIO
from controller.warehouse.rack import BoxClass
from controller.warehouse.service import Warehouse

log = logging.getLogger("gridctl.warehouse")

KINDS = frozenset({"create_order", "cancel_order"})
CONNECT_TIMEOUT_S = 10.0
TRACK_PERIOD_S = 0.2
ORDER_KINDS = tuple(k.value for k in OrderKind)


class _AlarmAdapter:
    """``AlarmSink`` -> ``AlarmEngine.set``.

    The engine knows one condition per source (``crane_fault`` on
    ``warehouse/cranes/1``) while the warehouse reports several causes per
    source (door, drive fault, a command timeout); the condition stays active
    while any cause is present and clears with the last one.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.causes: dict[str, set[str]] = {}  # source -> alarm kinds present

    @staticmethod
    def condition(source: str) -> str:
        return "crane_fault" if source.startswith("warehouse/cranes/") else "conveyor_fault"

    def raise_alarm(self, source: str, kind: str, severity: int, message: str) -> None:
        self.causes.setdefault(source, set()).add(kind)
        try:
            self.engine.set(
                self.condition(source), source, True, f"{kind}: {message}", severity=severity
            )
        except Exception:  # an alarm must never stop the control loop
            log.exception("warehouse alarm %s on %s not recorded", kind, source)

    def clear_alarm(self, source: str, kind: str, message: str) -> None:
        present = self.causes.get(source, set())
        present.discard(kind)
        if present:
            return
        try:
            self.engine.set(self.condition(source), source, False, message)
        except Exception:
            log.exception("warehouse alarm %s on %s not cleared", kind, source)

    def settle(self) -> int:
        """After a restart: clear warehouse alarms restored active whose cause is gone.

        The engine restores alarm states from the journal; the first status
        reads re-raised whatever is still present, so an active warehouse alarm
        without a present cause belongs to the previous run."""
        cleared = 0
        for alarm in list(self.engine):
            if (
                alarm.active
                and alarm.source.startswith("warehouse/")
                and not self.causes.get(alarm.source)
            ):
                self.engine.set(alarm.condition, alarm.source, False, "cause gone after restart")
                cleared += 1
        return cleared


class WarehouseSubsystem:
    name = "warehouse"

    def __init__(self, service: SubsystemContext, cfg: WarehouseConfig) -> None:
        self.service = service
        self.cfg = cfg
        self.wh: Warehouse | None = None
        self.io: PlcImageIO | None = None
        self._conn: Any = None
        self._orders: dict[str, int] = {}  # command id -> order id, until the order ends
        self._inflight: set[str] = set()
        self._track_task: asyncio.Task[None] | None = None
        self.alarms = _AlarmAdapter(service.alarms)
        log_ = service.commands
        log_.kinds = frozenset(log_.kinds | KINDS)
        service.router.register("warehouse/", self)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        svc = self.service
        from drivers.plant import WAREHOUSE_PLC_BUS
        from drivers.warehouse_plc import WarehousePlcBus

        if svc.plant is None:
            raise RuntimeError("warehouse: no field plant running; the PLC is one of its buses")
        bus = svc.plant.bus(WAREHOUSE_PLC_BUS)
        if not isinstance(bus, WarehousePlcBus):
            raise RuntimeError(f"warehouse: bus {WAREHOUSE_PLC_BUS!r} is not the warehouse PLC")
        self.io = PlcImageIO(bus)
        await self._connect()
        self._conn = open_db(str(svc.journal.path))
        seeded = self._seed()
        self.wh = Warehouse(
            self.cfg,
            self._conn,
            self.io,
            image=svc.image,
            alarms=self.alarms,
            line=None,
            clock=time.time,
        )
        report = await self.wh.start(cycle=svc.fast)
        # every tag exists before the OPC UA model is built
        for aisle in self.wh.cranes:
            for conv in (self.wh.inbound[aisle], self.wh.outbound[aisle]):
                self.wh.publish_conveyor(conv)
        self.wh.publish_totals()
        self.alarms.settle()
        if self.cfg.demo_boxes and not seeded:
            await self._check_demo_rack()
        self._resume_commands()
        self._track_task = asyncio.create_task(self._track(), name="warehouse-commands")
        log.info(
            "warehouse: PLC %s, %d slots, %d boxes%s, reconcile %s",
            self.cfg.plc,
            self.cfg.slot_count,
            len(self.wh.inv.boxes("R*")),
            f" ({seeded} demo boxes seeded)" if seeded else "",
            report,
        )

    async def _connect(self) -> None:
        """Wait until the PLC's bus has polled it once (its status Good in the image)."""
        assert self.io is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT_S
        while self.io.unavailable():
            if loop.time() > deadline:
                raise PlantIOError(
                    f"warehouse.plc: no PLC answering at {self.cfg.plc} "
                    f"within {CONNECT_TIMEOUT_S:g} s ({self.io.unavailable()})"
                )
            await asyncio.sleep(0.05)

    def _seed(self) -> int:
        """Demo stock into an empty inventory (the simulator starts with the same boxes)."""
        stock = demo_stock(self.cfg)
        inv = Inventory(self._conn)
        inv.create_schema()
        if not stock or inv.boxes() or inv.order_rows():
            return 0
        t = time.time()
        with inv.tx():
            for box in stock:
                meters = [(a, DEMO_METER_TYPE, "new") for a in box.meters]
                inv.add_box(box.barcode, BoxClass.UNVERIFIED, box.location.code, t, meters)
            inv.event(t, "demo_stock", f"{len(stock)} boxes of new meters")
        return len(stock)

    async def _check_demo_rack(self) -> None:
        """A restarted simulator starts from the demo stock again; say so when it differs."""
        assert self.wh is not None
        report = await self.wh.count()
        diffs = report["differences"]
        if diffs:
            log.warning(
                "warehouse: the simulated rack differs from the inventory in %d of %d slots "
                "(e.g. %s); delete the journal to start the demo afresh",
                len(diffs),
                report["slots"],
                diffs[0],
            )
        else:
            log.info("warehouse: rack scan matches the inventory (%d slots)", report["slots"])

    async def stop(self) -> None:
        if self._track_task is not None:
            await stop_task(self._track_task)
            self._track_task = None
        if self.wh is not None:
            await self.wh.stop()
        self.io = None  # the bus belongs to the field plant, which closes it
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- commands ---------------------------------------------------------------------------
    async def submit(self, request: CommandRequest) -> str:
        """Journal, then apply; CommandRefused names the bad argument."""
        if request.kind not in KINDS:
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"kind: the warehouse takes {', '.join(sorted(KINDS))} (got {request.kind!r})",
            )
        wh = self.wh
        if wh is None:
            raise CommandRefused(RefusalReason.INVALID_STATE, "warehouse: not started")
        args = dict(getattr(request, "args", None) or {})
        if request.kind == "create_order":
            kind, params, priority = _order_args(args)
        else:
            order_id = _order_id(args)
        cmd = await self._journal(request, args)
        if cmd.state is not CommandState.QUEUED or cmd.id in self._inflight:
            return cmd.id  # a retry of a command already handled
        self._inflight.add(cmd.id)
        try:
            if request.kind == "create_order":
                try:
                    if kind == OrderKind.QUALIFIED_RETURN and set(params) == {"batch"}:
                        oid = MarketingInterface(wh).qualified_return(params["batch"], priority)
                    else:
                        oid = wh.submit(kind, params, priority)
                except (OrderError, MarketingError) as exc:
                    await self._refuse(cmd.id, str(exc))
                    raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None
                await self.service.commands.transition(
                    cmd.id, CommandState.SENT, reason=f"order {oid}"
                )
                self._orders[cmd.id] = oid
            else:
                try:
                    wh.cancel(order_id, request.reason)
                except OrderError as exc:
                    await self._refuse(cmd.id, str(exc))
                    raise CommandRefused(RefusalReason.INVALID_STATE, str(exc)) from None
                await self.service.commands.transition(
                    cmd.id, CommandState.SENT, reason=f"order {order_id}"
                )
                await self.service.commands.transition(
                    cmd.id, CommandState.CONFIRMED, reason=f"order {order_id} cancelled"
                )
        finally:
            self._inflight.discard(cmd.id)
        return cmd.id

    async def _journal(self, request: CommandRequest, args: dict[str, Any]) -> Any:
        try:
            return await self.service.commands.submit(
                request.kind,
                request.target,
                args,
                who=request.user or "anonymous",
                why=request.reason,
                command_id=request.token or None,
            )
        except CommandError as exc:
            raise CommandRefused(RefusalReason.BAD_ARGUMENT, str(exc)) from None

    async def _refuse(self, command_id: str, reason: str) -> None:
        await self.service.commands.transition(command_id, CommandState.REFUSED, reason=reason)

    def command_state(self, command_id: str) -> tuple[str, str] | None:
        try:
            cmd = self.service.commands.get(command_id)
        except CommandError:
            return None
        return cmd.state.value, cmd.reason

    def _resume_commands(self) -> None:
        """Pick up create_order commands left ``sent`` by the previous run (order id in history).

        Each is adopted: its order goes on, so it ends when the order ends — the
        service's generic reconcile (a device read-back) knows nothing of orders."""
        for cmd in self.service.commands.pending():
            if cmd.kind != "create_order" or cmd.state is not CommandState.SENT:
                continue
            for tr in cmd.history:
                if tr.state is CommandState.SENT and tr.reason.startswith("order "):
                    with contextlib.suppress(ValueError):
                        self._orders[cmd.id] = int(tr.reason.split()[1])
                        self.service.commands.adopt(cmd.id)

    async def _track(self) -> None:
        """Follow each released order to its end and close its command."""
        while True:
            await asyncio.sleep(TRACK_PERIOD_S)
            if self.wh is None or not self._orders:
                continue
            for cid, oid in list(self._orders.items()):
                try:
                    order = self.wh.order(oid)
                except OrderError as exc:
                    state, reason = CommandState.FAILED, str(exc)
                else:
                    if order.state not in TERMINAL:
                        continue
                    ok = order.state is OrderState.COMPLETED
                    state = CommandState.CONFIRMED if ok else CommandState.FAILED
                    reason = f"order {oid} {order.state.value}" + (
                        f": {order.reason}" if order.reason else ""
                    )
                try:
                    await self.service.commands.transition(cid, state, reason=reason)
                except CommandError as exc:
                    log.warning("warehouse: command %s: %s", cid, exc)
                del self._orders[cid]


def _order_args(args: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """``kind`` plus ``params`` (the order's parameters) or ``items`` (ids, per kind)."""
    kind = args.get("kind")
    if kind not in ORDER_KINDS:
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"argument 'kind': must be one of {', '.join(ORDER_KINDS)} (got {kind!r})",
        )
    priority = args.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -100 <= priority <= 100:
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"argument 'priority': must be an integer -100..100 (got {priority!r})",
        )
    params = args.get("params")
    items = args.get("items")
    if params is not None:
        if not isinstance(params, dict):
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"argument 'params': must be a mapping (got {type(params).__name__})",
            )
        return kind, params, priority
    if items is None:
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT, "argument 'params' (or 'items'): required for create_order"
        )
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"argument 'items': must be a non-empty list of strings (got {items!r})",
        )
    if kind == OrderKind.INVENTORY_COUNT:
        return kind, {"slots": items}, priority
    if kind == OrderKind.RELOCATION and len(items) in (1, 2):
        return (
            kind,
            {"barcode": items[0], **({"to": items[1]} if len(items) == 2 else {})},
            priority,
        )
    if kind == OrderKind.REJECTED_OUTBOUND and len(items) == 1:
        if not items[0].isdigit():
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"argument 'items': [number of rejected boxes] expected (got {items!r})",
            )
        return kind, {"boxes": int(items[0])}, priority
    if kind == OrderKind.QUALIFIED_RETURN and len(items) == 1:
        # [batch]: the boxes and verdicts come from the batch's uploaded boxing and results
        return kind, {"batch": items[0]}, priority
    if (
        kind in (OrderKind.OUTBOUND_VERIFICATION, OrderKind.DISTRIBUTION_OUTBOUND)
        and len(items) == 2
    ):
        name = "batch" if kind == OrderKind.OUTBOUND_VERIFICATION else "district"
        if not items[1].isdigit():
            raise CommandRefused(
                RefusalReason.BAD_ARGUMENT,
                f"argument 'items': [{name}, number of boxes] expected (got {items!r})",
            )
        return kind, {name: items[0], "boxes": int(items[1])}, priority
    raise CommandRefused(
        RefusalReason.BAD_ARGUMENT,
        f"argument 'items': not enough for a {kind} order (inventory_count: slots; relocation: "
        "[barcode] or [barcode, slot]; outbound_verification: [batch, boxes]; qualified_return: "
        "[batch]; "
        "distribution_outbound: [district, boxes]; rejected_outbound: [boxes]); give 'params' "
        "for the others",
    )


def _order_id(args: dict[str, Any]) -> int:
    raw = args.get("order_id")
    try:
        value = int(str(raw))
    except ValueError:
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT,
            f"argument 'order_id': must be an order number (got {raw!r})",
        ) from None
    if value < 1:
        raise CommandRefused(
            RefusalReason.BAD_ARGUMENT, f"argument 'order_id': must be >= 1 (got {raw!r})"
        )
    return value
