"""The cases `setpay demo` runs against a live environment, and its load option.

Rule 1: every case goes through the thin clients only, over HTTPS (actors/wallet/api.py for
the cardholder, actors/merchant/api.py for the shop's operators; each logs in once and reuses
its session): wallet, POS, gateway, issuer host, CA and keystore are the environment's own
processes. The shop creates each order and hands the cardholder its pay link. An outcome is
what the merchant signed in its PRes (completion, authorization code), or the error the
wallet reported.
Rule 2: each case names the outcome it expects; a row whose outcome differs is marked, and
the demo fails. A case the system cannot run yet is shown as "not available yet", never faked.
Rule 3: cardholders are registered and cards enrolled once, then reused; rows show the last
four digits only.
Rule 5 (after authorization, issue 12): through the POS operator's HTTPS API, at one merchant
and into one batch the demo opens: a partial capture, a refund, a split shipment (the first
shipment authorized with the purchase, the next by the gateway's AuthToken, both captured), an
authorization reversal, a capture reversal, a credit reversal, then the batch's close; its
totals (from the gateway's BatchAdminRes) are printed and compared with the issuer host's
own sums of that batch (what it reconciled the 0500 against, read from its store: the one
place the demo looks past the thin clients, as it reads the token for the raw sign rate).
Rule 4: OPE PIN debit is a sale from the seeded bank account (bank-branch-number, field 102
at the issuer), right PIN first (it resets the try counter), then a wrong one; the PIN is
sealed by the thin client (api.seal_for, against the root the environment gave the wallet's
clients), so the wallet sees only the seal.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from actors.environment import (
    BRAND,
    DEBIT_BANK,
    DEBIT_BRANCH,
    DEBIT_NUMBER,
    DEBIT_PIN,
    LOAD_PANS,
    MERCHANTS,
    OPERATOR_PASSPHRASE,
    POS_INSTANCE,
    _valid,
    operator_name,
)
from actors.merchant.api import Order, PosClient, PosSession
from actors.merchant.errors import MerchantError
from actors.wallet.api import Outcome, WalletClient, WalletSession
from actors.wallet.errors import WalletError
from protocol.messages import AuthCode, CurrAmt
from setpay.config import Settings

PASSPHRASE = "demo passphrase, test environment only"  # noqa: S105 - demo cardholders
FORM = {"name": "Demo Cardholder", "postal_code": "100-0001"}
WRONG_PIN = "58204617"  # not DEBIT_PIN: the issuer answers 55 (one of its 3 tries)
CURRENCY = "JPY"


@dataclass(frozen=True)
class Row:
    party: str  # who decided the outcome
    case: str
    expected: str
    outcome: str
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.expected == "-" or self.outcome == self.expected


class Shop:
    """The shop side of the demo: one logged-in operator session per test merchant."""

    def __init__(self, client: PosClient) -> None:
        self.client = client
        self.route = f"merchant.{POS_INSTANCE}"
        self._sessions: dict[str, PosSession] = {}
        self._lock = asyncio.Lock()

    async def session(self, merchant_id: str) -> PosSession:
        async with self._lock:
            if merchant_id not in self._sessions:
                self._sessions[merchant_id] = await self.client.login(
                    operator_name(merchant_id), OPERATOR_PASSPHRASE
                )
            return self._sessions[merchant_id]

    async def create_order(
        self, merchant_id: str, description: str, amount: CurrAmt, *, sale: bool = False,
        first_shipment: int | None = None,
    ) -> Order:  # fmt: skip
        """A new order at ``merchant_id``, with its pay link."""
        session = await self.session(merchant_id)
        return await session.create_order(description, amount, sale=sale,
                                          first_shipment=first_shipment)  # fmt: skip

    async def close(self) -> None:
        await self.client.close()


class Shopper:
    """One cardholder with one card (or, with ``bank_code``, one OPE bank account), through
    the wallet's thin client: registered once, logged in once (Rule 3)."""

    def __init__(
        self, wallet: WalletClient, user: str, number: str, *, pin_account: bool = False,
        bank_code: str = "", branch: str = "",
    ) -> None:  # fmt: skip
        self.wallet = wallet
        self.user = user
        self.number = number
        self.pin_account = pin_account
        self.bank_code = bank_code
        self.branch = branch
        self.card_id = ""
        self._session: WalletSession | None = None

    @property
    def label(self) -> str:
        """What the enrol row names: card or bank account, last four digits only."""
        return f"{'account' if self.bank_code else 'card'} …{self.number[-4:]}"

    async def session(self) -> WalletSession:
        """This cardholder's session: registered if new (no failed login), logged in once."""
        if self._session is None:
            try:
                await self.wallet.register(self.user, PASSPHRASE)
            except WalletError as exc:
                if "exists" not in str(exc):
                    raise
            self._session = await self.wallet.login(self.user, PASSPHRASE)
        return self._session

    async def card(self) -> str:
        """Enroll the card unless this cardholder has it already (Rule 3)."""
        session = await self.session()
        for c in await session.cards():
            if c.hint == self.number[-4:]:
                self.card_id = c.card_id
                return self.card_id
        self.card_id = await session.enroll(
            brand=BRAND, number=self.number, expiry=_valid_now(), form=FORM,
            pin_account=self.pin_account, bank_code=self.bank_code, branch=self.branch,
        )  # fmt: skip
        return self.card_id

    async def debit(self, pos: Shop, merchant_id: str, amount: int,
                    root: x509.Certificate, pin: str) -> Outcome:  # fmt: skip
        """OPE PIN debit: a sale, the PIN sealed here to the gateway (Rule 4)."""
        description = f"demo PIN debit at {merchant_id}: {amount} {CURRENCY}"
        order = await pos.create_order(merchant_id, description, CurrAmt(CURRENCY, amount),
                                       sale=True)  # fmt: skip
        session = await self.session()
        return await session.buy_with_pin(root=root, pin=pin, card_id=self.card_id,
                                          offer=order.offer)  # fmt: skip

    async def buy(self, pos: Shop, merchant_id: str, amount: int,
                  *, sale: bool = False) -> Outcome:  # fmt: skip
        description = f"demo order at {merchant_id}: {amount} {CURRENCY}"
        order = await pos.create_order(merchant_id, description, CurrAmt(CURRENCY, amount),
                                       sale=sale)  # fmt: skip
        session = await self.session()
        return await session.buy(card_id=self.card_id, offer=order.offer)


