"""`setpay demo`: purchases through the live test environment; ``--selfcheck`` for the old
in-process protocol self-check.

Rule 0: without ``--selfcheck`` the demo uses the environment `setpay up` started, or brings
one up (actors/environment.py), and runs the cases of actors/demo_cases.py through the
wallet's and the POS's thin clients; ``--purchases N --concurrency C`` drives load instead.
Rule 1: the self-check drives the real protocol library (records, wrapper, dual signature,
EncB with the PI as baggage) and prints what each party could and could not read.
Rule 2: the self-check uses software keys made for the run (``protocol.softkey.SoftwareKey``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protocol import codec, dualsig, primitives, treatments, wrapper
from protocol.errors import ProtocolError
from protocol.ids import new_challenge, new_lid, new_rrpid, new_xid
from protocol.keys import SUITES, Suite
from protocol.messages import (
    CurrAmt,
    OIData,
    PIHead,
    PIKind,
    PReq,
    PurchaseInputs,
    TransIDs,
)
from protocol.pan import Account, AccountKind, make_pan_data, new_secret, pan_secret, trans_stain
from protocol.softkey import SoftwareKey
from setpay.clock import CLOCK
from setpay.config import Settings

DEMO_PAN = "4111111111111111"  # the well-known Visa test number
ORDER = "2 x espresso beans, 1 kg"


@dataclass
class Check:
    step: str
    ok: bool
    detail: str


@dataclass
class Party:
    key: SoftwareKey
    thumb: bytes


def _party(suite: Suite, name: str) -> Party:
    key = SoftwareKey(suite, name)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Party(key, primitives.thumbprint(der))  # stands in for the certificate thumbprint


async def _purchase(
    suite: Suite, ch: Party, mer: Party, gw: Party, amount: int
) -> tuple[bytes, bytes, bytes]:
    """Cardholder side: a wrapped PReq; returns (preq bytes, oi_data, pi)."""
    now = CLOCK.now_ms()
    ids = TransIDs(new_lid(), None, new_xid(), now, None, "en")
    od_salt = new_challenge()
    hod = primitives.labelled_digest("HOD", codec.packb([ORDER, amount, od_salt]))
    card_secret = new_secret()
    oi = OIData(ids, new_rrpid(), new_challenge(), hod, od_salt, new_challenge(), "alpha", "411111")
    head = PIHead(
        ids,
        PurchaseInputs(hod, CurrAmt(392, amount)),
        "M-1001",
        mer.thumb,
        gw.thumb,
        None,
        trans_stain(card_secret, ids.xid),
        "setpay-demo",
        None,
        AccountKind.CARD,
        None,
    )
    account = Account(AccountKind.CARD, DEMO_PAN)
    pan_data = make_pan_data(account, "2812", pan_secret(card_secret, new_secret()))
    parts = await dualsig.make_dual_signed(
        ch.key,
        ch.thumb,
        suite,
        gw.key.public_key(),
        gw.thumb,
        mer.thumb,
        codec.encode(head),
        codec.encode(pan_data),
        codec.encode(oi),
    )
    preq = PReq(PIKind.DUAL_SIGNED, parts.pi, parts.oi_data, parts.pi_digest, [])
    header = wrapper.make_header(now, xid=ids.xid, lid_c=ids.lid_c, rrpid=oi.rrpid)
    return wrapper.encode_message(header, preq), parts.oi_data, parts.pi


async def _expect_error(fn: Callable[[], object]) -> str:
    """The SET error code ``fn`` (sync or async) fails with, or "ACCEPTED"."""
    try:
        result = fn()
        if inspect.isawaitable(result):
            await result
    except ProtocolError as exc:
        return exc.code.name.lower()
    return "ACCEPTED"


async def run_selfcheck(suite: Suite) -> list[Check]:
    """One purchase through merchant and gateway checks, then tampering and swapping."""
    ch, mer, gw = (_party(suite, n) for n in ("cardholder", "merchant", "gateway"))
    checks: list[Check] = []
    wire, oi_data, _ = await _purchase(suite, ch, mer, gw, 1250)
    _, other_oi, other_pi = await _purchase(suite, ch, mer, gw, 99)

    decoded = wrapper.decode_message(wire, now_ms=CLOCK.now_ms())
    preq: PReq = decoded.body
    dualsig.verify_oi_at_merchant(
        preq.pi, preq.oi_data, preq.pi_data_digest, ch.key.public_key(), mer.thumb, gw.thumb
    )
    checks.append(Check("merchant verifies the dual signature", True, f"PReq {len(wire)} bytes"))
    checks.append(
        Check("merchant cannot see the PAN", DEMO_PAN.encode() not in wire, "not in PReq bytes")
    )

    auth_data = codec.packb([new_rrpid(), "M-1001", 1250, dualsig.oi_digest(preq.oi_data)])
    auth = await treatments.make_encb(
        mer.key, mer.thumb, suite, gw.key.public_key(), gw.thumb, "AuthReq", auth_data, preq.pi
    )

    async def gateway_opens(auth_bytes: bytes, oi_expected: bytes) -> dualsig.GatewayView:
        opened = await treatments.open_encb(
            gw.key, gw.thumb, auth_bytes, mer.key.public_key(), "AuthReq"
        )
        assert opened.baggage is not None
        return await dualsig.open_at_gateway(
            opened.baggage, gw.key, gw.thumb, ch.key.public_key(), mer.thumb, oi_expected
        )

    view = await gateway_opens(auth, dualsig.oi_digest(oi_data))
    checks.append(
        Check("gateway opens the PI and verifies", DEMO_PAN.encode() in view.pan_data, "PAN read")
    )
    checks.append(
        Check("gateway cannot see the order", ORDER.encode() not in auth, "only H(OIData)")
    )
    flipped = bytearray(auth)
    flipped[len(flipped) // 2] ^= 0x01
    code = await _expect_error(lambda: gateway_opens(bytes(flipped), dualsig.oi_digest(oi_data)))
    checks.append(Check("a flipped bit in AuthReq is refused", code != "ACCEPTED", code))
    swapped = await treatments.make_encb(
        mer.key, mer.thumb, suite, gw.key.public_key(), gw.thumb, "AuthReq", auth_data, other_pi
    )
    code = await _expect_error(lambda: gateway_opens(swapped, dualsig.oi_digest(oi_data)))
    checks.append(Check("a PI from another purchase is refused", code != "ACCEPTED", code))
    code = await _expect_error(
        lambda: dualsig.verify_oi_at_merchant(
            preq.pi, other_oi, preq.pi_data_digest, ch.key.public_key(), mer.thumb, gw.thumb
        )
    )
    checks.append(Check("an OI from another purchase is refused", code != "ACCEPTED", code))
    return checks


def _selfcheck(args: argparse.Namespace) -> int:
    print("setpay demo --selfcheck: protocol self-check in this process (software keys)")
    failed = 0
    for name in (args.suites or "rsa2048,p256").split(","):
        checks = asyncio.run(run_selfcheck(SUITES[name]))
        print(f"\nsuite {name}")
        print(f"  {'step':44} {'result':7} detail")
        for c in checks:
            failed += not c.ok
            print(f"  {c.step:44} {'ok' if c.ok else 'FAILED':7} {c.detail}")
    print(f"\n{'all checks passed' if not failed else f'{failed} checks FAILED'}")
    return 1 if failed else 0


def _client_root(settings: Settings) -> x509.Certificate | None:
    """The root the environment gave the thin clients (``<data_dir>/wallet/root.der``)."""
    from protocol.certs import load_certificate

    try:
        return load_certificate((settings.data_dir / "wallet" / "root.der").read_bytes())
    except (OSError, ProtocolError):
        return None


def _issuer_totals(settings: Settings) -> Callable[[str], tuple[int, int, int, int]]:
    """The issuer host's own sums of a batch (what its 0500 reconciliation compares), read
    from the environment's issuer store (demo_cases.py Rule 5)."""

    def totals(batch: str) -> tuple[int, int, int, int]:
        from actors.environment import ISSUER_INSTANCE
        from actors.issuer.accounts import Store

        store = Store(settings.data_dir / "issuer" / f"{ISSUER_INSTANCE}.sqlite")
        try:
            return store.batch_totals(batch)
        finally:
            store.close()

    return totals


