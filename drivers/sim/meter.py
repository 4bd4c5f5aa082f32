"""One simulated DL/T 645-2007 meter: plausible physics and the protocol answers.

Sans-I/O: `SimMeter.handle(frame, now)` takes a decoded request and returns the
reply frames (bytes) or nothing; the farm owns the wire and its timing.

Physics, kept simple but consistent so that the controller's logic sees a
believable plant:
- active power follows a daily load profile (night trough, morning and
  evening peaks) scaled by the meter's peak, with a little noise;
- relay open → power and currents 0;
- instrument transformers (CT/PT ratios) in front of the meter: the load is
  primary, the meter measures primary / ratio and integrates that;
- energy integrates power, into the total and into the tariff register its
  own time-of-use table names for the meter's clock; remaining money falls
  with energy × tariff;
- the meter clock drifts at a per-meter rate until a broadcast time sync;
  it is wall-clock time in the meter's own zone (zoneinfo, its config's
  ``timezone``), so a controller that sends another zone's time is seen to.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from drivers.config import SimMeterConfig
from drivers.errors import ERR_NO_DATA, ERR_OTHER, ERR_PASSWORD
from drivers.quantities import (
    SW3_KEEP_POWER,
    SW3_PRE_TRIP_ALARM,
    SW3_RELAY_COMMANDED_OPEN,
    SW3_RELAY_OPEN,
)
from drivers.sim import dlt645_wire as wire
from drivers.sim.esam_card import EsamCard, card_for

# Seconds after a "close allowed" (1B) before the simulated customer presses the button.
CUSTOMER_CLOSE_DELAY_S = 3.0
# Meters refuse a broadcast time sync that would move them further than this.
TIME_SYNC_LIMIT_S = 300.0
NOMINAL_VOLTAGE_V = 220.0
# a PT's secondary is 100 V line to line: 57.7 V per phase at nominal primary voltage
PT_SECONDARY_PHASE_V = 100.0 / math.sqrt(3.0)
# longest stretch integrated at one load level and tariff (a long gap between
# reads spans profile hours and tariff periods)
INTEGRATION_STEP_S = 300.0
# how the opening energy is spread over the tariff registers T1..T4
OPENING_SPLIT = (0.3, 0.4, 0.3, 0.0)
# the SimMeterConfig default: valley at night, peak 10-15 h and 18-23 h, flat between
DEFAULT_TOU: tuple[tuple[int, int], ...] = (
    (0, 4),
    (8 * 60, 3),
    (10 * 60, 2),
    (15 * 60, 3),
    (18 * 60, 2),
    (23 * 60, 4),
)


def tou_table(periods: dict[str, int]) -> tuple[tuple[int, int], ...]:
    """``{"HH:MM": register}`` → ((minute of day, register), ...) in order of the day."""
    out = []
    for start, register in periods.items():
        hh, _, mm = start.partition(":")
        out.append((int(hh) * 60 + int(mm), register))
    return tuple(sorted(out))


def tou_register(table: tuple[tuple[int, int], ...], minute: int) -> int:
    """The tariff register (1..4) in force at a minute of the day; before the
    first start of the day the last period of the day before goes on."""
    register = table[-1][1]
    for start, reg in table:
        if start <= minute:
            register = reg
    return register


# SimMeterConfig.refuse_block_dis, kept with the meter's faults
REFUSE_BLOCK_DIS = "refuse_block_dis"


def load_profile(hour: float) -> float:
    """Fraction of peak load at a time of day (0..1): night trough, 8 h and 19 h peaks."""
    morning = math.exp(-(((hour - 8.0) / 2.0) ** 2))
    evening = math.exp(-(((hour - 19.5) / 2.5) ** 2))
    return min(1.0, 0.25 + 0.45 * morning + 0.75 * evening)


def bcd_to_int(data: bytes) -> int:
    """Little-endian BCD bytes (as on the wire after −0x33) to an int."""
    value = 0
    for byte in reversed(data):
        value = value * 100 + (byte >> 4) * 10 + (byte & 0x0F)
    return value


def _hex_le(data: bytes) -> str:
    """Password/operator bytes (sent low byte first) as the printed hex string."""
    return data[::-1].hex().upper()


@dataclass
class SimMeter:
    address: str
    password: str = "000000"
    peak_kw: float = 3.0
    phases: int = 3
    energy_kwh: float = 1000.0
    money_yuan: float = 500.0
    tariff: float = 0.6
    relay_open: bool = False
    relay_commanded_open: bool = False
    pre_trip_alarm: bool = False
    keep_power: bool = False
    clock_drift_s_per_day: float = 0.5
    clock_offset_s: float = 0.0
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    time_sync_rules: bool = True
    time_syncs_applied: int = 0
    time_syncs_refused: int = 0
    _last_sync_day: dt.date | None = None
    time_scale: float = 1.0
    ct_ratio: float = 1.0
    pt_ratio: float = 1.0
    tou: tuple[tuple[int, int], ...] = DEFAULT_TOU
    # forward active energy of tariffs T1..T4 (kWh, as the meter measures it)
    tariff_kwh: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    rng: random.Random = field(default_factory=random.Random)
    faults: set[str] = field(default_factory=set)
    written: dict[str, bytes] = field(default_factory=dict)
    frozen_energy_kwh: float | None = None
    controls_honoured: int = 0
    esam_card: EsamCard | None = None  # 1C and 0x14 only with a valid MAC
    _last_t: float | None = None
    _close_at: float | None = None
    _power_kw: float = 0.0
    _pf: float = 0.95
    # remaining chunks of a long reply, per DI, sent with 0x12 follow-up reads
    _followups: dict[str, list[bytes]] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls,
        address: str,
        cfg: SimMeterConfig,
        *,
        password: str,
        tariff: float,
        time_scale: float,
        seed: int,
    ) -> SimMeter:
        rng = random.Random(f"{seed}:{address}")
        opening = (
            cfg.energy_kwh if cfg.energy_kwh is not None else round(rng.uniform(100, 20000), 2)
        )
        return cls(
            address=address,
            password=password,
            peak_kw=cfg.peak_kw if cfg.peak_kw is not None else round(rng.uniform(1.0, 8.0), 2),
            phases=cfg.phases,
            energy_kwh=opening,
            tariff_kwh=[opening * share for share in OPENING_SPLIT],
            ct_ratio=cfg.ct_ratio,
            pt_ratio=cfg.pt_ratio,
            tou=tou_table(cfg.tou),
            money_yuan=cfg.money_yuan,
            tariff=tariff,
            relay_open=cfg.relay_open,
            relay_commanded_open=cfg.relay_open,
            keep_power=cfg.keep_power,
            clock_drift_s_per_day=cfg.clock_drift_s_per_day
            if cfg.clock_drift_s_per_day is not None
            else rng.uniform(-2.0, 2.0),
            clock_offset_s=cfg.clock_offset_s,
            tz=ZoneInfo(cfg.timezone),
            time_sync_rules=cfg.time_sync_rules,
            time_scale=time_scale,
            rng=rng,
            faults=set(cfg.faults) | ({REFUSE_BLOCK_DIS} if cfg.refuse_block_dis else set()),
            esam_card=card_for(address, cfg),
            _pf=rng.uniform(0.88, 0.99),
        )

    # -- physics -------------------------------------------------------------
    def advance(self, now: float, wall: float) -> None:
        """Integrate energy and money up to monotonic ``now``; ``wall`` picks the profile hour."""
        if self._close_at is not None and now >= self._close_at:
            self._close_at = None
            if not self.relay_commanded_open:
                self.relay_open = False
        if self._last_t is None:
            self._last_t = now
        dt_s = max(0.0, now - self._last_t) * self.time_scale
        self._last_t = now
        # the clock drifts in real time, independent of the energy time scale
        self.clock_offset_s += (
            self.clock_drift_s_per_day * (dt_s / max(self.time_scale, 1e-9)) / 86400.0
        )
        self.integrate(dt_s, wall)

    def integrate(self, seconds: float, wall: float) -> None:
        """Run the load for ``seconds`` of plant time ending at ``wall``: energy into the
        total and the tariff registers, money out. In steps, each at its own load
        level and tariff period, so a long gap between reads (or a test's virtual
        day, with ``time_scale`` 0 so reads add no time of their own) spans profile
        hours and tariff periods as it would have."""
        remaining = seconds
        while True:
            step = min(remaining, INTEGRATION_STEP_S)
            remaining -= step
            at = wall - remaining
            if self.relay_open:
                self._power_kw = 0.0
            else:
                local = dt.datetime.fromtimestamp(at, self.tz)
                hour = local.hour + local.minute / 60.0
                self._power_kw = self.peak_kw * load_profile(hour) * self.rng.uniform(0.97, 1.03)
            # the meter integrates what it measures: the primary load through its transformers
            used = self._power_kw / (self.ct_ratio * self.pt_ratio) * step / 3600.0
            self.energy_kwh += used
            # the register in force on the meter's own clock when the step began
            meter_local = dt.datetime.fromtimestamp(at - step + self.clock_offset_s, self.tz)
            register = tou_register(self.tou, meter_local.hour * 60 + meter_local.minute)
            self.tariff_kwh[register - 1] += used
            self.money_yuan -= used * self.tariff
            if remaining <= 0.0:
                break

    def status_word_3(self) -> int:
        word = 0
        if self.relay_open:
            word |= SW3_RELAY_OPEN
        if self.relay_commanded_open:
            word |= SW3_RELAY_COMMANDED_OPEN
        if self.pre_trip_alarm:
            word |= SW3_PRE_TRIP_ALARM
        if self.keep_power:
            word |= SW3_KEEP_POWER
        return word

    def value_of(self, di: str, wall: float) -> object | None:
        """The decoded value for a DI, or None when this meter does not have it."""
        if di in self.written:
            return wire.decode_value(di, self.written[di])
        ratio = self.ct_ratio * self.pt_ratio
        p = 0.0 if self.relay_open else self._power_kw / ratio
        n = self.phases
        # behind a PT the network is the PT's primary voltage; the meter sees it / pt_ratio
        primary_v = (
            NOMINAL_VOLTAGE_V if self.pt_ratio == 1.0 else PT_SECONDARY_PHASE_V * self.pt_ratio
        )
        volts = [
            round(primary_v * self.rng.uniform(0.98, 1.03) / self.pt_ratio, 1) for _ in range(3)
        ]
        if n == 1:
            volts_opt: list[float | None] = [volts[0], None, None]
        else:
            volts_opt = list(volts)
        per_phase = p / n
        currents: list[float | None] = []
        for i in range(3):
            v = volts_opt[i]
            currents.append(None if v is None else round(per_phase * 1000 / (v * self._pf), 3))
        powers: list[float | None] = [round(p, 4)]
        powers += [round(per_phase, 4) if volts_opt[i] is not None else None for i in range(3)]
        pfs: list[float | None] = [round(self._pf, 3)]
        pfs += [round(self._pf, 3) if volts_opt[i] is not None else None for i in range(3)]
        clock = self.local_clock(wall)
        e = round(self.energy_kwh, 2)
        tariffs = [e, *(round(t, 2) for t in self.tariff_kwh)]
        table: dict[str, object] = {
            "00000000": e,
            "00010000": e,
            "00020000": 0.0,
            "0001FF00": tariffs,
            "00010100": tariffs[1],
            "00010200": tariffs[2],
            "00010300": tariffs[3],
            "00010400": tariffs[4],
            "02010100": volts_opt[0],
            "02010200": volts_opt[1],
            "02010300": volts_opt[2],
            "0201FF00": volts_opt,
            "02020100": currents[0],
            "02020200": currents[1],
            "02020300": currents[2],
            "0202FF00": currents,
            "02030000": powers[0],
            "0203FF00": powers,
            "02040000": round(p * math.tan(math.acos(self._pf)), 4),
            "02060000": pfs[0],
            "0206FF00": pfs,
            "02800002": round(self.rng.uniform(49.98, 50.02), 2),
            "04000101": clock.strftime("%Y-%m-%d"),
            "04000102": clock.strftime("%H:%M:%S"),
            "0400010C": clock.strftime("%Y-%m-%dT%H:%M:%S"),
            "04000401": self.address,
            "04000501": 0,
            "04000502": 0,
            "04000503": self.status_word_3(),
            "00900200": round(max(self.money_yuan, 0.0), 2),
        }
        if di not in table:
            return None
        return table[di]  # None: this phase is not present on this meter

    # -- protocol -------------------------------------------------------------
    def handle(
        self, frame: wire.Dlt645Frame, now: float, wall: float, max_frame_data: int = 200
    ) -> list[bytes]:
        """Reply frames for a request addressed to this meter (empty: no reply)."""
        self.advance(now, wall)
        fn = frame.function
        if "exception" in self.faults and fn in (wire.FN_READ, wire.FN_READ_FOLLOWUP):
            return [wire.dlt645_exception(self.address, fn, ERR_NO_DATA)]
        if fn == wire.FN_READ:
            return self._read(frame, wall, max_frame_data)
        if fn == wire.FN_READ_FOLLOWUP:
            return self._followup(frame)
        if fn == wire.FN_READ_ADDRESS:
            return [wire.dlt645_reply(self.address, fn, _address_bytes(self.address))]
        if fn == wire.FN_WRITE:
            replies = self._write(frame)
            self._take_clock_write(wall)
            return replies
        if fn == wire.FN_FREEZE:
            self.frozen_energy_kwh = self.energy_kwh
            return [wire.dlt645_reply(self.address, fn)]
        if fn == wire.FN_CONTROL:
            if "drop_control" in self.faults:
                return []
            return self._control(frame, now, wall)
        return [wire.dlt645_exception(self.address, fn, ERR_OTHER)]

    def local_clock(self, wall: float) -> dt.datetime:
        """What the meter's clock shows (naive wall-clock time in its own zone)."""
        return dt.datetime.fromtimestamp(wall + self.clock_offset_s, self.tz).replace(tzinfo=None)

    def _offset_for(self, shown: dt.datetime, wall: float) -> float:
        """The clock offset that makes the meter show ``shown`` (its local time) at ``wall``."""
        return shown.replace(tzinfo=self.tz).timestamp() - wall

    def broadcast_time(self, data: bytes, wall: float) -> None:
        """0x08: set the clock (ss mm hh DD MM YY, meter-local); no reply (broadcast).

        With the rules on, like a real meter it refuses a sync that moves its
        clock more than 5 min, or a second one on the same (local) day."""
        when = _parse_time6(data)
        if when is None or "ignore_time_sync" in self.faults:
            return
        offset = self._offset_for(when, wall)
        if self.time_sync_rules:
            moved = abs(offset - self.clock_offset_s)
            if moved > TIME_SYNC_LIMIT_S or self.local_clock(wall).date() == self._last_sync_day:
                self.time_syncs_refused += 1
                return
        self.clock_offset_s = offset
        self._last_sync_day = self.local_clock(wall).date()
        self.time_syncs_applied += 1

    def _take_clock_write(self, wall: float) -> None:
        # a 0x14 write of 0400010C sets the clock; it is not kept as a stored value
        raw = self.written.pop("0400010C", None)
        if raw is None:
            return
        shown = dt.datetime.fromisoformat(str(wire.decode_value("0400010C", raw)))
        self.clock_offset_s = self._offset_for(shown, wall)

    def _read(self, frame: wire.Dlt645Frame, wall: float, max_frame_data: int) -> list[bytes]:
        di_raw = frame.data[:4]
        di = di_raw[::-1].hex().upper()
        if REFUSE_BLOCK_DIS in self.faults and "FF" in (di[4:6], di[6:8]):
            # a meter without block reads: ERR=02 even though it has every element
            return [wire.dlt645_exception(self.address, wire.FN_READ, ERR_NO_DATA)]
        value = self.value_of(di, wall)
        if value is None and di[4:6] != "FF":
            # a single element of a block (tariff energies, phase powers): DI1 counts
            # from 00 = total, or from 01 in the phase-only blocks (three elements)
            block = self.value_of(f"{di[:4]}FF{di[6:]}", wall)
            if isinstance(block, list):
                k = int(di[4:6], 16) - (1 if len(block) == 3 else 0)
                value = block[k] if 0 <= k < len(block) else None
        if value is None:
            return [wire.dlt645_exception(self.address, wire.FN_READ, ERR_NO_DATA)]
        payload = wire.encode_value(di, value)  # type: ignore[arg-type]
        room = max_frame_data - 4
        if len(payload) <= room:
            return [wire.dlt645_reply(self.address, wire.FN_READ, di_raw + payload)]
        # too long for one frame: the rest goes in follow-up frames (0x12 with SEQ)
        chunks = [payload[i : i + room - 1] for i in range(room, len(payload), room - 1)]
        self._followups[di] = chunks
        return [
            wire.dlt645_reply(self.address, wire.FN_READ, di_raw + payload[:room], followup=True)
        ]

    def _followup(self, frame: wire.Dlt645Frame) -> list[bytes]:
        di_raw = frame.data[:4]
        di = di_raw[::-1].hex().upper()
        seq = frame.data[4] if len(frame.data) > 4 else 1
        chunks = self._followups.get(di)
        if not chunks or not 1 <= seq <= len(chunks):
            return [wire.dlt645_exception(self.address, wire.FN_READ_FOLLOWUP, ERR_NO_DATA)]
        more = seq < len(chunks)
        if not more:
            self._followups.pop(di, None)
        data = di_raw + chunks[seq - 1] + bytes([seq])
        return [wire.dlt645_reply(self.address, wire.FN_READ_FOLLOWUP, data, followup=more)]

    def _check_password(self, pa_p: bytes) -> bool:
        return _hex_le(pa_p[1:4]) == self.password.upper()

    def _write(self, frame: wire.Dlt645Frame) -> list[bytes]:
        if self.esam_card is not None:
            if (plain := self.esam_card.open(frame.data)) is None:
                return [wire.dlt645_exception(self.address, wire.FN_WRITE, ERR_PASSWORD)]
            frame = wire.Dlt645Frame(frame.address, frame.control, plain)
        data = frame.data
        if len(data) < 12:
            return [wire.dlt645_exception(self.address, wire.FN_WRITE, ERR_OTHER)]
        if not self._check_password(data[4:8]):
            return [wire.dlt645_exception(self.address, wire.FN_WRITE, ERR_PASSWORD)]
        di = data[:4][::-1].hex().upper()
        value = data[12:]
        try:
            wire.decode_value(di, value)
        except ValueError:
            return [wire.dlt645_exception(self.address, wire.FN_WRITE, ERR_OTHER)]
        self.written[di] = value
        return [wire.dlt645_reply(self.address, wire.FN_WRITE)]

    def _control(self, frame: wire.Dlt645Frame, now: float, wall: float) -> list[bytes]:
        if self.esam_card is not None:
            if (plain := self.esam_card.open(frame.data)) is None:
                return [wire.dlt645_exception(self.address, wire.FN_CONTROL, ERR_PASSWORD)]
            frame = wire.Dlt645Frame(frame.address, frame.control, plain)
        data = frame.data
        if len(data) != 16:
            return [wire.dlt645_exception(self.address, wire.FN_CONTROL, ERR_OTHER)]
        if not self._check_password(data[0:4]):
            return [wire.dlt645_exception(self.address, wire.FN_CONTROL, ERR_PASSWORD)]
        n1 = data[8]
        expiry = _parse_time6(data[10:16])
        # the expiry is wall-clock time: compared with what this meter's clock shows
        if expiry is None or expiry < self.local_clock(wall):
            # an expired command must never act (its validity time has passed)
            return [wire.dlt645_exception(self.address, wire.FN_CONTROL, ERR_OTHER)]
        if n1 == wire.N1_TRIP:
            if self.keep_power:
                return [wire.dlt645_exception(self.address, wire.FN_CONTROL, ERR_OTHER)]
            self.relay_commanded_open = True
            self.relay_open = True
            self._close_at = None
        elif n1 == wire.N1_CLOSE_ALLOWED:
            self.relay_commanded_open = False
            if self.relay_open:
                self._close_at = now + CUSTOMER_CLOSE_DELAY_S
        elif n1 == wire.N1_DIRECT_CLOSE:
            self.relay_commanded_open = False
            self.relay_open = False
            self._close_at = None
        elif n1 == wire.N1_ALARM_ON:
            self.pre_trip_alarm = True
        elif n1 == wire.N1_ALARM_OFF:
            self.pre_trip_alarm = False
        elif n1 == wire.N1_KEEP_POWER_ON:
            self.keep_power = True
            self.relay_commanded_open = False
            self.relay_open = False
        elif n1 == wire.N1_KEEP_POWER_OFF:
            self.keep_power = False
        else:
            return [wire.dlt645_exception(self.address, wire.FN_CONTROL, ERR_OTHER)]
        self.controls_honoured += 1
        self.advance(now, wall)
        return [wire.dlt645_reply(self.address, wire.FN_CONTROL)]

    def state(self) -> dict[str, object]:
        return {
            "address": self.address,
            "power_kw": round(self._power_kw, 4),
            "energy_kwh": round(self.energy_kwh, 3),
            "money_yuan": round(self.money_yuan, 2),
            "relay_open": self.relay_open,
            "relay_commanded_open": self.relay_commanded_open,
            "pre_trip_alarm": self.pre_trip_alarm,
            "keep_power": self.keep_power,
            "clock_offset_s": round(self.clock_offset_s, 3),
            "faults": sorted(self.faults),
            "controls_honoured": self.controls_honoured,
        }


def _address_bytes(address: str) -> bytes:
    """Address as data bytes: 12 BCD digits, low byte first."""
    return bytes.fromhex(address)[::-1]


def _parse_time6(data: bytes) -> dt.datetime | None:
    """ss mm hh DD MM YY (BCD) → datetime, None when not a valid time."""
    if len(data) != 6:
        return None
    try:
        ss, mm, hh, dd, mo, yy = (bcd_to_int(bytes([b])) for b in data)
        return dt.datetime(2000 + yy, mo, dd, hh, mm, ss)
    except ValueError:
        return None


MeterFactory = Callable[[str], SimMeter]
