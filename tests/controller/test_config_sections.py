"""Rules every config table shares: one strict base, bus defaults, secrets from outside."""

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from controller.config import ConfigError, GridConfig, load_config
from controller.config_model import ConfigModel
from controller.verification.scheme import Scheme

ROOT = Path(__file__).resolve().parents[2]


def line(extra: str = "") -> str:
    """The smallest [line] that loads (one unit of one station, one meter type), plus ``extra``."""
    return LINE_HEAD + extra + LINE_TYPES


LINE_HEAD = """
[line]
units = [{ id = 1, stations = 1 }]
"""
LINE_TYPES = """
[line.meter_types.m]
name = "m"
accuracy_class = "1"
un = 220
ib = 5
imax = 60
constant = 1200
"""


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


# -- one strict base ----------------------------------------------------------------------------


def _models(tp: typing.Any, seen: set[type]) -> None:
    """Every pydantic model reachable from ``tp`` through fields, lists, dicts and unions."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            return
        seen.add(tp)
        for field in tp.model_fields.values():
            _models(field.annotation, seen)
        return
    for arg in typing.get_args(tp):
        _models(arg, seen)


def test_every_config_table_derives_from_the_one_strict_base():
    seen: set[type] = set()
    _models(GridConfig, seen)
    _models(Scheme, seen)
    # buses (2 kinds), meters, poll groups, loads, line, warehouse, opcua users ... are all reached
    assert len(seen) > 30
    loose = sorted(m.__name__ for m in seen if not issubclass(m, ConfigModel))
    assert loose == []
    for model in seen:
        assert model.model_config.get("strict") is True, model.__name__
        assert model.model_config.get("extra") == "forbid", model.__name__


# A quoted number or boolean is refused in every table alike, naming the field and
# the type wanted. Before the common base, the ones marked "accepted" loaded.
QUOTED = [
    # accepted before: opcua, warehouse, loads, line, buses and sim were lax
    ('[opcua]\nqueue_size = "100000"\n', "opcua.queue_size: must be an integer (got '100000')"),
    ('[opcua]\nenabled = "true"\n', "opcua.enabled: must be true or false (got 'true')"),
    (
        '[warehouse]\nbays = "10"\n',
        "warehouse.bays: must be an integer (got '10')",
    ),
    (
        '[warehouse]\npoll_s = "0.05"\n',
        "warehouse.poll_s: must be a number (got '0.05')",
    ),
    (
        '[loads]\nmismatch_grace_s = "180"\n',
        "loads.mismatch_grace_s: must be a number (got '180')",
    ),
    (line('time_scale = "100"\n'), "line.time_scale: must be a number (got '100')"),
    (
        '[[buses]]\nname = "b"\nprotocol = "dlt645"\nport = "/dev/ttyS0"\nretries = "3"\n',
        "buses[0].retries: must be an integer (got '3')",
    ),
    (
        '[[buses]]\nname = "b"\nprotocol = "dlt645"\nport = "/dev/ttyS0"\nbaud = "2400"\n',
        "buses[0].baud: must be an integer (got '2400')",
    ),
    ('[sim]\nseed = "7"\n', "sim.seed: must be an integer (got '7')"),
    ("[sim]\nenabled = 1\n", "sim.enabled: must be true or false (got 1)"),
    # refused before too: the runtime tables were strict already
    ('[metrics]\nport = "9108"\n', "metrics.port: must be an integer (got '9108')"),
]


@pytest.mark.parametrize(("text", "expected"), QUOTED)
def test_quoted_numbers_are_refused_in_every_table(tmp_path, text, expected):
    assert _problems(tmp_path, text) == [expected]


def test_text_typed_values_still_load(tmp_path):
    """Paths, decimal money and enumerations can only be written as text in TOML."""
    path = tmp_path / "site.toml"
    path.write_text(
        line()
        + """
