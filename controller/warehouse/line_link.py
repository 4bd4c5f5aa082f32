"""The warehouse's side of the link to the verification line.

Two directions, plain data only:

- The line asks for a batch (``WarehousePort.request_batch``): an
  outbound-for-verification order is created and the meter list of the batch is
  returned at once (boxes are chosen FIFO by arrival); when the last box of the
  batch has been discharged at the line feed the warehouse calls
  ``LineLink.batch_ready`` with the same list.
- The line returns boxes of verified meters (``WarehousePort.return_boxes``):
  a qualified-return order expecting those barcodes; qualified and rejected
  meters come back in separate boxes (a box holds one class), and rejected boxes
  later leave on a rejected-meter outbound order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class MeterRef:
    address: str
    type: str
    box: str
    slot: str  # where the box was stored when the batch was ordered


@dataclass(frozen=True, slots=True)
class BatchFeed:
    batch: str
    order_id: int
    boxes: tuple[str, ...]
    meters: tuple[MeterRef, ...]


@dataclass(frozen=True, slots=True)
class VerifiedMeter:
    address: str
    verdict: Literal["qualified", "rejected", "unverified"]  # unverified: batch aborted first


@dataclass(frozen=True, slots=True)
class ReturnBox:
    barcode: str
    verified_at: float
    meters: tuple[VerifiedMeter, ...]


class LineLink(Protocol):
    """Implemented by the verification line; called by the warehouse."""

    def batch_ready(self, feed: BatchFeed) -> None: ...


class WarehousePort(Protocol):
    """Implemented by the warehouse (``service.Warehouse``); called by the line."""

    def request_batch(self, batch: str, boxes: int, priority: int = 0) -> BatchFeed: ...

    def return_boxes(self, batch: str, boxes: list[ReturnBox], priority: int = 0) -> int: ...
