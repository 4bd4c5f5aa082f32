"""Warehouse orders: kinds, parameters, lifecycle.

Every order is journalled on creation and on each state change. Bad
parameters are refused with an error naming the field and the allowed values,
and nothing is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.warehouse.inventory import Inventory
from controller.warehouse.rack import BoxClass, fifo_select


class OrderKind(StrEnum):
    INBOUND = "inbound"  # new meters from the supplier
    OUTBOUND_VERIFICATION = "outbound_verification"  # feeds a line batch
    QUALIFIED_RETURN = "qualified_return"  # boxes back from the line
    REJECTED_OUTBOUND = "rejected_outbound"
    DISTRIBUTION_OUTBOUND = "distribution_outbound"  # to a delivery dock, by district
    INVENTORY_COUNT = "inventory_count"
    RELOCATION = "relocation"


class OrderState(StrEnum):
    CREATED = "created"
    RELEASED = "released"
    IN_PROGRESS = "in_progress"
    HELD = "held"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL = {OrderState.COMPLETED, OrderState.CANCELLED, OrderState.FAILED}
TRANSITIONS: dict[OrderState, set[OrderState]] = {
    OrderState.CREATED: {OrderState.RELEASED, OrderState.CANCELLED},
    OrderState.RELEASED: {
        OrderState.IN_PROGRESS,
        OrderState.COMPLETED,
        OrderState.HELD,
        OrderState.CANCELLED,
        OrderState.FAILED,
    },
    OrderState.IN_PROGRESS: {OrderState.COMPLETED, OrderState.HELD, OrderState.FAILED},
    OrderState.HELD: {OrderState.IN_PROGRESS, OrderState.RELEASED, OrderState.FAILED},
}
INBOUND_KINDS = {OrderKind.INBOUND, OrderKind.QUALIFIED_RETURN}
OUTBOUND_KINDS = {
    OrderKind.OUTBOUND_VERIFICATION,
    OrderKind.REJECTED_OUTBOUND,
    OrderKind.DISTRIBUTION_OUTBOUND,
}


class OrderError(ValueError):
    """Refused order or transition; the message names the field or the states."""


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeterManifest(_P):
    address: str = Field(pattern=r"^\d{12}$", description="12-digit meter address")
    type: str = Field(min_length=1, max_length=32)
    state: Literal["new", "returned"] = "new"


class BoxManifest(_P):
    barcode: str = Field(min_length=1, max_length=16, pattern=r"^[\x21-\x7e]+$")
    meters: list[MeterManifest] = Field(min_length=1)


class InboundParams(_P):
    boxes: list[BoxManifest] = Field(min_length=1)


class ReturnedMeter(_P):
    address: str = Field(pattern=r"^\d{12}$")
    # unverified: back from the line untested (its batch was aborted), stored for a later batch
    verdict: Literal["qualified", "rejected", "unverified"]


class ReturnBoxManifest(_P):
    barcode: str = Field(min_length=1, max_length=16, pattern=r"^[\x21-\x7e]+$")
    meters: list[ReturnedMeter] = Field(min_length=1)
    verified_at: float


class ReturnParams(_P):
    batch: str = Field(min_length=1, max_length=64)
    boxes: list[ReturnBoxManifest] = Field(min_length=1)


class VerificationOutParams(_P):
    batch: str = Field(min_length=1, max_length=64)
    boxes: int = Field(ge=1, le=10_000)


class RejectedOutParams(_P):
    boxes: int = Field(ge=1, le=10_000)


class DistributionParams(_P):
    district: str = Field(min_length=1, max_length=64)
    boxes: int = Field(ge=1, le=10_000)


class CountParams(_P):
    slots: list[str] | None = None


class RelocationParams(_P):
    barcode: str = Field(min_length=1, max_length=16)
    to: str | None = None


PARAMS: dict[OrderKind, type[_P]] = {
    OrderKind.INBOUND: InboundParams,
    OrderKind.QUALIFIED_RETURN: ReturnParams,
    OrderKind.OUTBOUND_VERIFICATION: VerificationOutParams,
    OrderKind.REJECTED_OUTBOUND: RejectedOutParams,
    OrderKind.DISTRIBUTION_OUTBOUND: DistributionParams,
    OrderKind.INVENTORY_COUNT: CountParams,
    OrderKind.RELOCATION: RelocationParams,
}
OUT_CLASS = {
    OrderKind.OUTBOUND_VERIFICATION: BoxClass.UNVERIFIED,
    OrderKind.REJECTED_OUTBOUND: BoxClass.REJECTED,
    OrderKind.DISTRIBUTION_OUTBOUND: BoxClass.QUALIFIED,
}


@dataclass(slots=True)
class Order:
    id: int
    kind: OrderKind
    state: OrderState
    priority: int
    params: dict[str, Any]
    created_at: float
    updated_at: float
    reason: str

    @staticmethod
    def from_row(row: tuple[Any, ...]) -> Order:
        return Order(
            row[0], OrderKind(row[1]), OrderState(row[2]), row[3], json.loads(row[4]), *row[5:8]
        )


def _manifests(p: InboundParams | ReturnParams) -> list[BoxManifest | ReturnBoxManifest]:
    return list(p.boxes)


def _validate(kind: OrderKind, params: dict[str, Any], meters_per_box: int) -> _P:
    try:
        p = PARAMS[kind].model_validate(params)
    except ValidationError as exc:
        msgs = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"])
            msgs.append(f"{kind.value}.{loc}: {e['msg']}")
        raise OrderError("; ".join(msgs)) from None
    if isinstance(p, (InboundParams, ReturnParams)):
        seen: set[str] = set()
        for i, box in enumerate(_manifests(p)):
            if box.barcode in seen:
                raise OrderError(f"{kind.value}.boxes.{i}.barcode: duplicate {box.barcode!r}")
            seen.add(box.barcode)
            if len(box.meters) > meters_per_box:
                raise OrderError(
                    f"{kind.value}.boxes.{i}.meters: {len(box.meters)} meters, allowed 1..{meters_per_box}"
                )
        if isinstance(p, ReturnParams):
            for i, rbox in enumerate(p.boxes):
                if len({m.verdict for m in rbox.meters}) > 1:
                    raise OrderError(
                        f"{kind.value}.boxes.{i}.meters: mixed verdicts; a box holds one class "
                        "(qualified and rejected meters never share a box or a slot)"
                    )
    return p


class OrderBook:
    """Creates orders (validated, with their box lines) and moves them through states."""

    def __init__(self, inv: Inventory, meters_per_box: int = 500) -> None:
        self.inv = inv
        self.meters_per_box = meters_per_box

    def get(self, order_id: int) -> Order:
        row = self.inv.order_row(order_id)
        if row is None:
            raise OrderError(f"order_id: unknown order {order_id}")
        return Order.from_row(row)

    def open_orders(self) -> list[Order]:
        states = tuple(s.value for s in OrderState if s not in TERMINAL)
        return [Order.from_row(r) for r in self.inv.order_rows(states)]

    def create(
        self, kind: OrderKind | str, params: dict[str, Any], t: float, priority: int = 0
    ) -> int:
        try:
            kind = OrderKind(kind)
        except ValueError:
            raise OrderError(
                f"kind: unknown order kind {kind!r}; allowed {[k.value for k in OrderKind]}"
            ) from None
        if not -100 <= priority <= 100:
            raise OrderError(f"priority: {priority} outside -100..100")
        p = _validate(kind, params, self.meters_per_box)
        inv = self.inv
        with inv.tx():
            if isinstance(p, (InboundParams, ReturnParams)):
                for i, box in enumerate(_manifests(p)):
                    existing = inv.box(box.barcode)
                    if existing is not None and not existing.location.startswith(
                        ("LINE:", "DOCK:", "GONE:")
                    ):
                        raise OrderError(
                            f"{kind.value}.boxes.{i}.barcode: box {box.barcode} already in the "
                            f"warehouse at {existing.location}"
                        )
                    if inv.line_order(box.barcode, ("expected",)) is not None:
                        raise OrderError(
                            f"{kind.value}.boxes.{i}.barcode: box {box.barcode} already expected by another order"
                        )
            selected: list[str] = []
            if kind in OUT_CLASS:
                klass = OUT_CLASS[kind]
                n = int(getattr(p, "boxes"))  # noqa: B009 - all outbound params carry `boxes: int`
                chosen = fifo_select(inv.boxes("R*"), klass, n)
                if len(chosen) < n:
                    raise OrderError(
                        f"{kind.value}.boxes: {n} requested, only {len(chosen)} {klass.value} "
                        f"boxes available (allowed 1..{len(chosen)})"
                    )
                selected = [b.barcode for b in chosen]
            if isinstance(p, RelocationParams):
                b = inv.box(p.barcode)
                if b is None or not b.location.startswith("R"):
                    raise OrderError(f"relocation.barcode: box {p.barcode} is not in a rack slot")
                if b.order_id is not None:
                    raise OrderError(
                        f"relocation.barcode: box {p.barcode} is committed to order {b.order_id}"
                    )
            order_id = inv.insert_order(
                kind.value, OrderState.CREATED.value, priority, p.model_dump(), t
            )
            if isinstance(p, (InboundParams, ReturnParams)):
                for box in p.boxes:
                    inv.set_line(order_id, box.barcode, "expected")
            for code in selected:
                inv.set_line(order_id, code, "allocated")
                inv.set_box_order(code, order_id)
            if isinstance(p, RelocationParams):
                inv.set_line(order_id, p.barcode, "allocated")
                inv.set_box_order(p.barcode, order_id)
        return order_id

    def transition(self, order_id: int, new: OrderState, t: float, reason: str = "") -> Order:
        order = self.get(order_id)
        if order.state is new:
            return order
        if new not in TRANSITIONS.get(order.state, set()):
            allowed = sorted(s.value for s in TRANSITIONS.get(order.state, set()))
            raise OrderError(
                f"order {order_id}: cannot go from {order.state.value} to {new.value}; allowed {allowed}"
            )
        with self.inv.tx():
            self.inv.set_order_state(order_id, new.value, t, reason)
            if new in (OrderState.CANCELLED, OrderState.FAILED):
                for code in self.inv.lines(order_id):
                    b = self.inv.box(code)
                    if b is not None and b.order_id == order_id:
                        self.inv.set_box_order(code, None)
        order.state = new
        return order
