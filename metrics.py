"""Operator metrics and health endpoints: counters the worker keeps as plain integers, served over HTTP
on the worker's own event loop when --metrics-addr (METRICS_ADDR) is given: /metrics, /ready, /live.

The loop and the health-check handler bump plain integers and histogram slots (`Stats`): a few hundred
nanoseconds per check, whether metrics are served or not, and nothing else is imported for them.
prometheus_client is imported only when the endpoint starts; its collector reads the integers at scrape
time. The endpoint runs on the event loop rather than in prometheus_client's thread server, so /live
answers exactly while the loop does and a scrape never reads a dict the loop is changing.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import logging
import re
import sys
import time
from typing import Any, Iterable

log = logging.getLogger("peekaping.worker")

PREFIX = "peekaping_worker_"
# Seconds. Checks range from sub-millisecond (tcp on a LAN) to the monitor timeout (up to minutes).
CHECK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
ROUND_TRIP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STATUS_NAMES = ("down", "up", "pending", "maintenance")  # the ingest payload's status codes 0-3
OTHER_TYPE = "other"  # the label of types the worker does not know (maintenance results of any type name)
REGISTRATION_TTL = 10.0  # asynq server info expires this long after the last heartbeat
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


# ==================================================================================================
# The counters the loop keeps

class Histogram:
    """Observation counts per bucket (not cumulative) and their sum: one bisect and two adds each."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (le, observations <= le), ending with +Inf."""
        out, running = [], 0
        for bound, count in zip(_bound_texts(self.bounds), self.counts):
            running += count
            out.append((bound, running))
        return out


class TypeStats:
    __slots__ = ("by_status", "durations")

    def __init__(self) -> None:
        self.by_status = [0, 0, 0, 0]
        self.durations = Histogram(CHECK_BUCKETS)


class Stats:
    """What the worker has done since it started, as plain numbers; `WorkerCollector` reads them."""

    __slots__ = ("known_types", "checks", "stale_skipped", "results_waiting", "dequeued", "succeeded", "failed",
                 "retried", "archived", "recovered", "redis_errors", "redis_reconnects", "redis_problem",
                 "round_trips", "started", "heartbeat_at")

    def __init__(self, known_types: Iterable[str] = ()) -> None:
        self.known_types = frozenset(known_types)
        self.checks: dict[str, TypeStats] = {}
        self.stale_skipped = 0
        self.results_waiting = 0  # results whose enqueue to the ingester queue Redis has not confirmed yet
        self.dequeued = self.succeeded = self.failed = self.retried = self.archived = self.recovered = 0
        self.redis_errors = 0
        self.redis_reconnects = 0
        self.redis_problem: str | None = None  # why the last dequeue (or the start-up) failed, until one works
        self.round_trips = {"dequeue": Histogram(ROUND_TRIP_BUCKETS), "heartbeat": Histogram(ROUND_TRIP_BUCKETS)}
        self.started = False  # Redis accepted the worker: scripts loaded, permissions probed
        self.heartbeat_at: float | None = None  # monotonic time of the last heartbeat Redis confirmed

    def check_done(self, monitor_type: str, status: int, seconds: float | None) -> None:
        """One result of a check; `seconds` is how long the executor ran (None: it did not run)."""
        entry = self.checks.get(monitor_type)
        if entry is None:
            entry = self._new_type(monitor_type)
        if 0 <= status <= 3:
            entry.by_status[status] += 1
        if seconds is not None:
            entry.durations.observe(seconds)

    def _new_type(self, monitor_type: str) -> TypeStats:
        # Labels come from task payloads: only type names the worker knows get their own series.
        if monitor_type not in self.known_types:
            monitor_type = OTHER_TYPE
        return self.checks.setdefault(monitor_type, TypeStats())

    def dequeue_done(self, taken: int, seconds: float) -> None:
        """A dequeue round trip that worked: Redis is reachable (again)."""
        self.dequeued += taken
        self.round_trips["dequeue"].observe(seconds)
        if self.redis_problem is not None:
            self.redis_back()

    def heartbeat_done(self, seconds: float) -> None:
        self.heartbeat_at = time.monotonic()
        self.round_trips["heartbeat"].observe(seconds)
        if self.redis_problem is not None:
            self.redis_back()

    def redis_failed(self, exc: BaseException, *, sticky: bool = True) -> None:
        """A Redis call failed; with `sticky`, /ready says why until a dequeue or heartbeat works."""
        self.redis_errors += 1
        if sticky:
            text = " ".join(str(exc).split()) or type(exc).__name__
            self.redis_problem = text[:200]

    def redis_back(self) -> None:
        if self.started:
            self.redis_reconnects += 1
        self.redis_problem = None

    def connected(self) -> None:
        """Start-up checks passed (the first connection is not counted as a reconnect)."""
        self.started = True
        self.redis_problem = None


