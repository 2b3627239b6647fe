"""``setpay gateway register|show|batches``: obtain the gateway's certificates, print its
identity, print its batches' settlement totals.

Rule 1: ``register`` connects as broker user ``gateway.<id>``, has the keystore create both
keys in the token (or reuses them), registers with the CA of the brand and writes the identity
file the actor needs; it prints thumbprints and subjects only.
Rule 3: ``batches`` reads the instance's books (actors/gateway/books.py) beside a running
gateway and prints, per batch, its totals by brand and transaction type, the net and the issuer
host's reconciliation answer; ``--json`` for machines.
Rule 2: failures a user can fix (no root file, CA or keystore unreachable, CA refusal) are
``CommandError`` with one line saying which.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from cryptography import x509

from actors.gateway import identity as ident
from actors.gateway.errors import GatewayError
from actors.gateway.identity import GatewayIdentity, identity_path
from broker.peer import PeerLink
from protocol.certs import cert_thumbprint
from protocol.errors import ProtocolError
from protocol.keys import get_suite
from protocol.requester import CAClient, CARequestError
from setpay.cli import CommandError
from setpay.clock import CLOCK
from setpay.config import Settings
from setpay.store import store_exists


def _root(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read the trusted root {path}: {exc}") from None


async def _register(args: argparse.Namespace, settings: Settings) -> int:
    from broker.connection import connect
    from broker.provision import identity_url
    from keystore.client import KeystoreClient
    from keystore.keyring import KeyRing

    root = _root(Path(args.root))
    identity = f"gateway.{args.id}"
    try:
        url = identity_url(settings.data_dir, identity, settings.broker_vhost, settings.amqp_url,
                           user_prefix=settings.broker_user_prefix)  # fmt: skip
        bus = await connect(url, name=identity)
    except Exception as exc:  # broker down or login not provisioned: the user must fix it
        raise CommandError(f"cannot connect as {identity}: {exc}") from None
    try:
        keystore = await KeystoreClient.create(bus, timeout=settings.broker_rpc_timeout)
        client = CAClient(
            await PeerLink(bus, "gateway", args.id).start(),
            oaep_hash=get_suite(settings.suite).oaep_hash, clock=CLOCK,
        )
        try:
            gw = await ident.register(
                client,
                KeyRing(keystore, get_suite(settings.suite)),
                root=root,
                brand=args.brand,
                gateway_id=args.gateway_id,
                acquirer_bin=args.acquirer_bin,
                currencies=args.currencies,
            )
        except (CARequestError, ProtocolError, TimeoutError) as exc:
            raise CommandError(f"registration failed: {exc}") from None
        finally:
            await client.close()
            await keystore.close()
    finally:
        await bus.close()
    gw.save(identity_path(settings.data_dir, args.id))
    _print(gw)
    return 0


def _print(gw: GatewayIdentity) -> None:
    print(f"brand       {gw.brand}")
    for name, cert in (("signature", gw.sig_cert), ("key-exch.", gw.kx_cert)):
        print(f"{name:<11} {cert_thumbprint(cert).hex()}  {cert.subject.rfc4514_string()}")


def _cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_register(args, settings))


def _cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    try:
        _print(GatewayIdentity.load(identity_path(settings.data_dir, args.id)))
    except GatewayError as exc:
        raise CommandError(str(exc)) from None
    return 0


def _cmd_batches(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from actors.gateway.books import Books, books_path

    try:
        gw = GatewayIdentity.load(identity_path(settings.data_dir, args.id))
    except GatewayError as exc:
        raise CommandError(str(exc)) from None
    path = books_path(settings.data_dir, args.id)
    if not store_exists(path):
        raise CommandError(f"gateway {args.id} has no batches yet ({path} does not exist)")
    books = Books(path)
    try:
        rows = books.report(gw.brand, args.merchant)
    finally:
        books.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("merchant", "batch", "brand", "state", "cur", "captures", "cap.rev", "credits",
            "cred.rev", "net", "host")  # fmt: skip
    print("  ".join(f"{h:>10}" for h in head))
    for r in rows:
        cells = (
            r["merchant"], r["batch"], r["brand"], r["state"], r["currency"],
            *(f"{n}/{a}" for n, a in (r["captures"], r["capture_reversals"], r["credits"],
                                     r["credit_reversals"])),
            r["net"], r["host"] or "-",
        )  # fmt: skip
        print("  ".join(f"{c!s:>10}" for c in cells))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay gateway register|show|batches``."""
    gw = sub.add_parser("gateway", help="payment gateway: registration and identity")
    gw_sub = gw.add_subparsers(dest="gateway_cmd", required=True)
    p = gw_sub.add_parser("register", help="create keys and obtain certificates from the CA")
    p.add_argument("--id", default="pg1", help="gateway instance (broker user gateway.<id>)")
    p.add_argument("--brand", required=True)
    p.add_argument("--root", required=True, help="trusted root certificate (PEM)")
    p.add_argument("--gateway-id", required=True)
    p.add_argument("--acquirer-bin", required=True)
    p.add_argument("--currencies", default="JPY,USD")
    p.set_defaults(func=_cmd_register)
    p = gw_sub.add_parser("show", help="print the registered identity")
    p.add_argument("--id", default="pg1")
    p.set_defaults(func=_cmd_show)
    p = gw_sub.add_parser("batches", help="print the batches' settlement totals")
    p.add_argument("--id", default="pg1")
    p.add_argument("--merchant", default=None, help="only this merchant's batches")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_batches)
