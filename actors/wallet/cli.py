"""``setpay wallet register|enroll|cards|buy|inquire``: the cardholder's thin client over HTTPS.

Rule 1: the passphrase and the card number are read from ``SETPAY_WALLET_PASSPHRASE`` /
``SETPAY_WALLET_PAN`` or prompted without echo, never taken from the command line, never
printed; cards are shown by id, brand and last four digits.
Rule 2: each command logs in once (one scrypt at the wallet) and reuses the session's bearer
token; it talks HTTPS to ``wallet_web_port`` trusting only the environment's CA file
(actors/web/client.py); a refusal or an unreachable wallet is one ``CommandError`` line.
Rule 3: ``buy`` takes the POS's pay link (``--pay-link``); for a PIN account (OPE debit) the
PIN is read from ``SETPAY_WALLET_PIN`` or a hidden prompt, the gateway certificate is
validated to the root this client trusts (``--root``, default ``<data_dir>/wallet/root.der``)
and the PIN is sealed here (api.seal_for): the wallet receives only the seal.
Rule 4: ``--json`` prints one JSON document instead of the table.
Rule 5: the client keeps the highest BCI sequence it has seen per root and brand in
``<data_dir>/wallet/bci-floor.json`` (beside the root it trusts) and refuses a purchase whose
merchant hands it an older one (``staleRevocationData``; purchase.py Rule 4).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509

from actors.wallet.errors import WalletError
from setpay.config import Settings


def _secret(env: str, prompt: str) -> str:
    return os.environ.get(env) or getpass.getpass(prompt)


def _trusted_root(args: argparse.Namespace, settings: Settings) -> x509.Certificate:
    from protocol.certs import load_certificate
    from protocol.errors import ProtocolError

    path = Path(args.root) if args.root else Path(settings.data_dir) / "wallet" / "root.der"
    try:
        return load_certificate(path.read_bytes())
    except (OSError, ProtocolError):
        raise WalletError(f"no trusted root certificate at {path}") from None


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data) if args.json else text)


class FileFloors:
    """The thin client's BCI floors in a small JSON file (Rule 5), written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            loaded = json.loads(path.read_text())
            self.seen = {str(k): int(v) for k, v in loaded.items()}
        except (OSError, ValueError, AttributeError):
            self.seen = {}  # none yet (an unreadable file: start from the merchant's)

    def bci_floor(self, key: str) -> int:
        return self.seen.get(key, 0)

    def raise_bci_floor(self, key: str, sequence: int, now_ms: int) -> None:
        self.seen[key] = max(sequence, self.seen.get(key, 0))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.seen))
        tmp.replace(self.path)


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from actors.wallet.api import WalletClient, seal_for
    from actors.wallet.purchase import BciFloor
    from actors.web.paylink import PayLinkError, parse

    passphrase = _secret("SETPAY_WALLET_PASSPHRASE", "passphrase: ")
    client = WalletClient.for_settings(settings)
    try:
        if args.wallet_cmd == "register":
            await client.register(args.user, passphrase)
            _emit(args, {"user": args.user}, f"cardholder {args.user} registered")
            return 0
        session = await client.login(args.user, passphrase)
        try:
            if args.wallet_cmd == "enroll":
                what = "account number: " if args.bank_code else "card number: "
                number = _secret("SETPAY_WALLET_PAN", what)
                form: dict[str, Any] = dict(f.split("=", 1) for f in args.field)
                card = await session.enroll(brand=args.brand, number=number,
                                            expiry=args.expiry, form=form,
                                            pin_account=args.pin_account,
                                            bank_code=args.bank_code,
                                            branch=args.branch)  # fmt: skip
                _emit(args, {"card_id": card, "hint": number[-4:]},
                      f"enrolled card {card} (…{number[-4:]})")
            elif args.wallet_cmd == "cards":
                cards = await session.cards()
                rows = [f"{c.card_id}  {c.brand:<8} …{c.hint}{'  PIN' if c.pin else ''}"
                        for c in cards]  # fmt: skip
                _emit(args, [{"card_id": c.card_id, "brand": c.brand, "hint": c.hint,
                              "pin": c.pin} for c in cards],
                      "\n".join(rows) if rows else "no cards")  # fmt: skip
            elif args.wallet_cmd == "buy":
                try:
                    offer = parse(args.pay_link)
                except PayLinkError as exc:
                    raise WalletError(str(exc)) from None
                started = await session.start_purchase(card_id=args.card, offer=offer)
                seal = None
                if started.pin_binding is not None:
                    root = _trusted_root(args, settings)
                    floor = BciFloor(FileFloors(Path(settings.data_dir) / "wallet"
                                                / "bci-floor.json"))  # fmt: skip
                    pin = _secret("SETPAY_WALLET_PIN", "PIN: ")
                    seal = await seal_for(started, root, pin, floor=floor)
                out = await session.finish_purchase(started.purchase_id, seal)
                _emit(args, {"xid": out.xid.hex(), "outcome": out.describe()},
                      f"xid {out.xid.hex()}  {out.describe()}")
            else:
                out = await session.inquire(bytes.fromhex(args.xid))
                _emit(args, {"xid": out.xid.hex(), "outcome": out.describe()},
                      f"xid {out.xid.hex()}  {out.describe()}")
        finally:
            try:
                await session.logout()
            except WalletError:
                pass
    finally:
        await client.close()
    return 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from setpay.cli import CommandError

    try:
        return asyncio.run(_run(args, settings))
    except (WalletError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay wallet register|enroll|cards|buy|inquire``."""
    wallet = sub.add_parser("wallet", help="cardholder thin client of the server wallet (HTTPS)")
    cmds = wallet.add_subparsers(dest="wallet_cmd", required=True)
    for name, text in (("register", "create your cardholder account at the wallet"),
                       ("enroll", "register a card with the CA through the wallet"),
                       ("cards", "list your cards"), ("buy", "pay a POS pay link"),
                       ("inquire", "ask the merchant about a purchase")):  # fmt: skip
        p = cmds.add_parser(name, help=text)
        p.add_argument("--user", required=True)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_cmd)
        if name == "enroll":
            p.add_argument("--brand", required=True)
            p.add_argument("--expiry", required=True, help="YYMM")
            p.add_argument("--field", action="append", default=[], help="form value NAME=VALUE")
            p.add_argument("--pin-account", action="store_true",
                           help="the issuer keeps a PIN for this card (OPE debit)")  # fmt: skip
            p.add_argument("--bank-code", default="",
                           help="enrol an OPE bank account of this bank (the number read is "
                           "its account number)")  # fmt: skip
            p.add_argument("--branch", default="", help="the bank account's branch code")
        elif name == "buy":
            p.add_argument("--card", required=True)
            p.add_argument("--pay-link", required=True, help="the pay link the shop gave you")
            p.add_argument("--root", help="root certificate (DER) this client trusts, for PIN "
                           "accounts; default <data_dir>/wallet/root.der")  # fmt: skip
        elif name == "inquire":
            p.add_argument("--xid", required=True, help="hex XID printed by buy")
