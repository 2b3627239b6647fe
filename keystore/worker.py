"""Keystore worker processes: each spawned, each with its own PKCS#11 login, all consuming
the same RPC queue (competing consumers); ``KeystorePool`` starts, watches and stops them.

Rule 1: workers start with the *spawn* method and initialise PKCS#11 only after they start
(a forked PKCS#11 library is undefined behaviour); ``SOFTHSM2_CONF`` is set before loading.
Rule 2: one worker per core: SoftHSM2 scales across processes, not threads (machine-facts).
Rule 3: SIGTERM drains (stop consuming, finish in-flight requests, log out); SIGKILL is a
crash the pool survives: unacked requests go back to the queue for the other workers.
Rule 4: a worker dies with its parent: on Linux the kernel sends it SIGTERM when the parent
goes (``PR_SET_PDEATHSIG``, so it drains as in Rule 3), and it also watches its parent's pid
every ``PARENT_CHECK`` seconds (other systems, or a parent gone before the signal was armed);
a worker that has not finished draining ``ORPHAN_GRACE`` seconds later exits anyway. A
keystore process killed with SIGKILL leaves no worker behind to hold the queue.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from keystore.errors import KeystoreError, TokenUnavailable
from keystore.hsm import Hsm, TokenConfig
from keystore.messages import OaepHash
from keystore.pinguard import PinGuard
from keystore.policy import Policy
from keystore.register import UsedPiRegister
from keystore.service import RPC_QUEUE, KeystoreService
from keystore.token import token_pin
from protocol.keys import get_suite
from setpay import logs, store
from setpay.config import Settings
from setpay.lifecycle import run_loop
from setpay.logs import get_logger


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs; pickled to the spawned child (never on argv or env)."""

    settings: Settings
    amqp_url: str
    queue: str = RPC_QUEUE
    identity_prefix: str = ""
    prefetch: int = 64
    log_file: str | None = None
    # Prometheus multiprocess directory: each worker writes its metrics there, the keystore
    # process exposes their sum (keystore/process.py); None: workers keep theirs in memory.
    metrics_dir: str | None = None

    def __repr__(self) -> str:  # URL passwords and PINs stay out of reprs
        return f"WorkerSpec(queue={self.queue!r}, prefix={self.identity_prefix!r})"


PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_CHECK = 1.0  # seconds between two looks at the parent's pid (Rule 4)
ORPHAN_GRACE = 15.0  # seconds an orphaned worker may drain before it exits anyway


def die_with_parent() -> int | None:
    """Arm Rule 4's death signal; the parent's pid (None: not a spawned child, nothing to die
    with). The pid comes from multiprocessing, not ``getppid``: a parent that died before the
    signal was armed has handed this process to another one, and then it exits at once."""
    parent = mp.parent_process()
    if parent is None or parent.pid is None:
        return None
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent.pid:
        raise SystemExit(0)
    return parent.pid


def orphaned(parent: int | None) -> bool:
    """Whether the process that started this worker is gone (Rule 4)."""
    return parent is not None and os.getppid() != parent


def used_pi_path(settings: Settings) -> Path:
    """The used-PI register every worker of a deployment shares (keystore/register.py)."""
    return settings.data_dir / "keystore-used-pi.sqlite"


def pin_guard_path(settings: Settings) -> Path:
    """The PIN guard's store every worker of a deployment shares (keystore/pinguard.py)."""
    return settings.data_dir / "keystore-pin-guard.sqlite"


def worker_main(spec: WorkerSpec, index: int, ready: Any) -> None:
    """Entry point of a spawned worker process."""
    parent = die_with_parent()
    os.environ["SOFTHSM2_CONF"] = str(spec.settings.softhsm_conf.resolve())
    # The process's entry point: the one place its logging is configured. Every worker
    # appends to the same file (or inherited stderr), one whole line per write.
    logs.configure(spec.settings.log_format, spec.settings.log_level, path=spec.log_file)
    store.use_database(spec.settings.store_url, spec.settings.data_dir)  # the used-PI register
    run_loop(_serve(spec, index, ready, parent), spec.settings.event_loop)


async def _watch_parent(parent: int | None, stop: asyncio.Event) -> None:
    """Stop the worker when its parent is gone (Rule 4's fallback)."""
    if parent is None:
        return
    while not orphaned(parent):
        await asyncio.sleep(PARENT_CHECK)
    get_logger(component="keystore.worker").warning("keystore_worker_orphaned", parent=parent)
    stop.set()