[journal]
path = "var/j.sqlite"
[[loads.tariffs]]
name = "flat"
default_price = "0.55"
[[opcua.users]]
name = "op"
role = "operator"
password_hash = "scrypt$16384$8$1$AA==$AA="
"""
    )
    cfg = load_config(path)
    assert str(cfg.journal.path) == "var/j.sqlite"
    assert str(cfg.loads.tariffs[0].default_price) == "0.55"
    assert cfg.opcua.users[0].role == "operator"
    assert cfg.line is not None and cfg.line.meter_types["m"].accuracy_class == "1"


# -- every key accepted is read -----------------------------------------------------------------

# Read from the raw tables, not as attributes: a meter_block is expanded into
# `meters`, and bus_defaults merged into each bus's table, before validation.
READ_RAW = {
    ("Dlt645BusConfig", "meter_block"),
    ("FieldConfig", "bus_defaults"),
    ("GridConfig", "bus_defaults"),
    ("BusDefaults", "dlt645"),
    ("BusDefaults", "modbus_rtu"),
    ("BusDefaults", "modbus_tcp"),
}


def test_every_config_key_is_read_by_some_code():
    """A name-level witness: each field of each config table is read as ``.field``
    somewhere in the product. A key that validates but is never read is a promise
    to the engineer that nothing keeps (before: rs485, pulse_channel,
    temperature_sensor, standard_class, scan_timeout_s, operator_code, comm_timeout_s)."""
    seen: set[type] = set()
    _models(GridConfig, seen)
    _models(Scheme, seen)
    sources = [
        p.read_text()
        for package in ("controller", "drivers", "opcua_server", "hmi")
        for p in (ROOT / package).rglob("*.py")
    ]
    unread = sorted(
        (model.__name__, name)
        for model in seen
        for name in model.model_fields
        if (model.__name__, name) not in READ_RAW
        and not any(re.search(rf"\.{name}\b", text) for text in sources)
    )
    assert unread == []


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            line().replace(
                "stations = 1 }", 'stations = [{ id = 1, position = 1, rs485 = "x" }] }'
            ),
            "rs485",
        ),
        (line().replace("stations = 1 }", 'stations = 1, source = "sim:source1" }'), "source"),
        (
            line().replace("stations = 1 }", 'stations = 1, standard_class = "0.05" }'),
            "standard_class",
        ),
        (line('operator_code = "00000000"\n'), "operator_code"),
        (line("comm_timeout_s = 1.0\n"), "comm_timeout_s"),
        (line('handling = { plc = "sim" }\n'), "plc"),
        (line("handling = { scan_timeout_s = 3 }\n"), "scan_timeout_s"),
    ],
)
def test_keys_that_nothing_reads_are_refused(tmp_path, text, key):
    (problem,) = _problems(tmp_path, text)
    assert problem.split(":")[0].endswith(f".{key}")
    assert "unknown key" in problem


# -- bus defaults per protocol ------------------------------------------------------------------

DEFAULTS = """
[bus_defaults.dlt645]
baud = 9600
retries = 5
quarantine = { initial_s = 10, max_s = 300 }

[[buses]]
name = "own"
protocol = "dlt645"
port = "/dev/ttyUSB0"
baud = 1200
quarantine = { max_s = 60 }

[[buses]]
name = "inherits"
protocol = "dlt645"
port = "/dev/ttyUSB1"

