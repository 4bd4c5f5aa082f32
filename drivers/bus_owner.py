"""`BusOwner`: the one task that owns a physical wire.

Exactly one per RS-485 port or TCP link; meters and devices are its logical
children. It never has two transactions in flight. Work comes from priority
lanes — control > operator read > event read > cyclic poll:

- cyclic polls, operator and event reads are jobs in the Rust `PollScheduler`
  (EDF within lanes, period stretching when the bus is overloaded); the owner
  asks it for the next job and reports outcome and duration back;
- control commands bypass the scheduler into a short bounded queue that is
  drained before every transaction, also *between* the transactions of a
  multi-DI poll job: a trip issued during a busy poll cycle is the next frame
  on the wire, not the next job.

Failures: a device that does not answer after its retries is quarantined
(see `drivers.quarantine`); a closed port is a fault — tags go Bad with the
reason and the owner reopens the link with back-off — never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller import _core_rs as core
from controller.bus_stats import BusSnapshot
from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason
from controller.task_stop import stop_task
from drivers.config import LinkConfig, Quarantine
from drivers.errors import (
    BusTimeout,
    CommandRejected,
    FrameCorrupt,
    TransactionError,
    TransportClosed,
)
from drivers.quarantine import QuarantineState

T = TypeVar("T")
log = logging.getLogger(__name__)

LANES = {"control": 0, "operator": 1, "event": 2, "cyclic": 3}
# Control commands waiting for the wire; more than this means something upstream is wrong.
MAX_CONTROL_QUEUE = 64
# Operator/event one-shot jobs waiting in the scheduler.
MAX_ONESHOT_JOBS = 256
# One-shot job ids start here; periodic ids are small integers.
ONESHOT_ID_BASE = 1 << 30
# Recent requests kept for diagnostics (and for tests to see wire order).
WIRE_LOG_LENGTH = 256


@dataclass(slots=True)
class PeriodicJob:
    job_id: int
    device: str
    group: str
    period_s: float
    lane: int
    expected_s: float


@dataclass(slots=True)
class OneShotJob:
    job_id: int
    device: str | None
    action: Callable[[], Awaitable[Any]]
    future: asyncio.Future[Any]
    lane: int


@dataclass(slots=True)
class WireRecord:
    sent: float  # loop time the request was written
    device: str
    function: int
    outcome: str = "pending"


@dataclass
class _ControlItem:
    action: Callable[[], Awaitable[Any]]
    future: asyncio.Future[Any]
    submitted: float = field(default=0.0)


class BusOwner(ABC):
    protocol: str = ""

    def __init__(
        self,
        name: str,
        link: LinkConfig,
        image: ProcessImage,
        *,
        quarantine: Quarantine,
        max_utilisation: float = 0.95,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.link_config = link
        self.image = image
        self.clock = clock
        self.wall = wall
        self.scheduler = core.PollScheduler(max_utilisation)
        self.quarantine_policy = quarantine
        self._periodic: dict[int, PeriodicJob] = {}
        self._jobs_by_device: dict[str, list[int]] = {}
        self._oneshots: dict[int, OneShotJob] = {}
        self._next_oneshot = ONESHOT_ID_BASE
        self._controls: deque[_ControlItem] = deque()
        self._in_control = False
        self._quarantine: dict[str, QuarantineState] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.connected = False
        self.transactions: Counter[str] = Counter()
        self.busy_s = 0.0
        self.started_at: float | None = None
        self.last_error = ""
        self.wire_log: deque[WireRecord] = deque(maxlen=WIRE_LOG_LENGTH)

    # -- protocol hooks --------------------------------------------------------
    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _poll(self, job: PeriodicJob, probe: bool) -> None:
        """Run one periodic job; raise TransactionError when the device did not answer."""

    @abstractmethod
    def _device_prefix(self, device: str) -> str: ...

    @abstractmethod
    def devices(self) -> list[str]: ...

    @abstractmethod
    def _device_answered(self, device: str) -> None:
        """The device answered: mark it online."""

    def _counters(self) -> tuple[int, int]:
        """(discarded bytes, checksum errors) of the link's deframer."""
        return 0, 0

    # -- jobs -------------------------------------------------------------------
    def add_periodic(
        self, device: str, group: str, period_s: float, lane: int, expected_s: float
    ) -> int:
        job_id = len(self._periodic) + 1
        self._periodic[job_id] = PeriodicJob(job_id, device, group, period_s, lane, expected_s)
        self._jobs_by_device.setdefault(device, []).append(job_id)
        self._quarantine.setdefault(device, QuarantineState(self.quarantine_policy))
        # stagger first releases over the first period so a restart does not
        # put every meter's every group on the wire at t0
        n = len(self._periodic)
        first = self.clock() + (n * 0.618034 % 1.0) * min(period_s, 5.0)
        self.scheduler.add_job(job_id, period_s, lane, first, expected_s)
        return job_id

    async def _submit_oneshot(
        self, lane: int, device: str | None, action: Callable[[], Awaitable[T]]
    ) -> T:
        if self._stopping:
            raise CommandRejected(f"bus {self.name}: stopped")
        if len(self._oneshots) >= MAX_ONESHOT_JOBS:
            raise CommandRejected(
                f"bus {self.name}: {MAX_ONESHOT_JOBS} one-shot jobs already queued"
            )
        job_id = self._next_oneshot
        self._next_oneshot += 1
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._oneshots[job_id] = OneShotJob(job_id, device, action, future, lane)
        self.scheduler.submit(job_id, lane, self.clock())
        self._wake.set()
        return await future

    async def _submit_control(self, action: Callable[[], Awaitable[T]]) -> T:
        """Queue a control action and wait for it; it goes out before the next transaction."""
        if self._stopping:
            raise CommandRejected(f"bus {self.name}: stopped")
        return await self.queue_control(action)

    def queue_control(self, action: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """Queue a control action and return at once (a scan program never awaits the
        wire): the future ends with its result, or with CommandRejected when the bus
        is stopped or its control queue is full."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._stopping:
            future.set_exception(CommandRejected(f"bus {self.name}: stopped"))
        elif len(self._controls) >= MAX_CONTROL_QUEUE:
            future.set_exception(
                CommandRejected(f"bus {self.name}: control queue full ({MAX_CONTROL_QUEUE})")
            )
        else:
            self._controls.append(_ControlItem(action, future, self.clock()))
            self._wake.set()
        return future

    async def _run_controls(self) -> None:
        """Drain the control lane. Called between every two transactions."""
        if self._in_control or not self._controls:
            return
        self._in_control = True
        try:
            while self._controls:
                item = self._controls.popleft()
                if item.future.done():
                    continue
                try:
                    result = await item.action()
                except TransportClosed as exc:
                    item.future.set_exception(exc)
                    raise
                except Exception as exc:
                    item.future.set_exception(exc)
                else:
                    item.future.set_result(result)
        finally:
            self._in_control = False

    # -- quarantine ------------------------------------------------------------------
    def quarantined(self, device: str) -> bool:
        q = self._quarantine.get(device)
        return q is not None and q.suspect

    def _enter_quarantine(self, device: str, now: float, exc: TransactionError) -> None:
        q = self._quarantine[device]
        # The first failure says what went wrong on the wire; a device still
        # silent after its back-off probe is out of service until it answers.
        if q.suspect:
            code = Reason.QUARANTINED
        elif isinstance(exc, FrameCorrupt):
            code = Reason.UNDECODABLE
        elif isinstance(exc, BusTimeout):
            code = Reason.NO_ANSWER
        else:
            code = Reason.NONE
        reason = str(exc)
        until = q.fail(now, reason)
        # While quarantined the device really is polled once per back-off, so
        # its jobs are re-registered with that period: the scheduler's demand
        # estimate (and the stretch it applies to everyone else) then reflects
        # the probe, not the timeouts of a meter nobody is asking any more.
        probe_s = self.link_config.response_timeout_s
        for job_id in self._jobs_by_device.get(device, []):
            job = self._periodic[job_id]
            self.scheduler.remove_job(job_id)
            self.scheduler.add_job(job_id, max(job.period_s, q.backoff_s), job.lane, until, probe_s)
        self.image.invalidate(
            self._device_prefix(device),
            f"no answer ({reason}); retrying in {q.backoff_s:.0f} s",
            code=code,
        )
        online = self._device_prefix(device) + "online"
        if online in self.image:
            self.image.write(online, False, Quality.GOOD, "", self.wall())

    def _recover(self, device: str, running_job: int) -> None:
        """Back to the configured periods; the job that just ran re-registers when it completes."""
        q = self._quarantine.get(device)
        if q is None or not q.recover():
            return
        now = self.clock()
        for job_id in self._jobs_by_device.get(device, []):
            job = self._periodic[job_id]
            self.scheduler.remove_job(job_id)
            first = now + (job.period_s if job_id == running_job else 0.0)
            self.scheduler.add_job(job_id, job.period_s, job.lane, first, job.expected_s)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the owner task; does not wait for the link or the first readings."""
        if self._task is None:
            self._stopping = False
            self.started_at = self.clock()
            self._task = asyncio.create_task(self._run(), name=f"bus-{self.name}")

    async def stop(self) -> None:
        """Abort the in-flight transaction, fail queued work, close the port."""
        self._stopping = True
        task, self._task = self._task, None
        await stop_task(task)
        reason = CommandRejected(f"bus {self.name}: stopped")
        for item in self._controls:
            if not item.future.done():
                item.future.set_exception(reason)
        self._controls.clear()
        for job in self._oneshots.values():
            if not job.future.done():
                job.future.set_exception(reason)
        self._oneshots.clear()
        with contextlib.suppress(Exception):
            await self._close()
        self.connected = False

    async def _run(self) -> None:
        backoff = self.link_config.reconnect_initial_s
        while not self._stopping:
            if not self.connected:
                try:
                    await self._open()
                except TransportClosed as exc:
                    self._link_down(str(exc))
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.link_config.reconnect_max_s)
                    continue
                self.connected = True
                self.last_error = ""
                backoff = self.link_config.reconnect_initial_s
            try:
                await self._step()
            except TransportClosed as exc:
                log.warning("bus %s: %s", self.name, exc)
                self.transactions["io_error"] += 1
                with contextlib.suppress(Exception):
                    await self._close()
                self._link_down(str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # a bug or an unexpected library error must not kill the bus:
                # record it, drop the link state and start over after a pause
                log.exception("bus %s: unexpected error", self.name)
                self.transactions["io_error"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    await self._close()
                self._link_down(self.last_error)
                await self._sleep(self.link_config.reconnect_initial_s)

    def _link_down(self, reason: str) -> None:
        self.connected = False
        self.last_error = reason
        self.image.invalidate(f"buses/{self.name}/", f"bus down: {reason}", code=Reason.LINK_DOWN)
        for item in self._controls:
            if not item.future.done():
                item.future.set_exception(TransportClosed(reason))
        self._controls.clear()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early for new work."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._wake.wait()

    async def _step(self) -> None:
        await self._run_controls()
        now = self.clock()
        taken = self.scheduler.next_job(now)
        if taken is None:
            nxt = self.scheduler.next_release()
            await self._sleep(1.0 if nxt is None else min(nxt - now, 1.0))
            return
        job_id, _lateness = taken
        oneshot = self._oneshots.pop(job_id, None)
        if oneshot is not None:
            await self._run_oneshot(oneshot)
            return
        job = self._periodic.get(job_id)
        if job is None:
            return
        q = self._quarantine[job.device]
        if q.active(now):
            # released before the device was quarantined: skip, do not touch the wire
            self.scheduler.complete(job_id, now, 0.0, False)
            self.scheduler.postpone(job_id, q.until)
            return
        t0 = self.clock()
        ok = False
        try:
            await self._poll(job, probe=q.suspect)
            ok = True
        except TransactionError as exc:
            end = self.clock()
            self.scheduler.complete(job_id, end, end - t0, False)
            self._enter_quarantine(job.device, end, exc)
            return
        except TransportClosed:
            end = self.clock()
            self.scheduler.complete(job_id, end, end - t0, False)
            raise
        end = self.clock()
        self.scheduler.complete(job_id, end, end - t0, ok)
        if q.suspect:
            self._recover(job.device, job_id)
        self._device_answered(job.device)

    async def _run_oneshot(self, job: OneShotJob) -> None:
        t0 = self.clock()
        ok = False
        try:
            result = await job.action()
            ok = True
        except TransportClosed as exc:
            if not job.future.done():
                job.future.set_exception(exc)
            self.scheduler.complete(job.job_id, self.clock(), self.clock() - t0, False)
            raise
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(exc)
        else:
            if not job.future.done():
                job.future.set_result(result)
        self.scheduler.complete(job.job_id, self.clock(), self.clock() - t0, ok)

    # -- figures ----------------------------------------------------------------------
    def snapshot(self) -> BusSnapshot:
        stats = self.scheduler.bus_stats()
        discarded, checksum = self._counters()
        now = self.clock()
        return BusSnapshot(
            name=self.name,
            protocol=self.protocol,
            connected=self.connected,
            meters_total=len(self.devices()),
            meters_quarantined=sum(1 for q in self._quarantine.values() if q.suspect),
            transactions=dict(self.transactions),
            busy_s=self.busy_s,
            uptime_s=0.0 if self.started_at is None else now - self.started_at,
            poll_lateness_max_s=stats.lateness_max_s,
            poll_lateness_mean_s=stats.lateness_mean_s,
            discarded_bytes=discarded,
            checksum_errors=checksum,
        )

    def write_tag(self, name: str, value: Any, source_time: float) -> None:
        self.image.write(name, value, Quality.GOOD, "", source_time)
