import asyncio

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.alarms import AlarmEngine
from controller.bus_stats import BusSnapshot
from controller.commands import CommandLog
from controller.cycle import CycleTask
from controller.exposition import TextExposition
from controller.journal import Journal
from controller.metrics import MetricsServer, Sources, make_registry
from controller.process_image import ProcessImage

from .virtual_cycle_time import VirtualTime


def samples(registry):
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_collector_reads_snapshots_with_bounded_labels(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.open()
    commands = CommandLog(journal)
    cmd = await commands.submit("trip", "bus1/000000000161", who="op", why="test")
    await commands.transition(cmd.id, "sent")
    await commands.transition(cmd.id, "confirmed", reason="read back")
    alarms = AlarmEngine(journal)
    alarms.set("bus_down", "bus/b2", True)
    image = ProcessImage()
    q = image.subscribe("opcua", maxsize=1)
    image.define("a")
    image.write("a", 1)
    image.write("a", 2)
    vt = VirtualTime()
    task = CycleTask("fast", 0.01, spin_s=0, clock=vt.clock, sleep=vt.sleep)
    task.attach("crane", lambda _d: vt.advance(0.002))  # a 2 ms scan every cycle
    task.attach("stop", lambda _d: task.cycles >= 9 and task.request_stop())
    task.start()
    await task.join()
    clock = [100.0]
    buses = [
        BusSnapshot(
            "b1", "dlt645", True, 32, 1, {"ok": 120, "timeout": 3}, busy_s=10.0, uptime_s=20.0
        ),
        BusSnapshot("b2", "modbus_tcp", False, 0, 0, {}, busy_s=0.0, uptime_s=20.0),
    ]
    registry, collector = make_registry(
        Sources(
            tasks=lambda: [task],
            buses=lambda: buses,
            commands=commands,
            alarms=alarms,
            journal=journal,
            image=image,
        )
    )
    collector._clock = lambda: clock[0]
    s = samples(registry)
    assert s[("gridctl_cycle_cycles_total", (("task", "fast"),))] == 10
    assert s[("gridctl_cycle_wakeup_latency_seconds_count", (("task", "fast"),))] == 10
    crane = (("program", "crane"), ("task", "fast"))
    assert s[("gridctl_cycle_program_scans_total", crane)] == 10
    assert s[("gridctl_cycle_program_scan_seconds_total", crane)] == pytest.approx(
        0.020
    )  # 10 × 2 ms
    assert s[("gridctl_cycle_program_scan_max_seconds", crane)] == pytest.approx(0.002)
    assert s[("gridctl_bus_transactions_total", (("bus", "b1"), ("outcome", "ok")))] == 120
    assert s[("gridctl_bus_utilisation_ratio", (("bus", "b1"),))] == 0.5  # first scrape: lifetime
    assert s[("gridctl_bus_connected", (("bus", "b2"), ("protocol", "modbus_tcp")))] == 0
    assert s[("gridctl_bus_quarantined_meters", (("bus", "b1"),))] == 1
    assert (
        s[("gridctl_commands_latency_seconds_count", (("kind", "trip"), ("outcome", "confirmed")))]
        == 1
    )
    assert s[("gridctl_alarms_active", (("severity", "high"),))] == 1
    assert s[("gridctl_queue_dropped_total", (("queue", "opcua"),))] == q.dropped == 1
    assert s[("gridctl_journal_writes_total", ())] >= 3
    # utilisation over the scrape interval
    buses[0].busy_s += 2.5
    clock[0] += 5
    s = samples(registry)
    assert s[("gridctl_bus_utilisation_ratio", (("bus", "b1"),))] == 0.5
    # no label is ever a meter address
    assert not any("000000000161" in str(labels) for _, labels in s)
    journal.close()


async def test_asyncio_server_serves_metrics_and_404():
    registry, collector = make_registry(Sources(info={"name": "t"}))
    server = MetricsServer(registry, collector, port=0)
    port = await server.start()

    async def get(path):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        return data

    ok = await get("/metrics")
    assert ok.startswith(b"HTTP/1.1 200 OK")
    assert b'gridctl_service_info{name="t"} 1.0' in ok
    assert (await get("/")).startswith(b"HTTP/1.1 404")
    await server.stop()
    assert collector.render_time.count == 1


class _Frozen:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


async def test_text_exposition_writes_the_same_bytes_as_prometheus_client(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    journal.open()
    vt = VirtualTime()
    task = CycleTask("fast", 0.01, spin_s=0, clock=vt.clock, sleep=vt.sleep)
    task.attach("stop", lambda _d: task.cycles >= 4 and task.request_stop())
    task.start()
    await task.join()
    odd = 'bus "7"\\back\nslash'  # a bus name needing every escape
    buses = [
        BusSnapshot("b1", "dlt645", True, 32, 1, {"ok": 1e21, "timeout": 3}, 1e-7, 20.0),
        BusSnapshot(odd, "modbus_tcp", False, 0, 0, {"ok": 0.5}, busy_s=0.0, uptime_s=20.0),
    ]
    registry, _ = make_registry(
        Sources(
            tasks=lambda: [task],
            buses=lambda: buses,
            alarms=AlarmEngine(journal),
            journal=journal,
            info={"name": "site", "version": "1.0"},
        )
    )
    families = list(registry.collect())
    assert len(families) > 20
    expected = generate_latest(_Frozen(families))
    exposition = TextExposition()
    assert exposition.render(families) == expected
    assert exposition.render(families) == expected  # from the label cache
    assert b'bus="bus \\"7\\"\\\\back\\nslash"' in expected
    journal.close()


def test_text_exposition_refuses_illegal_names():
    from prometheus_client.core import GaugeMetricFamily

    with pytest.raises(ValueError, match="metric name"):
        TextExposition().render([GaugeMetricFamily("bad-name", "x", value=1)])
    g = GaugeMetricFamily("ok_name", "x", labels=["bad-label"])
    g.add_metric(["v"], 1)
    with pytest.raises(ValueError, match="label name"):
        TextExposition().render([g])