def debit_shopper(wallet: WalletClient) -> Shopper:
    """The OPE PIN debit cardholder: the seeded bank account, enrolled as a PIN account."""
    return Shopper(wallet, "demo-erin", DEBIT_NUMBER, pin_account=True, bank_code=DEBIT_BANK,
                   branch=DEBIT_BRANCH)  # fmt: skip


def _valid_now() -> str:
    from datetime import UTC, datetime

    return _valid(datetime.now(UTC))


async def _timed(coro: Any) -> tuple[str, float]:
    start = time.perf_counter()
    try:
        result = await coro
        outcome = result.describe() if isinstance(result, Outcome) else str(result)
    except (WalletError, MerchantError) as exc:
        outcome = f"error: {exc}"
    return outcome, (time.perf_counter() - start) * 1000


APPROVED = "AUTHORIZATION_PERFORMED/APPROVED"
DECLINED = "AUTHORIZATION_PERFORMED/DECLINED"
SALE_APPROVED = "CAPTURE_PERFORMED/APPROVED"
EXPIRED = "AUTHORIZATION_PERFORMED/EXPIRED_CARD"


HostTotals = Callable[[str], tuple[int, int, int, int]]  # batch ref → the host's sums


async def run_cases(
    wallet: WalletClient, pos: Shop, root: x509.Certificate | None = None,
    host_totals: HostTotals | None = None,
) -> list[Row]:  # fmt: skip
    """The acceptance cases of issue #6 (Rules 1, 2); the OPE rows need the trusted ``root``;
    the rows after authorization (Rule 5) the issuer host's batch sums ``host_totals``."""
    rows: list[Row] = []
    m1, m2, m3 = (m[0] for m in MERCHANTS)
    good = Shopper(wallet, "demo-alice", LOAD_PANS[0])
    low = Shopper(wallet, "demo-bob", "4000000000000002")
    expired = Shopper(wallet, "demo-carol", "4000000000000010")
    stolen = Shopper(wallet, "demo-dave", "4000000000000028")
    debit = debit_shopper(wallet)
    for shopper in (good, low, expired, stolen, debit):
        outcome, ms = await _timed(shopper.card())
        ok = outcome == shopper.card_id
        rows.append(Row("wallet+CA", f"enroll {shopper.label}", "enrolled",
                        "enrolled" if ok else outcome, ms))  # fmt: skip
    cases = [
        ("credit purchase, approved", good, m1, 3_200, False, APPROVED),
        ("credit, insufficient funds", low, m2, 20_000, False, DECLINED),
        ("credit, expired card", expired, m1, 1_500, False, EXPIRED),
        ("credit, stolen card", stolen, m3, 2_000, False, DECLINED),
        ("sale, capture now", good, m3, 4_800, True, SALE_APPROVED),
    ]
    first: Outcome | None = None
    for case, shopper, merchant_id, amount, sale, expect in cases:
        start = time.perf_counter()
        try:
            result = await shopper.buy(pos, merchant_id, amount, sale=sale)
            outcome = result.describe()
            first = first or result
        except (WalletError, MerchantError) as exc:
            outcome = f"error: {exc}"
        rows.append(Row("issuer via gateway", f"{case} ({merchant_id})", expect, outcome,
                        (time.perf_counter() - start) * 1000))  # fmt: skip
    ope = [("OPE debit, right PIN", DEBIT_PIN, SALE_APPROVED),
           ("OPE debit, wrong PIN", WRONG_PIN, DECLINED)]  # fmt: skip
    for case, pin, expect in ope:
        if root is None:
            rows.append(Row("issuer via gateway", case, "-", "not available (no root)", 0.0))
            continue
        outcome, ms = await _timed(debit.debit(pos, m2, 2_500, root, pin))
        rows.append(Row("issuer via gateway", f"{case} ({m2})", expect, outcome, ms))
    if first is not None:
        outcome, ms = await _timed(_inquire(good, first.xid))
        rows.append(Row("merchant", "inquiry about the approved purchase", APPROVED, outcome, ms))
    rows += await after_rows(pos, good, m1, host_totals)
    return rows


