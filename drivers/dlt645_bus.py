"""A DL/T 645 bus: the wire transaction, meter polling into the process image, commands."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controller import _core_rs as core
from controller.process_image import ProcessImage, Quality
from controller.quality_reason import Reason
from drivers.block_fallback import (
    BLOCK_SINGLES,
    Refusals,
    load_refusals,
    meter_items,
    record_refusal,
)
from drivers.bus_owner import LANES, BusOwner, PeriodicJob, WireRecord
from drivers.config import Dlt645BusConfig, MeterConfig, PollGroup, PollItem
from drivers.dlt645_client import Dlt645Client
from drivers.errors import ERR_NO_DATA, BusTimeout, FrameCorrupt, MeterException
from drivers.esam import Esam, EsamExchange, PlaintextAdapter
from drivers.quantities import (
    SECONDARY_SUFFIX,
    STATUS3_FLAGS,
    SW3_KEEP_POWER,
    SW3_PRE_TRIP_ALARM,
    SW3_RELAY_COMMANDED_OPEN,
    SW3_RELAY_OPEN,
    normalise_di,
    quantity_for,
    scales_with_ratio,
    transformer_factor,
)
from drivers.site_time import (
    BROADCAST_SYNC_MAX_S,
    MIDNIGHT_GUARD_S,
    from_wall,
    host_zone,
    seconds_to_midnight,
    to_wall,
)
from drivers.transport import Link, open_link

if TYPE_CHECKING:
    from controller.journal import Journal

log = logging.getLogger(__name__)

# Longest reply the standard allows: 12 header/trailer bytes + 255 data + 4 preamble.
MAX_REPLY_BYTES = 271
# DL/T 645 broadcast address (time sync, freeze): no meter answers it
BROADCAST_ADDRESS = "999999999999"
# 68 A0..A5 68 C L ... CS 16
FRAME_OVERHEAD = 12
DI_BYTES = 4


def read_request_bytes(preamble: int) -> int:
    """Bytes on the wire for a 0x11 read of one DI."""
    return FRAME_OVERHEAD + DI_BYTES + preamble


def read_reply_bytes(item: PollItem) -> int:
    """Bytes of the normal reply to a read of ``item`` (meters' own FE preamble not counted)."""
    if item.format is not None:
        value = item.format.length * item.format.count
    else:
        info = core.di_info(item.di)
        value = info.length * info.count if info is not None else 4
    return FRAME_OVERHEAD + DI_BYTES + value


# date and time in one reply (YYMMDDWWhhmmss): two reads (04000101, then
# 04000102) straddling midnight pair today's date with tomorrow's 00:00:xx
CLOCK_DI = "0400010C"
CLOCK_ITEMS = (PollItem(di=CLOCK_DI),)
# a clock write needs the meter's level-04 password (DL/T 645-2007, 0x14)
CLOCK_WRITE_PASSWORD_LEVEL = 4
SET_CLOCK_KIND = "set_clock"
# DL/T 645-2007 status word 3: relay actual state (bit4), commanded state (bit6),
# pre-trip alarm (bit7), keep-power (bit12)
STATUS_WORD_3 = "04000503"


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """A meter's relay as status word 3 (04000503) reports it."""

    word: int
    read_at: float  # wall-clock time of the reply (or of the poll that stored it)

    @property
    def relay_open(self) -> bool:
        """Bit 4: the relay's actual state (True = open)."""
        return bool(self.word & SW3_RELAY_OPEN)

    @property
    def commanded_open(self) -> bool:
        """Bit 6: the state the meter was last commanded to (True = open)."""
        return bool(self.word & SW3_RELAY_COMMANDED_OPEN)

    @property
    def pre_trip_alarm(self) -> bool:
        """Bit 7: pre-trip alarm on."""
        return bool(self.word & SW3_PRE_TRIP_ALARM)

    @property
    def keep_power(self) -> bool:
        """Bit 12: keep-power (保电) active; the meter refuses trips."""
        return bool(self.word & SW3_KEEP_POWER)


@dataclass(slots=True)
class ClockState:
    """What the clock keeping knows of one meter."""

    # broadcast syncs in a row after which the meter's clock read back unmoved
    failed_syncs: int = 0
    # why the clock cannot be kept from here (raises clock_sync_failed); "" = none
    fault: str = ""
    drift_s: float | None = None


@dataclass(frozen=True, slots=True)
class ControlResult:
    """What one 1C command on the control lane produced.

    ``acknowledged`` is the 9C normal reply: the meter *accepted* the command,
    which is not a confirmation. ``status`` is status word 3 read straight
    after the 9C in the same control slot (None when no read-back was asked
    for or it failed, ``read_error`` then says why): only bit 4 reading back
    as commanded confirms a trip or close (DL/T 645-2007, 1C).
    """

    address: str
    n1: int
    acknowledged: bool
    status: RelayStatus | None
    read_error: str = ""


def _aware(when: dt.datetime | None) -> dt.datetime | None:
    """Refuse a naive time before anything is queued: it names no instant."""
    if when is not None and when.tzinfo is None:
        raise ValueError(
            f"valid_until/when: must be an aware datetime such as "
            f"datetime.now(UTC) (got naive {when.isoformat()})"
        )
    return when


def decode_format(item: PollItem, raw: bytes) -> list[float | None]:
    """Decode a DI the core table does not know, from its configured format (BCD, LSB first)."""
    fmt = item.format
    assert fmt is not None
    out: list[float | None] = []
    for i in range(fmt.count):
        chunk = raw[i * fmt.length : (i + 1) * fmt.length]
        if len(chunk) != fmt.length:
            raise ValueError(
                f"DI {item.di}: reply has {len(raw)} bytes, format needs {fmt.length * fmt.count}"
            )
        if all(b == 0xFF for b in chunk):
            out.append(None)
            continue
        sign = 1
        body = bytearray(chunk)
        if fmt.signed and body[-1] & 0x80:
            sign = -1
            body[-1] &= 0x7F
        value = 0
        for b in reversed(body):
            hi, lo = b >> 4, b & 0x0F
            if hi > 9 or lo > 9:
                raise ValueError(f"DI {item.di}: bad BCD byte 0x{b:02X}")
            value = value * 100 + hi * 10 + lo
        out.append(sign * value / 10**fmt.decimals)
    return out


@dataclass(frozen=True, slots=True)
class ItemPlan:
    """How one poll item lands in the image: tag short names and unit."""

    item: PollItem
    names: tuple[str, ...]
    unit: str


def plan_item(item: PollItem) -> ItemPlan:
    q = quantity_for(item.di)
    info = core.di_info(item.di) if item.format is None else None
    if item.format is not None:
        fmt = item.format
        base = item.name or f"di_{item.di.lower()}"
        names = (base,) if fmt.count == 1 else tuple(f"{base}_{i + 1}" for i in range(fmt.count))
        return ItemPlan(item, names, fmt.unit)
    unit = info.unit if info is not None else (q.unit if q else "")
    if item.name:
        count = info.count if info is not None else (len(q.names) if q else 1)
        names = (item.name,) if count == 1 else tuple(f"{item.name}_{i + 1}" for i in range(count))
    elif q is not None:
        names = q.names
    else:
        base = (info.name if info is not None else "").strip().lower().replace(
            " ", "_"
        ) or f"di_{item.di.lower()}"
        count = info.count if info is not None else 1
        names = (base,) if count == 1 else tuple(f"{base}_{i + 1}" for i in range(count))
    return ItemPlan(item, names, unit)


def has_transformers(meter: MeterConfig) -> bool:
    """A transformer-operated meter: its readings are secondary values."""
    return meter.ct_ratio != 1.0 or meter.pt_ratio != 1.0


def to_primary(value: Any, factor: float) -> Any:
    """A decoded reading times the transformer factor; a max demand's time stays as it is."""
    if factor == 1.0 or value is None or isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, tuple):
        return (to_primary(value[0], factor), *value[1:])
    if isinstance(value, list):
        return [to_primary(v, factor) for v in value]
    if isinstance(value, int | float):
        # the float product of a 2-decimal reading and the ratio: drop the binary noise
        return round(value * factor, 6)
    return value


