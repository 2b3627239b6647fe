"""`setpay keystore …`: token setup, the keystore actor, and key ceremonies on the token.

Rule 1: ``init`` touches only the project's own token directory (``settings.token_dir``).
Rule 2: PINs come from settings only, never from the command line, and are never printed.
"""

from __future__ import annotations

import argparse
import asyncio

from keystore.errors import KeystoreError
from keystore.messages import KeyKind, KeyUsage, owner_of
from keystore.service import RPC_QUEUE
from keystore.token import init_token, token_pin, use_softhsm_conf
from setpay.config import Settings


def _error(exc: KeystoreError) -> Exception:
    from setpay.cli import CommandError  # late: setpay.cli imports this module

    return CommandError(exc.text)


def _cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    try:
        for line in init_token(settings):
            print(line)
    except KeystoreError as exc:
        raise _error(exc) from None
    return 0


def _cmd_create_key(args: argparse.Namespace, settings: Settings) -> int:
    """Key ceremony: generate a key directly on the token (e.g. an issuer's PIN key)."""
    from keystore.hsm import Hsm, TokenConfig

    use_softhsm_conf(settings)
    hsm = Hsm(TokenConfig(settings.keystore_module, settings.keystore_token_label,
                          token_pin(settings)))  # fmt: skip
    try:
        owner_of(args.label)
        hsm.open()
        info = hsm.create_key(args.label, KeyKind(args.kind), KeyUsage(args.usage))
    except KeystoreError as exc:
        raise _error(exc) from None
    finally:
        hsm.close()
    print(f"created {info.label} ({info.kind.value}, {info.usage.value}) inside the token")
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from keystore.process import KeystoreProcess
    from setpay.lifecycle import serve_metrics

    proc = KeystoreProcess(settings, url=args.url, queue=args.queue, workers=args.workers)
    serve_metrics(proc, settings)
    print(f"keystore serving {args.queue!r} with {proc.workers} worker processes; Ctrl-C stops")
    try:
        asyncio.run(proc.run())
    except KeystoreError as exc:
        raise _error(exc) from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this layer's subcommands to the `setpay` parser."""
    ks = sub.add_parser("keystore", help="the PKCS#11 keystore actor")
    ks_sub = ks.add_subparsers(dest="keystore_command", metavar="ACTION", required=True)

    init = ks_sub.add_parser("init", help="create the SoftHSM2 config and token (idempotent)")
    init.set_defaults(func=_cmd_init)

    serve = ks_sub.add_parser("serve", help="run the keystore worker processes")
    serve.add_argument("--url", help="AMQP URL of the keystore's broker user (default amqp_url)")
    serve.add_argument("--queue", default=RPC_QUEUE, help="RPC queue to serve")
    serve.add_argument("--workers", type=int, default=0, help="processes (default setting)")
    serve.set_defaults(func=_cmd_serve)

    create = ks_sub.add_parser("create-key", help="generate a key on the token (key ceremony)")
    create.add_argument("--label", required=True, help="<role>.<instance>/<name>")
    create.add_argument("--kind", required=True, choices=[k.value for k in KeyKind])
    create.add_argument("--usage", required=True, choices=[u.value for u in KeyUsage])
    create.set_defaults(func=_cmd_create_key)