async def _live(args: argparse.Namespace, settings: Settings) -> int:
    from actors import demo_cases

    wallet, pos = demo_cases.connect_clients(settings)
    try:
        if args.purchases:
            result = await demo_cases.run_load(wallet, pos, args.purchases, args.concurrency)
            rate = await asyncio.to_thread(demo_cases.raw_sign_rate, settings)
            print(f"\npurchases   {result.purchases} at concurrency {args.concurrency}")
            print(f"throughput  {result.rate:.1f} purchases/s ({result.seconds:.1f} s)")
            print(f"latency     p50 {result.p50_ms:.1f} ms   p99 {result.p99_ms:.1f} ms")
            for outcome, n in result.outcomes.most_common():
                print(f"outcome     {outcome:<44} {n}")
            for code, n in result.errors.most_common():
                print(f"error       {code:<44} {n}")
            print(f"raw RSA-2048 sign in SoftHSM2, one process: {rate:.0f}/s "
                  f"(purchases/s = {result.rate / rate:.3f} of it)")  # fmt: skip
            return 1 if result.errors else 0
        rows = await demo_cases.run_cases(wallet, pos, _client_root(settings),
                                          _issuer_totals(settings))  # fmt: skip
    finally:
        await demo_cases.close_clients(wallet, pos)
    demo_cases.print_rows(rows)
    bad = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} rows as expected")
    return 1 if bad else 0


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    if args.selfcheck or args.suites:
        return _selfcheck(args)
    from actors.environment import SetupError, ensure
    from setpay.cli import CommandError

    try:
        ensure(settings)
    except SetupError as exc:
        raise CommandError(str(exc)) from None
    return asyncio.run(_live(args, settings))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay demo``."""
    p = sub.add_parser(
        "demo", help="bring up (or use) the test environment and run purchases through it"
    )
    p.add_argument("--selfcheck", action="store_true",
                   help="only the in-process protocol self-check (software keys)")  # fmt: skip
    p.add_argument("--suites", help="self-check suites, comma-separated (implies --selfcheck)")
    p.add_argument("--purchases", type=int, default=0, help="load: number of purchases")
    p.add_argument("--concurrency", type=int, default=8, help="load: purchases in flight")
    p.set_defaults(func=_cmd)
