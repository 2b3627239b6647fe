"""`setpay ca init|issue|revoke|list|crl|export|pending|approve|reject`: operator commands.

Rule 1: commands that sign (init, issue, revoke, crl --refresh) connect to the broker as the
CA identity (``--url``, default ``settings.amqp_url``; its user must be ``ca.<instance>``) and
sign through the keystore; keys never come near this process. The others read the database.
Rule 2: nothing printed names a PAN or key material: certificates are listed by serial,
role, brand, subject and state.
Rule 3: the operator decides what a merchant or gateway certificate grants: ``approve`` of a
gateway request takes ``--currencies``, ``--pin-debit/--no-pin-debit`` and
``--sale/--no-sale`` (nothing is granted that is not given here); ``init --auto-approve SPEC``
records the auto-approve policy (``actors.ca.approval`` Rule 3), ``--no-auto-approve`` clears
it; ``pending`` shows it.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from actors.ca.approval import POLICY_KEY, PolicyError, make_caps, parse_policy
from actors.ca.brands import TEST_BRANDS
from actors.ca.errors import CAError
from actors.ca.hierarchy import (
    REASONS,
    Hierarchy,
    ca_name,
    export_pem,
    init_hierarchy,
    pem,
    to_dt,
)
from actors.ca.service import PendingDetail
from actors.ca.store import CAStore
from keystore.errors import KeystoreError
from keystore.keyring import KeyRing
from keystore.service import RPC_QUEUE
from protocol import codec, primitives
from protocol.certs import CertType, GatewayCaps, KeyUse, MerchantData
from protocol.errors import ProtocolError
from protocol.keys import get_suite
from protocol.revocation import bci_thumbprint
from setpay.clock import CLOCK
from setpay.config import Settings
from setpay.store import store_exists


def _fail(text: str) -> Exception:
    from setpay.cli import CommandError

    return CommandError(text)


def _now() -> int:
    return CLOCK.now_ms()


async def _with_hierarchy(
    args: argparse.Namespace, settings: Settings, work: Callable[[Hierarchy], Awaitable[Any]]
) -> Any:
    """Run ``work`` with a hierarchy whose keys are the CA identity's keystore keys."""
    from broker.connection import connect
    from keystore.client import KeystoreClient

    bus = await connect(args.url or settings.amqp_url, name="ca.cli")
    try:
        client = await KeystoreClient.create(
            bus, queue=args.keystore_queue, timeout=settings.broker_rpc_timeout
        )
        store = CAStore.open(settings.data_dir)
        try:
            keys = KeyRing(client, get_suite(settings.suite))
            return await work(Hierarchy(store, keys))
        finally:
            store.close()
            await client.close()
    finally:
        await bus.close()


def _run(args: argparse.Namespace, settings: Settings, work: Callable[[Hierarchy], Any]) -> Any:
    try:
        return asyncio.run(_with_hierarchy(args, settings, work))
    except (CAError, KeystoreError, ProtocolError) as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # broker errors: one line, no traceback
        from broker.errors import BrokerError

        if isinstance(exc, BrokerError):
            raise _fail(f"broker: {exc}") from None
        raise


def _open_store(settings: Settings) -> CAStore:
    path = settings.data_dir / "ca" / "ca.sqlite"
    if not store_exists(path):
        raise _fail(f"no CA database at {path} (run `setpay ca init`)")
    return CAStore(path)


# --- commands -----------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    policy: str | None = None
    if args.auto_approve is not None:
        try:
            parse_policy(args.auto_approve)
        except PolicyError as exc:
            raise _fail(str(exc)) from None
        policy = " ".join(args.auto_approve.replace(";", " ").split())
    elif args.no_auto_approve:
        policy = ""
    created = _run(args, settings, lambda h: init_hierarchy(h, TEST_BRANDS, _now()))
    print(f"created {len(created)} CA(s): {', '.join(created)}" if created else "hierarchy exists")
    if policy is not None:
        store = _open_store(settings)
        try:
            store.set_meta(POLICY_KEY, policy)
        finally:
            store.close()
        print(f"auto-approve: {policy or 'off'}")
    return 0


def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    try:
        rows = store.certs(brand=args.brand, cert_type=args.type)
    finally:
        store.close()
    for row in rows:
        state = f"revoked ({row.reason})" if row.revoked_at else "valid"
        until = to_dt(row.not_after).strftime("%Y-%m-%d")
        print(
            f"{row.serial:>8}  {row.cert_type:<10} {row.key_use:<12} {row.brand:<12} "
            f"{row.subject:<28} until {until}  {state}"
        )
    return 0


