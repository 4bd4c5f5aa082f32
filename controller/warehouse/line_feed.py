"""The warehouse feeding the verification line, and taking its meters back.

One batch at a time, each a row of ``wh_line_feed`` in the journal file that
moves through::

    ordered ──▶ testing ──▶ returning ──▶ rejecting ──▶ done
       │           (line batch)   (qualified-return   (rejected-meter
       │                           order, all boxes)   outbound order)
       └──▶ failed (the outbound order was cancelled or delivered nothing)

- **ordered**: the line is idle and unverified meters are in stock: an
  outbound-for-verification order (marketing point 8) takes the oldest boxes,
  as many as the line has stations for, to the line-feed conveyor.
- **testing**: the order completed (``LineLink.batch_ready``): the line runs a
  batch of the delivered meters, journaled as a ``start_batch`` command by
  ``warehouse feed``.
- **returning**: the batch is done: results (point 5), withstand-voltage
  results (point 7) and boxing details (point 4) are recorded, qualified and
  rejected meters boxed apart (one class per box), and a qualified-return order
  (point 6) expects the boxes, which the line's out-feed pushes onto the
  induct; they are stored by class.
- **rejecting**: the rejected boxes leave on a rejected-meter outbound order.

Every transition is one SQLite transaction together with the order it
creates, so after a crash or a stop the row says exactly which orders exist:
the step is resumed, never repeated (a return box handed over twice is
ignored by the PLC, which knows the box is already there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from controller.subsystem_context import SubsystemContext
from controller.task_stop import stop_task
from controller.verification.results import FAIL, PASS, RepositoryError
from controller.verification.sequencer import MeterTask
from controller.warehouse.inventory import Inventory
from controller.warehouse.line_link import BatchFeed, ReturnBox, VerifiedMeter
from controller.warehouse.marketing import MarketingInterface
from controller.warehouse.orders import OrderKind, OrderState
from controller.warehouse.rack import BoxClass, fifo_select
from controller.warehouse.service import Warehouse

log = logging.getLogger("gridctl.warehouse.feed")

POLL_S = 1.0  # the feed also wakes on order completion and batch end; this is the fallback
OPEN_STATES = ("ordered", "testing", "returning", "rejecting")
# why a batch stopped when the service stopped (it resumes; see the line subsystem)
SERVICE_STOP_PREFIX = "service stopped"


class Line(Protocol):
    """What the feed needs from the verification line subsystem."""

    config: Any  # LineConfig
    schemes: dict[str, Any]
    repo: Any  # ResultsRepository
    batch_ended: list[Any]

    @property
    def running(self) -> bool: ...

    async def start_fed_batch(
        self, batch_id: str, scheme: str, meter_type: str, meters: list[MeterTask], why: str
    ) -> bool: ...


@dataclass(slots=True)
class FeedRow:
    batch: str
    state: str
    meter_type: str
    out_order: int
    return_order: int | None
    reject_order: int | None
    reason: str


class LineFeed:
    """Links the running verification line and the warehouse (``[line] feed = "warehouse"``)."""

    name = "line feed"

    def __init__(self, service: SubsystemContext, line: Line, warehouse: Any) -> None:
        self.service = service
        self.line = line
        self.warehouse = warehouse  # WarehouseSubsystem; its Warehouse exists once started
        self.cfg = line.config
        self.scheme = ""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handed: set[str] = set()  # return boxes handed over by this process
        self._message = ""

    @property
    def wh(self) -> Warehouse:
        wh = self.warehouse.wh
        assert wh is not None, "the warehouse starts before the line feed"
        return wh  # type: ignore[no-any-return]

    @property
    def inv(self) -> Inventory:
        return self.wh.inv

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self.scheme = self._pick_scheme()
        self.marketing = MarketingInterface(self.wh)
        self.wh.line = self
        self.line.batch_ended.append(self._batch_ended)
        self._define_tags()
        # the control task starts last in the service's start-up: no box moves for the
        # line until the whole service is up (and a stop during start-up stays quick)
        self._live = asyncio.Event()
        self.service.control.attach("line feed", self._tick)
        row = self._open()
        log.info(
            "line feed: from the warehouse, %d boxes per batch, scheme %s%s",
            self.cfg.feed_boxes,
            self.scheme,
            f"; resuming batch {row.batch} ({row.state})" if row else "",
        )
        self.publish()
        self._task = asyncio.create_task(self._run(), name="line-feed")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        with contextlib.suppress(ValueError):
            self.line.batch_ended.remove(self._batch_ended)

    def _pick_scheme(self) -> str:
        if self.cfg.feed_scheme:
            if self.cfg.feed_scheme not in self.line.schemes:
                raise ValueError(
                    f"line.feed_scheme: unknown scheme {self.cfg.feed_scheme!r}; "
                    f"known: {sorted({s.name for s in self.line.schemes.values()})}"
                )
            return str(self.line.schemes[self.cfg.feed_scheme].name)
        mt = self.cfg.meter_type(self.cfg.default_meter_type)
        usable = sorted({s.name for s in self.line.schemes.values() if not s.problems_for(mt)})
        if len(usable) != 1:
            raise ValueError(
                f"line.feed_scheme: required, {len(usable)} schemes suit meter type {mt.name} "
                f"({', '.join(usable) or 'none'})"
            )
        return usable[0]

    # -- wake-ups ---------------------------------------------------------------------------
    def batch_ready(self, feed: BatchFeed) -> None:
        """``LineLink``: the outbound order's last box reached the line feed."""
        self._wake.set()

    def _batch_ended(self, batch_id: str, state: str) -> None:
        self._wake.set()

    def _tick(self, _deadline: float) -> None:
        self._live.set()

    async def _run(self) -> None:
        await self._live.wait()
        while True:
            # A step and its publication read the order book and write JSON tags
            # (about a millisecond): start them in the fast task's idle time.
            await self.service.fast.after_cycle()
            try:
                await self.step()
            except Exception:  # keep feeding after an unexpected error; it is logged
                log.exception("line feed: step failed")
            self.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            self._wake.clear()

    # -- the state machine ------------------------------------------------------------------
    async def step(self) -> None:
        """Advance the open batch by as many steps as are ready (idempotent)."""
        for _ in range(len(OPEN_STATES) + 1):
            row = self._open()
            before = row.state if row else None
            if row is None:
                self._order_next()
            elif row.state == "ordered":
                await self._start_batch(row)
            elif row.state == "testing":
                self._return(row)
            elif row.state == "returning":
                await self._returning(row)
            elif row.state == "rejecting":
                self._rejecting(row)
            after = self._open()
            if (after.state if after else None) == before:
                return

    def _order_next(self) -> None:
        if self.line.running:
            self._message = "line busy"
            return
        picked = self._pick_boxes()
        if not picked:
            return
        batch = self._next_batch_name()
        n = len(picked)
        t = self.wh.clock()
        with self.inv.tx() as c:
            info = self.marketing.outbound_for_verification(batch, n)  # point 8
            c.execute(
                "INSERT INTO wh_line_feed (batch, state, meter_type, out_order, created_at,"
                " updated_at) VALUES (?, 'ordered', ?, ?, ?, ?)",
                (batch, self._meter_type(picked[0]), info["order_id"], t, t),
            )
            self.inv.event(
                t, "line_feed", f"batch {batch}: {n} boxes ordered out", info["order_id"]
            )
        self._journal(
            f"batch {batch}: outbound-for-verification order {info['order_id']}, "
            f"{n} boxes, {len(info['meters'])} meters"
        )

    def _pick_boxes(self) -> list[str]:
        """The oldest unverified boxes of one meter type the line knows, as many as fit."""
        stations = len(self.cfg.station_ids)
        oldest = fifo_select(self.inv.boxes("R*"), BoxClass.UNVERIFIED, self.cfg.feed_boxes)
        if not oldest:
            self._message = "no unverified meters in stock"
            return []
        first = self._meter_type(oldest[0].barcode)
        if first not in self.cfg.meter_types:
            self._message = (
                f"box {oldest[0].barcode}: meter type {first!r} unknown to the line "
                f"({', '.join(self.cfg.meter_types)})"
            )
            return []
        picked: list[str] = []
        meters = 0
        # request_batch takes the FIFO prefix, so stop at the first box that does not fit
        for box in oldest:
            if self._meter_type(box.barcode) != first or meters + box.meters > stations:
                break
            picked.append(box.barcode)
            meters += box.meters
        if not picked:
            self._message = f"box {oldest[0].barcode} holds more meters than the line has stations"
        return picked

    def _meter_type(self, box: str) -> str:
        types = {m.type for m in self.inv.meters(box)}
        return types.pop() if len(types) == 1 else ""

    def _next_batch_name(self) -> str:
        (n,) = self.inv.conn.execute("SELECT count(*) FROM wh_line_feed").fetchone()
        return f"WF{n + 1:05d}"

    async def _start_batch(self, row: FeedRow) -> None:
        order = self.wh.order(row.out_order)
        lines = self.inv.lines(row.out_order)
        delivered = [code for code, state in lines.items() if state == "delivered"]
        if order.state is OrderState.CANCELLED or (
            order.state is OrderState.FAILED and not delivered
        ):
            self._set(row, "failed", reason=f"outbound order {order.id} {order.state.value}")
            self._journal(f"batch {row.batch}: outbound order {order.id} {order.state.value}")
            return
        if order.state not in (OrderState.COMPLETED, OrderState.FAILED):
            self._message = f"order {order.id}: boxes on their way to the line"
            return
        meters = [
            MeterTask(m.address, m.address) for code in delivered for m in self.inv.meters(code)
        ]
        why = f"outbound order {order.id} delivered {len(delivered)} boxes"
        ok = await self.line.start_fed_batch(row.batch, self.scheme, row.meter_type, meters, why)
        if not ok:
            self._message = f"batch {row.batch}: waiting for the line"
            return
        self._set(row, "testing")
        self._journal(f"batch {row.batch}: {len(meters)} meters on the line ({why})")

    def _return(self, row: FeedRow) -> None:
        try:
            rec = self.line.repo.batch(row.batch)
        except RepositoryError:
            # the batch record never got written (a crash right after the order): start it
            self._set(row, "ordered")
            return
        ended_early = rec.state in ("failed", "aborted") and not rec.reason.startswith(
            SERVICE_STOP_PREFIX
        )
        if rec.state != "done" and not ended_early:
            self._message = f"batch {row.batch} on the line"
            return
        # a batch that failed or was aborted still gives its meters back: those with a
        # verdict as usual, the untested ones unverified, to be fed again later
        verdict = {
            m.address: "qualified"
            if m.verdict == PASS
            else "rejected"
            if m.verdict == FAIL
            else "unverified"
            for m in rec.meters
        }
        by_barcode = {m.barcode: m for m in rec.meters}
        ended: dict[str, float] = {}
        withstand = []
        for r in self.line.repo.results(row.batch):
            address = by_barcode[r.barcode].address
            ended[address] = max(ended.get(address, 0.0), r.ended)
            item = rec.scheme.items[r.item_index]
            if item.kind == "withstand" and r.verdict in (PASS, FAIL):
                withstand.append(
                    {
                        "address": address,
                        "voltage_kv": float(item.kv),
                        "duration_s": float(item.seconds),
                        "passed": r.verdict == PASS,
                        "leakage_ma": float(r.average) if r.average is not None else None,
                    }
                )
        now = self.wh.clock()
        per_box = min(self.cfg.handling.box_size, self.wh.cfg.meters_per_box)
        boxes: list[ReturnBox] = []
        for klass, tag in (("qualified", "Q"), ("rejected", "R"), ("unverified", "U")):
            addresses = [m.address for m in rec.meters if verdict[m.address] == klass]
            for i in range(0, len(addresses), per_box):
                chunk = addresses[i : i + per_box]
                boxes.append(
                    ReturnBox(
                        f"{row.batch}-{tag}{i // per_box + 1:02d}",
                        max((ended.get(a, now) for a in chunk), default=now),
                        tuple(VerifiedMeter(a, klass) for a in chunk),  # type: ignore[arg-type]
                    )
                )
        results = [
            {"address": a, "verdict": v, "verified_at": ended.get(a, now)}
            for a, v in verdict.items()
            if v != "unverified"
        ]
        boxing = [{"barcode": b.barcode, "meters": [m.address for m in b.meters]} for b in boxes]
        with self.inv.tx():
            if results:
                self.marketing.upload_results(row.batch, results)  # point 5
            if withstand:
                self.marketing.upload_withstand_voltage(row.batch, withstand)  # point 7
            self.marketing.upload_boxing(row.batch, boxing)  # point 4
            order_id = self.wh.return_boxes(row.batch, boxes)  # point 6
            self._set(row, "returning", return_order=order_id)
        counts = {k: sum(1 for v in verdict.values() if v == k) for k in ("qualified", "rejected")}
        untested = len(verdict) - sum(counts.values())
        self._journal(
            f"batch {row.batch} {rec.state}: {counts['qualified']} qualified, "
            f"{counts['rejected']} rejected"
            + (f", {untested} untested" if untested else "")
            + f" in {len(boxes)} boxes; qualified-return order {order_id}"
        )

    async def _returning(self, row: FeedRow) -> None:
        assert row.return_order is not None
        order = self.wh.order(row.return_order)
        lines = self.inv.lines(row.return_order)
        for code, state in lines.items():
            if state == "expected" and code not in self._handed:
                await self.wh.hand_over(code)
                self._handed.add(code)
        if order.state in (OrderState.FAILED, OrderState.CANCELLED):
            self._set(row, "failed", reason=f"return order {order.id} {order.state.value}")
            return
        if order.state is not OrderState.COMPLETED:
            self._message = f"return order {order.id}: boxes on their way to the racks"
            return
        rejected = [
            b
            for b in self.inv.boxes("R*")
            if b.klass is BoxClass.REJECTED and b.order_id is None and b.barcode in lines
        ]
        if not rejected:
            self._set(row, "done")
            self._journal(f"batch {row.batch}: done, its meters stored")
            return
        with self.inv.tx():
            oid = self.wh.submit(OrderKind.REJECTED_OUTBOUND, {"boxes": len(rejected)})
            self._set(row, "rejecting", reject_order=oid)
        self._journal(f"batch {row.batch}: rejected-meter outbound order {oid}")

    def _rejecting(self, row: FeedRow) -> None:
        assert row.reject_order is not None
        order = self.wh.order(row.reject_order)
        if order.state is OrderState.COMPLETED:
            self._set(row, "done")
            self._journal(f"batch {row.batch}: done, rejects left on order {order.id}")
        elif order.state in (OrderState.FAILED, OrderState.CANCELLED):
            self._set(row, "failed", reason=f"rejected outbound order {order.id} failed")
        else:
            self._message = f"order {order.id}: rejected boxes on their way out"

    # -- storage ----------------------------------------------------------------------------
    def _open(self) -> FeedRow | None:
        row = self.inv.conn.execute(
            "SELECT batch, state, meter_type, out_order, return_order, reject_order, reason"
            f" FROM wh_line_feed WHERE state IN ({','.join('?' * len(OPEN_STATES))})"
            " ORDER BY created_at, batch LIMIT 1",
            OPEN_STATES,
        ).fetchone()
        return FeedRow(*row) if row else None

    def rows(self) -> list[FeedRow]:
        return [
            FeedRow(*r)
            for r in self.inv.conn.execute(
                "SELECT batch, state, meter_type, out_order, return_order, reject_order, reason"
                " FROM wh_line_feed ORDER BY created_at, batch"
            )
        ]

    def _set(self, row: FeedRow, state: str, reason: str = "", **orders: int) -> None:
        t = self.wh.clock()
        sets = ", ".join(f"{k}=?" for k in orders)
        with self.inv.tx() as c:
            c.execute(
                f"UPDATE wh_line_feed SET state=?, reason=?, updated_at=?{', ' + sets if sets else ''}"
                " WHERE batch=?",
                (state, reason, t, *orders.values(), row.batch),
            )
            self.inv.event(t, "line_feed", f"batch {row.batch}: {state} {reason}".strip())
        self._message = f"batch {row.batch} {state}" + (f": {reason}" if reason else "")

    def _journal(self, message: str) -> None:
        log.info("line feed: %s", message)
        self.service.journal.event("warehouse", "warehouse/feed", message)

    # -- process image (OPC UA variables) ---------------------------------------------------
    TAGS = (
        ("warehouse/feed/state", "idle, ordered, testing, returning, rejecting"),
        ("warehouse/feed/batch", "batch the warehouse feeds to the line"),
        ("warehouse/feed/message", "what the feed is waiting for"),
        ("warehouse/feed/batches_done", "batches fed, verified and returned"),
        ("warehouse/marketing/verification_tasks", "point 2: open verification tasks (JSON)"),
        (
            "warehouse/marketing/qualified_slots",
            "point 3: slot code of each qualified meter (JSON)",
        ),
        ("warehouse/marketing/batch", "batch of the results, boxing and withstand below"),
        ("warehouse/marketing/results", "point 5: verification results of the batch (JSON)"),
        ("warehouse/marketing/boxing", "point 4: boxing details of the batch (JSON)"),
        ("warehouse/marketing/withstand", "point 7: withstand-voltage results (JSON)"),
        ("warehouse/marketing/return_order", "point 6: the batch's qualified-return order"),
        ("warehouse/marketing/reject_order", "the batch's rejected-meter outbound order"),
    )

    def _define_tags(self) -> None:
        img = self.service.image
        for name, desc in self.TAGS:
            img.define(name, "", desc)

    def publish(self) -> None:
        img = self.service.image
        row = self._open()
        rows = self.rows()
        img.write("warehouse/feed/state", row.state if row else "idle")
        img.write("warehouse/feed/batch", row.batch if row else "")
        img.write("warehouse/feed/message", self._message)
        img.write("warehouse/feed/batches_done", sum(1 for r in rows if r.state == "done"))
        img.write(
            "warehouse/marketing/verification_tasks",
            json.dumps(self.marketing.fetch_verification_tasks()),
        )
        img.write(
            "warehouse/marketing/qualified_slots",
            json.dumps(self.marketing.slot_codes_for_qualified()),
        )
        last = next((r for r in reversed(rows) if r.return_order is not None), None)
        if last is None:
            return
        img.write("warehouse/marketing/batch", last.batch)
        img.write(
            "warehouse/marketing/results", json.dumps(self.marketing.batch_results(last.batch))
        )
        for kind in ("boxing", "withstand"):
            img.write(
                f"warehouse/marketing/{kind}",
                json.dumps(self.marketing.uploaded(kind, last.batch)),
            )
        img.write("warehouse/marketing/return_order", last.return_order or 0)
        img.write("warehouse/marketing/reject_order", last.reject_order or 0)
