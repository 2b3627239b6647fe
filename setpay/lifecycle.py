"""The one lifecycle every long-running setpay process stands on: the actors (``actors.runtime``),
the keystore (``keystore.process``) and the issuer host (``actors.issuer.service``).

Rule 1: new -> starting -> ready -> draining -> stopped. ``start`` runs ``on_start`` (open what
the process needs, declaring each closable thing with ``closing``), then ready; ``stop`` runs
``on_drain`` (take no new work, finish in-flight work), then closes what was declared in the
reverse order of declaration, each one even if an earlier one failed. A failed start closes
what it had opened and raises.
Rule 2: SIGTERM/SIGINT (or ``request_stop``) end ``run``: drain, then stop.
Rule 3: one health mechanism: ``health()`` (identity, pid, state, ready, started_at, plus the
process's own ``health_extra()``), written as one JSON file, atomically (readers never see
half a file), on every state change and whenever ``write_health`` is called.
Rule 4: one metrics and health endpoint (``setpay.metrics``): when ``metrics_port`` is set
(``setpay run`` sets it from the configuration for every process it runs; 0 = an ephemeral
port, None or -1 = none), ``start`` serves ``/metrics``, ``/healthz`` and ``/readyz`` before
``on_start`` runs (so a starting process is live and not ready) and closes it last; its port
is in the health file (``metrics_port``), where `setpay status` finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from setpay.logs import get_logger
from setpay.metrics import MetricsServer

log = get_logger(component="lifecycle")

Closer = Callable[[], Awaitable[Any] | Any]


class State(enum.StrEnum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class NotReady(Exception):
    """The process cannot start until an operator step is done (the message names it)."""


def write_json_atomically(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` so a reader sees the old file or the new one, never half."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


class Service:
    """A long-running process: lifecycle (Rule 1), signals (Rule 2), health (Rule 3)."""

    def __init__(self, identity: str, *, health_file: Path | None = None) -> None:
        self.identity = identity
        self.health_file = health_file
        self.state = State.NEW
        self.ready = asyncio.Event()
        self.log = get_logger(actor=identity)
        self._closers: list[tuple[str, Closer]] = []
        self._stop_requested = asyncio.Event()
        self._started_at = 0.0
        self.metrics_host = "127.0.0.1"
        self.metrics_port: int | None = None  # Rule 4
        self.metrics: MetricsServer | None = None

    # -- what a process adds --------------------------------------------------------------------

    async def on_start(self) -> None:
        """Open what the process needs (declare each with ``closing``); then it is ready."""

    async def on_drain(self) -> None:
        """Take no new work and finish what is in flight (before anything is closed)."""

    def health_extra(self) -> dict[str, Any]:
        """The process's own health facts (counts, ports)."""
        return {}

    def is_ready(self) -> bool:
        """Whether the process serves (ready and its connections up)."""
        return self.state is State.READY

    # -- lifecycle ------------------------------------------------------------------------------

    def closing(self, close: Closer, name: str = "") -> None:
        """Declare something opened: ``close`` runs at stop, in reverse order (Rule 1)."""
        self._closers.append((name or getattr(close, "__qualname__", "resource"), close))

    async def start(self) -> None:
        """The metrics endpoint (Rule 4), ``on_start``, then ready; on failure close what was
        opened and raise."""
        self._started_at = time.time()
        try:
            if self.metrics_port is not None and self.metrics_port >= 0:
                server = MetricsServer(self.identity, self.is_ready, self._readiness_facts)
                await server.start(self.metrics_host, self.metrics_port)
                self.metrics = server
                self.closing(server.close, "metrics server")  # closed last
                self.log.info("metrics_serving", host=self.metrics_host, port=server.port)
            self._set_state(State.STARTING)
            await self.on_start()
        except BaseException:
            await self._close_all()
            self._set_state(State.STOPPED)
            raise
        self._set_state(State.READY)
        self.ready.set()
        self.log.info("service_ready")

    async def drain(self) -> None:
        """Stop taking work and wait until what is in flight is settled."""
        if self.state in (State.DRAINING, State.STOPPED):
            return
        self._set_state(State.DRAINING)
        await self.on_drain()

    async def stop(self) -> None:
        """Drain, then close what was declared, last opened first. A service never started
        (used only for what it opens, e.g. a one-off seeding) just closes that, silently."""
        if self.state is State.STOPPED:
            return
        if self.state is State.NEW:
            await self._close_all()
            self.state = State.STOPPED
            return
        try:
            await self.drain()
        finally:
            await self._close_all()
            self._set_state(State.STOPPED)
            self.log.info("service_stopped")

    def request_stop(self) -> None:
        """Ask ``run`` to drain and stop (what SIGTERM/SIGINT do)."""
        self._stop_requested.set()

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT or ``request_stop``, then drain and stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stop_requested.wait()
            self.log.info("service_stop_requested")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
        return 0

    async def _close_all(self) -> None:
        while self._closers:
            name, close = self._closers.pop()
            try:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:  # one failed close must not keep the others open
                self.log.error("service_close_failed", resource=name, error=type(exc).__name__)

    # -- health ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Liveness and readiness facts (Rule 3)."""
        return {
            "actor": self.identity,
            "pid": os.getpid(),
            "state": str(self.state),
            "ready": self.is_ready(),
            "started_at": self._started_at,
            "metrics_port": self.metrics.port if self.metrics is not None else None,
            **self.health_extra(),
        }

    def _readiness_facts(self) -> dict[str, Any]:
        return {"state": str(self.state), **self.health_extra()}

    def write_health(self) -> None:
        """Write the health file now (Rule 3)."""
        if self.health_file is not None:
            write_json_atomically(self.health_file, self.health())

    def _set_state(self, state: State) -> None:
        self.state = state
        self.write_health()


class Periodic:
    """A round run in the background now and then every ``seconds`` until ``stop``: the one
    schedule of a process's background work (the CA's BCI publisher, the parties' revocation
    pulls). A round that raises is logged as ``<name>_round_failed`` and the next one runs."""

    def __init__(self, name: str, round_: Callable[[], Awaitable[Any]], seconds: float) -> None:
        self.name = name
        self.round = round_
        self.seconds = seconds
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as exc:  # a peer away, a store busy: the next round tries again
                log.error(f"{self.name}_round_failed", error=type(exc).__name__)
            await asyncio.sleep(self.seconds)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def serve_metrics(service: Service, settings: Any) -> Service:
    """Give ``service`` the configured metrics endpoint (Rule 4): ``metrics_host`` and
    ``metrics_port`` of ``settings`` (``setpay.config.Settings``). Every command that runs a
    long-running process calls it: `setpay run`, `keystore serve`, `issuer serve`."""
    service.metrics_host = settings.metrics_host
    service.metrics_port = settings.metrics_port
    return service


async def run_service(service: Service) -> int:
    """Run ``service`` until signalled; suppress the cancellation noise of a Ctrl-C."""
    with contextlib.suppress(asyncio.CancelledError):
        return await service.run()
    return 130


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T], event_loop: str = "auto") -> T:
    """Run ``main`` to its end on the configured event loop (``Settings.event_loop``): uvloop
    when asked or, for ``auto``, when it is installed (the ``fast`` extra); else asyncio's.
    uvloop moves the loop's socket and timer work to C (machine-facts: +10-30 % on the
    broker round trips that every message of a purchase makes)."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                main.close()
                raise RuntimeError("event_loop is uvloop but uvloop is not installed "
                                   "(pip install 'setpay[fast]')") from None  # fmt: skip
        else:
            return uvloop.run(main)
    return asyncio.run(main)
