"""The issuer role as a process: the ISO 8583 host, its store and its security module.

Rule 1: ``main(settings, instance, health_file=...)`` is the supervisor's factory; the
returned service stands on ``setpay.lifecycle.Service`` like every other process.
Rule 2: the security module is the keystore, reached over RabbitMQ as broker identity
``issuer.<instance>`` through ``url`` (default ``settings.amqp_url``, the login the supervisor
hands its child); it never reads the broker credentials file itself. Operator commands pass
the identity's URL. Tests inject an ``IssuerSecurity`` instead.
Rule 3: health is the lifecycle's (one JSON file, written atomically on every state change)
with the port and the handled and malformed counts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from actors.iso8583.security import ZPK_LABEL
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.security import PAN_INDEX_KEY, PVK_KEY, IssuerSecurity, KeystoreIssuerSecurity
from setpay.config import DEFAULT_ISSUER_PORT, Settings
from setpay.lifecycle import Service


class IssuerService(Service):
    """The lifecycle (``setpay.lifecycle.Service``) around ``IssuerHost``: its store, its
    security module and its listener."""

    def __init__(
        self,
        settings: Settings,
        instance: str = "host1",
        *,
        port: int = DEFAULT_ISSUER_PORT,
        db_path: Path | None = None,
        security: IssuerSecurity | None = None,
        health_file: Path | None = None,
        latency: float = 0.0,
        url: str | None = None,
    ) -> None:
        super().__init__(f"issuer.{instance}", health_file=health_file)
        self.settings = settings
        self.url = url or settings.amqp_url
        self.port = port
        self.db_path = db_path or settings.data_dir / "issuer" / f"{instance}.sqlite"
        self.security = security
        self.latency = latency
        self.host: IssuerHost | None = None

    async def open_keystore_security(self) -> IssuerSecurity:
        """Connect as ``issuer.<instance>`` and bind the keystore; closed at stop."""
        from broker.connection import connect
        from keystore.client import KeystoreClient

        bus = await connect(self.url, name=self.identity)
        self.closing(bus.close, "bus")
        client = await KeystoreClient.create(bus)
        self.closing(client.close, "keystore")
        return KeystoreIssuerSecurity(
            client,
            pan_index_label=client.label(PAN_INDEX_KEY),
            pvk_label=client.label(PVK_KEY),
            zpk_label=f"{self.settings.broker_user_prefix}{ZPK_LABEL}",  # OPE PIN checks
        )

    async def on_start(self) -> None:
        """Open the security module and the store, listen on 127.0.0.1."""
        security = self.security or await self.open_keystore_security()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        store = Store(self.db_path)
        self.closing(store.close, "store")
        host = self.host = IssuerHost(store, security, latency=self.latency)
        await host.start("127.0.0.1", self.port)
        self.closing(host.stop, "listener")  # first at stop: in-flight requests finish
        self.port = host.port

    def health_extra(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "handled": self.host.handled if self.host else 0,
            "malformed": self.host.malformed if self.host else 0,
        }


def main(settings: Settings, instance: str, health_file: Path | None = None) -> IssuerService:
    """Factory for ``setpay run issuer`` (see ``actors.supervisor.ROLES``)."""
    return IssuerService(settings, instance, port=settings.issuer_port, health_file=health_file)


def cli(argv: list[str]) -> int:
    """``python -m actors.issuer.service [--port N] [--db FILE] [--latency S] [--id host1]``;
    the port defaults to ``Settings.issuer_port``."""
    from setpay import config, logs

    parser = argparse.ArgumentParser(prog="python -m actors.issuer.service")
    parser.add_argument("--id", default="host1", help="instance name (identity issuer.<id>)")
    parser.add_argument("--port", type=int, default=None, help="default: issuer_port")
    parser.add_argument("--db", type=Path, default=None, help="SQLite file")
    parser.add_argument("--latency", type=float, default=0.0, help="delay every answer (s)")
    args = parser.parse_args(argv)
    settings = config.load()
    logs.configure(settings.log_format, settings.log_level)
    port = settings.issuer_port if args.port is None else args.port
    service = IssuerService(settings, args.id, port=port, db_path=args.db, latency=args.latency)
    return asyncio.run(service.run())


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