def not_ready_reason(server: Any) -> str | None:
    """Why the worker should not count as ready (one line), or None: connected to Redis with its
    scripts loaded, registered in asynq:servers by a recent heartbeat, and taking tasks."""
    stats = server.stats
    if server.status == "closed":
        return "shutting down"
    if not stats.started:
        return "connecting to Redis" + (f": {stats.redis_problem}" if stats.redis_problem else "")
    if stats.redis_problem:
        return f"Redis unreachable: {stats.redis_problem}"
    if stats.heartbeat_at is None:
        return "not registered in asynq:servers yet (first heartbeat pending)"
    if time.monotonic() - stats.heartbeat_at > REGISTRATION_TTL:
        return "registration in asynq:servers expired: heartbeats are failing"
    if server.status == "stopped":
        return "not taking new tasks (paused by SIGTSTP)"
    return None


# ==================================================================================================
# The Prometheus view of them (prometheus_client is imported here, when metrics are on)

class WorkerCollector:
    """Builds the peekaping_worker_* families from the server's numbers at each scrape."""

    def __init__(self, server: Any) -> None:
        self.server = server
        built = sorted(t for t, path in _executors().items() if path)
        from executors import VERSION

        self.build_labels = [VERSION, sys.version.split()[0], ",".join(built)]

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        server, stats = self.server, self.server.stats
        checks = CounterMetricFamily(PREFIX + "checks", "Check results by monitor type and status",
                                     labels=["type", "status"])
        durations = HistogramMetricFamily(PREFIX + "check_duration_seconds",
                                          "Time the executor ran, by monitor type", labels=["type"])
        for monitor_type, entry in sorted(stats.checks.items()):
            for status, count in zip(STATUS_NAMES, entry.by_status):
                checks.add_metric([monitor_type, status], count)
            durations.add_metric([monitor_type], entry.durations.cumulative(), entry.durations.total)
        yield checks
        yield durations
        yield _counter("stale_checks_skipped", "Health-check tasks skipped as stale (scheduled more than "
                                               "1.5 intervals ago)", stats.stale_skipped)
        for name, value, text in (
                ("dequeued", stats.dequeued, "Tasks taken from the queues"),
                ("succeeded", stats.succeeded, "Tasks whose handler succeeded"),
                ("failed", stats.failed, "Tasks whose handler failed (then retried or archived)"),
                ("retried", stats.retried, "Failed tasks scheduled for a retry"),
                ("archived", stats.archived, "Tasks archived (no retry left, or a message that does not decode)"),
                ("requeued", server._requeued, "Unfinished tasks put back in their queue at shutdown"),
                ("recovered", stats.recovered, "Tasks of a dead worker whose lease expired, retried or archived "
                                               "by this worker's recoverer")):
            yield _counter(f"tasks_{name}", text, value)
        yield _gauge("checks_in_flight", "Tasks running now", len(server.jobs))
        yield _gauge("concurrency_limit", "Tasks that may run at once (--concurrency)", server.concurrency)
        yield _gauge("results_waiting", "Results being written to the ingester queue, not yet confirmed by Redis",
                     stats.results_waiting)
        queues = GaugeMetricFamily(PREFIX + "queue_priority", "Priority of each queue served", labels=["queue"])
        for queue, priority in server.queues.items():
            queues.add_metric([queue], priority)
        yield queues
        yield _counter("redis_errors", "Redis calls that failed (dequeues, completions, heartbeats, housekeeping)",
                       stats.redis_errors)
        yield _counter("redis_reconnects", "Times Redis became reachable again after an error", stats.redis_reconnects)
        round_trips = HistogramMetricFamily(PREFIX + "redis_roundtrip_seconds",
                                            "Redis round trips: dequeue script calls and heartbeats", labels=["op"])
        for op, histogram in stats.round_trips.items():
            round_trips.add_metric([op], histogram.cumulative(), histogram.total)
        yield round_trips
        yield _gauge("ready", "1 when /ready answers 200", 0 if not_ready_reason(server) else 1)
        info = GaugeMetricFamily(PREFIX + "build_info", "Version, Python and executors of this worker",
                                 labels=["version", "python", "executors"])
        info.add_metric(self.build_labels, 1)
        yield info