[[buses]]
name = "lct"
protocol = "modbus_tcp"
port = "tcp://10.0.0.1:502"
"""


def test_bus_value_beats_protocol_default_beats_built_in(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(DEFAULTS)
    cfg = load_config(path)
    own, inherits, lct = (cfg.bus(n) for n in ("own", "inherits", "lct"))
    # own value > protocol default: 1200 set on the bus, 9600 in bus_defaults
    assert own.baud == 1200
    assert inherits.baud == 9600
    # protocol default > built-in: retries 5 from bus_defaults, built-in 3
    assert (own.retries, inherits.retries) == (5, 5)
    # built-in where neither sets it: preamble 4 FE bytes
    assert (own.preamble, inherits.preamble) == (4, 4)
    # a table is merged key by key: initial_s 10 inherited, max_s 60 the bus's own,
    # factor the built-in 2
    assert (own.quarantine.initial_s, own.quarantine.max_s, own.quarantine.factor) == (10, 60, 2)
    assert (inherits.quarantine.initial_s, inherits.quarantine.max_s) == (10, 300)
    # another protocol's bus is untouched: Modbus built-ins, baud 9600 and retries 3
    assert (lct.protocol, lct.retries, lct.quarantine.initial_s) == ("modbus_tcp", 3, 5.0)


def test_demo_buses_inherit_their_line_settings():
    cfg = load_config(ROOT / "config" / "demo.toml")
    dlt = [b for b in cfg.buses if b.protocol == "dlt645"]
    assert len(dlt) == 8
    for bus in dlt:
        # the demo's eight lines: 2400 8E1, 4 FE, 50 ms meters, quarantine 30..900 s
        assert (bus.baud, bus.parity, bus.stop_bits, bus.preamble) == (2400, "E", 1, 4)
        assert bus.response_delay_s == 0.05
        assert (bus.quarantine.initial_s, bus.quarantine.max_s) == (30, 900)
        assert len(bus.meters) == 12


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[bus_defaults.dlt645]\nbaud_rate = 2400\n",
            "bus_defaults.dlt645: unknown key 'baud_rate' (allowed: baud, byte_size, "
            "byte_timeout_s, clock_write, max_utilisation, parity, preamble, quarantine, "
            "reconnect_initial_s, reconnect_max_s, response_delay_s, response_timeout_s, "
            "retries, send_interval_s, stop_bits)",
        ),
        (
            '[bus_defaults.modbus_tcp]\nport = "tcp://10.0.0.1:502"\n',
            "bus_defaults.modbus_tcp: unknown key 'port' (allowed: baud, byte_size, "
            "byte_timeout_s, parity, quarantine, reconnect_initial_s, reconnect_max_s, "
            "response_timeout_s, retries, stop_bits)",
        ),
        (
            "[bus_defaults.dlt645]\npreamble = 9\n",
            "bus_defaults.dlt645: preamble: preamble must be 0..4 FE bytes, got 9",
        ),
        (
            '[bus_defaults.dlt645]\nretries = "3"\n',
            "bus_defaults.dlt645: retries: Input should be a valid integer",
        ),
        (
            "[bus_defaults.iec104]\nretries = 3\n",
            "bus_defaults.iec104: unknown key (allowed: dlt645, modbus_rtu, modbus_tcp)",
        ),
    ],
)
def test_bad_bus_defaults_name_the_key(tmp_path, text, expected):
    bus = '\n[[buses]]\nname = "b"\nprotocol = "dlt645"\nport = "/dev/ttyUSB0"\n'
    assert _problems(tmp_path, text + bus) == [expected]


# -- secrets from the environment or a file -----------------------------------------------------

METER = """
[poll_groups.energy]
period_s = 900
items = ["00010000"]

[[buses]]
name = "feeder1"
protocol = "dlt645"
port = "/dev/ttyUSB0"