async def _serve(spec: WorkerSpec, index: int, ready: Any, parent: int | None) -> None:
    # Imported here so the parent never needs the broker layer to manage processes.
    from broker.connection import connect
    from broker.errors import BrokerError
    from broker.rpc import serve_rpc

    s = spec.settings
    service = KeystoreService(
        Hsm(TokenConfig(s.keystore_module, s.keystore_token_label, token_pin(s))),
        Policy(identity_prefix=spec.identity_prefix),
        UsedPiRegister(used_pi_path(s)),
        PinGuard(pin_guard_path(s)),
        transport_oaep=OaepHash(get_suite(s.suite).oaep_hash),
    )
    try:
        await service.start()
        bus = await connect(spec.amqp_url, name=f"keystore-{index}")
    except (KeystoreError, BrokerError) as exc:
        ready.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        return
    try:
        server = await serve_rpc(bus, spec.queue, service.handle, prefetch=spec.prefetch)
    except BrokerError as exc:
        ready.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        await bus.close()
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(parent, stop))
    log = get_logger(component="keystore.worker")
    log.info("keystore_worker_ready", worker=index, pid=os.getpid(), queue=spec.queue)
    ready.put(("ready", index, os.getpid()))
    await stop.wait()
    log.info("keystore_worker_stopping", worker=index, orphaned=orphaned(parent))
    if orphaned(parent):  # Rule 4: the drain may not outlast the grace, however it was told
        loop.call_later(ORPHAN_GRACE, os._exit, 1)
    watcher.cancel()
    await server.stop()
    await bus.close()
    await service.close()


class KeystorePool:
    """Starts ``workers`` spawned keystore processes and keeps them running."""

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        self.spec = spec
        self.workers = workers
        self._ctx = mp.get_context("spawn")
        self._ready: Any = self._ctx.Queue()
        self.processes: dict[int, BaseProcess] = {}

    def _spawn(self, index: int) -> None:
        proc = self._ctx.Process(
            target=worker_main,
            args=(self.spec, index, self._ready),
            name=f"keystore-{index}",
            daemon=True,
        )
        # prometheus-client picks its value store when the child imports it, before
        # worker_main runs: the directory must be in the environment the child starts with.
        variable = "PROMETHEUS_MULTIPROC_DIR"
        before = os.environ.get(variable)
        if self.spec.metrics_dir:
            os.environ[variable] = self.spec.metrics_dir
        try:
            proc.start()
        finally:
            if before is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = before
        self.processes[index] = proc

    def _await_ready(self, indexes: set[int], timeout: float) -> None:
        pending = set(indexes)
        deadline = time.monotonic() + timeout
        while pending:
            try:
                status, index, detail = self._ready.get(timeout=0.25)
            except queue_mod.Empty:
                dead = sorted(i for i in pending if not self.processes[i].is_alive())
                if dead:
                    raise TokenUnavailable(f"keystore workers {dead} exited during start") from None
                if time.monotonic() > deadline:
                    raise TokenUnavailable(
                        f"keystore workers {sorted(pending)} not ready within {timeout:g}s"
                    ) from None
                continue
            if status == "failed":
                raise TokenUnavailable(f"keystore worker {index} failed to start: {detail}")
            pending.discard(index)

    async def start(self, timeout: float = 60.0) -> None:
        """Spawn every worker and wait until each serves the queue."""
        for index in range(self.workers):
            self._spawn(index)
        try:
            await asyncio.to_thread(self._await_ready, set(range(self.workers)), timeout)
        except BaseException:
            self.kill()  # a half-started pool leaves no worker behind
            raise

    async def restart_dead(self, timeout: float = 60.0) -> list[int]:
        """Respawn workers that exited; return their indexes."""
        dead = [i for i, p in self.processes.items() if not p.is_alive()]
        for index in dead:
            get_logger(component="keystore.pool").warning("keystore_worker_restart", worker=index)
            self.processes[index].close()
            self._spawn(index)
        if dead:
            await asyncio.to_thread(self._await_ready, set(dead), timeout)
        return dead

    async def watch(self, interval: float = 1.0) -> None:
        """Restart crashed workers until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.restart_dead()
            except KeystoreError as exc:
                get_logger(component="keystore.pool").error(
                    "keystore_worker_restart_failed", error=exc.text
                )

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every worker (they drain) and wait; SIGKILL what is left."""
        for proc in self.processes.values():
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            await asyncio.to_thread(proc.join, timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL every worker still alive (a crash, as far as the broker can tell)."""
        for proc in self.processes.values():
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        self.processes.clear()
