"""Bad input rows the per-module tables do not have yet: precise error, nothing changed.

The main tables live in tests/controller/test_config.py, tests/drivers/test_config.py,
tests/opcua_server/test_methods.py and tests/controller/test_frame_tool.py; these
are the rows found missing: non-finite numbers, a bus without or with an unknown
protocol, a file that is not a journal, and OPC UA calls with the wrong number or
kind of arguments.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from asyncua import ua

from controller.config import ConfigError, load_config
from tests.opcua_server.conftest import client_for, nid, ns_of, start_server  # noqa: F401
from tests.opcua_server.test_methods import LOAD, FakeAlarms, FakeSink, expect

ROOT = Path(__file__).resolve().parents[2]
SC = ua.StatusCodes
BUS = '[[buses]]\nname = "b1"\nport = "/dev/ttyUSB9"\n'

# (file text, a fragment every message line must hold)
CONFIG_ROWS = [
    ("[service]\nstop_timeout_s = nan\n", "service.stop_timeout_s: must be between 0.5 and 30.0"),
    ("[opcua]\nmin_publishing_interval_ms = inf\n", "opcua.min_publishing_interval_ms: must be"),
    ('[opcua]\nendpoint = "opc.tcp://h:99999/x"\n', "opcua.endpoint: endpoint port"),
    ("[journal]\nqueue_limit = 1e3\n", "journal.queue_limit: must be an integer"),
    ('[poll_groups.x]\nperiod_s = nan\nitems = ["00010000"]\n', "poll_groups.x.period_s"),
    ('[poll_groups.x]\nperiod_s = inf\nitems = ["00010000"]\n', "poll_groups.x.period_s"),
    (BUS + 'protocol = "dlt645"\nresponse_timeout_s = nan\n', "response_timeout_s must be"),
    (BUS + 'protocol = "dlt645"\nquarantine = { initial_s = nan }\n', "quarantine.initial_s"),
    ("buses = [3]\n", "buses[0]: must be a table"),
]

# The bus table is a union chosen by `protocol`: a missing or unknown protocol is
# reported on that key, with the allowed values.
PROTOCOL_ROWS = [
    pytest.param(
        BUS,
        "buses[0].protocol: required, missing",
    ),
    pytest.param(
        BUS + 'protocol = "dlt698"\n',
        "buses[0].protocol: must be one of 'dlt645', 'modbus_tcp' or 'modbus_rtu'",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), CONFIG_ROWS + PROTOCOL_ROWS)
def test_bad_config_rows(tmp_path, text, fragment):
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(fragment in p for p in info.value.problems), info.value.problems


def gridctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_results_export_on_a_file_that_is_not_a_journal(tmp_path):
    bogus = tmp_path / "journal.sqlite"
    bogus.write_bytes(b"definitely not sqlite" * 50)
    proc = gridctl("results", "export", "B1", "--db", str(bogus))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2 and "--db" in proc.stderr


def test_cli_paths_that_are_not_files(tmp_path):
    for args in (
        ("check-config", str(tmp_path)),
        ("plan", "--config", str(tmp_path / "nope.toml")),
    ):
        proc = gridctl(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "cannot read" in proc.stderr, proc.stderr


@pytest.fixture
async def env(start_server):  # noqa: F811
    sink = FakeSink()
    srv = await start_server(commands=sink, alarms=FakeAlarms())
    return srv, sink


async def test_method_argument_rows(env):
    srv, sink = env
    async with client_for(srv, "otto") as client:
        ns = await ns_of(client)
        load = client.get_node(nid(ns, LOAD))
        arm = f"{ns}:Arm"
        # one argument too many
        await expect(SC.BadTooManyArguments, load.call_method(arm, "trip", "r", "extra"))
        # the reason is text, not a number or nothing
        await expect(SC.BadInvalidArgument, load.call_method(arm, "trip", 7))
        await expect(
            SC.BadInvalidArgument,
            load.call_method(arm, "trip", ua.Variant(None, ua.VariantType.String)),
        )
        # an Execute token of the wrong type, and none at all
        await expect(SC.BadInvalidArgument, load.call_method(f"{ns}:Execute", 12345))
        await expect(SC.BadArgumentsMissing, load.call_method(f"{ns}:Execute"))
    assert sink.requests == []  # nothing reached the command log


@pytest.mark.parametrize("url", ["http://127.0.0.1:4840", "opc.tcp://127.0.0.1", "opc.tcp://h:0/x"])
def test_hmi_refuses_an_endpoint_that_is_not_opc_tcp(url):
    proc = gridctl("hmi", "--url", url)
    assert proc.returncode == 2
    assert "--url: must be opc.tcp://HOST:PORT" in proc.stderr and repr(url) in proc.stderr


@pytest.mark.parametrize(
    ("cpus", "message"),
    [
        ("one", "must be a Linux CPU list like 1, 1-3 or 0,2 (got 'one')"),
        ("2-1", "range '2-1' runs backwards (got '2-1')"),
        ("4096", "CPU 4096 is not available on this machine (allowed: "),
    ],
)
def test_hmi_refuses_a_cpu_list_it_cannot_use(cpus, message):
    proc = gridctl("hmi", "--cpus", cpus)
    assert proc.returncode == 2
    assert f"argument --cpus: {message}" in proc.stderr
