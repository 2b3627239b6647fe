"""`setpay status`: what runs, where its pages and APIs answer, and its health.

Rule 1: it only reads: the supervisor's pid and health files under ``<data_dir>/run/``, each
child's own health file, and one ``GET /openapi.json`` per HTTPS front door (trusting only
the environment's CA file, 2 s at most each). It starts, stops and changes nothing.
Rule 2: exit 0 when every child is ready and every front door answers, 1 when something is
not, 3 when no supervisor runs under this data dir (as ``systemctl status`` does).
Rule 3: a readable table by default, one JSON document with ``--json``; never a traceback
(an unreachable service is a row that says so).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

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
               f"{'handled':>8} {'in flight':>9} {'dead':>5}"]  # fmt: skip
        for p in self.processes:
            age = "-" if p.age_s is None else f"{p.age_s:.0f}s ago"
            out.append(f"{p.identity:<16} {p.state:<14} {_n(p.pid):>7} {age:>9} "
                       f"{_n(p.handled):>8} {_n(p.in_flight):>9} {_n(p.dead_lettered):>5}")
        out.append("")
        for d in self.front_doors:
            out.append(f"{d.url + '/':<28} {d.what}: {d.detail}")
        return out


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _process(settings: Settings, identity: str, state: str) -> Process:
    rd = supervisor.run_dir(settings)
    pid = supervisor.recorded_pid(rd / f"{identity}.pid")
    child = next((c for c in map(supervisor.child_of, supervisor.ROLES)
                  if c.identity == identity), None)  # fmt: skip
    health = supervisor.read_health(settings, child) if child is not None else None
    try:
        age: float | None = time.time() - (rd / f"{identity}.health").stat().st_mtime
    except OSError:
        age = None
    health = health or {}
    return Process(identity, state, pid, age, health.get("handled"), health.get("in_flight"),
                   health.get("dead_lettered"))  # fmt: skip


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
    doors: list[FrontDoor] = []
    if pid is not None:
        running = {p.identity.split(".")[0] for p in processes if p.state == "ready"}
        wanted = [(s, w) for s, w in FRONT_DOORS
                  if ("wallet" if s == "wallet" else "merchant") in running]  # fmt: skip
        doors = list(await asyncio.gather(*(_probe(settings, s, w, timeout) for s, w in wanted)))
    return Status(str(settings.data_dir), settings.broker_vhost, pid, processes, doors)
