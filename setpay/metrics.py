"""Metrics and health over HTTP for every long-running process (``setpay.lifecycle.Service``).

Rule 1: one set of metric names for the whole project, defined here (prometheus-client, the
process's default registry); the layers record into them (the runtime: messages by type and
outcome and handler latency; the broker layer: publish confirms, redeliveries, dead letters;
the keystore client: operations and latency), so a dashboard or a test names one module.
Rule 2: one small aiohttp server per process on ``metrics_host`` (127.0.0.1) and the process's
port (0: an ephemeral one, which the process writes into its health file): ``/metrics``
(Prometheus text), ``/healthz`` (live: the process answers and its event loop ticked within
``LOOP_STALL_S``), ``/readyz`` (the lifecycle's ``is_ready``: started, broker connected,
consumers running). Nothing else is served; the answers hold counts and states, never a
message, a key label's data or a secret.
Rule 3: label values are bounded: a message type the process does not know is ``other``,
so a sender cannot grow the series without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    Metric,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: counters and histograms only

LOOP_STALL_S = 5.0  # /healthz fails when the event loop has not ticked for this long
_TICK_S = 0.5

# -- the metric names (Rule 1) -------------------------------------------------------------------

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

MESSAGES = Counter(
    "setpay_messages", "Messages handled by this process, by AMQP message type and outcome "
    "(ok: answered or done; error: answered with a SET Error; rejected: dead-lettered by the "
    "handler; failed: the handler raised)", ["type", "outcome"])  # fmt: skip
HANDLER_SECONDS = Histogram(
    "setpay_handler_seconds", "Time a handler took for one message, by message type",
    ["type"], buckets=_LATENCY)  # fmt: skip
PUBLISHES = Counter(
    "setpay_publishes", "Confirmed publishes by outcome (confirmed, nacked, returned, refused, "
    "failed)", ["outcome"])  # fmt: skip
PUBLISH_SECONDS = Histogram(
    "setpay_publish_seconds", "Time from publish to the broker's confirm", buckets=_LATENCY)
REDELIVERIES = Counter(
    "setpay_redeliveries", "Deliveries the broker marked redelivered, by queue", ["queue"])
DEAD_LETTERED = Counter(
    "setpay_dead_lettered", "Messages this process dead-lettered, by queue and reason code",
    ["queue", "code"])  # fmt: skip
KEYSTORE_CALLS = Counter(
    "setpay_keystore_calls", "Keystore operations this process asked for, by operation and "
    "outcome (ok, refused: the keystore's own fault code, unavailable, error)",
    ["op", "outcome"])  # fmt: skip
KEYSTORE_SECONDS = Histogram(
    "setpay_keystore_seconds", "Round trip of one keystore operation over the bus",
    ["op"], buckets=_LATENCY)  # fmt: skip
KEYSTORE_OPERATIONS = Counter(
    "setpay_keystore_operations", "Operations the keystore performed on the token, by "
    "operation and outcome (ok or the fault; internal = an unmapped token or library error)",
    ["op", "outcome"])  # fmt: skip
KEYSTORE_OPERATION_SECONDS = Histogram(
    "setpay_keystore_operation_seconds", "Time one keystore operation took inside a worker "
    "(authorise, token, audit)", ["op"], buckets=_LATENCY)  # fmt: skip
ISO_REQUESTS = Counter(
    "setpay_iso_requests", "ISO 8583 requests this process sent on its link, by MTI and "
    "outcome (answered, timeout, connection_error, closed)", ["mti", "outcome"])  # fmt: skip
ISO_SECONDS = Histogram(
    "setpay_iso_seconds", "ISO 8583 round trip to the host, by request MTI", ["mti"],
    buckets=_LATENCY)  # fmt: skip
ISO_SAF_BACKLOG = Gauge(
    "setpay_iso_saf_backlog", "Store-and-forward entries (advices, reversals) not yet "
    "acknowledged by the host", multiprocess_mode="livesum")  # fmt: skip
# (multiprocess_mode: how the keystore's workers' values add up, Merged below)
IN_FLIGHT = Gauge("setpay_in_flight", "Messages being handled now", multiprocess_mode="livesum")
READY = Gauge("setpay_ready", "1 when the process is ready (the same as /readyz)",
              multiprocess_mode="livesum")  # fmt: skip
LOOP_LAG = Gauge("setpay_event_loop_lag_seconds", "How late the event loop's last tick ran",
                 multiprocess_mode="max")  # fmt: skip
INFO = Gauge("setpay_process_info", "The process's identity", ["identity"],
             multiprocess_mode="max")  # fmt: skip

METRIC_NAMES = (
    "setpay_messages_total", "setpay_handler_seconds", "setpay_publishes_total",
    "setpay_publish_seconds", "setpay_redeliveries_total", "setpay_dead_lettered_total",
    "setpay_keystore_calls_total", "setpay_keystore_seconds",
    "setpay_keystore_operations_total", "setpay_keystore_operation_seconds",
    "setpay_iso_requests_total", "setpay_iso_seconds", "setpay_iso_saf_backlog",
    "setpay_in_flight",
    "setpay_ready", "setpay_event_loop_lag_seconds", "setpay_process_info",
)  # what a scrape exposes (histograms as _bucket, _sum, _count)


class Merged:
    """One exposition of several collectors (this process's registry and, for the keystore,
    its workers' multiprocess files): families of one name become one, and samples with the
    same name and labels are summed (counters and histogram series add up across workers)."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for collector in self.collectors:
            for family in collector.collect():
                families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type))
                series = values.setdefault(family.name, {})
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    series[key] = series.get(key, 0.0) + sample.value
        out = []
        for name, family in families.items():
            for (sample, labels), value in values[name].items():
                family.add_sample(sample, dict(labels), value)
            out.append(family)
        return out


def bounded(value: str, known: Callable[[str], bool]) -> str:
    """``value`` if ``known`` says so, else ``other`` (Rule 3)."""
    return value if known(value) else "other"


# -- the server (Rule 2) ------------------------------------------------------------------------


class MetricsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` for one process."""

    def __init__(self, identity: str, ready: Callable[[], bool],
                 facts: Callable[[], dict[str, Any]]) -> None:  # fmt: skip
        self.identity = identity
        self._ready = ready
        self._facts = facts
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_tick = time.monotonic()
        self.port: int | None = None
        self.extra: list[Any] = []  # more collectors to expose (the keystore's workers)
        INFO.labels(identity=identity).set(1)

    async def start(self, host: str, port: int) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server  # the bound socket: the port an ephemeral request got
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        self._ticker = asyncio.create_task(self._tick())
        return self.port

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(_TICK_S)
            self._last_tick = time.monotonic()
            LOOP_LAG.set(max(0.0, self._last_tick - before - _TICK_S))

    async def _metrics(self, _request: web.Request) -> web.Response:
        READY.set(1 if self._ready() else 0)
        source = Merged(REGISTRY, *self.extra) if self.extra else REGISTRY
        body = await asyncio.to_thread(generate_latest, source)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _healthz(self, _request: web.Request) -> web.Response:
        stalled = time.monotonic() - self._last_tick
        alive = stalled < LOOP_STALL_S
        return web.json_response(
            {"identity": self.identity, "alive": alive, "loop_stalled_s": round(stalled, 3)},
            status=200 if alive else 503)  # fmt: skip

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready = self._ready()
        READY.set(1 if ready else 0)
        return web.json_response({"identity": self.identity, "ready": ready, **self._facts()},
                                 status=200 if ready else 503)  # fmt: skip