def _counter(name: str, text: str, value: float) -> Any:
    from prometheus_client.core import CounterMetricFamily

    return CounterMetricFamily(PREFIX + name, text, value=value)


def _gauge(name: str, text: str, value: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(PREFIX + name, text, value=value)


_BOUND_TEXTS: dict[tuple[float, ...], tuple[str, ...]] = {}


def _bound_texts(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The `le` label values of a histogram's buckets, +Inf last (worked out once per bucket layout)."""
    texts = _BOUND_TEXTS.get(bounds)
    if texts is None:
        from prometheus_client.utils import floatToGoString

        texts = _BOUND_TEXTS[bounds] = (*(floatToGoString(b) for b in bounds), "+Inf")
    return texts


def _executors() -> dict[str, str | None]:
    from worker import EXECUTORS

    return EXECUTORS


def build_registry(server: Any) -> Any:
    """A registry with the worker's collector and the standard process, platform and GC collectors."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(WorkerCollector(server))
    return registry


# ==================================================================================================
# The HTTP endpoint

def listen_address(text: str) -> tuple[str, int]:
    """(host, port) of `host:port`, `[v6]:port` or `:port` (every interface); ValueError says what is wrong."""
    host, colon, port_text = text.strip().rpartition(":")
    if not colon:
        raise ValueError(f"expected host:port, e.g. 127.0.0.1:9780 (or :9780 for every interface), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("write an IPv6 address in brackets, e.g. [::1]:9780")
    elif host and not _HOST.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or IP address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"the port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


class Endpoint:
    """GET/HEAD /metrics, /ready and /live over HTTP/1.1 with keep-alive, on the event loop."""

    MAX_CONNECTIONS = 16
    IDLE_TIMEOUT = 30.0
    MAX_HEAD = 16384

    def __init__(self, server: Any, registry: Any) -> None:
        self.server = server
        self.registry = registry
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        except Exception:  # a bug here must not end the worker; the scraper sees the connection close
            log.exception("metrics endpoint failed")
        finally:
            self.connections -= 1
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a peer that stopped reading: do not wait to flush
            else:
                writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True to keep the connection for another."""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.IDLE_TIMEOUT)
        request, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = request.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, "400 Bad Request", "text/plain; charset=utf-8", b"bad request\n", False, True)
            return False
        method, target, version = parts
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if method not in ("GET", "HEAD"):
            await self._send(writer, "405 Method Not Allowed", "text/plain; charset=utf-8", b"use GET\n", False,
                             True, extra="Allow: GET, HEAD\r\n")
            return False
        if "content-length" in headers or "transfer-encoding" in headers:
            keep = False  # a body we do not read would be taken for the next request
        status, content_type, body = self.answer(target.split("?", 1)[0], headers.get("accept", ""))
        await self._send(writer, status, content_type, body, keep, method == "GET")
        return keep

    def answer(self, path: str, accept: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if path == "/metrics":
            from prometheus_client.exposition import choose_encoder

            encoder, content_type = choose_encoder(accept)
            return "200 OK", content_type, encoder(self.registry)
        if path == "/ready":
            reason = not_ready_reason(self.server)
            return ("503 Service Unavailable", text, f"{reason}\n".encode()) if reason else ("200 OK", text, b"ready\n")
        if path == "/live":
            return "200 OK", text, b"live\n"
        return "404 Not Found", text, b"not found: /metrics, /ready and /live are served here\n"

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: str, content_type: str, body: bytes, keep: bool,
                    with_body: bool, extra: str = "") -> None:
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"Cache-Control: no-store\r\n{extra}" + ("" if keep else "Connection: close\r\n") + "\r\n")
        writer.write(head.encode("latin-1") + (body if with_body else b""))
        await asyncio.wait_for(writer.drain(), Endpoint.IDLE_TIMEOUT)


async def serve_metrics(server: Any, address: str) -> asyncio.AbstractServer:
    """Listen on `address` for the whole run; ConfigurationError when it cannot."""
    from settings import ConfigurationError, _fields

    host, port = listen_address(address)
    endpoint = Endpoint(server, build_registry(server))
    try:
        listener = await asyncio.start_server(endpoint.handle, host or None, port, limit=Endpoint.MAX_HEAD,
                                              reuse_address=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigurationError(f"--metrics-addr: cannot listen on {address}: {reason}") from None
    log.info("metrics endpoint listening", extra=_fields(address=address, paths="/metrics /ready /live"))
    return listener
