"""The root configuration: the field part (drivers) plus the runtime's own tables.

A config is one TOML file validated by pydantic. Every table forbids unknown
keys, so a typo is an error rather than a silently ignored default. Errors are
reported one per line as ``FILE: dotted.field.path: what is allowed (got X)``.

Relative paths (journal, state directory) are kept relative and therefore
resolve against the working directory of ``gridctl run``; the demo keeps
everything under ``./var/``.
"""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from controller.config_model import ConfigModel, PathStr
from controller.cpu_affinity import available_cpus, check_cpus
from controller.loads.config import LoadsConfig
from controller.loopback import is_loopback
from controller.password_hash import is_password_hash
from controller.verification.config import LineConfig
from controller.warehouse.config import WarehouseConfig
from drivers.config import LOCATION_TAGS, FieldConfig
from drivers.site_time import host_timezone_name, zone
from opcua_server.config import OpcUaConfig

DEFAULT_CONFIG = Path("config/demo.toml")


class ConfigError(ValueError):
    """A config that cannot be used; ``str()`` is one line per problem, each naming the file."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


class _Strict(ConfigModel):
    model_config = ConfigDict(frozen=True)


class ServiceConfig(_Strict):
    """``[service]``: process-wide settings."""

    name: str = Field(default="gridctl", min_length=1, max_length=64)
    state_dir: PathStr = Path("var")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Budget for an orderly stop after SIGTERM/SIGINT.
    stop_timeout_s: float = Field(default=5.0, ge=0.5, le=30.0)
    # Local control channel (Unix socket, msgpack); empty string disables it.
    control_socket: str = "var/gridctl.sock"
    # Group whose members may use the control socket too (`gridctl status` by
    # operators): the socket is then 0660 with that group; empty: 0600, this
    # user only. The service's user must be a member of the group.
    control_socket_group: str = Field(
        default="", pattern=r"^([a-z_][a-z0-9_-]*[$]?)?$", max_length=32
    )


class SiteConfig(_Strict):
    """``[site]``: where the plant is."""

    # IANA zone of the meters' wall clocks (Asia/Shanghai for a Beijing-time
    # site). Every time sent to or read from a meter (1C expiry, time sync,
    # clock check) is converted with it at the wire; default: the host's zone.
    timezone: str = Field(default_factory=host_timezone_name)

    @field_validator("timezone")
    @classmethod
    def _iana(cls, v: str) -> str:
        zone(v)
        return v

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)


class TasksConfig(_Strict):
    """``[tasks]``: the cyclic tasks (IEC 61131-3 style, absolute deadlines)."""

    fast_period_ms: int = Field(default=10, ge=1, le=1000)
    # The coarse sleep before the spin: "timerfd" (Linux) wakes within
    # microseconds of the time asked, so the spin can be short; "loop" uses the
    # event loop's timers (1 ms resolution: keep the spin at 2000 µs or more).
    timer: Literal["timerfd", "loop"] = "timerfd"
    # Yield-spin budget before each deadline (coarse sleep until then).
    fast_spin_us: int = Field(default=500, ge=0, le=100_000)
    # The last part of the spin that does not yield the loop (a busy-wait): a
    # callback shorter than this that starts during the spin cannot make the task
    # late. Costs hold/period of a core (300 µs per 10 ms = 3 %).
    fast_hold_us: int = Field(default=300, ge=0, le=100_000)
    control_period_ms: int = Field(default=1000, ge=10, le=60_000)
    control_spin_us: int = Field(default=2000, ge=0, le=100_000)
    control_hold_us: int = Field(default=0, ge=0, le=100_000)
    # What happens when a cycle ends after the next deadline. Only "skip" is
    # implemented: resume at the next future deadline and count the skipped cycles.
    overrun: Literal["skip"] = "skip"
    # Samples kept per task for exact recent percentiles (histograms are cumulative).
    stats_window: int = Field(default=4096, ge=16, le=1_048_576)
    gc_freeze: bool = True
    # "quiet": the young generations are collected right after a fast cycle (its
    # idle time), never in the middle of a wait; CPython's own collector stays on
    # with thresholds raised (`gc_backstop_threshold`) as a backstop.
    # "automatic": CPython decides (a collection can land just before a deadline).
    gc: Literal["quiet", "automatic"] = "quiet"
    # Net allocations (CPython's generation-0 count) that make a quiet collection due.
    gc_young_threshold: int = Field(default=2_000, ge=100, le=1_000_000)
    gc_backstop_threshold: int = Field(default=100_000, ge=1_000, le=10_000_000)
    # SCHED_FIFO priority for the service's loop thread (1..99); 0 keeps normal
    # scheduling. On a shared machine the OS delays timer wake-ups and preempts
    # the spin by milliseconds; a real-time policy is what removes that tail.
    # Needs CAP_SYS_NICE (or an rtprio limit); refused -> warning, normal scheduling.
    realtime_priority: int = Field(default=0, ge=0, le=99)
    # How long another thread (the journal writer, the metrics render) may hold
    # the GIL once the loop thread wants it. CPython's default is 5000 µs, half
    # the fast period; 0 keeps the interpreter's setting.
    gil_switch_interval_us: int = Field(default=500, ge=0, le=100_000)
    # CPU ids for the loop thread that runs the cyclic tasks; every other thread
    # and child process (journal writer, workers, OPC UA server, simulators) goes
    # to the remaining CPUs, so a wake-up never waits for them. Empty: no pinning.
    # Checked against this machine: at least one CPU must stay for the rest.
    cpus: list[int] = []

    @field_validator("fast_spin_us", "control_spin_us")
    @classmethod
    def _spin_below_period(cls, v: int, info: ValidationInfo) -> int:
        task = (info.field_name or "").split("_", 1)[0]
        period_ms = info.data.get(f"{task}_period_ms")
        if period_ms is not None and v >= period_ms * 1000:
            raise ValueError(
                f"must be less than {task}_period_ms in µs ({period_ms * 1000}) (got {v})"
            )
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus_on_this_machine(cls, v: list[int]) -> list[int]:
        if not v:
            return v
        if len(set(v)) != len(v):
            raise ValueError(f"must not name a CPU twice (got {v})")
        return sorted(check_cpus(v, available_cpus(), leave_one=True))

    @field_validator("fast_hold_us", "control_hold_us")
    @classmethod
    def _hold_within_spin(cls, v: int, info: ValidationInfo) -> int:
        task = (info.field_name or "").split("_", 1)[0]
        spin = info.data.get(f"{task}_spin_us")
        if spin is not None and v > spin:
            raise ValueError(f"must be at most {task}_spin_us ({spin}) (got {v})")
        return v


class JournalConfig(_Strict):
    """``[journal]``: the SQLite (WAL) journal."""

    path: PathStr = Path("var/journal.sqlite")
    # Pending writes waiting for the writer thread. Events beyond it are dropped
    # and counted; commands are refused (never dropped).
    queue_limit: int = Field(default=10_000, ge=10, le=1_000_000)
    # Writes merged into one transaction (group commit).
    batch_max: int = Field(default=256, ge=1, le=10_000)


class MetricsConfig(_Strict):
    """``[metrics]``: the Prometheus endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)  # 0: pick a free port (tests)
    # One server (asyncio, in a thread of its own; controller/metrics.py); the key
    # stays so that existing configs load.
    server: Literal["asyncio"] = "asyncio"
    # Seconds an exposition is served from cache: scrapes within it share one render.
    min_render_interval_s: float = Field(default=1.0, ge=0.0, le=60.0)
    # Open connections served at once; one more is answered 503 at once.
    max_connections: int = Field(default=8, ge=1, le=256)
    # A request's headers must arrive within this time (s) and size (bytes).
    header_timeout_s: float = Field(default=5.0, ge=0.1, le=60.0)
    max_header_bytes: int = Field(default=8192, ge=1024, le=65536)
    # HTTP basic authentication; empty user = none. The hash is the OPC UA users'
    # scrypt format: python -m opcua_server.users hash
    auth_user: str = Field(default="", max_length=64, pattern=r"^[^:\s]*$")
    auth_password_hash: str = ""
    # TLS: PEM certificate (chain) and key; both or neither.
    tls_cert: PathStr | None = None
    tls_key: PathStr | None = None
    # A host other than loopback needs auth_user, unless this says the network
    # itself keeps strangers out (a firewalled scrape network).
    allow_unauthenticated: bool = False

    @field_validator("auth_password_hash")
    @classmethod
    def _hash_format(cls, v: str) -> str:
        if v and not is_password_hash(v):
            raise ValueError(
                "must be scrypt$N$r$p$salt$hash (python -m opcua_server.users hash), "
                "got something else"
            )
        return v

    @model_validator(mode="after")
    def _secure_enough(self) -> MetricsConfig:
        if bool(self.auth_user) != bool(self.auth_password_hash):
            raise ValueError("auth_user and auth_password_hash: set both or neither")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: set both or neither")
        if (
            self.enabled
            and not is_loopback(self.host)
            and not self.auth_user
            and not self.allow_unauthenticated
        ):
            raise ValueError(
                f"host {self.host!r} is reachable from the network: set auth_user and "
                "auth_password_hash, or allow_unauthenticated = true on a closed scrape network"
            )
        return self

    def warnings(self) -> list[str]:
        """Accepted but weak settings, one line each."""
        if self.enabled and self.auth_user and self.tls_cert is None and not is_loopback(self.host):
            return [
                f"metrics: basic auth on {self.host} without tls_cert/tls_key sends the "
                "password in clear text"
            ]
        return []


