"""`setpay bench batch`: how long a gateway takes to close a batch and settle it with the
issuer host, at 10,000 and 100,000 transactions in one run, and how that grows.

Rule 1 (seeded, untimed): each size gets its own gateway books (actors/gateway/books.py),
link journal (actors/iso8583/saf.py) and issuer host store (actors/issuer/accounts.py), in a
throw-away directory, written through their store layer in bulk: per transaction one payment
(captured), one live capture item in one open batch with the key of its 0220 completion
advice, the advice's outbox row (queued), the advice acknowledged in the journal, and at the
host the completion it posted in that batch; what the books hold after the day's captures
were forwarded.
Rule 2 (timed): only the close and the reconciliation, with the gateway's own code: the
batch's move in ``GATEWAY_BATCH`` saved (``batch.close_batch``), then ``batch.settle_batch``:
every advice's acknowledgement checked (two indexed counts when nothing is outstanding,
else key by key), the batch's totals summed, the 0500
sent to a real ``IssuerHost`` on 127.0.0.1 through a real ``IsoLink`` (the host sums its side
of the batch and answers 00 when both agree), the settled batch saved. A run that does not
settle (host code other than 00) is an error, not a figure.
Rule 3: the growth is the ratio (time per transaction at the largest size) ÷ (at the
smallest): at most about 1 means linear or better. Each size is closed ``--repeat`` times
(as many batches seeded); the median and the minimum are reported, and the ratio of each: on
a shared machine the minimum is the least disturbed by others' load, so the verdict is its.
Rule 5 (``--outstanding``): the journal also holds one advice of another batch that failed for
good, so the gateway cannot take "nothing outstanding" and checks the batch's advices key by
key (its path on a link that still owes the host something).
Rule 4: reconciliation asks the host for no PIN or PAN operation, so the bench's host runs
without that security (every such call refused); nothing is imported from tests/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from actors.gateway.batch import batch_ref, close_batch, settle_batch
from actors.gateway.books import BATCHES, ITEMS, OUTBOX, PAYMENTS, Books
from actors.iso8583 import spec
from actors.iso8583.link import IsoLink
from actors.iso8583.saf import SAF
from actors.issuer.accounts import TRANSACTIONS, Store
from actors.issuer.errors import SecurityUnavailable
from actors.issuer.host import IssuerHost
from protocol.messages import BatchItemKind
from protocol.states import GatewayBatch, GatewayTransaction
from setpay.config import Settings

MERCHANT = "M-BENCH"
CURRENCY = "JPY"
CHUNK = 5_000  # rows per INSERT while seeding


class NoSecurity:
    """Rule 4: the bench host's PIN/PAN security: refuses every call (none is made)."""

    async def pan_index(self, pan: str) -> bytes:
        raise SecurityUnavailable("the bench host has no PAN index key")

    async def pvv(self, account: str, pin_block_under_zpk: bytes) -> bytes:
        raise SecurityUnavailable("the bench host has no PIN keys")

    async def verify_pin(self, account: str, pin_block_under_zpk: bytes, pvv: bytes) -> bool:
        raise SecurityUnavailable("the bench host has no PIN keys")


@dataclass(frozen=True)
class SizeResult:
    transactions: int
    closes: int
    median_s: float
    min_s: float
    per_tx_us: float
    min_per_tx_us: float
    seed_s: float
    debit_amount: int
    host_code: str


def _amount(i: int) -> int:
    return 100 + i % 9_900


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]


def seed(books: Books, journal_db: Any, host: Store, batch_id: int, n: int, now: float) -> int:
    """Rule 1: one open batch of ``n`` forwarded captures; its debit amount."""
    now_ms = int(now * 1000)
    ref = batch_ref(MERCHANT, batch_id)
    payments, items, outbox, saf, posted = [], [], [], [], []
    total = 0
    for i in range(n):
        rrpid = batch_id.to_bytes(4, "big") + i.to_bytes(16, "big")
        rrn = f"{batch_id:04d}{i:08d}"
        key = f"{spec.ADVICE}:{rrpid.hex()}:0"
        amount = _amount(i)
        total += amount
        payments.append({
            "auth_rrpid": rrpid, "merchant_id": MERCHANT, "xid": rrpid, "trans_ids": rrpid,
            "currency": CURRENCY, "rrn": rrn, "state": GatewayTransaction.CAPTURED,
            "authorized": amount, "captured": amount, "credited": 0, "capture_item": None,
            "updated": now_ms,
        })  # fmt: skip
        items.append({
            "merchant_id": MERCHANT, "batch_id": batch_id, "seq": i + 1, "auth_rrpid": rrpid,
            "kind": int(BatchItemKind.CAPTURE), "amount": amount, "live": True,
            "reverses": None, "request": rrpid, "advice_key": key, "created": now_ms,
        })  # fmt: skip
        outbox.append({
            "key": key, "rrn": rrn, "mti": spec.ADVICE, "fields": "{}", "original_key": None,
            "queued": True, "created": now_ms,
        })  # fmt: skip
        saf.append({
            "rrn": rrn, "mti": spec.ADVICE, "message": "{}", "state": "acked", "attempts": 1,
            "response_code": "00", "created_at": now, "done_at": now, "key": key,
        })  # fmt: skip
        posted.append({
            "tx_key": key, "rrn": rrn, "mti": spec.ADVICE, "fingerprint": rrpid,
            "pan_index": None, "amount": amount, "effect": "completion", "state": "active",
            "response_code": "00", "approval_code": "", "created_at": now, "batch": ref,
        })  # fmt: skip
    with books.db.transaction() as db:
        db.execute(sa.insert(BATCHES).values(
            merchant_id=MERCHANT, batch_id=batch_id, state=GatewayBatch.OPEN, currency=CURRENCY,
            opened=now_ms, next_seq=n + 1,
        ))  # fmt: skip
        for part in _chunks(payments):
            db.execute(sa.insert(PAYMENTS), part)
        for part in _chunks(items):
            db.execute(sa.insert(ITEMS), part)
        for part in _chunks(outbox):
            db.execute(sa.insert(OUTBOX), part)
    with journal_db.transaction() as db:
        for part in _chunks(saf):
            db.execute(sa.insert(SAF), part)
    with host.db.transaction() as db:
        for part in _chunks(posted):
            db.execute(sa.insert(TRANSACTIONS), part)
    return total


