"""`setpay` subcommands of the broker layer: `setpay broker init`."""

from __future__ import annotations

import argparse
import asyncio

from broker.errors import BrokerError
from broker.provision import init
from setpay.cli import CommandError
from setpay.config import Settings


def _init(args: argparse.Namespace, settings: Settings) -> int:
    try:
        report = asyncio.run(
            init(
                vhost=args.vhost or settings.broker_vhost,
                data_dir=settings.data_dir,
                base_url=settings.amqp_url,
                admin_user=settings.broker_admin_user,
                admin_password=settings.broker_admin_password,
                user_prefix=args.user_prefix or settings.broker_user_prefix,
            )
        )
    except BrokerError as exc:
        raise CommandError(str(exc)) from None
    for line in report.lines():
        print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this layer's subcommands to the `setpay` parser."""
    broker = sub.add_parser("broker", help="RabbitMQ administration")
    commands = broker.add_subparsers(dest="broker_command", metavar="COMMAND", required=True)
    init_parser = commands.add_parser(
        "init", help="apply deploy/rabbitmq definitions: vhost, users, permissions, policies"
    )
    init_parser.add_argument("--vhost", help="vhost to set up (default: settings.broker_vhost)")
    # Users are broker-wide: tests namespace theirs so they never touch the real identities.
    init_parser.add_argument("--user-prefix", default="", help=argparse.SUPPRESS)
    init_parser.set_defaults(func=_init)
