"""The process image: the single source of truth between drivers and logic.

Drivers write readings here; control logic reads from here and never talks to
a wire; publishers (OPC UA, metrics, journal, HMI) subscribe to changes
through bounded queues, so a slow publisher can never stall a writer.

Tag names are slash paths mirroring the plant, e.g.
``buses/bus1/meters/000000000161/voltage_a``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic, NamedTuple, TypeVar

from controller.quality_reason import Reason


class Quality(IntEnum):
    """OPC UA-style quality; the reason code (and text) say why a value is not Good."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


class TagValue(NamedTuple):
    """One value of a tag, immutable: queues and readers share it.

    A NamedTuple, not a frozen dataclass: every image write makes one, and a
    frozen dataclass's ``__init__`` (``object.__setattr__`` per field) costs
    2.5× as much.
    """

    value: Any
    quality: Quality
    reason: str
    source_time: float  # epoch seconds at the device (or when the driver saw it)
    server_time: float  # epoch seconds when the image was written
    # Last, with a default, so a feed row is the fields in order and old
    # positional constructions stay valid; clients get their StatusCode from it.
    code: Reason = Reason.NONE


@dataclass(slots=True)
class Tag:
    name: str
    unit: str
    description: str
    current: TagValue


class TagError(KeyError):
    """Unknown tag or conflicting definition; the message names the tag."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "tag error"


Change = TypeVar("Change")
TagChange = tuple[Tag, TagValue]


class ChangeQueue(Generic[Change]):
    """Bounded queue of tag changes for one publisher.

    Overflow policy: drop the oldest change and count it. Publishers that need
    the latest state can always re-read the image; what a drop loses is only
    an intermediate value, never the current one.

    The image queues ``(Tag, TagValue)`` pairs; the OPC UA server process's
    mirror queues the feed's rows as they arrive (see opcua_server.process).

    A consumer may also :meth:`mark` a point in the stream: something that must
    reach its readers after every change queued so far (a command confirmed
    after the relay state that confirms it), never before.
    """

    def __init__(self, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"{name}: queue maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0
        self.taken = 0  # changes handed out by drain
        self._items: deque[Change] = deque()
        # (changes queued before it, counted since the start; payload), oldest first
        self._marks: deque[tuple[int, Any]] = deque()
        self._event = asyncio.Event()

    def put(self, tag: Tag, value: TagValue) -> None:
        if len(self._items) >= self.maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append((tag, value))  # type: ignore[arg-type]
        self._event.set()

    def put_many(self, changes: list[Change]) -> None:
        """Queue changes in order; the oldest beyond ``maxsize`` are dropped (counted)."""
        if not changes:
            return
        items = self._items
        items.extend(changes)
        over = len(items) - self.maxsize
        if over > 0:
            for _ in range(over):
                items.popleft()
            self.dropped += over
        self._event.set()

    def __len__(self) -> int:
        return len(self._items)

    def mark(self, payload: Any) -> None:
        """Queue ``payload`` behind every change queued so far (see :meth:`due_marks`)."""
        self._marks.append((self.taken + self.dropped + len(self._items), payload))
        self._event.set()

    def due_marks(self) -> list[Any]:
        """The marks whose earlier changes have all been drained (or dropped), in order."""
        marks = self._marks
        if not marks:
            return []
        done = self.taken + self.dropped
        out = []
        while marks and marks[0][0] <= done:
            out.append(marks.popleft()[1])
        return out

    def drain(self, limit: int | None = None) -> list[Change]:
        """Take up to ``limit`` queued changes (all when None) without waiting."""
        items = self._items
        if limit is None or limit >= len(items):
            out = list(items)
            items.clear()
        else:
            out = [items.popleft() for _ in range(limit)]
        self.taken += len(out)
        if not items:
            self._event.clear()
        return out

    async def get_batch(self, limit: int | None = None) -> list[Change]:
        """Wait until something is queued (or marked), then drain; [] for a mark alone."""
        while not self._items and not self._marks:
            self._event.clear()
            await self._event.wait()
        return self.drain(limit)


class ProcessImage:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tags: dict[str, Tag] = {}
        self._subscribers: list[ChangeQueue[TagChange]] = []
        self.writes = 0

    # -- definition ---------------------------------------------------------
    def define(self, name: str, unit: str = "", description: str = "", initial: Any = None) -> Tag:
        """Create a tag (Bad, not yet polled, until its first write); idempotent for equal units."""
        tag = self._tags.get(name)
        if tag is not None:
            if tag.unit != unit:
                raise TagError(f"tag {name!r} already defined with unit {tag.unit!r}, not {unit!r}")
            return tag
        now = self._clock()
        tag = Tag(
            name,
            unit,
            description,
            TagValue(initial, Quality.BAD, "not yet read", now, now, Reason.NOT_YET_POLLED),
        )
        self._tags[name] = tag
        return tag

    def __contains__(self, name: object) -> bool:
        return name in self._tags

    def __len__(self) -> int:
        return len(self._tags)

    def tag(self, name: str) -> Tag:
        try:
            return self._tags[name]
        except KeyError:
            raise TagError(f"unknown tag {name!r}") from None

    def tags(self, prefix: str = "") -> Iterator[Tag]:
        if not prefix:
            yield from self._tags.values()
            return
        for name, tag in self._tags.items():
            if name.startswith(prefix):
                yield tag

    # -- values -------------------------------------------------------------
    def get(self, name: str) -> TagValue:
        return self.tag(name).current

    def value(self, name: str) -> Any:
        """The value if Good, else None: logic must not act on a value it cannot trust."""
        current = self.tag(name).current
        return current.value if current.quality is Quality.GOOD else None

    def write(
        self,
        name: str,
        value: Any,
        quality: Quality = Quality.GOOD,
        reason: str = "",
        source_time: float | None = None,
        code: Reason = Reason.NONE,
    ) -> bool:
        """Write a value; returns True when value or quality changed (and notifies).

        ``code`` says why a non-Good value is not Good (``reason`` says it to people)."""
        tag = self._tags.get(name)
        if tag is None:
            raise TagError(f"unknown tag {name!r}")
        old = tag.current
        now = self._clock()
        new = TagValue(
            value, quality, reason, now if source_time is None else source_time, now, code
        )
        tag.current = new
        self.writes += 1
        if (
            old.value == value
            and old.quality is quality
            and old.reason == reason
            and old.code == code
        ):
            return False
        for queue in self._subscribers:
            queue.put(tag, new)
        return True

    def invalidate(
        self, prefix: str, reason: str, quality: Quality = Quality.BAD, code: Reason = Reason.NONE
    ) -> int:
        """Mark every tag under ``prefix`` Bad (keeping the last value); returns how many changed."""
        changed = 0
        for tag in list(self.tags(prefix)):
            cur = tag.current
            if cur.quality is not quality or cur.reason != reason or cur.code != code:
                changed += self.write(tag.name, cur.value, quality, reason, cur.source_time, code)
        return changed

    # -- publishers -----------------------------------------------------------
    def subscribe(self, name: str, maxsize: int = 10_000) -> ChangeQueue[TagChange]:
        queue: ChangeQueue[TagChange] = ChangeQueue(name, maxsize)
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: ChangeQueue[Any]) -> None:
        self._subscribers.remove(queue)

    @property
    def subscribers(self) -> tuple[ChangeQueue[TagChange], ...]:
        return tuple(self._subscribers)