BATCH_SETTLED = "settled: debits 3 9000 JPY, credits 1 1000 JPY = issuer host"


async def after_rows(
    pos: Shop, shopper: Shopper, merchant_id: str, host_totals: HostTotals | None
) -> list[Row]:
    """Rule 5: the life of payments after authorization at ``merchant_id``, in one batch."""
    rows: list[Row] = []
    party = "POS via gateway"
    try:
        session = await pos.session(merchant_id)
        opened = await session.batch("open")
    except MerchantError as exc:
        return [Row(party, "batch open", "SUCCESS", f"error: {exc}", 0.0)]
    batch = opened["batch"]

    async def bought(amount: int, first: int | None = None) -> str:
        description = f"demo order at {merchant_id}: {amount} {CURRENCY}"
        order = await session.create_order(description, CurrAmt(CURRENCY, amount),
                                           first_shipment=first)  # fmt: skip
        paid = await (await shopper.session()).buy(card_id=shopper.card_id, offer=order.offer)
        if paid.describe() != APPROVED:
            raise MerchantError(f"purchase not authorized: {paid.describe()}")
        return order.order

    async def step(case: str, expected: str, run: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            outcome = await run()
        except (MerchantError, WalletError) as exc:
            outcome = f"error: {exc}"
        rows.append(Row(party, f"{case} ({merchant_id})", expected, outcome,
                        (time.perf_counter() - start) * 1000))  # fmt: skip

    def said(r: dict[str, Any]) -> str:
        return f"{r['code']} {r['amount']}"

    o1 = o2 = ""

    async def partial() -> str:
        nonlocal o1
        o1 = await bought(5_000)
        return said(await session.capture(o1, 3_000, batch))

    async def refund() -> str:
        return said(await session.refund(o1, 1_000, batch))

    async def split() -> str:
        nonlocal o2
        o2 = await bought(6_000, first=2_000)
        first = await session.capture(o2, batch=batch)
        nxt = await session.next_shipment(o2, 4_000)
        if not nxt["ok"]:
            return f"next shipment {said(nxt)}"
        second = await session.capture(nxt["id"], batch=batch)
        return f"{said(first)} + next {said(nxt)}, captured {said(second)}"

    async def auth_reversal() -> str:
        return said(await session.reverse(await bought(2_500), "authorization", 0))

    async def capture_reversal() -> str:
        o4 = await bought(1_800)
        cap = await session.capture(o4, batch=batch)
        if not cap["ok"]:
            return f"capture {said(cap)}"
        return said(await session.reverse(o4, "capture"))

    async def credit_reversal() -> str:
        credit = await session.refund(o2, 500, batch)
        if not credit["ok"]:
            return f"refund {said(credit)}"
        return said(await session.reverse(o2, "credit", 500))

    async def close() -> str:
        b = await session.batch("close", batch)
        if b["status"] != "SUCCESS":
            return f"close {b['status']}"
        ours = (b["credit_count"], b["credit_amount"], b["debit_count"], b["debit_amount"])
        text = (f"debits {ours[2]} {ours[3]} {b['currency']}, "
                f"credits {ours[0]} {ours[1]} {b['currency']}")  # fmt: skip
        state = "settled" if b.get("settlement") else f"transmission {b['transmission']}"
        if host_totals is None:
            return f"{state}: {text} (issuer host not readable)"
        host = host_totals(f"{merchant_id}:{batch}")
        same = "= issuer host" if host == ours else f"!= issuer host {host}"
        return f"{state}: {text} {same}"

    await step("partial capture, 3000 of 5000", "SUCCESS 3000", partial)
    await step("refund 1000 of the capture", "SUCCESS 1000", refund)
    await step("split shipment: 2000, then 4000 by AuthToken",
               "SUCCESS 2000 + next APPROVED 4000, captured SUCCESS 4000", split)  # fmt: skip
    await step("authorization reversal, all of 2500", "APPROVED 0", auth_reversal)
    await step("capture reversal of 1800", "SUCCESS 1800", capture_reversal)
    await step("credit reversal of a 500 refund", "SUCCESS 500", credit_reversal)
    await step(f"batch {batch} close, totals", BATCH_SETTLED, close)
    return rows


async def _inquire(shopper: Shopper, xid: bytes) -> Outcome:
    return await (await shopper.session()).inquire(xid)


def print_rows(rows: list[Row]) -> None:
    print(f"\n{'party':<20} {'case':<54} {'outcome':<40} {'ms':>8}")
    print("-" * 125)
    for r in rows:
        mark = "" if r.ok else f"   <-- expected {r.expected}"
        print(f"{r.party:<20} {r.case:<54} {r.outcome:<40} {r.latency_ms:8.1f}{mark}")


# -- load ----------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    purchases: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: Counter[str]
    outcomes: Counter[str]

    @property
    def rate(self) -> float:
        return self.purchases / self.seconds if self.seconds else 0.0


async def run_load(wallet: WalletClient, pos: Shop, purchases: int,
                   concurrency: int) -> LoadResult:  # fmt: skip
    """``purchases`` from the load cardholders at every merchant, ``concurrency`` at a time."""
    from hdrh.histogram import HdrHistogram

    shoppers = [Shopper(wallet, f"demo-load{i}", pan) for i, pan in enumerate(LOAD_PANS)]
    await asyncio.gather(*(s.card() for s in shoppers))
    histogram = HdrHistogram(1, 120_000_000, 3)  # microseconds
    errors: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(purchases):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            shopper = shoppers[i % len(shoppers)]
            merchant_id = MERCHANTS[i % len(MERCHANTS)][0]
            start = time.perf_counter()
            try:
                result = await shopper.buy(pos, merchant_id, 100 + i % 900)
                outcomes[result.describe()] += 1
                if result.auth_code != AuthCode.APPROVED:
                    errors[result.describe()] += 1
            except (WalletError, MerchantError) as exc:
                errors[str(exc)[:60]] += 1
            histogram.record_value(max(1, int((time.perf_counter() - start) * 1e6)))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    seconds = time.perf_counter() - start
    return LoadResult(purchases, seconds, histogram.get_value_at_percentile(50) / 1000,
                      histogram.get_value_at_percentile(99) / 1000, errors, outcomes)  # fmt: skip


def _sign_child(settings: Settings, label: str, seconds: float, out: Any) -> None:
    from keystore.hsm import Hsm, TokenConfig
    from keystore.token import token_pin, use_softhsm_conf

    use_softhsm_conf(settings)
    hsm = Hsm(TokenConfig(settings.keystore_module, settings.keystore_token_label,
                          token_pin(settings)))  # fmt: skip
    hsm.open()
    digest = hashlib.sha256(b"setpay demo").digest()
    try:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            hsm.sign(label, digest)
            n += 1
        out.put(n / (time.perf_counter() - start))
    finally:
        hsm.close()


def raw_sign_rate(settings: Settings, seconds: float = 1.0) -> float:
    """RSA signatures/s of one process straight on the token (a merchant's key), measured in
    a child process so PKCS#11 is never initialised in this one."""
    label = f"{settings.broker_user_prefix}merchant.{POS_INSTANCE}/{MERCHANTS[0][0]}-sig"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_sign_child, args=(settings, label, seconds, out))
    proc.start()
    try:
        return float(out.get(timeout=seconds + 60))
    finally:
        proc.join(timeout=10)


def connect_clients(settings: Settings) -> tuple[WalletClient, Shop]:
    """The cardholders' and the shop's thin clients of the environment, over HTTPS."""
    return WalletClient.for_settings(settings), Shop(PosClient.for_settings(settings))


async def close_clients(wallet: WalletClient, pos: Shop) -> None:
    await wallet.close()
    await pos.close()