[[buses.meters]]
address = "000000000161"
groups = ["energy"]
password = {password}
"""


def test_meter_password_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDCTL_TEST_FEEDER1_PW", "a1b2c3")
    path = tmp_path / "site.toml"
    path.write_text(METER.replace("{password}", '{ env = "GRIDCTL_TEST_FEEDER1_PW" }'))
    # read from the variable and upper-cased like a written one
    assert load_config(path).bus("feeder1").meters[0].password == "A1B2C3"


def test_meter_password_from_file(tmp_path):
    secret = tmp_path / "feeder1.pw"
    secret.write_text("123456\n")  # an editor's trailing newline is not part of it
    path = tmp_path / "site.toml"
    path.write_text(METER.replace("{password}", f'{{ file = "{secret}" }}'))
    assert load_config(path).bus("feeder1").meters[0].password == "123456"


def test_meter_block_password_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDCTL_TEST_BLOCK_PW", "00AA00")
    path = tmp_path / "site.toml"
    path.write_text(
        '[[buses]]\nname = "b"\nprotocol = "dlt645"\nport = "/dev/ttyUSB0"\n'
        'meter_block = { first_address = "000000001001", count = 2, '
        'password = { env = "GRIDCTL_TEST_BLOCK_PW" } }\n'
    )
    assert [m.password for m in load_config(path).bus("b").meters] == ["00AA00", "00AA00"]


def test_missing_secret_is_an_error_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("GRIDCTL_TEST_UNSET", raising=False)
    text = METER.replace("{password}", '{ env = "GRIDCTL_TEST_UNSET" }')
    assert _problems(tmp_path, text) == [
        "buses[0].meters[0].password: password: environment variable GRIDCTL_TEST_UNSET is not set"
    ]
    missing = tmp_path / "nope.pw"
    text = METER.replace("{password}", f'{{ file = "{missing}" }}')
    assert _problems(tmp_path, text) == [
        f"buses[0].meters[0].password: password: cannot read file {missing}: "
        "No such file or directory"
    ]
    text = METER.replace("{password}", '{ vault = "x" }')
    assert _problems(tmp_path, text) == [
        'buses[0].meters[0].password: password must be "text", { env = "VARIABLE" } or '
        "{ file = \"PATH\" }, got {'vault': 'x'}"
    ]


def test_a_bad_secret_is_refused_without_echoing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDCTL_TEST_FEEDER1_PW", "hunter2")
    text = METER.replace("{password}", '{ env = "GRIDCTL_TEST_FEEDER1_PW" }')
    (problem,) = _problems(tmp_path, text)
    assert problem == (
        "buses[0].meters[0].password: password must be 6 hex digits, got 7 characters (not all hex)"
    )
    assert "hunter2" not in problem


ESAM = '[esam]\nadapter = "test-hmac"\noptions = {{ key = {key} }}\n'


def test_esam_key_from_environment_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GRIDCTL_TEST_ESAM_KEY", "00112233445566778899AABBCCDDEEFF")
    path = tmp_path / "site.toml"
    path.write_text(ESAM.format(key='{ env = "GRIDCTL_TEST_ESAM_KEY" }'))
    assert load_config(path).esam.options == {"key": "00112233445566778899AABBCCDDEEFF"}
    keyfile = tmp_path / "esam.key"
    keyfile.write_text("A0A1A2A3\n")
    path.write_text(ESAM.format(key=f'{{ file = "{keyfile}" }}'))
    assert load_config(path).esam.options == {"key": "A0A1A2A3"}


def test_esam_key_missing_names_the_option(tmp_path, monkeypatch):
    monkeypatch.delenv("GRIDCTL_TEST_UNSET", raising=False)
    assert _problems(tmp_path, ESAM.format(key='{ env = "GRIDCTL_TEST_UNSET" }')) == [
        "esam.options: key: environment variable GRIDCTL_TEST_UNSET is not set"
    ]


# -- the site example ---------------------------------------------------------------------------


def _enable_templates(text: str) -> str:
    """The example with its commented [line] and [warehouse] templates switched on,
    as its comments tell the engineer: remove the leading "# " of each line."""
    out: list[str] = []
    template = False
    for row in text.splitlines():
        if row.startswith("# Template: remove the leading"):
            template = True
            continue
        if template and (row.startswith("# ") or row == "#"):
            out.append(row[2:])
            continue
        if template and row.startswith("#"):
            continue  # the rest of the template's own explanation
        template = False
        out.append(row)
    return "\n".join(out) + "\n"


def test_site_example_fails_check_config_only_for_its_missing_users():
    cfg = load_config(ROOT / "config" / "site-example.toml")
    assert cfg.opcua.deployment_problems() == [
        'users: a secure endpoint (no "None" policy) needs at least one user (name, role, '
        "password_hash from `python -m opcua_server.users hash`), or set enabled = false"
    ]
    # the [loads] template is live and refers to the example's own meters and terminal
    assert [x.name for x in cfg.loads.loads] == ["house1", "house2", "lct1-out1"]
    assert cfg.loads.groups[0].dry_run
    assert cfg.bus("feeder1").baud == 2400  # from [bus_defaults.dlt645]
    assert cfg.bus("feeder1").response_delay_s == 0.15  # its own


def test_site_example_templates_load_once_uncommented(tmp_path):
    text = _enable_templates((ROOT / "config" / "site-example.toml").read_text())
    path = tmp_path / "site.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.line is not None and cfg.warehouse is not None
    assert cfg.line.station_ids == list(range(1, 25))
    assert cfg.warehouse.plc_endpoint == ("10.1.2.4", 502)
    # 2 rows x 20 bays x 8 levels
    assert cfg.warehouse.slot_count == 320