class GridConfig(FieldConfig):
    """The whole config file: field tables (drivers) plus the runtime tables."""

    service: ServiceConfig = ServiceConfig()
    # built per config, so the host-zone default is read when the config is loaded
    site: SiteConfig = Field(default_factory=SiteConfig)
    tasks: TasksConfig = TasksConfig()
    journal: JournalConfig = JournalConfig()
    metrics: MetricsConfig = MetricsConfig()
    opcua: OpcUaConfig = OpcUaConfig()
    loads: LoadsConfig = LoadsConfig()
    warehouse: WarehouseConfig | None = None
    # ``[line]``: the verification line; absent = no line at this site.
    line: LineConfig | None = None


# -- loading ----------------------------------------------------------------------------------

_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def load_config(path: Path | str) -> GridConfig:
    """Read and validate a config file; raises ConfigError naming the file and each field."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS.search(msg)
        if m:
            where = f"line {m.group(1)}, column {m.group(2)}"
            msg = msg[: m.start()]
            raise ConfigError(path, [f"{where}: TOML syntax error: {msg}"]) from None
        raise ConfigError(path, [f"TOML syntax error: {msg}"]) from None
    return validate_config(data, path)


def validate_config(data: dict[str, Any], path: Path | str = "<config>") -> GridConfig:
    try:
        return GridConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(err) for err in exc.errors()]) from None


# -- error formatting -------------------------------------------------------------------------


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        # a bus's union tag follows its index (buses[0].dlt645.baud); bus_defaults.dlt645 is a key
        if (part in LOCATION_TAGS and out.endswith("]")) or str(part).startswith("function-"):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _unwrap(tp: Any) -> Any:
    """Strip Optional/Annotated wrappers; return the single non-None member if any."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _resolve(loc: tuple[Any, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """Walk GridConfig along ``loc``: the model owning the last element and its field.

    Best effort: unions with several models, or anything unexpected, give (None, None).
    """
    model: Any = GridConfig
    field: FieldInfo | None = None
    owner: type[BaseModel] | None = None
    for part in loc:
        tp = _unwrap(model)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if not isinstance(part, str) or part not in tp.model_fields:
                return (tp, None)
            owner, field = tp, tp.model_fields[part]
            model = field.annotation
            continue
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (list, tuple, set, frozenset) and args:
            model, field, owner = args[0], None, None
        elif origin is dict and len(args) == 2:
            model, field, owner = args[1], None, None
        else:
            return (None, None)
    return (owner, field)


def _bounds(field: FieldInfo | None) -> tuple[Any, Any]:
    lo = hi = None
    for meta in field.metadata if field is not None else ():
        if isinstance(meta, annotated_types.Ge | annotated_types.Gt):
            lo = getattr(meta, "ge", getattr(meta, "gt", None))
        elif isinstance(meta, annotated_types.Le | annotated_types.Lt):
            hi = getattr(meta, "le", getattr(meta, "lt", None))
    return lo, hi


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = _got(err.get("input"))
    where = _dotted(loc)
    if kind == "extra_forbidden":
        owner, _ = _resolve((*loc[:-1], "__nothing__"))
        allowed = ", ".join(sorted(owner.model_fields)) if owner else ""
        tail = f" (allowed: {allowed})" if allowed else ""
        return f"{where}: unknown key{tail}"
    if kind == "missing":
        return f"{where}: required, missing"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        _, field = _resolve(loc)
        lo, hi = _bounds(field)
        if lo is not None and hi is not None:
            return f"{where}: must be between {lo} and {hi} (got {got})"
        sign = {
            "greater_than_equal": ">=",
            "less_than_equal": "<=",
            "greater_than": ">",
            "less_than": "<",
        }[kind]
        limit = next(iter(ctx.values()), "?")
        return f"{where}: must be {sign} {limit} (got {got})"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        # a table whose kind is chosen by one key (a bus by its `protocol`): name that key
        key = str(ctx.get("discriminator", "?")).strip("'")
        if kind == "union_tag_not_found":
            return f"{where}.{key}: required, missing"
        tags = str(ctx.get("expected_tags", "?"))
        head, sep, last = tags.rpartition(", ")
        allowed = f"{head} or {last}" if sep else tags
        return f"{where}.{key}: must be one of {allowed} (got {ctx.get('tag', '?')!r})"
    if kind == "literal_error":
        return f"{where}: must be one of {ctx.get('expected', '?')} (got {got})"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{where}: must be an integer (got {got})"
    if kind in ("float_type", "float_parsing"):
        return f"{where}: must be a number (got {got})"
    if kind in ("bool_type", "bool_parsing"):
        return f"{where}: must be true or false (got {got})"
    if kind in ("string_type",):
        return f"{where}: must be a string (got {got})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{where}: must be a table (got {got})"
    if kind in ("path_type", "path_parsing"):
        return f"{where}: must be a path string (got {got})"
    if kind == "list_type":
        return f"{where}: must be an array (got {got})"
    if kind == "string_pattern_mismatch":
        return f"{where}: must match {ctx.get('pattern', '?')} (got {got})"
    if kind in ("string_too_short", "string_too_long"):
        _, field = _resolve(loc)
        lo = hi = None
        for meta in field.metadata if field is not None else ():
            lo = getattr(meta, "min_length", lo)
            hi = getattr(meta, "max_length", hi)
        return f"{where}: length must be between {lo or 0} and {hi or '∞'} characters (got {got})"
    if kind == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        return f"{where}: {msg}"
    return f"{where}: {err.get('msg', kind)} (got {got})"


# -- CLI: gridctl check-config ----------------------------------------------------------------


def summary(cfg: GridConfig) -> str:
    t = cfg.tasks
    return (
        f"{len(cfg.buses)} buses, {len(cfg.poll_groups)} poll groups, "
        f"tasks fast {t.fast_period_ms} ms / control {t.control_period_ms} ms, "
        f"journal {cfg.journal.path}, "
        f"metrics {'off' if not cfg.metrics.enabled else f'{cfg.metrics.host}:{cfg.metrics.port}'}, "
        f"opcua {cfg.opcua.endpoint if cfg.opcua.enabled else 'off'}"
    )


def add_parser(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a config file without starting anything")
    p.add_argument("file", type=Path, help="TOML config file")
    p.set_defaults(func=_check_config)


def _check_config(args: Any) -> int:
    import sys

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    for warning in cfg.metrics.warnings():
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    problems = [f"opcua.{p}" for p in cfg.opcua.deployment_problems()]
    if problems:
        print(ConfigError(args.file, problems), file=sys.stderr)
        return 2
    print(f"{args.file}: ok: {summary(cfg)}")
    return 0
