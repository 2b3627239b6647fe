"""``setpay pos operator add|order|orders``: the POS operator's commands.

Rule 1: ``operator add`` writes an operator account into the POS's own store (like the
merchants `setpay up` enrols there): the operator acts for one hosted merchant only.
Rule 2: ``order`` and ``orders`` talk HTTPS to the POS (``pos_web_port``), logging in once
(passphrase from ``SETPAY_POS_PASSPHRASE`` or a hidden prompt, never the command line);
a refusal or an unreachable POS is one ``CommandError`` line; ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import time
from dataclasses import asdict

from actors.merchant.errors import MerchantError
from setpay.config import Settings


def _passphrase(prompt: str = "passphrase: ") -> str:
    return os.environ.get("SETPAY_POS_PASSPHRASE") or getpass.getpass(prompt)


def _operator_add(args: argparse.Namespace, settings: Settings) -> int:
    from actors.merchant.operators import add_operator
    from actors.merchant.store import MerchantStore

    store = MerchantStore.open(settings.data_dir, args.instance)
    try:
        if store.merchant(args.merchant) is None:
            raise MerchantError(f"merchant {args.merchant!r} is not hosted at {args.instance}")
        add_operator(store.db, args.user, args.merchant, _passphrase("new passphrase: "),
                     int(time.time() * 1000), replace=args.replace)  # fmt: skip
    finally:
        store.close()
    print(f"operator {args.user} of merchant {args.merchant} at merchant.{args.instance}")
    return 0


async def _session_run(args: argparse.Namespace, settings: Settings) -> int:
    from actors.merchant.api import PosClient
    from protocol.messages import CurrAmt

    client = PosClient.for_settings(settings)
    try:
        session = await client.login(args.user, _passphrase())
        try:
            if args.pos_cmd == "order":
                o = await session.create_order(args.description,
                                               CurrAmt(args.currency, args.amount),
                                               sale=args.sale)  # fmt: skip
                print(json.dumps(asdict(o)) if args.json else
                      f"order {o.order} at {o.merchant_id}: {o.amount} {o.currency}\n"
                      f"pay link: {o.pay_link}")  # fmt: skip
            else:
                orders = await session.orders()
                if args.json:
                    print(json.dumps([asdict(o) for o in orders]))
                else:
                    print(f"{'order':<34} {'amount':>10} {'cur':<4} {'state':<40} description")
                    for o in orders:
                        print(f"{o.order:<34} {o.amount:>10} {o.currency:<4} {o.state:<40} "
                              f"{o.description[:40]}")  # fmt: skip
        finally:
            try:
                await session.logout()
            except MerchantError:
                pass
    finally:
        await client.close()
    return 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from setpay.cli import CommandError

    try:
        if args.pos_cmd == "operator":
            return _operator_add(args, settings)
        return asyncio.run(_session_run(args, settings))
    except (MerchantError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay pos operator add|order|orders``."""
    pos = sub.add_parser("pos", help="merchant operator commands of the server POS (HTTPS)")
    cmds = pos.add_subparsers(dest="pos_cmd", required=True)
    op = cmds.add_parser("operator", help="operator accounts")
    op_cmds = op.add_subparsers(dest="operator_cmd", required=True)
    add = op_cmds.add_parser("add", help="create an operator of one hosted merchant")
    add.add_argument("--user", required=True)
    add.add_argument("--merchant", required=True, help="merchant id, e.g. M-1001")
    add.add_argument("--instance", default="pos1", help="POS instance (its store)")
    add.add_argument("--replace", action="store_true", help="set a new passphrase")
    add.set_defaults(func=_cmd)
    order = cmds.add_parser("order", help="create an order; prints its pay link")
    order.add_argument("--description", required=True)
    order.add_argument("--amount", type=int, required=True)
    order.add_argument("--currency", default="JPY")
    order.add_argument("--sale", action="store_true", help="capture at authorization")
    orders = cmds.add_parser("orders", help="list your merchant's orders with their states")
    for p in (order, orders):
        p.add_argument("--user", required=True)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_cmd)
