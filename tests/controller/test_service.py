"""`gridctl run` as a real subprocess: comes up, serves metrics, stops cleanly on SIGTERM."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from asyncua import Client

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_config(tmp_path: Path) -> Path:
    """The demo config on free ports, with the simulator in fast mode."""
    text = (ROOT / "config" / "demo.toml").read_text()
    text = re.sub(r"(?m)^port = 9108", "port = 0", text)  # any free port
    text = text.replace("fast = false", "fast = true")
    text = text.replace("127.0.0.1:4840", f"127.0.0.1:{_free_port()}")
    text = text.replace("127.0.0.1:15020", f"127.0.0.1:{_free_port()}")
    text = text.replace("127.0.0.1:15021", f"127.0.0.1:{_free_port()}")
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


class Running:
    def __init__(self, tmp_path: Path):
        self.cfg = _test_config(tmp_path)
        self.log = tmp_path / "service.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--config", str(self.cfg)],
            cwd=tmp_path,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> re.Match:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}; log:\n{self.text()}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


@pytest.fixture
def service(tmp_path):
    r = Running(tmp_path)
    yield r
    r.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{")[0] != name:
            continue
        got = key[len(name) :].strip("{}")
        if ",".join(sorted(got.split(","))) == want or (not want and not got):
            return float(value)
    raise KeyError(f"{name}{{{want}}} not in metrics")


def test_run_comes_up_serves_metrics_and_stops_on_sigterm(service, tmp_path):
    port = int(service.wait_for_line(r"metrics ready: http://127\.0\.0\.1:(\d+)/metrics").group(1))
    service.wait_for_line(r"service ready")
    for subsystem in ("journal ready", "alarms ready", "tasks ready", "metrics ready", "gc:"):
        assert subsystem in service.text()
    deadline = time.monotonic() + 30
    while metric(text := scrape(port), "gridctl_cycle_cycles_total", task="fast") <= 10:
        assert time.monotonic() < deadline, "the fast task did not run 10 cycles in 30 s"
        time.sleep(0.05)
    # overruns are counted (a figure for bench/cycle.py, not a pass/fail here: CI shares 2 cores)
    assert metric(text, "gridctl_cycle_overruns_total", task="fast").is_integer()
    assert metric(text, "gridctl_cycle_period_seconds", task="control") == 1.0
    assert metric(text, "gridctl_journal_queue_depth").is_integer()
    assert metric(text, "gridctl_alarms_active", severity="high").is_integer()
    assert "gridctl_commands_pending" in text
    # every name follows gridctl_<subsystem>_<name>_<unit>
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert all(re.fullmatch(r"gridctl_[a-z]+_[a-z0-9_]+", n) for n in names), names
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)

    t = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=5) == 0
    assert time.monotonic() - t < 5
    log = service.text()
    assert "new commands refused" in log
    assert "journal flushed and closed" in log
    assert "service stopped" in log and "with errors" not in log
    assert (tmp_path / "var" / "journal.sqlite").exists()


def test_run_starts_every_subsystem_and_stops_on_sigint(service):
    service.wait_for_line(r"service ready")
    text = service.text()
    # the demo's 9 configured buses + the warehouse PLC's bus (from [warehouse] plc)
    for line in ("simulators ready", "field ready: 10 buses", "opcua ready: opc.tcp://"):
        assert line in text
    service.proc.send_signal(signal.SIGINT)
    assert service.proc.wait(timeout=5) == 0


async def _read_meter_over_opcua(endpoint: str, node: str) -> tuple[float, bool]:
    async with Client(endpoint, timeout=10) as client:
        ns = await client.get_namespace_index("urn:gridctl")
        dv = await client.get_node(f"ns={ns};s={node}").read_data_value(raise_on_bad_status=False)
        return dv.Value.Value, dv.StatusCode.is_good()


def test_run_serves_polled_values_over_opcua(service):
    endpoint = service.wait_for_line(r"opcua ready: (opc\.tcp://\S+)").group(1)
    service.wait_for_line(r"service ready")
    node = "buses/bus1/meters/000000001001/voltage_a"
    end = time.monotonic() + 20
    value, good = None, False
    while time.monotonic() < end and not good:
        value, good = asyncio.run(_read_meter_over_opcua(endpoint, node))
        time.sleep(0.5)
    assert good, f"{node} never turned Good over OPC UA"
    assert 180.0 < value < 260.0  # the simulated line voltage, in V
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=5) == 0


async def _trip_and_close_over_opcua(endpoint: str) -> list[tuple[str, bool | None]]:
    """As the demo operator: Arm+Execute trip, wait for the read-back, then direct close."""
    client = Client(endpoint, timeout=10)
    client.set_user("operator")
    client.set_password("demo-operator")
    seen: list[tuple[str, bool | None]] = []
    async with client:
        ns = await client.get_namespace_index("urn:gridctl")
        load = client.get_node(f"ns={ns};s=loads/l1001")
        relay = client.get_node(f"ns={ns};s=loads/l1001/relay_open")
        for kind, want in (("trip", True), ("close_direct", False)):
            token, _ = await load.call_method(f"{ns}:Arm", kind, "demo check")
            command_id = await load.call_method(f"{ns}:Execute", token)
            end = time.monotonic() + 20
            value = None
            while time.monotonic() < end:
                dv = await relay.read_data_value(raise_on_bad_status=False)
                value = dv.Value.Value if dv.StatusCode.is_good() else None
                if value is want:
                    break
                await asyncio.sleep(0.2)
            seen.append((command_id, value))
    return seen


async def _recharge_over_opcua(endpoint: str) -> tuple[float, float, str]:
    client = Client(endpoint, timeout=10)
    client.set_user("operator")
    client.set_password("demo-operator")
    async with client:
        ns = await client.get_namespace_index("urn:gridctl")
        balance = client.get_node(f"ns={ns};s=prepaid/accounts/acc2005/balance")

        async def read() -> float:
            end = time.monotonic() + 20
            while time.monotonic() < end:
                dv = await balance.read_data_value(raise_on_bad_status=False)
                if dv.StatusCode.is_good():
                    return float(dv.Value.Value)
                await asyncio.sleep(0.2)
            raise AssertionError("prepaid balance never turned Good")

        before = await read()
        load = client.get_node(f"ns={ns};s=loads/l2005")
        ref = await load.call_method(f"{ns}:Recharge", 10.0, "counter purchase")
        end = time.monotonic() + 10
        after = before
        while time.monotonic() < end and after < before + 9:
            after = await read()
            await asyncio.sleep(0.2)
        return before, after, ref


async def _set_demand_limit(endpoint: str, user: str, password: str) -> float:
    client = Client(endpoint, timeout=10)
    client.set_user(user)
    client.set_password(password)
    async with client:
        ns = await client.get_namespace_index("urn:gridctl")
        group = client.get_node(f"ns={ns};s=demand/groups/feeder1")
        await group.call_method(f"{ns}:SetDemandLimit", 20.0, "evening peak plan")
        limit = client.get_node(f"ns={ns};s=demand/groups/feeder1/limit_kw")
        end = time.monotonic() + 10
        value = 0.0
        while time.monotonic() < end:
            dv = await limit.read_data_value(raise_on_bad_status=False)
            value = dv.Value.Value if dv.StatusCode.is_good() else 0.0
            if value == 20.0:
                break
            await asyncio.sleep(0.2)
        return value


def test_engineer_sets_a_demand_limit_and_operator_may_not(service):
    from asyncua.ua.uaerrors import BadUserAccessDenied

    endpoint = service.wait_for_line(r"opcua ready: (opc\.tcp://\S+)").group(1)
    service.wait_for_line(r"service ready")
    with pytest.raises(BadUserAccessDenied):
        asyncio.run(_set_demand_limit(endpoint, "operator", "demo-operator"))
    assert asyncio.run(_set_demand_limit(endpoint, "engineer", "demo-engineer")) == 20.0
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=5) == 0


def test_operator_recharges_a_prepaid_account_over_opcua(service):
    endpoint = service.wait_for_line(r"opcua ready: (opc\.tcp://\S+)").group(1)
    service.wait_for_line(r"service ready")
    before, after, ref = asyncio.run(_recharge_over_opcua(endpoint))
    # energy is billed meanwhile, so the balance rises by the purchase less a little usage
    assert before + 9.0 < after <= before + 10.0, (before, after)
    assert ref.startswith("opcua-")
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=5) == 0


def test_operator_trips_and_closes_a_demo_load_over_opcua(service):
    endpoint = service.wait_for_line(r"opcua ready: (opc\.tcp://\S+)").group(1)
    service.wait_for_line(r"service ready")
    seen = asyncio.run(_trip_and_close_over_opcua(endpoint))
    assert [v for _, v in seen] == [True, False], seen
    assert all(cid for cid, _ in seen)
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=5) == 0


def test_run_polls_the_demo_plant(service):
    port = int(service.wait_for_line(r"metrics ready: http://127\.0\.0\.1:(\d+)/metrics").group(1))
    end = time.monotonic() + 15
    polls = 0.0
    while time.monotonic() < end:
        text = scrape(port)
        polls = sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("gridctl_bus_transactions_total{") and 'outcome="ok"' in line
        )
        if polls > 0:
            break
        time.sleep(0.5)
    assert polls > 0
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=5) == 0


def test_bad_config_exits_2_with_message(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[tasks]\nfast_period_ms = 0\n")
    r = subprocess.run(
        [sys.executable, "-m", "controller", "run", "--config", str(bad)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"{bad}: tasks.fast_period_ms: must be between 1 and 1000 (got 0)"
