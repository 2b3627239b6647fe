"""The keystore as one supervised process: a pool of worker processes until SIGTERM/SIGINT.

Rule 1: this process never loads PKCS#11 itself; each worker (spawned) logs in on its own.
Rule 2: workers that die are restarted; on a stop signal, in-flight requests finish first.
Rule 3: its lifecycle and health are ``setpay.lifecycle.Service``'s, the one every process has.
Rule 4: when it serves metrics, its workers write theirs (operations and latency on the token,
publishes, redeliveries) into a Prometheus multiprocess directory under ``run/``, emptied at
start, and its ``/metrics`` shows their sum beside its own figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path
from typing import Any

from keystore.service import RPC_QUEUE
from keystore.token import use_softhsm_conf
from keystore.worker import KeystorePool, WorkerSpec
from setpay.config import Settings, process_name
from setpay.lifecycle import Service


class KeystoreProcess(Service):
    """Runs ``workers`` keystore workers on ``queue`` until signalled."""

    def __init__(
        self,
        settings: Settings,
        *,
        url: str | None = None,
        queue: str = RPC_QUEUE,
        workers: int = 0,
        health_file: Path | None = None,
    ) -> None:
        super().__init__("keystore", health_file=health_file)
        self.settings = settings
        self.spec = WorkerSpec(
            settings,
            amqp_url=url or settings.amqp_url,
            queue=queue,
            identity_prefix=settings.broker_user_prefix,
        )
        self.workers = workers or settings.keystore_workers
        self.pool: KeystorePool | None = None

    async def on_start(self) -> None:
        use_softhsm_conf(self.settings)
        if self.metrics is not None:  # Rule 4
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            # one directory per keystore process: a replica's workers never mix with another's
            directory = self.settings.data_dir / "run" / process_name(
                "keystore-metrics", self.settings.replica
            )
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for stale in directory.glob("*.db"):
                stale.unlink()
            self.spec = dataclasses.replace(self.spec, metrics_dir=str(directory.resolve()))
            workers = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(workers, path=str(directory))
            self.metrics.extra.append(workers)
        pool = self.pool = KeystorePool(self.spec, self.workers)
        await pool.start()
        self.closing(pool.stop, "worker pool")  # Rule 2: workers drain their in-flight work
        watcher = asyncio.create_task(pool.watch())
        self.closing(lambda: _cancel(watcher), "worker watcher")  # stops restarts first

    def health_extra(self) -> dict[str, Any]:
        return {"queue": self.spec.queue, "workers": self.workers}


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def main(settings: Settings, instance: str, health_file: Path | None = None) -> KeystoreProcess:
    """Factory for ``setpay run keystore`` (supervisor ROLES)."""
    return KeystoreProcess(settings, health_file=health_file)