def _cmd_revoke(args: argparse.Namespace, settings: Settings) -> int:
    done = _run(args, settings, lambda h: h.revoke(args.serial, args.reason, _now()))
    print(f"revoked {args.serial} ({args.reason})" if done else f"{args.serial} already revoked")
    return 0


def _cmd_issue(args: argparse.Namespace, settings: Settings) -> int:
    """Out-of-band issuance of a merchant or gateway certificate for a PEM public key."""
    try:
        public = serialization.load_pem_public_key(Path(args.pubkey).read_bytes())
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read a PEM public key from {args.pubkey} ({exc})") from None
    cert_type = CertType.MERCHANT if args.type == "merchant" else CertType.GATEWAY
    use = KeyUse.SIGNATURE if args.use == "sig" else KeyUse.KEY_EXCHANGE
    merchant = gateway = None
    if cert_type is CertType.MERCHANT:
        if not (args.merchant_id and args.name and args.mcc):
            raise _fail("a merchant certificate needs --merchant-id, --name and --mcc")
        merchant = MerchantData(args.merchant_id, args.name, args.mcc)
        subject = args.merchant_id
    else:
        currencies = [c for c in (args.currencies or "").split(",") if c]
        gateway = GatewayCaps(currencies, args.pin_debit, args.sale)
        subject = args.name or "gateway"

    async def work(h: Hierarchy) -> Any:
        h.ca_row(ca_name(args.brand, "brand"))  # the brand must exist
        spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if h.store.key_certified(primitives.sha256(spki)):
            raise CAError("this public key is already certified")
        issued, row = await h.issue_ee(
            cert_type, args.brand, use, public, f"{subject} {args.use}", _now(),  # type: ignore[arg-type]
            merchant=merchant, gateway=gateway,
        )  # fmt: skip
        with h.store.transaction() as db:
            h.commit_cert(db, row)
        return issued

    issued = _run(args, settings, work)
    Path(args.out).write_bytes(pem(issued.cert))
    print(f"issued serial {issued.serial} to {args.out}")
    return 0


def _cmd_crl(args: argparse.Namespace, settings: Settings) -> int:
    if args.refresh:

        async def work(h: Hierarchy) -> None:
            names = [n for b in h.brands() for n in h.ca_names_of_brand(b)]
            await h.publish_revocation(sorted(set(names)), h.brands(), _now())

        _run(args, settings, work)
    store = _open_store(settings)
    try:
        out = Path(args.out) if args.out else None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        for row in store.cas():
            latest = store.latest_crl(row.name) if row.key_use == "sig" else None
            if latest is None:
                continue
            revoked = len(store.revoked(row.name))
            print(f"CRL {row.name:<14} number {latest[0]:>4}  revoked {revoked}")
            if out is not None:
                (out / f"{row.name}.crl").write_bytes(latest[1])
        for brand in sorted({r.brand for r in store.cas() if r.role == "brand"}):
            bci = store.latest_bci(brand)
            if bci is not None:
                print(f"BCI {brand:<14} sequence {bci[0]:>4}  thumb {bci_thumbprint(bci[1]).hex()}")
                if out is not None:
                    (out / f"{brand}.bci").write_bytes(bci[1])
    finally:
        store.close()
    return 0


