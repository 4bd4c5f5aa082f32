"""Prometheus metrics: a collector that reads snapshots at scrape time.

Publishers never own state: nothing here is updated by the control path.
Each render asks the cycle tasks, the field plant, the command log, the alarm
engine, the journal and the queues for a snapshot and formats it. Names follow
``gridctl_<subsystem>_<name>_<unit>``; labels are bounded (task, bus, queue,
command kind × outcome, severity — never a meter).

Serving
    ``MetricsServer`` is built so that scrapers cannot make the fast task
    late. A render costs 1–2 ms of CPU; one per request, on the control loop,
    let 100 concurrent scrapes skip ~100 fast cycles. Now the HTTP server has
    a thread and an event loop of its own (accepts, TLS handshakes, request
    parsing, password checks never run on the control loop); the exposition
    is rendered at most once per ``min_render_interval_s`` and shared by every
    scraper of that interval. A render asks one thing of the control loop: a
    wake-up at the fast task's quiet point (right after a cycle), so that the
    render thread's turns at the GIL fall in the task's idle time. What it
    reads from the loop's objects is counters and C-level copies (array
    slices, ``list(dict.values())``), consistent enough for metrics; a render
    that still trips over a container the loop changed is dropped and the
    previous exposition served. Connections are bounded (``max_connections``,
    then 503 at once), request headers are bounded in size and time, and basic
    authentication and TLS are there for an endpoint reachable from the
    network.

    prometheus_client's threaded server (formerly ``[metrics] server =
    "thread"``) is gone: a thread and a full render per connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hmac
import logging
import math
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
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
from controller.password_hash import verify_password

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
    buses: Callable[[], Iterable[Any]] = lambda: ()  # controller.bus_stats.BusSnapshot
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
        self.refused = 0  # connections answered 503 (over max_connections)
        self.unauthorized = 0  # requests answered 401

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
        for name, value, doc in (
            ("refused_connections", self.refused, "Connections over max_connections, answered 503"),
            ("unauthorized_requests", self.unauthorized, "Requests answered 401"),
        ):
            m = CounterMetricFamily(f"gridctl_metrics_{name}", doc)
            m.add_metric([], value)
            yield m
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
        scans = CounterMetricFamily(
            "gridctl_cycle_program_scans", "Scans of each program", labels=["task", "program"]
        )
        spent = CounterMetricFamily(
            "gridctl_cycle_program_scan_seconds",
            "Time spent in each program's scans (rate / scans rate: the mean scan time)",
            labels=["task", "program"],
        )
        longest = GaugeMetricFamily(
            "gridctl_cycle_program_scan_max_seconds",
            "Longest scan of each program since the service started",
            labels=["task", "program"],
        )
        for t in tasks:
            for name, n, total_s, max_s in t.programs:
                scans.add_metric([t.name, name], n)
                spent.add_metric([t.name, name], total_s)
                longest.add_metric([t.name, name], max_s)
        yield scans
        yield spent
        yield longest

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


# Status lines; every response closes the connection (one request per connection).
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
# After a wrong password, other unknown credentials get 401 without hashing for this
# long: a client guessing passwords costs one scrypt per second, not one per request.
AUTH_BACKOFF_S = 1.0
# After the response, wait this long for the client to close before closing (a close
# with unread request bytes sends a reset, which can destroy the response in flight).
LINGER_S = 1.0
_LINGER_BYTES = 65_536
_AUTH_CACHE = 16  # verified credentials remembered (HMAC of the header, not the password)


def _response(status: int, body: bytes, ctype: bytes = b"text/plain", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n"
        % (status, _REASONS[status].encode(), ctype, len(body), extra)
    ) + body


_BUSY = _response(503, b"too many scrapes at once\n", extra=b"Retry-After: 1\r\n")


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP basic authentication: one user, a ``controller.password_hash`` scrypt hash."""

    user: str
    password_hash: str


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context from PEM files; raises ValueError naming the file that failed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"metrics TLS: cannot load tls_cert {cert} / tls_key {key}: {exc}"
        ) from None
    return ctx


