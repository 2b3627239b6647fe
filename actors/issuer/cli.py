"""``setpay issuer serve|seed|echo``: run the host, seed the test environment, probe a host.

Rule 1: output names accounts by their seed name, brand and last four digits only.
Rule 2: failures a user can fix (no host listening, keystore unreachable) are
``CommandError`` with one line saying which.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from actors.iso8583.codes import ResponseCode
from actors.iso8583.errors import Iso8583Error
from actors.iso8583.link import IsoLink
from actors.issuer import service
from actors.issuer.accounts import Store
from actors.issuer.seed import seed_environment
from setpay.cli import CommandError
from setpay.clock import CLOCK
from setpay.config import Settings


def _operator_url(settings: Settings, instance: str) -> str:
    """``issuer.<instance>``'s login, read from the credentials file as the operator."""
    from broker.provision import identity_url

    return identity_url(settings.data_dir, f"issuer.{instance}", settings.broker_vhost,
                        settings.amqp_url, user_prefix=settings.broker_user_prefix)  # fmt: skip


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from broker.credentials import CredentialsError

    try:
        url = _operator_url(settings, args.id)
    except CredentialsError:
        url = settings.amqp_url  # no credentials file here: the configured login is its own
    svc = service.IssuerService(
        settings,
        args.id,
        port=args.port or settings.issuer_port,
        db_path=args.db,
        latency=args.latency,
        url=url,
    )
    from setpay.lifecycle import serve_metrics

    serve_metrics(svc, settings)
    return asyncio.run(svc.run())


async def _seed_async(args: argparse.Namespace, settings: Settings) -> int:
    try:
        url = _operator_url(settings, args.id)  # an operator command: the credentials file
    except Exception as exc:  # not provisioned: the user must run `setpay broker init`
        raise CommandError(f"no broker login for issuer.{args.id}: {exc}") from None
    svc = service.IssuerService(settings, args.id, db_path=args.db, url=url)
    try:
        security = await svc.open_keystore_security()
    except Exception as exc:  # broker/keystore/credentials: the user must start or provision
        raise CommandError(f"cannot reach the keystore as issuer.{args.id}: {exc}") from None
    svc.db_path.parent.mkdir(parents=True, exist_ok=True)
    store = Store(svc.db_path)
    try:
        report = await seed_environment(store, security, CLOCK.now())
    finally:
        store.close()
        await svc.stop()
    for account, status in report:
        print(f"{account.name:<16} {account.brand:<11} …{account.reference[-4:]}  {status}")
    return 0 if any(status == "created" for _, status in report) else 1


def _seed(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_seed_async(args, settings))


async def echo(port: int, *, host: str = "127.0.0.1", deadline: float = 2.0) -> ResponseCode:
    """One 0800 echo to ``host:port`` over a throw-away link journal."""
    with tempfile.TemporaryDirectory() as tmp:
        link = IsoLink(host, port, Path(tmp) / "echo.sqlite", deadline=deadline)
        await link.start()
        try:
            return await link.echo()
        finally:
            await link.close()


def _echo(args: argparse.Namespace, settings: Settings) -> int:
    args.port = args.port or settings.issuer_port
    try:
        code = asyncio.run(echo(args.port))
    except (Iso8583Error, TimeoutError) as exc:
        raise CommandError(f"no echo from 127.0.0.1:{args.port}: {exc or 'timeout'}") from None
    print(f"echo 127.0.0.1:{args.port}: {code.value}")
    return 0 if code.approved else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay issuer serve|seed|echo``."""
    parser = sub.add_parser("issuer", help="the ISO 8583 issuer/acquirer host")
    cmds = parser.add_subparsers(dest="issuer_command", metavar="COMMAND", required=True)
    serve = cmds.add_parser("serve", help="run the host on 127.0.0.1")
    serve.add_argument("--id", default="host1", help="instance (identity issuer.<id>)")
    serve.add_argument("--port", type=int, default=None, help="default: issuer_port")
    serve.add_argument("--db", type=Path, default=None, help="SQLite file")
    serve.add_argument("--latency", type=float, default=0.0, help="delay every answer (s)")
    serve.set_defaults(func=_serve)
    seed = cmds.add_parser("seed", help="create the test environment's accounts")
    seed.add_argument("--id", default="host1")
    seed.add_argument("--db", type=Path, default=None)
    seed.set_defaults(func=_seed)
    ping = cmds.add_parser("echo", help="send an 0800 echo test to a host")
    ping.add_argument("--port", type=int, default=None, help="default: issuer_port")
    ping.set_defaults(func=_echo)
