import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.config import ConfigError, GridConfig, load_config, validate_config
from controller.cpu_affinity import format_cpu_list

ROOT = Path(__file__).resolve().parents[2]

# (file text, expected message lines after "FILE: ")
BAD_CONFIGS = [
    ("[tasks]\nfast_period_ms = 0\n", ["tasks.fast_period_ms: must be between 1 and 1000 (got 0)"]),
    (
        "[tasks]\ncontrol_period_ms = 100000\n",
        ["tasks.control_period_ms: must be between 10 and 60000 (got 100000)"],
    ),
    (
        "[tasks]\nfast_perod_ms = 10\n",
        [
            "tasks.fast_perod_ms: unknown key (allowed: control_hold_us, control_period_ms, "
            "control_spin_us, cpus, fast_hold_us, fast_period_ms, fast_spin_us, gc, "
            "gc_backstop_threshold, gc_freeze, gc_young_threshold, gil_switch_interval_us, "
            "overrun, realtime_priority, stats_window, timer)"
        ],
    ),
    (
        "[tasks]\nfast_period_ms = 5\nfast_spin_us = 5000\n",
        ["tasks.fast_spin_us: must be less than fast_period_ms in µs (5000) (got 5000)"],
    ),
    (
        "[tasks]\nfast_spin_us = 200\nfast_hold_us = 300\n",
        ["tasks.fast_hold_us: must be at most fast_spin_us (200) (got 300)"],
    ),
    (
        '[tasks]\ngc = "manual"\n',
        ["tasks.gc: must be one of 'quiet' or 'automatic' (got 'manual')"],
    ),
    ('[tasks]\noverrun = "catch-up"\n', ["tasks.overrun: must be one of 'skip' (got 'catch-up')"]),
    ('[tasks]\nfast_period_ms = "10"\n', ["tasks.fast_period_ms: must be an integer (got '10')"]),
    ("[tasks]\nfast_period_ms = 2.5\n", ["tasks.fast_period_ms: must be an integer (got 2.5)"]),
    ("[tasks]\ngc_freeze = 1\n", ["tasks.gc_freeze: must be true or false (got 1)"]),
    ("tasks = 3\n", ["tasks: must be a table (got 3)"]),
    (
        "[bogus]\nx = 1\n",
        [
            "bogus: unknown key (allowed: bus_defaults, buses, esam, journal, line, loads, metrics, opcua, "
            "poll_groups, service, sim, site, tasks, warehouse)"
        ],
    ),
    (
        '[site]\ntimezone = "Beijing"\n',
        [
            "site.timezone: must be an IANA time zone name such as 'Asia/Shanghai' or 'UTC' "
            "(got 'Beijing')"
        ],
    ),
    ("[site]\ntimezone = 8\n", ["site.timezone: must be a string (got 8)"]),
    (
        "[tasks]\nrealtime_priority = 100\n",
        ["tasks.realtime_priority: must be between 0 and 99 (got 100)"],
    ),
    ("[metrics]\nport = 70000\n", ["metrics.port: must be between 0 and 65535 (got 70000)"]),
    (
        '[metrics]\nserver = "nginx"\n',
        ["metrics.server: must be one of 'asyncio' (got 'nginx')"],
    ),
    (
        '[opcua]\nendpoint = "http://localhost:4840"\n',
        ["opcua.endpoint: endpoint must be opc.tcp://HOST:PORT/PATH, got 'http://localhost:4840'"],
    ),
    (
        '[service]\nlog_level = "verbose"\n',
        ["service.log_level: must be one of 'DEBUG', 'INFO', 'WARNING' or 'ERROR' (got 'verbose')"],
    ),
    (
        "[service]\nstop_timeout_s = 60\n",
        ["service.stop_timeout_s: must be between 0.5 and 30.0 (got 60)"],
    ),
    (
        "[journal]\nqueue_limit = 1\n",
        ["journal.queue_limit: must be between 10 and 1000000 (got 1)"],
    ),
    (
        "[journal]\npath = 3\nbatch_max = 0\n",
        [
            "journal.path: must be a path string (got 3)",
            "journal.batch_max: must be between 1 and 10000 (got 0)",
        ],
    ),
    (
        "[tasks\n",
        ["line 1, column 7: TOML syntax error: Expected ']' at the end of a table declaration"],
    ),
    ("a = \n", ["line 1, column 5: TOML syntax error: Invalid value"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CONFIGS)
def test_bad_config_gives_precise_message(tmp_path, text, expected):
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [f"{path}: {line}" for line in expected]
    assert info.value.problems == expected


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        load_config(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "x.toml"
    path.write_bytes(b"a = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("name", ["demo.toml", "site-example.toml"])
def test_shipped_configs_are_valid(name):
    cfg = load_config(ROOT / "config" / name)
    assert isinstance(cfg, GridConfig)
    assert cfg.tasks.overrun == "skip"


def test_demo_defaults_match_design():
    cfg = load_config(ROOT / "config" / "demo.toml")
    assert cfg.tasks.fast_period_ms == 10
    assert cfg.tasks.control_period_ms == 1000
    assert (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9108)
    assert cfg.opcua.endpoint == "opc.tcp://127.0.0.1:4840/gridctl"
    assert not cfg.journal.path.is_absolute()
    assert cfg.journal.path.parts[0] == "var"
    assert cfg.sim.enabled


def test_demo_keeps_runtime_tables_before_field_marker():
    text = (ROOT / "config" / "demo.toml").read_text()
    marker = text.index("# --- field: buses, poll groups, simulated plant ---")
    for table in ("[service]", "[tasks]", "[journal]", "[metrics]", "[opcua]"):
        assert text.index(table) < marker


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("")
    assert load_config(path) == GridConfig()


def test_check_config_cli(tmp_path):
    good = subprocess.run(
        [sys.executable, "-m", "controller", "check-config", str(ROOT / "config" / "demo.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert good.returncode == 0, good.stderr
    assert "ok:" in good.stdout
    bad_path = tmp_path / "bad.toml"
    bad_path.write_text("[tasks]\nfast_period_ms = 0\n")
    bad = subprocess.run(
        [sys.executable, "-m", "controller", "check-config", str(bad_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == f"{bad_path}: tasks.fast_period_ms: must be between 1 and 1000 (got 0)"
    )


# [tasks] cpus is checked against the CPUs of the machine the config is loaded on.
CPUS = sorted(os.sched_getaffinity(0))
HAVE = format_cpu_list(CPUS)


def _tasks_cpus_problems(tmp_path: Path, value: str) -> list[str]:
    path = tmp_path / "x.toml"
    path.write_text(f"[tasks]\ncpus = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_tasks_cpus_absent_or_empty_means_no_pinning(tmp_path):
    assert GridConfig().tasks.cpus == []
    path = tmp_path / "x.toml"
    path.write_text("[tasks]\ncpus = []\n")
    assert load_config(path).tasks.cpus == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", "tasks.cpus: must be an array (got 3)"),
        ('"0-1"', "tasks.cpus: must be an array (got '0-1')"),
        ('["0"]', "tasks.cpus[0]: must be an integer (got '0')"),
        (
            "[4096]",
            f"tasks.cpus: CPU 4096 is not available on this machine (allowed: {HAVE}) (got 4096)",
        ),
        ("[-1]", f"tasks.cpus: CPU -1 is not available on this machine (allowed: {HAVE}) (got -1)"),
    ],
)
def test_tasks_cpus_errors_name_the_field_and_what_is_allowed(tmp_path, value, expected):
    assert _tasks_cpus_problems(tmp_path, value) == [expected]


def test_tasks_cpus_must_leave_a_cpu_for_everything_else(tmp_path):
    taken = "[" + ", ".join(map(str, CPUS)) + "]"
    if len(CPUS) == 1:
        expected = (
            f"tasks.cpus: this machine has a single CPU ({HAVE}): nothing to isolate the "
            "tasks from; leave it empty"
        )
    else:
        expected = (
            f"tasks.cpus: must leave at least one CPU of this machine ({HAVE}) for the other "
            f"threads and processes (got {HAVE})"
        )
    assert _tasks_cpus_problems(tmp_path, taken) == [expected]


@pytest.mark.skipif(len(CPUS) < 2, reason="isolation needs at least 2 CPUs")
def test_tasks_cpus_one_of_several_is_accepted_and_duplicates_are_not(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text(f"[tasks]\ncpus = [{CPUS[-1]}]\n")
    assert load_config(path).tasks.cpus == [CPUS[-1]]
    assert _tasks_cpus_problems(tmp_path, f"[{CPUS[0]}, {CPUS[0]}]") == [
        f"tasks.cpus: must not name a CPU twice (got [{CPUS[0]}, {CPUS[0]}])"
    ]


def test_site_timezone_defaults_to_the_host_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/Chicago")
    time.tzset()
    try:
        assert validate_config({}).site.timezone == "America/Chicago"
        cfg = validate_config({"site": {"timezone": "Asia/Shanghai"}})
        assert cfg.site.tz.key == "Asia/Shanghai"
    finally:
        monkeypatch.undo()
        time.tzset()