class Dlt645Bus(BusOwner):
    protocol = "dlt645"

    def __init__(
        self,
        config: Dlt645BusConfig,
        groups: dict[str, PollGroup],
        image: ProcessImage,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        link: Link | None = None,
        esam: Esam | None = None,
        journal: Journal | None = None,
        site_tz: dt.tzinfo | None = None,
        commands: Any = None,
    ) -> None:
        super().__init__(
            config.name,
            config,
            image,
            quarantine=config.quarantine,
            max_utilisation=config.max_utilisation,
            clock=clock,
            wall=wall,
        )
        self.config = config
        self.groups = groups
        self.link = link or open_link(config)
        self.deframer = core.Dlt645Deframer()
        self.meters: dict[str, MeterConfig] = {m.address: m for m in config.meters}
        # every 1C and 0x14 to a `security = "esam"` meter is sealed on its way to the wire
        self.esam = esam or Esam(PlaintextAdapter())
        # polls go through the preemptible exchange so control commands slip in between
        self.poller = Dlt645Client(
            EsamExchange(self._exchange_polled, self.esam, self.meters),
            preamble=config.preamble,
            retries=config.retries,
        )
        self.client = Dlt645Client(
            EsamExchange(self._exchange, self.esam, self.meters),
            preamble=config.preamble,
            retries=config.retries,
        )
        self._line_free_at = 0.0
        self._plans: dict[str, list[ItemPlan]] = {
            name: [plan_item(i) for i in g.items] for name, g in groups.items()
        }
        # block DIs each meter refused (ERR=02), from the journal of earlier runs
        # and this one; such a meter's groups read the block's single DIs instead
        self.journal = journal
        self.refused: Refusals = load_refusals(journal, self.name) if journal else {}
        self._meter_plans: dict[tuple[str, str], list[ItemPlan]] = {}
        self.stray_frames = 0
        self.stale_bytes = 0
        self.time_syncs = 0
        # the meters' wall clocks run in the site's zone ([site] timezone)
        self.site_tz = site_tz or host_zone()
        # the command log (controller.commands.CommandLog) that journals clock writes
        self.commands = commands
        if commands is not None:
            commands.kinds = commands.kinds | {SET_CLOCK_KIND}
        self.clocks: dict[str, ClockState] = {a: ClockState() for a in self.meters}
        # site-local day of the last broadcast sync: one reaches every meter of
        # the bus, and a meter takes at most one a day
        self._last_broadcast_day: dt.date | None = None
        self._define_tags()
        self._add_jobs()

    # -- setup -----------------------------------------------------------------------
    def _device_prefix(self, device: str) -> str:
        return f"buses/{self.name}/meters/{device}/"

    def devices(self) -> list[str]:
        return list(self.meters)

    def _define_tags(self) -> None:
        for address, meter in self.meters.items():
            prefix = self._device_prefix(address)
            self.image.define(prefix + "online", "", f"meter {address} answers on {self.name}")
            for group in meter.groups:
                g = self.groups[group]
                if g.kind == "clock":
                    self.image.define(
                        prefix + "clock_drift_s", "s", "meter clock minus controller clock"
                    )
                for plan in self._plans[group]:
                    self._define_item(meter, plan)
                    if plan.item.di == "04000503":
                        for flag in STATUS3_FLAGS:
                            self.image.define(prefix + flag, "", "from status word 3")

    def _define_item(self, meter: MeterConfig, plan: ItemPlan) -> None:
        """The item's tags: primary values, and the meter's own (secondary) readings
        when transformers sit in front of it."""
        prefix = self._device_prefix(meter.address)
        twin = has_transformers(meter) and scales_with_ratio(plan.unit)
        for n in plan.names:
            if twin:
                factor = transformer_factor(plan.unit, meter.ct_ratio, meter.pt_ratio)
                self.image.define(
                    prefix + n, plan.unit, f"DI {plan.item.di}, primary (reading × {factor:g})"
                )
                self.image.define(
                    prefix + n + SECONDARY_SUFFIX,
                    plan.unit,
                    f"DI {plan.item.di}, as the meter reads it (transformer secondary)",
                )
            else:
                self.image.define(prefix + n, plan.unit, f"DI {plan.item.di}")

    def _tag_names(self, address: str, plan: ItemPlan) -> list[str]:
        """Every tag short name an item writes on this meter (secondary twins included)."""
        meter = self.meters.get(address)
        if meter is None or not (has_transformers(meter) and scales_with_ratio(plan.unit)):
            return list(plan.names)
        return [*plan.names, *(n + SECONDARY_SUFFIX for n in plan.names)]

    def _expected_duration(self, group: PollGroup) -> float:
        """The scheduler's first estimate, from the same frame sizes `gridctl plan` uses."""
        items = group.items if group.kind == "read" else CLOCK_ITEMS
        return sum(
            core.transaction_time(
                self.config.baud,
                self.config.bits_per_char,
                read_request_bytes(self.config.preamble),
                read_reply_bytes(item),
                self.config.response_delay_s,
                self.config.send_interval_s,
            )
            for item in items
        )

    def _add_jobs(self) -> None:
        for address, meter in self.meters.items():
            for group in meter.groups:
                g = self.groups[group]
                self.add_periodic(
                    address, group, g.period_s, LANES[g.lane], self._meter_duration(g, address)
                )

    def _meter_duration(self, group: PollGroup, address: str) -> float:
        """`_expected_duration` for one meter: its refused blocks count as single reads."""
        refused = self.refused.get(address)
        if group.kind != "read" or not refused:
            return self._expected_duration(group)
        items = meter_items(group.items, refused)
        return self._expected_duration(group.model_copy(update={"items": items}))

    def _plans_for(self, address: str, group: str) -> list[ItemPlan]:
        """The group's items as this meter is read (refused blocks as single DIs)."""
        refused = self.refused.get(address)
        if not refused:
            return self._plans[group]
        key = (address, group)
        plans = self._meter_plans.get(key)
        if plans is None:
            plans = []
            for plan in self._plans[group]:
                if plan.item.di in refused and plan.item.format is None:
                    plans += self._single_plans(plan)
                else:
                    plans.append(plan)
            self._meter_plans[key] = plans
        return plans

    @staticmethod
    def _single_plans(block: ItemPlan) -> list[ItemPlan]:
        """A block's single DIs, landing in the block's own tags (same names and unit)."""
        singles = BLOCK_SINGLES[block.item.di]
        return [
            ItemPlan(PollItem(di=di), (name,), block.unit)
            for di, name in zip(singles, block.names, strict=True)
        ]

    def _block_refused(self, address: str, plan: ItemPlan, exc: MeterException) -> bool:
        """Switch ``address`` to single DIs for a block it refused; False when not a block
        refusal (another ERR, a DI with no single DIs, or one already switched)."""
        di = plan.item.di
        if exc.err_bits != ERR_NO_DATA or plan.item.format is not None:
            return False
        if di not in BLOCK_SINGLES or di in self.refused.get(address, set()):
            return False
        self.refused.setdefault(address, set()).add(di)
        self._meter_plans = {k: v for k, v in self._meter_plans.items() if k[0] != address}
        if self.journal is not None:
            record_refusal(self.journal, self.name, address, di, exc.err_bits, self.wall())
        log.info(
            "bus %s: meter %s refuses block DI %s; reading %s instead",
            self.name,
            address,
            di,
            ", ".join(BLOCK_SINGLES[di]),
        )
        # the meter's jobs now take more frames: the estimate used when a job is
        # registered again (quarantine, recovery) must say so; the scheduler's
        # own average follows the measured durations from the next run on
        for job_id in self._jobs_by_device.get(address, []):
            job = self._periodic[job_id]
            job.expected_s = self._meter_duration(self.groups[job.group], address)
        return True

    # -- link ------------------------------------------------------------------------
    async def _open(self) -> None:
        await self.link.open()
        self.deframer.reset()

    async def _close(self) -> None:
        await self.link.close()

    def _counters(self) -> tuple[int, int]:
        return self.deframer.discarded_bytes + self.stale_bytes, self.deframer.checksum_errors

    async def _exchange_polled(
        self,
        request: bytes,
        address: str,
        function: int,
        *,
        reply: bool = True,
        di: bytes | None = None,
    ) -> core.Dlt645Frame | None:
        await self._run_controls()
        return await self._exchange(request, address, function, reply=reply, di=di)

    async def _exchange(
        self,
        request: bytes,
        address: str,
        function: int,
        *,
        reply: bool = True,
        di: bytes | None = None,
    ) -> core.Dlt645Frame | None:
        """One request on the wire and its reply. Never two in flight: only the owner task calls this.

        A frame from the right meter and function but for another DI (a late reply to an
        earlier request, a duplicate) is counted as stray and the wait goes on, so it
        does not cost this transaction a retry."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        # DL/T 645 send interval: the line must be quiet this long before a new request
        wait = self._line_free_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        stale = self.link.discard_input()
        if stale:
            self.stale_bytes += stale  # late replies or noise between transactions
        if self.deframer.buffered:
            self.deframer.reset()
        checksum_before = self.deframer.checksum_errors
        t0 = loop.time()
        record = WireRecord(t0, address, function)
        self.wire_log.append(record)
        self.link.write(request)
        # the UART clocks the request out after write() returns; the meter's
        # response delay starts only after its last character
        tx_end = t0 + len(request) * cfg.char_time_s
        if not reply:
            self._line_free_at = tx_end + cfg.send_interval_s
            self.busy_s += tx_end - t0
            self.transactions["ok"] += 1
            record.outcome = "ok"
            return None
        deadline = tx_end + cfg.response_timeout_s
        hard_deadline = deadline + MAX_REPLY_BYTES * cfg.char_time_s + cfg.byte_timeout_s
        while True:
            chunk = await self.link.read_some(min(deadline, hard_deadline))
            now = loop.time()
            if chunk:
                for frame in self.deframer.feed(chunk):
                    if (
                        frame.from_meter
                        and frame.function == function
                        and (address == core.WILDCARD_ADDRESS or frame.address == address)
                        and (di is None or frame.is_exception or frame.data[:4] == di)
                    ):
                        self._line_free_at = now + cfg.send_interval_s
                        self.busy_s += now - t0
                        outcome = "exception" if frame.is_exception else "ok"
                        self.transactions[outcome] += 1
                        record.outcome = outcome
                        return frame
                    self.stray_frames += 1
                # after the first byte, the reply may pause at most byte_timeout between bytes
                deadline = now + cfg.byte_timeout_s
            elif now >= deadline or now >= hard_deadline:
                break
        self._line_free_at = loop.time() + cfg.send_interval_s
        self.busy_s += loop.time() - t0
        if self.deframer.checksum_errors > checksum_before:
            self.transactions["checksum"] += 1
            record.outcome = "checksum"
            raise FrameCorrupt(f"meter {address}: reply failed its checksum")
        self.transactions["timeout"] += 1
        record.outcome = "timeout"
        raise BusTimeout(
            f"meter {address}: no reply to 0x{function:02X} within {cfg.response_timeout_s} s"
        )

    # -- polling ----------------------------------------------------------------------
    async def _poll(self, job: PeriodicJob, probe: bool) -> None:
        group = self.groups[job.group]
        address = job.device
        # a quarantined meter gets one probe, no retries: a dead meter costs one timeout
        retries: int | None = 0 if probe else None
        if group.kind == "clock":
            await self._clock_check(address, group, retries)
            return
        plans = list(self._plans_for(address, job.group))
        i = 0
        while i < len(plans):
            plan = plans[i]
            i += 1
            try:
                raw = await self.poller.read(address, plan.item.di, retries=retries)
            except MeterException as exc:
                if self._block_refused(address, plan, exc):
                    # read the elements one by one now, in this same job
                    plans[i:i] = self._single_plans(plan)
                    retries = None
                    continue
                # it answered, so it is alive; this item simply is not available
                prefix = self._device_prefix(address)
                for n in self._tag_names(address, plan):
                    self.image.write(
                        prefix + n,
                        self.image.get(prefix + n).value,
                        Quality.BAD,
                        str(exc),
                        code=Reason.DEVICE_REFUSED,
                    )
                retries = None
                continue
            retries = None
            self._store(address, plan, raw, self.wall())

    def _store(self, address: str, plan: ItemPlan, raw: bytes, when: float) -> None:
        prefix = self._device_prefix(address)
        try:
            if plan.item.format is not None:
                values: list[Any] = list(decode_format(plan.item, raw))
            else:
                decoded = core.decode_value(plan.item.di, raw)
                values = list(decoded) if isinstance(decoded, list) else [decoded]
        except ValueError as exc:
            for n in self._tag_names(address, plan):
                self.image.write(
                    prefix + n,
                    None,
                    Quality.BAD,
                    f"undecodable reply: {exc}",
                    when,
                    Reason.UNDECODABLE,
                )
            return
        meter = self.meters.get(address)
        twin = False
        factor = 1.0
        if meter is not None and has_transformers(meter) and scales_with_ratio(plan.unit):
            twin = True
            factor = transformer_factor(plan.unit, meter.ct_ratio, meter.pt_ratio)
        for n, v in zip(plan.names, values, strict=False):
            # the secondary twin first: whoever sees the primary value can find its source
            names = [(n + SECONDARY_SUFFIX, v), (n, to_primary(v, factor))] if twin else [(n, v)]
            for name, value in names:
                if v is None:
                    self.image.write(
                        prefix + name,
                        None,
                        Quality.BAD,
                        "not present on this meter",
                        when,
                        Reason.CONFIG,
                    )
                else:
                    self.image.write(prefix + name, value, Quality.GOOD, "", when)
        if plan.item.di == "04000503" and isinstance(values[0], int):
            for flag, bit in STATUS3_FLAGS.items():
                self.image.write(prefix + flag, bool(values[0] & bit), Quality.GOOD, "", when)

    def _device_answered(self, device: str) -> None:
        name = self._device_prefix(device) + "online"
        cur = self.image.get(name)
        if cur.value is not True or cur.quality is not Quality.GOOD:
            self.image.write(name, True, Quality.GOOD, "", self.wall())

    async def _read_clock(self, address: str, retries: int | None = None) -> float | None:
        """The meter's clock as epoch seconds (its wall clock read in the site zone).

        None (and the drift tag Bad) when the reply is no valid date and time."""
        text = await self.poller.read_value(address, CLOCK_DI, retries=retries)
        try:
            if not isinstance(text, str):
                raise ValueError(text)
            shown = dt.datetime.fromisoformat(text)
        except ValueError:
            self.image.write(
                self._device_prefix(address) + "clock_drift_s",
                None,
                Quality.BAD,
                f"bad clock {text!r}",
                code=Reason.UNDECODABLE,
            )
            return None
        return from_wall(shown, self.site_tz).timestamp()

    def _record_drift(self, address: str, drift: float, when: float) -> None:
        self.clocks[address].drift_s = drift
        self.image.write(
            self._device_prefix(address) + "clock_drift_s", drift, Quality.GOOD, "", when
        )

    async def _clock_check(self, address: str, group: PollGroup, retries: int | None) -> None:
        meter_time = await self._read_clock(address, retries)
        now = self.wall()
        if meter_time is None:
            return
        drift = round(meter_time - now, 1)
        self._record_drift(address, drift, now)
        await self._keep_clock(address, group, drift, now)

    async def _keep_clock(self, address: str, group: PollGroup, drift: float, now: float) -> None:
        """Bring a drifted clock back within ``max_drift_s``, within the meters' rules.

        A broadcast sync only for offsets up to 5 min, at most one a day, never
        within 5 min of midnight (meter-local); each is verified by reading the
        clock back. Beyond 5 min: a level-04 clock write where the config
        allows it, else the clock_sync_failed alarm (a site visit)."""
        state = self.clocks[address]
        if abs(drift) <= group.max_drift_s:
            state.failed_syncs = 0
            state.fault = ""
            return
        if state.fault:
            return  # alarmed: nothing more to try until the clock is back within the limit
        meter = self._meter(address)
        site_now = to_wall(now, self.site_tz)
        shown = to_wall(now + drift, self.site_tz)
        # setting a clock across midnight would move day-stamped records: the next check
        near_midnight = (
            min(seconds_to_midnight(site_now), seconds_to_midnight(shown)) < MIDNIGHT_GUARD_S
        )
        if abs(drift) > BROADCAST_SYNC_MAX_S:
            write = meter.clock_write if meter.clock_write is not None else self.config.clock_write
            if write:
                if not near_midnight:
                    await self._write_clock(address, meter, group, drift)
            else:
                state.fault = (
                    f"clock {drift:+.0f} s off: beyond what a broadcast sync may move "
                    f"({BROADCAST_SYNC_MAX_S:.0f} s) and clock_write is off; set it on site"
                )
            return
        if near_midnight or self._last_broadcast_day == site_now.date():
            return  # (or every meter of the bus had today's broadcast already)
        await self.poller.broadcast_time(to_wall(self.wall(), self.site_tz))
        self._last_broadcast_day = site_now.date()
        self.time_syncs += 1
        after = await self._read_clock(address)
        if after is None:
            return
        checked = self.wall()
        drift_after = round(after - checked, 1)
        self._record_drift(address, drift_after, checked)
        if abs(drift_after) <= group.max_drift_s:
            state.failed_syncs = 0
            return
        state.failed_syncs += 1
        if state.failed_syncs >= group.sync_attempts:
            state.fault = (
                f"clock still {drift_after:+.0f} s off after {state.failed_syncs} "
                "broadcast time syncs (one a day)"
            )

    async def _write_clock(
        self, address: str, meter: MeterConfig, group: PollGroup, drift: float
    ) -> None:
        """Set the clock with a level-04 write of 0400010C, journaled as a command record."""
        state = self.clocks[address]
        if self.commands is None:
            state.fault = f"clock {drift:+.0f} s off: a clock write needs the command journal"
            return
        cmd = await self.commands.submit(
            SET_CLOCK_KIND,
            f"buses/{self.name}/meters/{address}",
            {"di": CLOCK_DI, "drift_s": drift, "password_level": CLOCK_WRITE_PASSWORD_LEVEL},
            who="system",
            why=f"clock {drift:+.0f} s off, beyond a broadcast sync ({BROADCAST_SYNC_MAX_S:.0f} s)",
        )
        shown = to_wall(self.wall(), self.site_tz).isoformat(timespec="seconds")
        await self.commands.transition(cmd.id, "sent")
        try:
            await self.poller.write(
                address,
                CLOCK_DI,
                core.encode_value(CLOCK_DI, shown),
                password_level=CLOCK_WRITE_PASSWORD_LEVEL,
                password=meter.clock_password,
                operator=meter.operator,
            )
            after = await self._read_clock(address)
        except (MeterException, BusTimeout, FrameCorrupt) as exc:
            await self.commands.transition(cmd.id, "failed", reason=str(exc) or type(exc).__name__)
            state.fault = f"clock write refused or unanswered: {exc}"
            return
        checked = self.wall()
        drift_after = None if after is None else round(after - checked, 1)
        if drift_after is not None:
            self._record_drift(address, drift_after, checked)
        if drift_after is None or abs(drift_after) > group.max_drift_s:
            reason = f"clock read back {drift_after} s off after the write"
            await self.commands.transition(cmd.id, "failed", reason=reason)
            state.fault = reason
            return
        await self.commands.transition(
            cmd.id, "confirmed", reason=f"read back {drift_after:+.1f} s"
        )
        state.failed_syncs = 0

    def clock_fault(self, address: str) -> str:
        """Why this meter's clock cannot be kept from here ("" = it can): clock_sync_failed."""
        return self.clocks[address].fault

    def _clock_group(self, address: str) -> PollGroup:
        for name in self._meter(address).groups:
            if self.groups[name].kind == "clock":
                return self.groups[name]
        return PollGroup(period_s=86400.0, kind="clock")

    async def check_clock(self, address: str) -> float | None:
        """Read the meter's clock now (operator lane) and keep it like the clock group does.

        Returns the drift (meter minus true time, s) as last read, None when unreadable."""
        group = self._clock_group(address)

        async def action() -> float | None:
            await self._clock_check(address, group, None)
            return self.clocks[address].drift_s

        return await self._submit_oneshot(LANES["operator"], address, action)

    # -- commands ---------------------------------------------------------------------
    def _meter(self, address: str) -> MeterConfig:
        meter = self.meters.get(address)
        if meter is None:
            raise KeyError(f"address: no meter {address!r} on bus {self.name}")
        return meter

    async def submit_control(
        self,
        address: str,
        n1: int,
        *,
        valid_for_s: float = 600.0,
        valid_until: dt.datetime | None = None,
        read_back: bool = True,
    ) -> None:
        """1C control on the control lane (next frame on the wire).

        Returns when the meter accepted it (9C); raises MeterException,
        BusTimeout/FrameCorrupt after retries, or CommandRejected. With
        ``read_back`` an event-lane read of status word 3 follows, so the
        relay tags confirm the command soon after. :meth:`control` reads
        back in the same slot instead and returns what it read. ``valid_until``
        is an aware datetime; it goes on the wire in the site's zone."""
        meter = self._meter(address)
        until = _aware(valid_until) or dt.datetime.fromtimestamp(self.wall() + valid_for_s, dt.UTC)

        async def action() -> None:
            await self._send_control(address, meter, n1, until)

        await self._submit_control(action)
        if read_back:
            asyncio.get_running_loop().create_task(self._read_back_status(address))

    async def _read_back_status(self, address: str) -> None:
        # on failure the confirmation simply comes with the next status poll
        with contextlib.suppress(Exception):
            await self.read_now(address, [STATUS_WORD_3], lane="event")

    async def _send_control(
        self, address: str, meter: MeterConfig, n1: int, until: dt.datetime
    ) -> None:
        await self.client.control(
            address,
            n1,
            # the meter compares the expiry with its own wall clock: send site time
            to_wall(until, self.site_tz),
            password_level=meter.password_level,
            password=meter.password,
            operator=meter.operator,
        )

    async def control(
        self,
        address: str,
        n1: int,
        *,
        valid_until: dt.datetime | None = None,
        valid_for_s: float = 600.0,
        read_back: bool = True,
    ) -> ControlResult:
        """1C trip/close/alarm/keep-power and the status word 3 read-back, in one control slot.

        The 1C (with the meter's password and operator code from the config,
        expiry ``valid_until`` or now + ``valid_for_s``) is the next frame on
        the wire; the read-back follows it back to back, so no cyclic poll
        can slip in between the 9C and the read (which two separate control
        items would allow). The read-back is not retried here: the caller's
        confirmation loop reads again with :meth:`read_relay_status`. The
        status lands in the process image like a polled one.

        Raises MeterException (the meter refused: it did not act),
        BusTimeout/FrameCorrupt (no valid 9C after retries: it may still have
        acted, read the relay to know) or CommandRejected (not sent).
        """
        meter = self._meter(address)
        until = _aware(valid_until) or dt.datetime.fromtimestamp(self.wall() + valid_for_s, dt.UTC)
        self.define_relay_tags(address)
        plan = plan_item(PollItem(di=STATUS_WORD_3))

        async def action() -> ControlResult:
            await self._send_control(address, meter, n1, until)
            if not read_back:
                return ControlResult(address, n1, True, None)
            try:
                raw = await self.client.read(address, STATUS_WORD_3, retries=0)
            except Exception as exc:
                return ControlResult(address, n1, True, None, str(exc) or type(exc).__name__)
            when = self.wall()
            self._store(address, plan, raw, when)
            return ControlResult(address, n1, True, self._status_from(raw, when))

        return await self._submit_control(action)

    async def read_relay_status(self, address: str) -> RelayStatus:
        """Read status word 3 now, on the control lane (ahead of every poll).

        A confirmation re-read belongs right behind its command, not behind
        a bus's worth of cyclic polls (at 2400 baud ≈ 5 reads/s). The result
        also lands in the process image. Raises like any read."""
        self._meter(address)
        self.define_relay_tags(address)
        plan = plan_item(PollItem(di=STATUS_WORD_3))

        async def action() -> RelayStatus:
            raw = await self.client.read(address, STATUS_WORD_3)
            when = self.wall()
            self._store(address, plan, raw, when)
            return self._status_from(raw, when)

        return await self._submit_control(action)

    def relay_status(self, address: str) -> RelayStatus | None:
        """The last status word 3 in the process image (no wire); None unless Good.

        Filled by the status poll group, by :meth:`control` and by
        :meth:`read_relay_status`; Bad (None here) while the meter is
        quarantined or before its first read."""
        self._meter(address)
        name = self._device_prefix(address) + plan_item(PollItem(di=STATUS_WORD_3)).names[0]
        if name not in self.image:
            return None
        cur = self.image.get(name)
        if cur.quality is not Quality.GOOD or not isinstance(cur.value, int):
            return None
        return RelayStatus(cur.value, cur.source_time)

    def relay_tag(self, address: str, flag: str) -> str:
        """The process-image name of a status word 3 flag (``relay_open``, ``keep_power``, …)."""
        if flag not in STATUS3_FLAGS:
            raise KeyError(f"flag: must be one of {', '.join(STATUS3_FLAGS)} (got {flag!r})")
        return self._device_prefix(address) + flag

    def define_relay_tags(self, address: str) -> None:
        """Define the status word 3 tags of a meter (idempotent).

        A meter whose poll groups do not read status word 3 still needs them
        once it is switched: the read-backs land there."""
        self._meter(address)
        prefix = self._device_prefix(address)
        plan = plan_item(PollItem(di=STATUS_WORD_3))
        for n in plan.names:
            self.image.define(prefix + n, plan.unit, f"DI {STATUS_WORD_3}")
        for flag in STATUS3_FLAGS:
            self.image.define(prefix + flag, "", "from status word 3")

    def _status_from(self, raw: bytes, when: float) -> RelayStatus:
        value = core.decode_value(STATUS_WORD_3, raw)
        if not isinstance(value, int):
            raise FrameCorrupt(f"status word 3: undecodable value {value!r}")
        return RelayStatus(value, when)

    async def read_now(
        self, address: str, dis: list[str], *, lane: str = "operator"
    ) -> dict[str, Any]:
        """Read DIs now (operator or event lane); results also land in the image.

        Returns the values as the meter sent them (transformer secondary); the
        image gets primary values and ``_secondary`` twins like a poll."""
        self._meter(address)
        items = [PollItem(di=normalise_di(d)) for d in dis]
        plans = [plan_item(i) for i in items]
        for p in plans:
            self._define_item(self.meters[address], p)
            if p.item.di == "04000503":
                for flag in STATUS3_FLAGS:
                    self.image.define(self._device_prefix(address) + flag, "")

        async def action() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for p in plans:
                raw = await self.client.read(address, p.item.di)
                self._store(address, p, raw, self.wall())
                out[p.item.di] = core.decode_value(p.item.di, raw) if p.item.format is None else raw
            return out

        return await self._submit_oneshot(LANES[lane], address, action)

    async def write_item(self, address: str, di: str, value: Any) -> None:
        """0x14 write of one DI (value encoded by the core table), control lane."""
        meter = self._meter(address)
        raw = core.encode_value(normalise_di(di), value)

        async def action() -> None:
            await self.client.write(
                address,
                di,
                raw,
                password_level=meter.password_level,
                password=meter.password,
                operator=meter.operator,
            )

        await self._submit_control(action)

    async def broadcast_time_sync(self, when: dt.datetime | None = None) -> None:
        """0x08 to every meter of the bus: ``when`` (aware; default now) in site time."""
        at = _aware(when) or self.wall()

        async def action() -> None:
            await self.client.broadcast_time(to_wall(at, self.site_tz))
            self._last_broadcast_day = to_wall(self.wall(), self.site_tz).date()
            self.time_syncs += 1

        await self._submit_control(action)

    async def freeze(self, address: str = BROADCAST_ADDRESS, pattern: str = "99999999") -> None:
        async def action() -> None:
            await self.client.freeze(address, pattern)

        await self._submit_control(action)

    async def discover(self) -> str:
        """Wildcard read-address; works with one meter on the line (commissioning)."""

        async def action() -> str:
            return await self.client.read_address()

        return await self._submit_oneshot(LANES["operator"], None, action)
