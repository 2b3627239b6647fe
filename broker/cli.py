"""`setpay` subcommands of the broker layer: `setpay broker init|export-login`.

Rule 1: a password is never printed; ``export-login`` writes one identity's AMQP URL into a
new 0600 file (for systemd's ``LoadCredential=``: one OS user per role reads only its own).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from broker import admin
from broker.admin import management_url
from broker.errors import BrokerError
from broker.provision import init
from setpay.cli import CommandError
from setpay.config import Settings


def _init(args: argparse.Namespace, settings: Settings) -> int:
    admin.configure(management_url(settings.amqp_url, settings.broker_management_url),
                    settings.broker_admin_user, settings.broker_admin_password)  # fmt: skip
    try:
        report = asyncio.run(
            init(
                vhost=args.vhost or settings.broker_vhost,
                data_dir=settings.data_dir,
                base_url=settings.amqp_url,
                admin_user=settings.broker_admin_user,
                admin_password=settings.broker_admin_password,
                user_prefix=args.user_prefix or settings.broker_user_prefix,
                queue_type=settings.broker_queue_type,
            )
        )
    except BrokerError as exc:
        raise CommandError(str(exc)) from None
    for line in report.lines():
        print(line)
    return 0


def _export_login(args: argparse.Namespace, settings: Settings) -> int:
    from broker.provision import identity_url

    try:
        url = identity_url(settings.data_dir, args.identity, settings.broker_vhost,
                           settings.amqp_url, user_prefix=settings.broker_user_prefix)  # fmt: skip
    except BrokerError as exc:
        raise CommandError(str(exc)) from None
    out = Path(args.out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise CommandError(f"cannot write {out}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)  # an existing file keeps no wider mode
    with os.fdopen(fd, "w") as handle:
        handle.write(url + "\n")
    print(f"wrote the AMQP login of {args.identity} to {out} (mode 0600)")
    return 0


def _definitions(args: argparse.Namespace, settings: Settings) -> int:
    from broker.provision import GENERATED_JSON, definitions_json

    text = definitions_json(vhost=args.vhost or settings.broker_vhost,
                            user_prefix=args.user_prefix or settings.broker_user_prefix,
                            admin_user=settings.broker_admin_user)  # fmt: skip
    if args.write:
        GENERATED_JSON.write_text(text)
        print(f"wrote {GENERATED_JSON}")
    else:
        print(text, end="")
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
    defs = commands.add_parser(
        "definitions", help="deploy/rabbitmq/definitions.toml as RabbitMQ definitions JSON "
        "(for rabbitmqctl import_definitions or load_definitions; users without passwords)")
    defs.add_argument("--json", action="store_true", help="JSON (the only format; default)")
    defs.add_argument("--vhost", help="vhost to name (default: settings.broker_vhost)")
    defs.add_argument("--user-prefix", default="", help=argparse.SUPPRESS)
    defs.add_argument("--write", action="store_true",
                      help="write deploy/rabbitmq/definitions.json instead of printing")
    defs.set_defaults(func=_definitions)
    export = commands.add_parser(
        "export-login", help="write one identity's AMQP URL (with its password) to a 0600 file"
    )
    export.add_argument("identity", help="<role>.<instance>, e.g. gateway.pg1")
    export.add_argument("out", help="file to write (e.g. /etc/setpay/credentials/gateway.url)")
    export.set_defaults(func=_export_login)
