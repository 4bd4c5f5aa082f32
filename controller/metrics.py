"""Prometheus metrics: a collector that reads snapshots at scrape time.

Publishers never own state: nothing here is updated by the control path.
Each scrape asks the cycle tasks, the field plant, the command log, the alarm
engine, the journal and the queues for a snapshot and renders it. Names follow
``gridctl_<subsystem>_<name>_<unit>``; labels are bounded (task, bus, queue,
command kind × outcome, severity — never a meter).

Serving
    ``asyncio`` (default): a minimal HTTP handler on the service's own loop.
    Rendering is one loop step; the handler first waits for the fast task's
    idle time (right after a cycle ends), so the step lands where it has the
    most room before the next deadline, and it sees consistent state (no
    other thread mutates what it reads).

    ``thread``: prometheus_client's own HTTP server in a thread. Rendering
    there competes for the GIL (CPython hands it over every
    ``sys.getswitchinterval()``, 5 ms) and reads state another thread mutates.

    Measured with ``bench/cycle.py`` (3000 cycles each, SCHED_FIFO, 2 shared
    cores, one scrape per second): fast-task wake-up p99 / p99.9 were
    64 / 330 µs (asyncio, before the control task got its phase offset) and
    26 / 188 µs (thread); after the phase offset, asyncio gave 12.5 / 87 µs.
    Thirty scrapes per run is too few to rank the two; the asyncio server
    stays the default for the consistent reads and can be switched per site
    with ``[metrics] server``. Compare both again with the plant polling
    before changing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from controller.cycle import BUCKETS, CycleTask, Series, Summary
from controller.exposition import TextExposition

log = logging.getLogger("gridctl.metrics")

RECENT = 1024  # samples behind the *_recent_seconds gauges (~10 s of the fast task)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def _hist_buckets(summary: Summary) -> list[tuple[str, float]]:
    return [(_le(b), float(c)) for b, c in summary.buckets]


@dataclass
class Sources:
    """What the collector reads; every entry optional (a part not running is simply absent)."""

    tasks: Callable[[], Iterable[CycleTask]] = lambda: ()
    buses: Callable[[], Iterable[Any]] = lambda: ()  # drivers.bus_stats.BusSnapshot
    commands: Any = None  # controller.commands.CommandLog
    alarms: Any = None  # controller.alarms.AlarmEngine
    journal: Any = None  # controller.journal.Journal
    image: Any = None  # controller.process_image.ProcessImage
    queues: Callable[[], Iterable[Any]] = lambda: ()  # objects with name, maxsize, dropped, len()
    gc: Callable[[], Any] = lambda: None  # controller.gc_pacing.QuietGc when running
    # opcua_server.server_process.OpcUaServerProcess when the server runs in its own process
    opcua_process: Callable[[], Any] = lambda: None
    # refused OPC UA logins per reason (opcua_server.login_failures.LoginFailureLog.counts)
    login_failures: Callable[[], dict[str, int] | None] = lambda: None
    info: dict[str, str] = field(default_factory=dict)


class GridCollector(Collector):
    def __init__(self, sources: Sources, clock: Callable[[], float] = time.monotonic) -> None:
        self.sources = sources
        self._clock = clock
        self._prev_busy: dict[str, tuple[float, float]] = {}  # bus -> (clock, busy_s)
        self.scrapes = 0
        self.render_time = Series(1024)

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families depend on what is running

    def collect(self) -> Iterator[Metric]:
        self.scrapes += 1
        yield from self._cycle()
        yield from self._buses()
        yield from self._commands()
        yield from self._alarms()
        yield from self._journal()
        yield from self._queues()
        yield from self._image()
        yield from self._gc()
        yield from self._opcua_process()
        yield from self._login_failures()
        rt = self.render_time
        g = GaugeMetricFamily(
            "gridctl_metrics_render_max_seconds", "Longest metrics rendering (recent window)"
        )
        g.add_metric([], rt.max if rt.count else 0.0)
        yield g
        if self.sources.info:
            info = GaugeMetricFamily(
                "gridctl_service_info", "Service identity", labels=list(self.sources.info)
            )
            info.add_metric(list(self.sources.info.values()), 1.0)
            yield info

    # -- cycle tasks ------------------------------------------------------------------------
    def _cycle(self) -> Iterator[Metric]:
        # percentiles over the last RECENT samples only: a scrape is one loop step and
        # sorting a big window would make it long (the histograms are cumulative anyway)
        tasks = [t.snapshot(RECENT) for t in self.sources.tasks()]
        if not tasks:
            return
        for attr, name, doc in (
            ("latency", "wakeup_latency", "Wake-up latency: actual wake time minus the deadline"),
            ("jitter", "jitter", "Periodic jitter: |actual period - nominal| between runs"),
            ("execution", "execution", "Execution time of the task's programs per cycle"),
        ):
            h = HistogramMetricFamily(f"gridctl_cycle_{name}_seconds", doc, labels=["task"])
            recent = GaugeMetricFamily(
                f"gridctl_cycle_{name}_recent_seconds",
                f"{doc}: min/p50/p99/p999/max over the recent window",
                labels=["task", "stat"],
            )
            for t in tasks:
                s: Summary = getattr(t, attr)
                h.add_metric([t.name], _hist_buckets(s), s.total)
                for stat in ("min", "p50", "p99", "p999", "max"):
                    recent.add_metric([t.name, stat], getattr(s, stat))
            yield h
            yield recent
        for attr, doc in (
            ("cycles", "Cycles run"),
            ("overruns", "Cycles that ended after the next deadline"),
            ("skipped", "Deadlines skipped because of overruns"),
            ("errors", "Program exceptions"),
        ):
            c = CounterMetricFamily(f"gridctl_cycle_{attr}", doc, labels=["task"])
            for t in tasks:
                c.add_metric([t.name], getattr(t, attr))
            yield c
        p = GaugeMetricFamily("gridctl_cycle_period_seconds", "Nominal period", labels=["task"])
        for t in tasks:
            p.add_metric([t.name], t.period_s)
        yield p

    # -- garbage collection at quiet points -------------------------------------------------
    def _gc(self) -> Iterator[Metric]:
        pacer = self.sources.gc()
        if pacer is None:
            return
        c = CounterMetricFamily(
            "gridctl_runtime_gc_collections",
            "Garbage collections run at the fast task's quiet point",
            labels=["generation"],
        )
        for generation, n in enumerate(pacer.collections):
            c.add_metric([str(generation)], n)
        yield c
        s = pacer.pause.summary()
        h = HistogramMetricFamily(
            "gridctl_runtime_gc_pause_seconds", "Pause of each quiet-point garbage collection"
        )
        h.add_metric([], _hist_buckets(s), s.total)
        yield h

    # -- OPC UA server process and its feed --------------------------------------------------
    def _opcua_process(self) -> Iterator[Metric]:
        proc = self.sources.opcua_process()
        if proc is None:
            return
        up = GaugeMetricFamily("gridctl_opcua_server_up", "The OPC UA server process is running")
        up.add_metric([], 1.0 if proc.alive() else 0.0)
        yield up
        restarts = CounterMetricFamily(
            "gridctl_opcua_server_restarts", "OPC UA server process restarts"
        )
        restarts.add_metric([], proc.restarts)
        yield restarts
        feed = proc.feed
        c = feed.counters
        for name, value, doc in (
            ("changes_sent", c.changes_sent, "Image changes sent to the server process"),
            ("frames_sent", c.frames_sent, "Frames sent to the server process"),
            ("dropped_changes", c.dropped, "Changes lost at the full image subscription"),
            ("coalesced_changes", c.coalesced, "Older changes superseded while the server lagged"),
            ("resyncs", c.resyncs, "Full re-syncs of the server's mirror after drops"),
            ("peers_refused", c.peers_refused, "Feed connections refused: not the server process"),
        ):
            m = CounterMetricFamily(f"gridctl_opcua_feed_{name}", doc)
            m.add_metric([], value)
            yield m
        stats = feed.stats()
        q = GaugeMetricFamily("gridctl_opcua_feed_queue_changes", "Changes waiting to be sent")
        q.add_metric([], stats.get("queue_length", 0))
        yield q
        b = GaugeMetricFamily("gridctl_opcua_feed_buffered_bytes", "Bytes in the channel buffer")
        b.add_metric([], stats.get("buffered_bytes", 0))
        yield b
        server = feed.server_stats  # the server process's own counters (every 0.5 s)
        if not server:
            return
        for key, name, doc in (
            ("published", "values_written", "Values written into the address space"),
            ("notified", "values_notified", "Values handed to monitored items"),
        ):
            if key in server:
                m = CounterMetricFamily(f"gridctl_opcua_{name}", doc)
                m.add_metric([], server[key])
                yield m
        if "last_batch_latency_s" in server:
            lat = GaugeMetricFamily(
                "gridctl_opcua_publish_latency_seconds",
                "Image change to address-space write, oldest change of the last batch",
            )
            lat.add_metric([], server["last_batch_latency_s"])
            yield lat
        if "rss_bytes" in server:
            rss = GaugeMetricFamily("gridctl_opcua_server_rss_bytes", "Server process memory")
            rss.add_metric([], server["rss_bytes"])
            yield rss

    def _login_failures(self) -> Iterator[Metric]:
        counts = self.sources.login_failures()
        if counts is None:
            return
        c = CounterMetricFamily(
            "gridctl_opcua_login_failures", "Refused OPC UA logins", labels=["reason"]
        )
        for reason, n in counts.items():
            c.add_metric([reason], n)
        yield c

    # -- buses ------------------------------------------------------------------------------
    def _buses(self) -> Iterator[Metric]:
        snaps = list(self.sources.buses())
        if not snaps:
            return
        now = self._clock()
        tx = CounterMetricFamily(
            "gridctl_bus_transactions", "Bus transactions by outcome", labels=["bus", "outcome"]
        )
        busy = CounterMetricFamily(
            "gridctl_bus_busy_seconds", "Cumulative wire-busy time", labels=["bus"]
        )
        util = GaugeMetricFamily(
            "gridctl_bus_utilisation_ratio",
            "Wire-busy fraction since the previous scrape",
            labels=["bus"],
        )
        conn = GaugeMetricFamily(
            "gridctl_bus_connected", "1 when the bus link is up", labels=["bus", "protocol"]
        )
        meters = GaugeMetricFamily(
            "gridctl_bus_meters", "Meters configured on the bus", labels=["bus"]
        )
        quar = GaugeMetricFamily(
            "gridctl_bus_quarantined_meters",
            "Meters quarantined after failed retries",
            labels=["bus"],
        )
        late_max = GaugeMetricFamily(
            "gridctl_bus_poll_lateness_max_seconds", "Largest poll lateness", labels=["bus"]
        )
        late_mean = GaugeMetricFamily(
            "gridctl_bus_poll_lateness_mean_seconds", "Mean poll lateness", labels=["bus"]
        )
        discarded = CounterMetricFamily(
            "gridctl_bus_discarded_bytes", "Bytes discarded by the deframer", labels=["bus"]
        )
        cks = CounterMetricFamily(
            "gridctl_bus_checksum_errors", "Frames with a bad checksum", labels=["bus"]
        )
        for s in snaps:
            for outcome, n in sorted(s.transactions.items()):
                tx.add_metric([s.name, outcome], n)
            busy.add_metric([s.name], s.busy_s)
            prev = self._prev_busy.get(s.name)
            ratio = 0.0
            if prev is not None and now > prev[0]:
                ratio = max(0.0, min(1.0, (s.busy_s - prev[1]) / (now - prev[0])))
            elif s.uptime_s > 0:
                ratio = min(1.0, s.busy_s / s.uptime_s)
            self._prev_busy[s.name] = (now, s.busy_s)
            util.add_metric([s.name], ratio)
            conn.add_metric([s.name, s.protocol], 1.0 if s.connected else 0.0)
            meters.add_metric([s.name], s.meters_total)
            quar.add_metric([s.name], s.meters_quarantined)
            late_max.add_metric([s.name], s.poll_lateness_max_s)
            late_mean.add_metric([s.name], s.poll_lateness_mean_s)
            discarded.add_metric([s.name], s.discarded_bytes)
            cks.add_metric([s.name], s.checksum_errors)
        yield from (tx, busy, util, conn, meters, quar, late_max, late_mean, discarded, cks)

    # -- commands ---------------------------------------------------------------------------
    def _commands(self) -> Iterator[Metric]:
        log_ = self.sources.commands
        if log_ is None:
            return
        h = HistogramMetricFamily(
            "gridctl_commands_latency_seconds",
            "Command latency from creation to its terminal state",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), series in sorted(log_.latency.items()):
            s = series.summary()
            h.add_metric([kind, outcome], _hist_buckets(s), s.total)
        yield h
        pend = GaugeMetricFamily(
            "gridctl_commands_pending", "Commands not yet in a terminal state", labels=["state"]
        )
        by_state: dict[str, int] = {"armed": 0, "queued": 0, "sent": 0}
        for c in log_.pending():
            by_state[c.state.value] = by_state.get(c.state.value, 0) + 1
        for state, n in by_state.items():
            pend.add_metric([state], n)
        yield pend
        acc = GaugeMetricFamily("gridctl_commands_accepting", "1 while new commands are accepted")
        acc.add_metric([], 1.0 if log_.accepting else 0.0)
        yield acc

    # -- alarms -----------------------------------------------------------------------------
    def _alarms(self) -> Iterator[Metric]:
        eng = self.sources.alarms
        if eng is None:
            return
        counts = eng.counts()
        active = GaugeMetricFamily(
            "gridctl_alarms_active", "Active alarms (not shelved)", labels=["severity"]
        )
        unacked = GaugeMetricFamily(
            "gridctl_alarms_unacknowledged",
            "Unacknowledged alarms (not shelved)",
            labels=["severity"],
        )
        for sev, c in counts.items():
            if sev == "shelved":
                continue
            active.add_metric([sev], c["active"])
            unacked.add_metric([sev], c["unacked"])
        shelved = GaugeMetricFamily("gridctl_alarms_shelved", "Shelved alarms not in normal state")
        shelved.add_metric([], counts["shelved"])
        events = CounterMetricFamily("gridctl_alarms_events", "Alarm events emitted")
        events.add_metric([], eng.events)
        yield from (active, unacked, shelved, events)

    # -- journal ----------------------------------------------------------------------------
    def _journal(self) -> Iterator[Metric]:
        j = self.sources.journal
        if j is None:
            return
        s = j.snapshot()
        h = HistogramMetricFamily(
            "gridctl_journal_write_latency_seconds", "Journal write latency, queued to committed"
        )
        h.add_metric([], _hist_buckets(s.write_latency), s.write_latency.total)
        c = HistogramMetricFamily(
            "gridctl_journal_commit_seconds", "Journal transaction time including fsync"
        )
        c.add_metric([], _hist_buckets(s.commit_time), s.commit_time.total)
        writes = CounterMetricFamily("gridctl_journal_writes", "Journal write units committed")
        writes.add_metric([], s.units)
        failed = CounterMetricFamily(
            "gridctl_journal_failed_writes", "Journal write units that failed"
        )
        failed.add_metric([], s.failed)
        depth = GaugeMetricFamily("gridctl_journal_queue_depth", "Writes waiting for the writer")
        depth.add_metric([], s.queue_depth)
        storage = GaugeMetricFamily(
            "gridctl_journal_storage_failed",
            "1 after a storage failure (disk full, I/O error) until the journal is reopened",
        )
        storage.add_metric([], 1.0 if s.failure else 0.0)
        yield from (h, c, writes, failed, depth, storage)

    # -- queues -----------------------------------------------------------------------------
    def _queues(self) -> Iterator[Metric]:
        rows: list[tuple[str, int, int, int]] = []
        if self.sources.image is not None:
            rows += [(q.name, len(q), q.maxsize, q.dropped) for q in self.sources.image.subscribers]
        if self.sources.alarms is not None:
            rows += [
                (f"alarms:{q.name}", len(q), q.maxsize, q.dropped)
                for q in self.sources.alarms.subscribers
            ]
        if self.sources.journal is not None:
            j = self.sources.journal
            rows.append(("journal", len(j._queue), j.queue_limit, j.dropped))
        rows += [(q.name, len(q), q.maxsize, q.dropped) for q in self.sources.queues()]
        if not rows:
            return
        dropped = CounterMetricFamily(
            "gridctl_queue_dropped", "Items dropped at a full queue", labels=["queue"]
        )
        depth = GaugeMetricFamily("gridctl_queue_depth", "Items waiting", labels=["queue"])
        limit = GaugeMetricFamily("gridctl_queue_limit", "Queue limit", labels=["queue"])
        for name, n, maxsize, drops in rows:
            dropped.add_metric([name], drops)
            depth.add_metric([name], n)
            limit.add_metric([name], maxsize)
        yield from (dropped, depth, limit)

    def _image(self) -> Iterator[Metric]:
        img = self.sources.image
        if img is None:
            return
        tags = GaugeMetricFamily("gridctl_image_tags", "Tags in the process image")
        tags.add_metric([], len(img))
        writes = CounterMetricFamily("gridctl_image_writes", "Process image writes")
        writes.add_metric([], img.writes)
        yield from (tags, writes)


def make_registry(sources: Sources) -> tuple[CollectorRegistry, GridCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = GridCollector(sources)
    registry.register(collector)
    return registry, collector


class MetricsServer:
    """Serves ``GET /metrics``; ``asyncio`` mode on the running loop, ``thread`` mode in a thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        collector: GridCollector,
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
        mode: str = "asyncio",
        quiet_point: Callable[[], Any] | None = None,
    ) -> None:
        self.registry = registry
        self.collector = collector
        self.host = host
        self.port = port
        self.mode = mode
        self._quiet_point = quiet_point  # e.g. fast_task.after_cycle
        self._server: asyncio.Server | None = None
        self._http: Any = None
        self._thread: Any = None
        self._exposition = TextExposition()

    async def start(self) -> int:
        """Listen; returns the bound port."""
        if self.mode == "thread":
            from prometheus_client import start_http_server

            self._http, self._thread = start_http_server(self.port, self.host, self.registry)
            self.port = self._http.server_address[1]
            return self.port
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def render(self) -> bytes:
        t = time.perf_counter()
        body = self._exposition.render(self.registry.collect())
        self.collector.render_time.add(time.perf_counter() - t)
        return body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            parts = head.split(b"\r\n", 1)[0].split()
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
            path = target.split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, ctype, body = b"405 Method Not Allowed", b"text/plain", b"GET only\n"
            elif path != b"/metrics":
                status, ctype, body = b"404 Not Found", b"text/plain", b"try /metrics\n"
            else:
                if self._quiet_point is not None:
                    # a stuck or slow task must not block the scrape: serve anyway
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._quiet_point(), 1.0)
                status, ctype, body = b"200 OK", CONTENT_TYPE_LATEST.encode(), self.render()
                if method == b"HEAD":
                    body = b""
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            pass
        except Exception:
            log.exception("metrics: request failed")
        finally:
            writer.close()


__all__ = ["BUCKETS", "GridCollector", "MetricsServer", "Sources", "make_registry"]
