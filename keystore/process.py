"""The keystore as one supervised process: a pool of worker processes until SIGTERM/SIGINT.

Rule 1: this process never loads PKCS#11 itself; each worker (spawned) logs in on its own.
Rule 2: workers that die are restarted; on a stop signal, in-flight requests finish first.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

from keystore.service import RPC_QUEUE
from keystore.token import use_softhsm_conf
from keystore.worker import KeystorePool, WorkerSpec
from setpay.config import Settings
from setpay.logs import get_logger

log = get_logger(component="keystore")


class KeystoreProcess:
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
        self.settings = settings
        self.spec = WorkerSpec(
            settings,
            amqp_url=url or settings.amqp_url,
            queue=queue,
            identity_prefix=settings.broker_user_prefix,
        )
        self.workers = workers or settings.keystore_workers
        self.health_file = health_file

    def _health(self, state: str) -> None:
        if self.health_file is None:
            return
        tmp = self.health_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"actor": "keystore", "state": state, "pid": os.getpid()}))
        tmp.replace(self.health_file)

    async def run(self) -> int:
        use_softhsm_conf(self.settings)
        pool = KeystorePool(self.spec, self.workers)
        await pool.start()
        log.info("keystore_ready", queue=self.spec.queue, workers=self.workers)
        self._health("ready")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(pool.watch())
        try:
            await stop.wait()
        finally:
            self._health("stopping")
            watcher.cancel()
            await pool.stop()
            log.info("keystore_stopped")
        return 0


def main(settings: Settings, instance: str, health_file: Path | None = None) -> KeystoreProcess:
    """Factory for ``setpay run keystore`` (supervisor ROLES)."""
    return KeystoreProcess(settings, health_file=health_file)
