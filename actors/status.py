"""`setpay status`: what runs, where its pages and APIs answer, and its health.

Rule 1: it only reads: the supervisor's pid and health files under ``<data_dir>/run/``, each
child's own health file, and one ``GET /openapi.json`` per HTTPS front door (trusting only
the environment's CA file, 2 s at most each). It starts, stops and changes nothing.
Rule 2: exit 0 when every child is ready and every front door answers, 1 when something is
not, 3 when no supervisor runs under this data dir (as ``systemctl status`` does).
Rule 3: a readable table by default, one JSON document with ``--json``; never a traceback
(an unreachable service is a row that says so).
Rule 4: each process's key figures come from its own metrics endpoint (setpay/metrics.py), at
the port its health file names: ``/readyz`` and one scrape of ``/metrics`` (messages handled
and answered with an error, median handler time, publish confirms, keystore calls,
dead letters, redeliveries), 2 s at most each, plain HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from actors import supervisor
from actors.web.client import ApiError, HttpApi, service_url
from setpay.config import Settings

NOT_RUNNING, DEGRADED, HEALTHY = 3, 1, 0
FRONT_DOORS = (("wallet", "the web wallet and its API"), ("pos", "the POS console and its API"))


@dataclass(frozen=True, slots=True)
class Process:
    identity: str
    state: str  # as the supervisor last reported it
    pid: int | None
    age_s: float | None  # since its health file last changed
    handled: int | None
    in_flight: int | None
    dead_lettered: int | None
    metrics_port: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)  # Rule 4; empty: no endpoint


@dataclass(frozen=True, slots=True)
class FrontDoor:
    service: str
    what: str
    url: str
    answers: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Status:
    data_dir: str
    vhost: str
    supervisor_pid: int | None
    processes: list[Process]
    front_doors: list[FrontDoor]

    @property
    def code(self) -> int:
        if self.supervisor_pid is None:
            return NOT_RUNNING
        ready = all(p.state == "ready" for p in self.processes)
        return HEALTHY if ready and all(d.answers for d in self.front_doors) else DEGRADED

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "code": self.code}

    def lines(self) -> list[str]:
        if self.supervisor_pid is None:
            return [f"nothing runs under {self.data_dir} (vhost {self.vhost!r}); "
                    "`setpay up` or `setpay demo` starts the test environment"]  # fmt: skip
        out = [f"supervisor pid {self.supervisor_pid}, data dir {self.data_dir}, "
               f"vhost {self.vhost!r}", "",
               f"{'process':<16} {'state':<14} {'pid':>7} {'updated':>9} "
               f"{'handled':>8} {'in flight':>9} {'dead':>5}  "
               f"{'metrics':>7} {'ready':>5} {'msgs':>6} {'errors':>6} {'p50 ms':>7} "
               f"{'confirms':>8} {'hsm ops':>7}"]  # fmt: skip
        for p in self.processes:
            age = "-" if p.age_s is None else f"{p.age_s:.0f}s ago"
            f = p.figures
            p50 = f.get("handler_p50_ms")
            out.append(f"{p.identity:<16} {p.state:<14} {_n(p.pid):>7} {age:>9} "
                       f"{_n(p.handled):>8} {_n(p.in_flight):>9} {_n(p.dead_lettered):>5}  "
                       f"{_n(p.metrics_port):>7} {_yn(f.get('ready')):>5} "
                       f"{_n(f.get('messages')):>6} {_n(f.get('errors')):>6} "
                       f"{'-' if p50 is None else f'{p50:.1f}':>7} "
                       f"{_n(f.get('publishes_confirmed')):>8} "
                       f"{_n(f.get('keystore_operations') or f.get('keystore_calls')):>7}"
                       )  # fmt: skip
        out.append("")
        for d in self.front_doors:
            out.append(f"{d.url + '/':<28} {d.what}: {d.detail}")
        return out


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _yn(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def figures(text: str) -> dict[str, Any]:
    """Key figures of one ``/metrics`` scrape (Rule 4)."""
    total: dict[str, float] = {}
    errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            total[name] = total.get(name, 0.0) + value
            if name == "setpay_messages_total" and labels.get("outcome") != "ok":
                errors += value
            if name == "setpay_handler_seconds_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + value
            if name == "setpay_publishes_total" and labels.get("outcome") == "confirmed":
                total["confirmed"] = total.get("confirmed", 0.0) + value
    count = total.get("setpay_handler_seconds_count", 0.0)
    p50 = None
    if count:
        p50 = next((le * 1000 for le, n in sorted(buckets.items()) if n >= count / 2), None)
    return {
        "messages": int(total.get("setpay_messages_total", 0)),
        "errors": int(errors),
        "handler_p50_ms": p50,  # the upper bound of the bucket that holds the median
        "publishes_confirmed": int(total.get("confirmed", 0)),
        "keystore_calls": int(total.get("setpay_keystore_calls_total", 0)),  # asked for
        # performed on the token (the keystore's own figure, its workers' summed)
        "keystore_operations": int(total.get("setpay_keystore_operations_total", 0)),
        "dead_lettered": int(total.get("setpay_dead_lettered_total", 0)),
        "redeliveries": int(total.get("setpay_redeliveries_total", 0)),
    }


async def scrape(port: int, timeout: float) -> dict[str, Any]:
    """``/readyz`` and the figures of ``/metrics`` of the process at ``port`` (Rule 4); an
    endpoint that does not answer is ``{"ready": None, "error": ...}``."""
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(f"{base}/readyz") as ready:
                is_ready = ready.status == 200
            async with http.get(f"{base}/metrics") as answer:
                text = await answer.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"ready": None, "error": type(exc).__name__}
    return {"ready": is_ready, **figures(text)}


def _process(settings: Settings, identity: str, state: str) -> Process:
    rd = supervisor.run_dir(settings)
    pid = supervisor.recorded_pid(rd / f"{identity}.pid")
    child = supervisor.child_named(identity)  # a process name: merchant.pos1@2 (Rule 6)
    health = supervisor.read_health(settings, child) if child is not None else None
    try:
        age: float | None = time.time() - (rd / f"{identity}.health").stat().st_mtime
    except OSError:
        age = None
    health = health or {}
    port = health.get("metrics_port")
    port = port if isinstance(port, int) else None
    return Process(identity, state, pid, age, health.get("handled"), health.get("in_flight"),
                   health.get("dead_lettered"), port)  # fmt: skip


async def _with_figures(process: Process, timeout: float) -> Process:
    if process.metrics_port is None or process.pid is None:
        return process
    return Process(**{**asdict(process), "figures": await scrape(process.metrics_port, timeout)})


async def _probe(settings: Settings, service: str, what: str, timeout: float) -> FrontDoor:
    url = service_url(settings, service)
    api = HttpApi.for_service(settings, service, timeout=timeout)
    try:
        document = await api.call("GET", "/openapi.json")
        version = (document or {}).get("info", {}).get("version", "?")
        return FrontDoor(service, what, url, True, f"answers (OpenAPI {version})")
    except ApiError as exc:
        return FrontDoor(service, what, url, False, f"no answer: {exc.text}")
    finally:
        await api.close()


async def collect(settings: Settings, *, timeout: float = 2.0) -> Status:
    """The status of the environment under ``settings.data_dir`` (Rule 1)."""
    rd = supervisor.run_dir(settings)
    pid = supervisor.recorded_pid(rd / "supervisor.pid")
    states = supervisor.supervisor_health(settings) if pid is not None else None
    processes = [_process(settings, i, s) for i, s in sorted((states or {}).items())]
    processes = list(await asyncio.gather(*(_with_figures(p, timeout) for p in processes)))
    doors: list[FrontDoor] = []
    if pid is not None:
        running = {p.identity.split(".")[0] for p in processes if p.state == "ready"}
        wanted = [(s, w) for s, w in FRONT_DOORS
                  if ("wallet" if s == "wallet" else "merchant") in running]  # fmt: skip
        doors = list(await asyncio.gather(*(_probe(settings, s, w, timeout) for s, w in wanted)))
    return Status(str(settings.data_dir), settings.broker_vhost, pid, processes, doors)
