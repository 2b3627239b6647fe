"""``setpay pos operator add|order|orders|transactions|capture|refund|reverse|next|batch``:
the POS operator's commands.

Rule 1: ``operator add`` writes an operator account into the POS's own store (like the
merchants `setpay up` enrols there): the operator acts for one hosted merchant only.
Rule 2: ``order`` and ``orders`` talk HTTPS to the POS (``pos_web_port``), logging in once
(passphrase from ``SETPAY_POS_PASSPHRASE`` or a hidden prompt, never the command line);
a refusal or an unreachable POS is one ``CommandError`` line; ``--json`` prints JSON.
Rule 3 (after authorization): ``transactions`` lists the merchant's payments (an order's
authorization, or a next shipment's) with their money; ``capture``, ``refund``, ``reverse``
and ``next`` name one by its id; ``batch`` opens, closes, purges a batch or shows its summary
or a detail page. A gateway refusal (its SET code) is one ``CommandError`` line (exit 2, as
every refusal of the command); with ``--json`` the answer is printed as JSON, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import time
from dataclasses import asdict
from typing import Any

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


def _tx_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'id':<34} {'order':<10} {'state':<22} {'cur':<4} {'authorized':>10} "
          f"{'captured':>10} {'credited':>10} {'batch':>6}")  # fmt: skip
    for t in rows:
        order = "" if not t["shipment"] else t["order"][:8] + "…"
        batch = "" if t["batch"] is None else t["batch"]
        print(f"{t['id']:<34} {order:<10} {t['state']:<22} {t['currency']:<4} "
              f"{t['authorized']:>10} {t['captured']:>10} {t['credited']:>10} {batch:>6}"
              f"{'  (pending)' if t['pending'] else ''}")  # fmt: skip


def _batch_lines(b: dict[str, Any]) -> None:
    print(f"batch {b['batch']}: {b['status']}"
          + (f", transmission {b['transmission']}" if b.get("transmission") else ""))  # fmt: skip
    if "debit_count" in b:
        print(f"  debits  {b['debit_count']:>6}  {b['debit_amount']:>12} {b['currency']}")
        print(f"  credits {b['credit_count']:>6}  {b['credit_amount']:>12} {b['currency']}")
        print(f"  net     {'':>6}  {b['debit_amount'] - b['credit_amount']:>12} {b['currency']}")
    if b.get("settlement"):
        se = b["settlement"]
        print(f"  settled {se['type']} {se['amount']} {se['currency']} to {se['account']}")
    for i in b.get("items") or []:
        print(f"  #{i['seq']:<5} {i['kind']:<17} {i['amount']:>12}  xid {i['xid'][:16]}…")
    if b.get("next") is not None:
        print(f"  more: --start {b['next']}")


async def _after(args: argparse.Namespace, session: Any) -> int:
    """Rule 3: one after-authorization command over the session."""
    cmd = args.pos_cmd
    if cmd == "transactions":
        rows = await session.transactions()
        if args.json:
            print(json.dumps(rows))
        else:
            _tx_table(rows)
        return 0
    if cmd == "batch":
        b = await session.batch(args.operation, args.batch, start=args.start, maximum=args.max)
        if args.json:
            print(json.dumps(b))
        elif b["status"] not in (None, "SUCCESS"):
            from setpay.cli import CommandError

            raise CommandError(f"batch {args.operation} refused by the gateway: {b['status']}")
        else:
            _batch_lines(b)
        return 0 if b["status"] in (None, "SUCCESS") else 1
    if cmd == "capture":
        r = await session.capture(args.tx, args.amount, args.batch)
    elif cmd == "refund":
        r = await session.refund(args.tx, args.amount, args.batch)
    elif cmd == "reverse":
        r = await session.reverse(args.tx, args.what, args.amount)
    else:
        r = await session.next_shipment(args.tx, args.amount)
    if args.json:
        print(json.dumps(r))
        return 0 if r["ok"] else 1
    if not r["ok"]:
        from setpay.cli import CommandError

        raise CommandError(f"{cmd} refused by the gateway: {r['code']}")
    if cmd == "next":
        more = "more shipments may follow" if r["more"] else "nothing more to authorize"
        print(f"next shipment {r['id']}: {r['code']} {r['amount']} ({more})")
    else:
        where = "" if r.get("batch") is None else f" in batch {r['batch']} #{r['batch_seq']}"
        print(f"{cmd} {r['id']}: {r['code']} {r['amount']}{where}, now {r['state']}")
    return 0


async def _session_run(args: argparse.Namespace, settings: Settings) -> int:
    from actors.merchant.api import PosClient
    from protocol.messages import CurrAmt

    client = PosClient.for_settings(settings)
    try:
        session = await client.login(args.user, _passphrase())
        try:
            if args.pos_cmd not in ("order", "orders"):
                return await _after(args, session)
            if args.pos_cmd == "order":
                o = await session.create_order(args.description,
                                               CurrAmt(args.currency, args.amount),
                                               sale=args.sale,
                                               first_shipment=args.first_shipment)  # fmt: skip
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
    order.add_argument(
        "--first-shipment",
        type=int,
        metavar="N",
        help="split shipment: authorize only N now (the rest by `pos next`)",
    )
    orders = cmds.add_parser("orders", help="list your merchant's orders with their states")
    txs = cmds.add_parser("transactions", help="your merchant's payments and their money")
    cap = cmds.add_parser("capture", help="capture a transaction (all, or --amount)")
    cap.add_argument("tx", help="transaction id (see `setpay pos transactions`)")
    cap.add_argument("--amount", type=int, help="partial capture")
    cap.add_argument("--batch", type=int, help="into this batch (default: the open one)")
    ref = cmds.add_parser("refund", help="refund (credit) part or all of a capture")
    ref.add_argument("tx")
    ref.add_argument("--amount", type=int, required=True)
    ref.add_argument("--batch", type=int)
    rev = cmds.add_parser("reverse", help="reverse an authorization, a capture or a credit")
    rev.add_argument("tx")
    rev.add_argument("what", choices=("authorization", "capture", "credit"))
    rev.add_argument("--amount", type=int,
                     help="authorization: what stays authorized (0 = all released); "
                          "credit: the credit's amount")  # fmt: skip
    nxt = cmds.add_parser("next", help="authorize the next shipment with the order's AuthToken")
    nxt.add_argument("tx", help="the order (or one of its shipments)")
    nxt.add_argument("--amount", type=int, required=True)
    bat = cmds.add_parser("batch", help="batch open|close|purge|summary|detail")
    bat.add_argument("operation", choices=("open", "close", "purge", "summary", "detail"))
    bat.add_argument("--batch", type=int, help="batch id (all but open)")
    bat.add_argument("--start", type=int, default=0, help="detail: first item")
    bat.add_argument("--max", type=int, default=100, help="detail: items per page")
    for p in (order, orders, txs, cap, ref, rev, nxt, bat):
        p.add_argument("--user", required=True)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_cmd)
