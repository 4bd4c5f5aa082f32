"""The nine interface points to the utility's marketing system, as plain data.

One method per point; arguments and results are dicts, lists, strings and
numbers only, so the OPC UA layer can expose each as a method (or export the
same data). Bad arguments raise :class:`MarketingError` naming the field, and
nothing is written.

Boxing details and withstand-voltage results are journalled as events (kind
``boxing`` / ``withstand``, JSON detail) so they survive a restart and are
auditable; verification results update the meters' states.
"""

from __future__ import annotations

import json
from typing import Any

from controller.warehouse.line_link import ReturnBox, VerifiedMeter
from controller.warehouse.orders import OrderError, OrderKind, OrderState
from controller.warehouse.service import Warehouse


class MarketingError(ValueError):
    pass


def _need(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise MarketingError(f"{where}.{key}: required")
    if not isinstance(obj[key], typ):
        raise MarketingError(f"{where}.{key}: expected {typ}, got {type(obj[key]).__name__}")
    return obj[key]


class MarketingInterface:
    def __init__(self, wh: Warehouse) -> None:
        self.wh = wh

    # 1
    def query_meter(self, address: str) -> dict[str, Any]:
        """Meter parameters: type, state, box, where the box is, verification data."""
        m = self.wh.inv.meter(address)
        if m is None:
            raise MarketingError(f"address: unknown meter {address!r}")
        box = self.wh.inv.box(m.box)
        return {
            "address": m.address,
            "type": m.type,
            "state": m.state,
            "box": m.box,
            "location": box.location if box else None,
            "verified_at": m.verified_at,
            "batch": m.batch,
            "district": m.district,
        }

    # 2
    def fetch_verification_tasks(self) -> list[dict[str, Any]]:
        """Open outbound-for-verification orders with their meters."""
        out = []
        for order in self.wh.book.open_orders():
            if order.kind is not OrderKind.OUTBOUND_VERIFICATION:
                continue
            feed = self.wh.batch_feed(order.id)
            out.append(
                {
                    "order_id": order.id,
                    "batch": feed.batch,
                    "state": order.state.value,
                    "boxes": list(feed.boxes),
                    "meters": [m.address for m in feed.meters],
                }
            )
        return out

    # 3
    def slot_codes_for_qualified(self, addresses: list[str] | None = None) -> dict[str, str]:
        """Slot code of each qualified meter in stock (all, or the given addresses)."""
        result: dict[str, str] = {}
        wanted = set(addresses) if addresses is not None else None
        for box in self.wh.inv.boxes("R*"):
            for m in self.wh.inv.meters(box.barcode):
                if m.state == "qualified" and (wanted is None or m.address in wanted):
                    result[m.address] = box.location
        if wanted is not None and (missing := sorted(wanted - set(result))):
            raise MarketingError(f"addresses: not qualified meters in stock: {missing[:10]}")
        return result

    # 4
    def upload_boxing(self, batch: str, boxes: list[dict[str, Any]]) -> int:
        """Which verified meters went into which box: [{barcode, meters: [address]}]."""
        if not isinstance(boxes, list) or not boxes:
            raise MarketingError("boxes: a non-empty list is required")
        for i, b in enumerate(boxes):
            _need(b, "barcode", str, f"boxes.{i}")
            meters = _need(b, "meters", list, f"boxes.{i}")
            for a in meters:
                if self.wh.inv.meter(a) is None:
                    raise MarketingError(f"boxes.{i}.meters: unknown meter {a!r}")
        self.wh.inv.event(self.wh.clock(), "boxing", json.dumps({"batch": batch, "boxes": boxes}))
        return len(boxes)

    # 5
    def upload_results(self, batch: str, results: list[dict[str, Any]]) -> int:
        """Verification verdicts: [{address, verdict: qualified|rejected, verified_at}]."""
        if not isinstance(results, list) or not results:
            raise MarketingError("results: a non-empty list is required")
        for i, r in enumerate(results):
            addr = _need(r, "address", str, f"results.{i}")
            verdict = _need(r, "verdict", str, f"results.{i}")
            _need(r, "verified_at", (int, float), f"results.{i}")
            if verdict not in ("qualified", "rejected"):
                raise MarketingError(
                    f"results.{i}.verdict: {verdict!r}; allowed qualified, rejected"
                )
            if self.wh.inv.meter(addr) is None:
                raise MarketingError(f"results.{i}.address: unknown meter {addr!r}")
        with self.wh.inv.tx():
            for r in results:
                self.wh.inv.update_meters(
                    [r["address"]],
                    state=r["verdict"],
                    verified_at=float(r["verified_at"]),
                    batch=batch,
                )
            self.wh.inv.event(self.wh.clock(), "results", f"{batch}: {len(results)} meters")
        return len(results)

    # 6
    def qualified_return(self, batch: str, priority: int = 0) -> int:
        """Create the return order for the batch's boxes from the uploaded boxing and results."""
        boxing = None
        for _t, _k, _o, _tk, _b, detail in self.wh.inv.events("boxing"):
            d = json.loads(detail)
            if d["batch"] == batch:
                boxing = d["boxes"]
        if boxing is None:
            raise MarketingError(f"batch: no boxing details uploaded for {batch!r}")
        boxes = []
        for i, b in enumerate(boxing):
            meters = []
            stamps = []
            for a in b["meters"]:
                m = self.wh.inv.meter(a)
                if m is None or m.state not in ("qualified", "rejected"):
                    raise MarketingError(f"boxes.{i}.meters: no verification result for {a!r}")
                meters.append(VerifiedMeter(a, m.state))  # type: ignore[arg-type]
                stamps.append(m.verified_at or 0.0)
            boxes.append(ReturnBox(b["barcode"], max(stamps), tuple(meters)))
        try:
            return self.wh.return_boxes(batch, boxes, priority)
        except OrderError as exc:
            raise MarketingError(str(exc)) from None

    # 7
    def upload_withstand_voltage(self, batch: str, results: list[dict[str, Any]]) -> int:
        """Withstand-voltage results: [{address, voltage_kv, duration_s, passed}]."""
        if not isinstance(results, list) or not results:
            raise MarketingError("results: a non-empty list is required")
        for i, r in enumerate(results):
            addr = _need(r, "address", str, f"results.{i}")
            kv = _need(r, "voltage_kv", (int, float), f"results.{i}")
            _need(r, "duration_s", (int, float), f"results.{i}")
            _need(r, "passed", bool, f"results.{i}")
            if not 0 < kv <= 10:
                raise MarketingError(f"results.{i}.voltage_kv: {kv} outside (0, 10]")
            if self.wh.inv.meter(addr) is None:
                raise MarketingError(f"results.{i}.address: unknown meter {addr!r}")
        self.wh.inv.event(
            self.wh.clock(), "withstand", json.dumps({"batch": batch, "results": results})
        )
        return len(results)

    # 8
    def outbound_for_verification(
        self, batch: str, boxes: int, priority: int = 0
    ) -> dict[str, Any]:
        try:
            feed = self.wh.request_batch(batch, boxes, priority)
        except OrderError as exc:
            raise MarketingError(str(exc)) from None
        return {
            "order_id": feed.order_id,
            "batch": feed.batch,
            "boxes": list(feed.boxes),
            "meters": [
                {"address": m.address, "type": m.type, "box": m.box, "slot": m.slot}
                for m in feed.meters
            ],
        }

    # 9
    def distribution_outbound(self, district: str, boxes: int, priority: int = 0) -> dict[str, Any]:
        try:
            order_id = self.wh.submit(
                OrderKind.DISTRIBUTION_OUTBOUND, {"district": district, "boxes": boxes}, priority
            )
        except OrderError as exc:
            raise MarketingError(str(exc)) from None
        codes = list(self.wh.inv.lines(order_id))
        return {
            "order_id": order_id,
            "district": district,
            "boxes": codes,
            "meters": [m.address for c in codes for m in self.wh.inv.meters(c)],
        }

    # -- the same data as one export (``gridctl inventory marketing``) -------------------------
    def uploaded(self, kind: str, batch: str) -> list[dict[str, Any]]:
        """The last ``boxing`` or ``withstand`` upload recorded for ``batch``."""
        found: list[dict[str, Any]] = []
        for _t, _k, _o, _tk, _b, detail in self.wh.inv.events(kind):
            d = json.loads(detail)
            if d.get("batch") == batch:
                found = list(d.get("boxes" if kind == "boxing" else "results", []))
        return found

    def batch_results(self, batch: str) -> list[dict[str, Any]]:
        """The verification results uploaded for ``batch`` (the meters' recorded verdicts)."""
        return [
            {"address": m.address, "verdict": m.state, "verified_at": m.verified_at}
            for m in self.wh.inv.meters()
            if m.batch == batch and m.state in ("qualified", "rejected")
        ]

    def export(self, batch: str | None = None) -> dict[str, Any]:
        """All nine interface points as one document, per batch where the point is per batch."""
        orders = [self.wh.book.get(int(r[0])) for r in self.wh.inv.order_rows()]
        batches = sorted(
            {str(o.params["batch"]) for o in orders if "batch" in o.params}
            if batch is None
            else {batch}
        )

        def summary(kind: OrderKind) -> list[dict[str, Any]]:
            return [
                {
                    "order_id": o.id,
                    "state": o.state.value,
                    **{k: v for k, v in o.params.items() if k in ("batch", "district")},
                    "boxes": list(self.wh.inv.lines(o.id)),
                }
                for o in orders
                if o.kind is kind and (batch is None or o.params.get("batch") in (None, batch))
            ]

        return {
            "meters": [self.query_meter(m.address) for m in self.wh.inv.meters()],  # 1
            "verification_tasks": self.fetch_verification_tasks(),  # 2
            "qualified_slots": self.slot_codes_for_qualified(),  # 3
            "batches": {
                b: {
                    "boxing": self.uploaded("boxing", b),  # 4
                    "results": self.batch_results(b),  # 5
                    "withstand": self.uploaded("withstand", b),  # 7
                }
                for b in batches
            },
            "qualified_return_orders": summary(OrderKind.QUALIFIED_RETURN),  # 6
            "outbound_verification_orders": summary(OrderKind.OUTBOUND_VERIFICATION),  # 8
            "distribution_orders": summary(OrderKind.DISTRIBUTION_OUTBOUND),  # 9
            "rejected_outbound_orders": summary(OrderKind.REJECTED_OUTBOUND),
        }

    def order_state(self, order_id: int) -> str:
        try:
            return self.wh.order(order_id).state.value
        except OrderError as exc:
            raise MarketingError(str(exc)) from None


__all__ = ["MarketingError", "MarketingInterface", "OrderState"]