def outstanding(journal_db: Any, now: float) -> None:
    """Rule 5: one advice of another batch that the host never took."""
    with journal_db.transaction() as db:
        db.execute(sa.insert(SAF).values(
            rrn="OTHER0000000", mti=spec.ADVICE, message="{}", state="failed", attempts=9,
            response_code=None, created_at=now, done_at=now, key="bench:outstanding",
        ))  # fmt: skip


async def measure(n: int, repeat: int, folder: Path, *, busy: bool = False) -> SizeResult:
    """Rules 1, 2: ``repeat`` batches of ``n`` seeded, each closed and settled, timed."""
    host_store = Store(folder / "issuer.sqlite")
    host = IssuerHost(host_store, NoSecurity())
    await host.start()
    books = Books(folder / "books.sqlite")
    link = IsoLink("127.0.0.1", host.port, folder / "journal.sqlite", deadline=120.0)
    await link.start()
    try:
        start = time.perf_counter()
        totals = [seed(books, link.journal.db, host_store, b, n, time.time())
                  for b in range(1, repeat + 1)]  # fmt: skip
        if busy:
            outstanding(link.journal.db, time.time())
        seed_s = time.perf_counter() - start
        times: list[float] = []
        code = ""
        for batch_id in range(1, repeat + 1):
            b = books.batch(MERCHANT, batch_id)
            assert b is not None
            start = time.perf_counter()
            close_batch(b, batch_id.to_bytes(16, "big"), int(time.time() * 1000))
            books.save_batch(b)
            await settle_batch(books, link, b, "bench", lambda: int(time.time() * 1000))
            times.append(time.perf_counter() - start)
            code = b.host_code or "none"
            if b.state != GatewayBatch.SETTLED:
                raise RuntimeError(f"batch of {n} did not settle (host answered {code})")
        median = statistics.median(times)
        return SizeResult(n, repeat, median, min(times), median / n * 1e6, min(times) / n * 1e6,
                          seed_s, totals[0], code)  # fmt: skip
    finally:
        await link.close()
        await host.stop()
        books.close()
        host_store.close()


async def run(
    sizes: list[int], repeat: int, base: Path | None = None, *, busy: bool = False
) -> list[SizeResult]:
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="setpay-bench-batch-", dir=base) as tmp:
            out.append(await measure(n, repeat, Path(tmp), busy=busy))
    return out


def growth(results: list[SizeResult], *, of_min: bool = False) -> float:
    """Rule 3: time per transaction at the largest size ÷ at the smallest (of the medians,
    or of the minima)."""
    small = min(results, key=lambda r: r.transactions)
    large = max(results, key=lambda r: r.transactions)
    if of_min:
        return large.min_per_tx_us / small.min_per_tx_us
    return large.per_tx_us / small.per_tx_us


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    if not sizes or min(sizes) < 1 or args.repeat < 1:
        raise SystemExit("setpay bench batch: --sizes and --repeat must be positive")
    results = asyncio.run(run(sizes, args.repeat, busy=args.outstanding))
    ratio, ratio_min = growth(results), growth(results, of_min=True)
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "growth_ratio": ratio,
                          "growth_ratio_min": ratio_min}))  # fmt: skip
        return 0
    path = "key by key (an advice outstanding)" if args.outstanding else "nothing outstanding"
    print(f"batch close + reconciliation with the issuer host (median of {args.repeat}; "
          f"advices checked: {path})")  # fmt: skip
    print(f"{'transactions':>12} {'median s':>9} {'min s':>8} {'µs/tx med':>10} "
          f"{'µs/tx min':>10} {'seeded in s':>12} {'host':>5}")  # fmt: skip
    for r in results:
        print(f"{r.transactions:>12} {r.median_s:>9.3f} {r.min_s:>8.3f} {r.per_tx_us:>10.2f} "
              f"{r.min_per_tx_us:>10.2f} {r.seed_s:>12.1f} {r.host_code:>5}")  # fmt: skip
    verdict = "linear or better" if ratio_min <= 1.15 else "worse than linear"
    print(f"growth: time per transaction at {results[-1].transactions} ÷ at "
          f"{results[0].transactions} = {ratio_min:.2f} of the minima ({verdict}), "
          f"{ratio:.2f} of the medians")  # fmt: skip
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("batch", help="batch close and settlement time at 10k and 100k items")
    p.add_argument("--sizes", default="10000,100000", help="transactions per batch, comma list")
    p.add_argument("--repeat", type=int, default=3, help="batches closed per size (median)")
    p.add_argument(
        "--outstanding",
        action="store_true",
        help="an advice of another batch failed: check this batch's key by key",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd)
