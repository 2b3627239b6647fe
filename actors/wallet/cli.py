"""``setpay wallet enroll|cards|buy|inquire``: the cardholder's thin client.

Rule 1: the passphrase and the card number are read from ``SETPAY_WALLET_PASSPHRASE`` /
``SETPAY_WALLET_PAN`` or prompted without echo, never taken from the command line, never
printed; cards are shown by id, brand and last four digits.
Rule 2: a wallet refusal is a ``CommandError`` with the wallet's one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
from typing import Any

from actors.wallet.errors import WalletError
from setpay.config import Settings


def _secret(env: str, prompt: str) -> str:
    return os.environ.get(env) or getpass.getpass(prompt)


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from actors.demo_cases import describe
    from actors.environment import client_url
    from actors.wallet.api import WalletClient
    from broker.connection import connect
    from protocol.messages import CurrAmt

    passphrase = _secret("SETPAY_WALLET_PASSPHRASE", "passphrase: ")
    bus = await connect(client_url(settings), name="setpay-wallet-cli")
    try:
        client = await WalletClient.create(bus, args.instance)
        if args.wallet_cmd == "enroll":
            number = _secret("SETPAY_WALLET_PAN", "card number: ")
            form: dict[str, Any] = dict(f.split("=", 1) for f in args.field)
            card = await client.enroll(args.user, passphrase, brand=args.brand, number=number,
                                       expiry=args.expiry, form=form)  # fmt: skip
            print(f"enrolled card {card} (…{number[-4:]})")
        elif args.wallet_cmd == "cards":
            for c in await client.cards(args.user, passphrase):
                print(f"{c.card_id}  {c.brand:<8} …{c.hint}")
        elif args.wallet_cmd == "buy":
            out = await client.buy(
                args.user, passphrase, card_id=args.card, merchant=args.merchant,
                lid_m=bytes.fromhex(args.order), description=args.description,
                amount=CurrAmt(args.currency, args.amount),
            )  # fmt: skip
            print(f"xid {out.xid.hex()}  {describe(out)}")
        else:
            out = await client.inquire(args.user, passphrase, bytes.fromhex(args.xid))
            print(f"xid {out.xid.hex()}  {describe(out)}")
    finally:
        await bus.close()
    return 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from setpay.cli import CommandError

    try:
        return asyncio.run(_run(args, settings))
    except (WalletError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay wallet enroll|cards|buy|inquire``."""
    wallet = sub.add_parser("wallet", help="cardholder thin client of the server wallet")
    cmds = wallet.add_subparsers(dest="wallet_cmd", required=True)
    for name, text in (("enroll", "register a card with the CA through the wallet"),
                       ("cards", "list your cards"), ("buy", "pay for a merchant's order"),
                       ("inquire", "ask the merchant about a purchase")):  # fmt: skip
        p = cmds.add_parser(name, help=text)
        p.add_argument("--user", required=True)
        p.add_argument("--instance", default="main", help="wallet instance (queue wallet.<i>.api)")
        p.set_defaults(func=_cmd)
        if name == "enroll":
            p.add_argument("--brand", required=True)
            p.add_argument("--expiry", required=True, help="YYMM")
            p.add_argument("--field", action="append", default=[], help="form value NAME=VALUE")
        elif name == "buy":
            p.add_argument("--card", required=True)
            p.add_argument("--merchant", default="merchant.pos1", help="POS routing key")
            p.add_argument("--order", required=True, help="LID-M (hex) the shop gave you")
            p.add_argument("--description", required=True)
            p.add_argument("--amount", type=int, required=True)
            p.add_argument("--currency", default="JPY")
        elif name == "inquire":
            p.add_argument("--xid", required=True, help="hex XID printed by buy")
