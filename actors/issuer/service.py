"""The issuer role as a process: the ISO 8583 host, its store and its security module.

Rule 1: ``main(settings, instance, health_file=...)`` is the supervisor's factory; the
returned service has ``run()`` (serve until SIGTERM/SIGINT), like ``actors.runtime.Actor``.
Rule 2: the security module is the keystore, reached over RabbitMQ as broker identity
``issuer.<instance>``; tests inject an ``IssuerSecurity`` instead.
Rule 3: the health file is JSON written atomically on every state change: state, ready,
port, handled and malformed counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.security import (
    PAN_INDEX_KEY,
    PVK_KEY,
    ZPK_LABEL,
    IssuerSecurity,
    KeystoreIssuerSecurity,
)
from setpay.config import Settings
from setpay.logs import get_logger

DEFAULT_PORT = 8583  # the ISO 8583 port by convention; Settings.issuer_port configures it


class IssuerService:
    """Start/stop/run around ``IssuerHost``; owns the store and the keystore connection."""

    def __init__(
        self,
        settings: Settings,
        instance: str = "host1",
        *,
        port: int = DEFAULT_PORT,
        db_path: Path | None = None,
        security: IssuerSecurity | None = None,
        health_file: Path | None = None,
        latency: float = 0.0,
    ) -> None:
        self.settings = settings
        self.identity = f"issuer.{instance}"
        self.port = port
        self.db_path = db_path or settings.data_dir / "issuer" / f"{instance}.sqlite"
        self.security = security
        self.health_file = health_file
        self.latency = latency
        self.host: IssuerHost | None = None
        self.state = "new"
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._closers: list[Any] = []
        self._started_at = 0.0
        self.log = get_logger(actor=self.identity)

    async def open_keystore_security(self) -> IssuerSecurity:
        """Connect as ``issuer.<instance>`` and bind the keystore; closed by ``stop``."""
        from broker.connection import connect
        from broker.provision import identity_url
        from keystore.client import KeystoreClient

        url = identity_url(
            self.settings.data_dir,
            self.identity,
            self.settings.broker_vhost,
            self.settings.amqp_url,
            user_prefix=self.settings.broker_user_prefix,
        )
        bus = await connect(url, name=self.identity)
        client = await KeystoreClient.create(bus)
        self._closers += [client.close, bus.close]
        return KeystoreIssuerSecurity(
            client,
            pan_index_label=client.label(PAN_INDEX_KEY),
            pvk_label=client.label(PVK_KEY),
            zpk_label=f"{self.settings.broker_user_prefix}{ZPK_LABEL}",  # OPE PIN checks
        )

    async def start(self) -> None:
        """Open the store and the security module, listen on 127.0.0.1, then ready."""
        self._set_state("starting")
        self._started_at = time.time()
        security = self.security or await self.open_keystore_security()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        store = Store(self.db_path)
        self._closers.append(store.close)
        self.host = IssuerHost(store, security, latency=self.latency)
        await self.host.start("127.0.0.1", self.port)
        self.port = self.host.port
        self._set_state("ready")
        self.ready.set()

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests, close the store and connections."""
        if self.state == "stopped":
            return
        self._set_state("stopping")
        if self.host is not None:
            await self.host.stop()
        for close in reversed(self._closers):
            result = close()
            if asyncio.iscoroutine(result):
                await result
        self._closers.clear()
        self._set_state("stopped")

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT or ``request_stop``, then stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()
        return 0

    def health(self) -> dict[str, Any]:
        return {
            "actor": self.identity,
            "pid": os.getpid(),
            "state": self.state,
            "ready": self.state == "ready",
            "port": self.port,
            "handled": self.host.handled if self.host else 0,
            "malformed": self.host.malformed if self.host else 0,
            "started_at": self._started_at,
        }

    def _set_state(self, state: str) -> None:
        self.state = state
        self.log.info("issuer_state", state=state)
        if self.health_file is not None:
            tmp = self.health_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.health()))
            tmp.replace(self.health_file)


def main(settings: Settings, instance: str, health_file: Path | None = None) -> IssuerService:
    """Factory for ``setpay run issuer`` (see ``actors.supervisor.ROLES``)."""
    return IssuerService(settings, instance, port=settings.issuer_port, health_file=health_file)


def cli(argv: list[str]) -> int:
    """``python -m actors.issuer.host [--port N] [--db FILE] [--latency S] [--id host1]``."""
    from setpay import config, logs

    parser = argparse.ArgumentParser(prog="python -m actors.issuer.host")
    parser.add_argument("--id", default="host1", help="instance name (identity issuer.<id>)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file")
    parser.add_argument("--latency", type=float, default=0.0, help="delay every answer (s)")
    args = parser.parse_args(argv)
    settings = config.load()
    logs.configure(settings.log_format, settings.log_level)
    service = IssuerService(
        settings, args.id, port=args.port, db_path=args.db, latency=args.latency
    )
    return asyncio.run(service.run())


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