def _cmd_pending(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    try:
        print(f"auto-approve: {store.meta(POLICY_KEY) or 'off'}")
        for rrpid, state, created in store.pending_list():
            when = to_dt(created).strftime("%Y-%m-%d %H:%M:%S")
            requester, _ = store.pending_party(rrpid)
            print(f"{rrpid.hex()}  {state:<24} since {when}  by {requester or '-'}")
    finally:
        store.close()
    return 0


def _decide(args: argparse.Namespace, settings: Settings, state: str) -> int:
    try:
        rrpid = bytes.fromhex(args.request)
    except ValueError:
        raise _fail("REQUEST is the hex RRPID shown by `setpay ca pending`") from None
    store = _open_store(settings)
    try:
        grant = _grant(args, store, rrpid) if state == "approved" else None
        if not store.decide_pending(rrpid, state, grant):
            raise _fail(f"no request {args.request} is pending")
    finally:
        store.close()
    print(f"{args.request} {state}; the requester's next CertInq gets the answer")
    return 0


def _grant(args: argparse.Namespace, store: CAStore, rrpid: bytes) -> bytes | None:
    """The operator's grant for pended request ``rrpid`` (Rule 3): encoded GatewayCaps for a
    gateway request, None for others (which take no capability options)."""
    raw = store.pending_detail(rrpid)
    if raw is None:
        raise _fail(f"no request {args.request} is pending")
    caps_given = args.currencies is not None or args.pin_debit is not None or args.sale is not None
    if CertType(codec.decode(PendingDetail, raw).cert_type) is not CertType.GATEWAY:
        if caps_given:
            raise _fail("--currencies, --pin-debit and --sale apply to gateway requests")
        return None
    try:
        caps = make_caps(
            (args.currencies or "").split(","), pin_debit=bool(args.pin_debit),
            sale=bool(args.sale),
        )  # fmt: skip
    except PolicyError as exc:
        raise _fail(f"{exc}: give --currencies") from None
    return codec.encode(caps)


def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    try:
        h = Hierarchy(store, keys=None)  # type: ignore[arg-type]  # reading needs no keys
        out = Path(args.dir)
        out.mkdir(parents=True, exist_ok=True)
        files = export_pem(h)
        for brand in h.brands():
            files[f"chain-{brand}.pem"] = b"".join(
                pem(h.cert(ca_name(brand, role))) for role in ("cca", "mca", "pca", "brand")
            )
        for name, data in files.items():
            (out / name).write_bytes(data)
    finally:
        store.close()
    print(f"wrote {len(files)} PEM files to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay ca`` and its subcommands."""
    ca = sub.add_parser("ca", help="certificate authority: hierarchy, issuance, revocation")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)

    def signing(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="AMQP URL of the CA identity (default: settings.amqp_url)")
        p.add_argument("--keystore-queue", default=RPC_QUEUE, help="keystore RPC queue")

    p = ca_sub.add_parser("init", help="build Root → Brand → CCA/MCA/PCA (idempotent)")
    approve = p.add_mutually_exclusive_group()
    approve.add_argument(
        "--auto-approve",
        metavar="SPEC",
        help="record the auto-approve policy, e.g. 'merchant:* "
        "gateway:P-0001=JPY,USD,sale,pin-debit' (default: off)",
    )
    approve.add_argument("--no-auto-approve", action="store_true",
                         help="clear the auto-approve policy")  # fmt: skip
    signing(p)
    p.set_defaults(func=_cmd_init)

    p = ca_sub.add_parser("list", help="list issued certificates")
    p.add_argument("--brand")
    p.add_argument("--type", choices=[t.name.lower() for t in CertType])
    p.set_defaults(func=_cmd_list)

    p = ca_sub.add_parser("revoke", help="revoke a certificate; publishes a new CRL and BCI")
    p.add_argument("serial", type=int)
    p.add_argument("--reason", choices=REASONS, default="unspecified")
    signing(p)
    p.set_defaults(func=_cmd_revoke)

    p = ca_sub.add_parser("issue", help="issue a merchant/gateway certificate for a public key")
    p.add_argument("--brand", required=True)
    p.add_argument("--type", choices=("merchant", "gateway"), required=True)
    p.add_argument("--use", choices=("sig", "kx"), required=True)
    p.add_argument("--pubkey", required=True, help="PEM SubjectPublicKeyInfo")
    p.add_argument("--out", required=True, help="where to write the certificate (PEM)")
    p.add_argument("--merchant-id")
    p.add_argument("--name")
    p.add_argument("--mcc")
    p.add_argument("--currencies", default="JPY,USD")
    p.add_argument("--pin-debit", action="store_true")
    p.add_argument("--sale", action="store_true")
    signing(p)
    p.set_defaults(func=_cmd_issue)

    p = ca_sub.add_parser("crl", help="show (and with --out write) current CRLs and BCIs")
    p.add_argument("--out", help="directory for <ca>.crl (DER) and <brand>.bci files")
    p.add_argument("--refresh", action="store_true", help="publish new CRLs and BCIs now")
    signing(p)
    p.set_defaults(func=_cmd_crl)

    p = ca_sub.add_parser("pending", help="list pended certificate requests")
    p.set_defaults(func=_cmd_pending)
    for verb, state in (("approve", "approved"), ("reject", "rejected")):
        p = ca_sub.add_parser(verb, help=f"{verb} a pended request (by RRPID)")
        p.add_argument("request", help="hex RRPID from `setpay ca pending`")
        if verb == "approve":
            p.add_argument("--currencies", help="gateways: granted ISO 4217 codes, e.g. JPY,USD")
            p.add_argument(
                "--pin-debit",
                action=argparse.BooleanOptionalAction,
                help="gateways: grant OPE PIN debit (default: not granted)",
            )
            p.add_argument("--sale", action=argparse.BooleanOptionalAction,
                           help="gateways: grant sale (default: not granted)")  # fmt: skip
        p.set_defaults(func=lambda a, s, state=state: _decide(a, s, state))

    p = ca_sub.add_parser("export", help="write every CA certificate as PEM into DIR")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_export)