class MetricsServer:
    """Serves ``GET /metrics`` from its own thread, bounded so that scrapers cannot stall the loop.

    Per request the server does a fixed amount of work (read at most
    ``max_header_bytes`` of headers within ``header_timeout_s``, look up the
    cached exposition, write it). The exposition is rendered at most once per
    ``min_render_interval_s``, by one render that every waiting scraper shares,
    started at the fast task's quiet point (``quiet_point``, called on the loop
    that called ``start``). Beyond ``max_connections`` open connections a new
    one gets 503 at once.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        collector: GridCollector,
        *,
        host: str = "127.0.0.1",
        port: int = 9108,
        quiet_point: Callable[[], Any] | None = None,
        min_render_interval_s: float = 1.0,
        max_connections: int = 8,
        header_timeout_s: float = 5.0,
        max_header_bytes: int = 8192,
        auth: BasicAuth | None = None,
        tls: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_render_interval_s < 0:
            raise ValueError(f"min_render_interval_s must be >= 0 s (got {min_render_interval_s})")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 (got {max_connections})")
        if not header_timeout_s > 0:
            raise ValueError(f"header_timeout_s must be > 0 s (got {header_timeout_s})")
        if max_header_bytes < 256:
            raise ValueError(f"max_header_bytes must be >= 256 B (got {max_header_bytes})")
        self.registry = registry
        self.collector = collector
        self.host = host
        self.port = port
        self.min_render_interval_s = min_render_interval_s
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self.auth = auth
        self.tls = tls
        self._quiet_point = quiet_point  # e.g. fast_task.after_cycle
        self._clock = clock
        self._control_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, in its thread
        self._thread: threading.Thread | None = None
        self._quiet_wait: concurrent.futures.Future[None] | None = None
        self._exposition = TextExposition()
        self._body: bytes | None = None
        self._rendered_at = -math.inf
        self._rendering: asyncio.Task[bytes | None] | None = None
        self._connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._auth_key = secrets.token_bytes(32)
        self._auth_ok: set[bytes] = set()
        self._auth_lock = asyncio.Lock()
        self._verify_after = -math.inf

    @property
    def connections(self) -> int:
        """Connections being served now (not counting those refused with 503)."""
        return self._connections

    async def start(self) -> int:
        """Listen (in the server's own thread); returns the bound port."""
        if self._thread is not None:
            raise RuntimeError("metrics server already started")
        self._control_loop = asyncio.get_running_loop()
        listening: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(listening,), name="metrics-http", daemon=True
        )
        self._thread.start()
        try:
            self.port = await asyncio.wrap_future(listening)
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise
        return self.port

    async def stop(self) -> None:
        loop, thread, self._thread = self._loop, self._thread, None
        if self._quiet_wait is not None:
            self._quiet_wait.cancel()
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # already stopped
            loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)

    def render(self) -> bytes:
        """Collect and format now (in whatever thread calls it)."""
        t = time.perf_counter()
        body = self._exposition.render(self.registry.collect())
        self.collector.render_time.add(time.perf_counter() - t)
        return body

    # -- the server's thread ------------------------------------------------------------------
    def _serve(self, listening: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                asyncio.start_server(
                    self._handle,
                    self.host,
                    self.port,
                    limit=self.max_header_bytes,
                    ssl=self.tls,
                    ssl_handshake_timeout=self.header_timeout_s if self.tls is not None else None,
                )
            )
        except BaseException as exc:
            loop.close()
            listening.set_exception(exc)
            return
        self._loop = loop
        listening.set_result(server.sockets[0].getsockname()[1])
        try:
            loop.run_forever()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks))
            loop.run_until_complete(loop.shutdown_default_executor())
            self._loop = None
            loop.close()

    async def exposition(self) -> bytes | None:
        """The cached exposition, rendered again once it is older than the interval.

        Runs on the server's loop. None only when no render has succeeded yet.
        """
        if (
            self._body is not None
            and self._clock() - self._rendered_at < self.min_render_interval_s
        ):
            return self._body
        if self._rendering is None or self._rendering.done():
            self._rendering = asyncio.get_running_loop().create_task(self._render_when_quiet())
        # shielded: a scraper that goes away must not cancel the render the others wait for
        return await asyncio.shield(self._rendering)

    async def _render_when_quiet(self) -> bytes | None:
        started = self._clock()
        if self._quiet_point is not None and self._control_loop is not None:
            # the only work a render asks of the control loop: one wake-up after a cycle
            try:
                self._quiet_wait = asyncio.run_coroutine_threadsafe(
                    self._quiet(), self._control_loop
                )
                await asyncio.wrap_future(self._quiet_wait)
            except RuntimeError:
                pass  # the control loop is closed: render anyway
        # Started right after a cycle, this thread's GIL turns fall in the fast task's
        # idle time. What the collector reads from the control loop's objects is
        # counters and C-level copies (array slices, list(dict.values())), atomic
        # under the GIL; sorting for percentiles and formatting is the long part.
        try:
            body = self.render()
        except Exception as exc:
            # e.g. a dict the loop grew during the read: keep serving the last exposition
            log.warning(
                "metrics: render failed (%s: %s); serving the previous one", type(exc).__name__, exc
            )
            return self._body
        self._body, self._rendered_at = body, started
        return body

    async def _quiet(self) -> None:
        """On the control loop: until the fast task's next quiet point (1 s at most)."""
        assert self._quiet_point is not None
        # a stuck or slow task must not block the scrape
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet_point(), 1.0)

    # -- HTTP -------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self._connections >= self.max_connections:
                self.collector.refused += 1
                await self._finish(reader, writer, _BUSY)
                return
            self._connections += 1
            try:
                await self._finish(reader, writer, await self._answer(reader))
            finally:
                self._connections -= 1
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass
        except Exception:
            log.exception("metrics: request failed")
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.transport.abort()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout_s)
        except TimeoutError:
            return _response(
                408, b"request headers not complete within %.1f s\n" % self.header_timeout_s
            )
        except asyncio.LimitOverrunError:
            return _response(431, b"request headers longer than %d bytes\n" % self.max_header_bytes)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("client closed before the end of the headers") from exc
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split()
        if len(parts) != 3:
            return _response(400, b"request line must be: METHOD TARGET VERSION\n")
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"GET or HEAD only\n", extra=b"Allow: GET, HEAD\r\n")
        if target.split(b"?", 1)[0] != b"/metrics":
            return _response(404, b"try /metrics\n")
        if self.auth is not None and not await self._authorized(_header(lines, b"authorization")):
            self.collector.unauthorized += 1
            return _response(
                401,
                b"credentials required\n",
                extra=b'WWW-Authenticate: Basic realm="gridctl metrics", charset="UTF-8"\r\n',
            )
        body = await self.exposition()
        if body is None:
            return _BUSY
        out = _response(200, body, CONTENT_TYPE_LATEST.encode())
        return out[: len(out) - len(body)] if method == b"HEAD" else out

    async def _authorized(self, header: bytes | None) -> bool:
        if header is None or self.auth is None:
            return False
        scheme, _, credentials = header.partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"basic" or not credentials:
            return False
        mac = hmac.digest(self._auth_key, credentials, "sha256")
        if mac in self._auth_ok:
            return True
        try:
            user, sep, password = (
                base64.b64decode(credentials, validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        async with self._auth_lock:  # one scrypt at a time (16 MiB, tens of ms of a core)
            if mac in self._auth_ok:
                return True
            if self._clock() < self._verify_after:
                return False
            right_user = hmac.compare_digest(user.encode(), self.auth.user.encode())
            # hashed even for a wrong user name, so the answer time does not tell names apart
            right_password = await asyncio.to_thread(
                verify_password, password, self.auth.password_hash
            )
            if not (right_user and right_password):
                self._verify_after = self._clock() + AUTH_BACKOFF_S
                return False
            if len(self._auth_ok) >= _AUTH_CACHE:
                self._auth_ok.clear()
            self._auth_ok.add(mac)
            return True

    async def _finish(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bytes
    ) -> None:
        """Send the response, let the client close first (bounded), then close."""
        writer.write(response)
        await asyncio.wait_for(writer.drain(), self.header_timeout_s)
        if not writer.can_write_eof():  # TLS: its close_notify ends the response
            writer.close()
            return
        writer.write_eof()
        with contextlib.suppress(TimeoutError, asyncio.LimitOverrunError):
            async with asyncio.timeout(LINGER_S):
                drained = 0
                while drained < _LINGER_BYTES:
                    chunk = await reader.read(4096)
                    if not chunk:
                        break
                    drained += len(chunk)
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()  # a client that does not read keeps nothing of ours
        else:
            writer.close()


def _header(lines: list[bytes], name: bytes) -> bytes | None:
    for line in lines[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return None


__all__ = [
    "BUCKETS",
    "BasicAuth",
    "GridCollector",
    "MetricsServer",
    "Sources",
    "make_registry",
    "tls_context",
]
