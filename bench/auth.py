"""`setpay bench auth`: complete purchases (PInit, PReq, AuthReq/AuthRes, PRes) through the
test environment's thin clients, with latency histograms and the crypto and broker bounds.

Rule 1: a purchase is bought the way `setpay demo` buys (actors/demo_cases.py ``Shopper``:
the POS thin client creates the order, the wallet thin client buys; OPE PIN debit seals the
PIN in the thin client); nothing here builds a SET message.
Rule 2: the environment is the running one, or one this command starts through the
supervisor (actors/environment.py ``ensure``), with ``--suite`` as its suite; cardholders are
enrolled before any clock starts and reused by later runs.
Rule 3: closed loop (``--concurrency C``) or open loop (``--rate R``); in the open loop a
latency is measured from the purchase's intended start (coordinated-omission corrected) and
the uncorrected one, from its actual start, is kept beside it. Purchases that start (are due)
within ``--warmup`` seconds are run but not counted.
Rule 4: a purchase succeeds only with the outcome its card kind expects (credit approved,
PIN debit captured, decline card declined); anything else is counted by outcome, and a
failure by its SET error code when the error names one.
Rule 5: every figure is shown as a ratio of bounds measured in the same run: the crypto bound
(the private-key operations one purchase needs, counted in the keystore's audit log of probe
purchases, timed directly on the environment's token with its number of keystore workers) and
the broker bound (the SET envelopes one purchase publishes, counted and sized with the trace
tap, timed as raw aio-pika publish + consume with confirms in a throw-away vhost, plus the
keystore round trips it makes, counted in the same audit log and timed as raw aio-pika RPC
at 64 in flight there; the envelopes alone are reported beside it).
Rule 6: the progress line goes to stderr only: rewritten in place on a terminal, a plain line
every few seconds otherwise; results go to stdout (a table, or JSON with ``--json``).
Rule 7: ``--scale 1,2,3`` runs the same load once per process count of ``--scale-roles``
(default merchant and gateway): before each step the supervisor is told the count
(actors/supervisor.py Rule 6) and the step starts only when exactly those processes run and
are ready; one row per step (throughput, latency, failures, ratio to the bounds); afterwards
the environment gets its earlier counts back.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import secrets
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hdrh.histogram import HdrHistogram

from setpay.config import Settings

KINDS = ("credit", "debit", "decline")
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
HIGHEST_US = 600_000_000  # ten minutes, in microseconds
# Audit ops that use a private key, and which direct HSM rate times them: key transport is an
# OAEP decrypt (RSA suites) or an ECDH derive (p256); open_pi_account opens a PI's wrap.
PRIVATE_OPS = {"sign": "sign", "decrypt": "exchange", "derive": "exchange",
               "open_pi_account": "exchange"}  # fmt: skip
# Used when the audit log cannot be read (a console-format log): the stated list of one
# purchase's private-key operations -- cardholder PReq signature; merchant PInitRes, AuthReq
# and PRes signatures and the AuthRes unwrap; gateway AuthReq and PI unwraps, AuthRes and
# CapToken signatures (the audit log of rsa2048 and p256 runs counts the same 6 + 3).
# Keystore ops a client does once and keeps (not a round trip of every purchase).
ONCE_OPS = frozenset({"transport_key", "public_key"})
STATED_OPS = {"sign": 6, "exchange": 3}
# ... and its keystore round trips: those 9, the wallet's open of the sealed card (a card
# enrolled before wallet store v4 opens it to start too), the issuer's PAN-index HMAC.
STATED_CALLS = {"sign": 6, "decrypt": 2, "open_pi_account": 1, "open": 1, "hmac": 1}
STATED_MESSAGES = 6  # PInitReq, PInitRes, PReq, AuthReq, AuthRes, PRes
STATED_SIZE = 2048


class BenchError(Exception):
    """The benchmark cannot run; the message says why."""


# -- the card mix -------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    """``credit=8,debit=1,decline=1`` -> normalised weights; unknown kinds are refused."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in KINDS:
            raise BenchError(f"--mix: unknown kind {name!r} (known: {', '.join(KINDS)})")
        try:
            weights[name] = float(value)
        except ValueError:
            raise BenchError(f"--mix: {part!r} needs a number") from None
        if weights[name] < 0:
            raise BenchError(f"--mix: {name} must not be negative")
    total = sum(weights.values())
    if total <= 0:
        raise BenchError("--mix: give at least one kind a positive weight")
    return {k: w / total for k, w in weights.items() if w > 0}


def apportion(mix: dict[str, float], total: int) -> dict[str, int]:
    """``total`` split in the mix's proportions, summing to ``total`` (largest remainder)."""
    exact = {k: w * total for k, w in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True):
        if sum(counts.values()) >= total:
            break
        counts[k] += 1
    return counts


def schedule(mix: dict[str, float], slots: int = 100, seed: int = 7) -> list[str]:
    """A shuffled cycle of ``slots`` kinds in the mix's proportions."""
    cycle = [k for k, n in apportion(mix, slots).items() for _ in range(n)]
    random.Random(seed).shuffle(cycle)
    return cycle


def split_cardholders(mix: dict[str, float], total: int) -> dict[str, int]:
    """Cardholders per kind: ``total`` in the mix's proportions, at least one per kind."""
    return {k: max(1, n) for k, n in apportion(mix, total).items()}


# -- recording ----------------------------------------------------------------------------------


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, 3)


@dataclass
class Results:
    """What one load run measured (Rules 3, 4); latencies in microseconds."""

    mode: str
    corrected: HdrHistogram = field(default_factory=new_histogram)
    uncorrected: HdrHistogram = field(default_factory=new_histogram)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    warmup_done: int = 0
    succeeded: int = 0
    failed: int = 0
    window_start: float = 0.0
    window_end: float = 0.0
    ends: list[tuple[float, int]] = field(default_factory=list)  # (end time, corrected µs)

    @property
    def completed(self) -> int:
        return self.succeeded + self.failed

    @property
    def seconds(self) -> float:
        return max(1e-9, self.window_end - self.window_start)

    @property
    def throughput(self) -> float:
        """Measured purchases completed per second of the measurement window."""
        return self.completed / self.seconds if self.completed else 0.0

    def record(self, kind: str, intended: float, started: float, ended: float, outcome: str,
               ok: bool, error: str | None) -> None:  # fmt: skip
        corrected = max(1, int((ended - intended) * 1e6))
        self.corrected.record_value(min(corrected, HIGHEST_US))
        self.uncorrected.record_value(min(max(1, int((ended - started) * 1e6)), HIGHEST_US))
        self.ends.append((ended, corrected))
        self.by_kind[kind] += 1
        self.outcomes[outcome] += 1
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
            self.errors[error or outcome] += 1
        self.window_end = max(self.window_end, ended)


def percentiles(hist: HdrHistogram) -> dict[str, float]:
    """p50 … p99.9 and max of ``hist``, in milliseconds."""
    out = {f"p{p:g}": hist.get_value_at_percentile(p) / 1000 for p in PERCENTILES}
    out["max"] = hist.get_max_value() / 1000
    return out


_ERROR_CODES: frozenset[str] | None = None


def error_key(text: str) -> str:
    """``SET <CODE>`` when the error text names a SET error code, else its first words."""
    global _ERROR_CODES
    if _ERROR_CODES is None:
        from protocol.errors import ErrorCode

        _ERROR_CODES = frozenset(c.name for c in ErrorCode)
    for word in re.findall(r"[A-Z][A-Z_]{3,}", text):
        if word in _ERROR_CODES:
            return f"SET {word}"
    return text[:60]


# -- the load driver ----------------------------------------------------------------------------

Purchase = Callable[[int], Awaitable[tuple[str, str, bool, str | None]]]  # kind, outcome, ok, err


class Progress:
    """The stderr progress line (Rule 6)."""

    def __init__(self, label: str, stream: Any = None, *, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.period = 0.5 if self.tty else 5.0
        self.label = label
        self.enabled = enabled
        self._last = (0.0, 0)

    def show(self, now: float, started: float, results: Results, in_flight: int) -> None:
        if not self.enabled:
            return
        last_t, last_n = self._last
        done = results.completed + results.warmup_done
        rate = (done - last_n) / (now - last_t) if last_t else 0.0
        self._last = (now, done)
        p99 = results.corrected.get_value_at_percentile(99) / 1000 if results.completed else 0
        line = (f"{self.label}: {now - started:6.1f} s  done {results.completed} "
                f"(+{results.warmup_done} warm-up)  in flight {in_flight:3d}  "
                f"{rate:6.1f}/s  p99 {p99:8.1f} ms  failed {results.failed}")  # fmt: skip
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def drive(
    purchase: Purchase, *, count: int = 0, duration: float = 0.0, concurrency: int = 0,
    rate: float = 0.0, warmup: float = 0.0, max_in_flight: int = 2000,
    progress: Progress | None = None,
) -> Results:  # fmt: skip
    """Run purchases closed loop (``concurrency``) or open loop (``rate``) until ``count``
    measured purchases were started or ``duration`` measured seconds passed (Rule 3)."""
    if (count > 0) == (duration > 0):
        raise BenchError("give exactly one of --count and --duration")
    if (concurrency > 0) == (rate > 0):
        raise BenchError("give exactly one of --concurrency (closed loop) and --rate (open)")
    results = Results("open" if rate else "closed")
    started = time.perf_counter()
    warm_end = started + warmup
    results.window_start = warm_end
    state = {"next": 0, "measured": 0, "in_flight": 0}
    slot_free = asyncio.Event()

    async def one(i: int, intended: float, began: float, measured: bool) -> None:
        state["in_flight"] += 1
        try:
            kind, outcome, ok, err = await purchase(i)
        finally:
            state["in_flight"] -= 1
            slot_free.set()
        ended = time.perf_counter()
        if measured:
            results.record(kind, intended, began, ended, outcome, ok, err)
        else:
            results.warmup_done += 1

    def admit(due: float) -> bool | None:
        """Whether a purchase due at ``due`` is measured; None: the run is over."""
        if due < warm_end:
            return False
        if count and state["measured"] >= count:
            return None
        if duration and due >= warm_end + duration:
            return None
        state["measured"] += 1
        return True

    async def ticker() -> None:
        while progress is not None:
            await asyncio.sleep(progress.period)
            progress.show(time.perf_counter(), started, results, state["in_flight"])

    tick = asyncio.create_task(ticker())
    try:
        if concurrency:

            async def worker() -> None:
                while True:
                    now = time.perf_counter()
                    measured = admit(now)
                    if measured is None:
                        return
                    i = state["next"]
                    state["next"] += 1
                    await one(i, now, now, measured)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            tasks: set[asyncio.Task[None]] = set()
            failures: list[BaseException] = []

            def done(task: asyncio.Task[None]) -> None:
                tasks.discard(task)
                if not task.cancelled() and task.exception() is not None:
                    failures.append(task.exception())  # type: ignore[arg-type]

            i = 0
            while True:
                due = started + i / rate
                measured = admit(due)
                if measured is None:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                while state["in_flight"] >= max_in_flight:
                    slot_free.clear()
                    await slot_free.wait()
                task = asyncio.create_task(one(i, due, time.perf_counter(), measured))
                tasks.add(task)
                task.add_done_callback(done)
                i += 1
            while tasks:
                await asyncio.gather(*list(tasks))
            if failures:
                raise failures[0]
    finally:
        tick.cancel()
        if progress is not None:
            progress.show(time.perf_counter(), started, results, state["in_flight"])
            progress.finish()
    if results.mode == "closed":
        # The closed loop has no schedule: its window opens when measurement does.
        results.window_start = max(warm_end, started)
    return results


# -- cardholders and the purchase ---------------------------------------------------------------


@dataclass
class Shop:
    """The thin clients and the enrolled cardholders of one run (Rules 1, 2)."""

    wallet: Any
    pos: Any
    root: Any
    pools: dict[str, list[Any]]
    cycle: list[str]
    turns: Counter[str] = field(default_factory=Counter)

    async def buy(self, kind: str, i: int) -> tuple[str, str, bool, str | None]:
        """One purchase of ``kind``: (kind, outcome, as expected, error key)."""
        from actors.demo_cases import APPROVED, DECLINED, SALE_APPROVED
        from actors.environment import LOAD_DEBIT_PIN, MERCHANTS
        from actors.merchant.errors import MerchantError
        from actors.wallet.errors import WalletError

        pool = self.pools[kind]
        shopper = pool[self.turns[kind] % len(pool)]
        self.turns[kind] += 1
        merchant_id = MERCHANTS[i % len(MERCHANTS)][0]
        amount = 100 + i % 900
        expected = {"credit": APPROVED, "debit": SALE_APPROVED, "decline": DECLINED}[kind]
        try:
            if kind == "debit":
                result = await shopper.debit(self.pos, merchant_id, amount, self.root,
                                             LOAD_DEBIT_PIN)  # fmt: skip
            else:
                result = await shopper.buy(self.pos, merchant_id, amount)
        except (WalletError, MerchantError) as exc:
            key = error_key(str(exc))
            return kind, f"error: {key}", False, key
        outcome = result.describe()
        return kind, outcome, outcome == expected, None if outcome == expected else outcome

    async def purchase(self, i: int) -> tuple[str, str, bool, str | None]:
        """Purchase number ``i`` of the run: its kind comes from the mix's cycle."""
        return await self.buy(self.cycle[i % len(self.cycle)], i)


def shoppers(wallet: Any, mix: dict[str, float], total: int, prefix: str = "bench-"
             ) -> dict[str, list[Any]]:  # fmt: skip
    """The run's cardholders per kind, named ``<prefix><kind><n>`` (reused across runs)."""
    from actors.demo_cases import Shopper
    from actors.environment import LOAD_DEBIT_REFERENCE, LOAD_DECLINE_PAN, LOAD_PANS

    bank, branch, number = LOAD_DEBIT_REFERENCE.split("-")
    pools: dict[str, list[Any]] = {}
    for kind, n in split_cardholders(mix, total).items():
        if kind == "credit":
            pools[kind] = [Shopper(wallet, f"{prefix}credit{i}", LOAD_PANS[i % len(LOAD_PANS)])
                           for i in range(n)]  # fmt: skip
        elif kind == "decline":
            pools[kind] = [Shopper(wallet, f"{prefix}decline{i}", LOAD_DECLINE_PAN)
                           for i in range(n)]  # fmt: skip
        else:
            pools[kind] = [Shopper(wallet, f"{prefix}debit{i}", number, pin_account=True,
                                   bank_code=bank, branch=branch) for i in range(n)]  # fmt: skip
    return pools


async def enroll(pools: dict[str, list[Any]], concurrency: int = 8
                 ) -> tuple[dict[str, list[Any]], Counter[str], float]:  # fmt: skip
    """Enroll every cardholder that has no card yet (untimed by the run); returns the pools
    of those enrolled, the failures by error, and the seconds it took."""
    from actors.merchant.errors import MerchantError
    from actors.wallet.errors import WalletError

    gate = asyncio.Semaphore(concurrency)
    failures: Counter[str] = Counter()
    began = time.perf_counter()

    async def one(shopper: Any) -> bool:
        async with gate:
            try:
                await shopper.card()
                return True
            except (WalletError, MerchantError) as exc:
                failures[error_key(str(exc))] += 1
                return False

    kept: dict[str, list[Any]] = {}
    for kind, pool in pools.items():
        done = await asyncio.gather(*(one(s) for s in pool))
        kept[kind] = [s for s, ok in zip(pool, done, strict=True) if ok]
    return kept, failures, time.perf_counter() - began


def client_root(settings: Settings) -> Any:
    """The root certificate the environment gave the thin clients (the PIN seal needs it)."""
    from protocol.certs import load_certificate

    path = settings.data_dir / "wallet" / "root.der"
    try:
        return load_certificate(path.read_bytes())
    except OSError:
        raise BenchError(f"no thin-client root at {path}: is the environment set up?") from None


# -- probe: operations and messages of one purchase ----------------------------------------------


@dataclass
class Probe:
    """What one purchase costs, counted on untimed probe purchases (Rule 5)."""

    purchases: int
    ops: dict[str, float]  # every audited keystore op per purchase, by op name
    private: dict[str, float]  # private-key ops per purchase: sign / exchange
    ops_source: str
    messages: dict[str, float]  # SET envelopes per purchase, by message type
    sizes: list[int]  # every recorded envelope body size
    messages_source: str

    @property
    def private_total(self) -> float:
        return sum(self.private.values())

    @property
    def messages_total(self) -> float:
        return sum(self.messages.values())

    @property
    def keystore_calls(self) -> float:
        """Keystore round trips over the bus per purchase: every audited op but those a
        client reads once and keeps (the transport key, a key's public half). A probe
        purchase runs alone, so none of them was coalesced into a batch."""
        return sum(n for op, n in self.ops.items() if op not in ONCE_OPS)


def audit_log(settings: Settings) -> Path:
    """The keystore's log (its audit trail) as the supervisor writes it."""
    from actors.supervisor import run_dir

    return run_dir(settings) / "keystore.main.log"


def count_audit(text: str) -> Counter[str]:
    """Successful ``keystore_op`` audit events in JSON log lines, by op."""
    ops: Counter[str] = Counter()
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "keystore_op" and \
                event.get("outcome") == "ok":  # fmt: skip
            ops[str(event.get("op"))] += 1
    return ops


def message_name(amqp_type: str | None) -> str:
    """The SET message a traced envelope's AMQP ``type`` names (its number), e.g. ``PReq``."""
    from protocol.messages import MessageType

    try:
        return MessageType(int(amqp_type or "")).name
    except ValueError:
        return str(amqp_type)


async def probe(shop: Shop, bus: Any, audit: Path, mix: dict[str, float], per_kind: int
                ) -> Probe:  # fmt: skip
    """Run ``per_kind`` purchases of every kind in the mix one at a time, with a trace
    recorder bound and the audit log's end noted; weigh the counts by the mix."""
    from broker.topology import TRACE_EXCHANGE

    channel = await bus.channel()
    # the operators' own queue namespace (deploy/rabbitmq/definitions.toml [roles.operator])
    recorder = await channel.declare_queue(f"operator.bench-probe.{secrets.token_hex(6)}",
                                           exclusive=True, auto_delete=True)  # fmt: skip
    await recorder.bind(TRACE_EXCHANGE)
    recorded: list[tuple[str, int]] = []

    async def on(message: Any) -> None:
        recorded.append((message_name(message.type), len(message.body)))

    tag = await recorder.consume(on, no_ack=True)
    await asyncio.sleep(1.2)  # past every process's trace probe interval (broker/trace.py)
    ops: dict[str, float] = Counter()
    messages: dict[str, float] = Counter()
    sizes: list[int] = []
    try:
        for kind, weight in mix.items():
            start_at = audit.stat().st_size if audit.exists() else 0
            first = len(recorded)
            for i in range(per_kind):
                _, outcome, ok, err = await shop.buy(kind, 10_000 + i)
                if not ok:
                    raise BenchError(f"probe purchase ({kind}) failed: {err or outcome}")
            await _settle(lambda: (len(recorded), audit.stat().st_size if audit.exists() else 0))
            with audit.open("rb") as f:
                f.seek(start_at)
                seen = count_audit(f.read().decode("utf-8", "replace"))
            for op, n in seen.items():
                ops[op] += weight * n / per_kind
            for mtype, size in recorded[first:]:
                messages[mtype] += weight / per_kind
                sizes.append(size)
    finally:
        await recorder.cancel(tag)
        await recorder.unbind(TRACE_EXCHANGE)
        await recorder.delete(if_unused=False)
        await channel.close()
    private: dict[str, float] = Counter()
    for op, n in ops.items():
        if op in PRIVATE_OPS:
            private[PRIVATE_OPS[op]] += n
    ops_source = f"keystore audit log, {per_kind} probe purchase(s) per kind"
    if not private:
        private, ops_source = dict(STATED_OPS), "stated list (audit log unreadable)"
        ops = Counter(STATED_CALLS)
    messages_source = f"trace tap, {per_kind} probe purchase(s) per kind"
    if not messages:
        messages, sizes = {"SET": float(STATED_MESSAGES)}, [STATED_SIZE]
        messages_source = "stated list (nothing traced)"
    return Probe(per_kind * len(mix), dict(ops), dict(private), ops_source, dict(messages),
                 sizes, messages_source)  # fmt: skip


async def _settle(state: Callable[[], object], quiet: float = 0.5, limit: float = 5.0) -> None:
    """Wait until ``state()`` stops changing for ``quiet`` s (trace copies and audit lines
    trail the purchase that caused them), at most ``limit`` s."""
    last, since, deadline = state(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = state()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


# -- bounds -------------------------------------------------------------------------------------


def _hsm_child(settings: Settings, prefix: str, seconds: float, out: Any) -> None:
    """One process straight on the environment's token: sign and key-transport rates with a
    merchant's keys (read-only: nothing is created)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding

    from actors.environment import MERCHANTS, POS_INSTANCE
    from keystore.hsm import Hsm, TokenConfig
    from keystore.messages import KeyKind, OaepHash
    from keystore.token import token_pin
    from protocol.keys import get_suite

    os.environ["SOFTHSM2_CONF"] = str(settings.softhsm_conf.resolve())
    base = f"{prefix}merchant.{POS_INSTANCE}/{MERCHANTS[0][0]}"
    hsm = Hsm(TokenConfig(settings.keystore_module, settings.keystore_token_label,
                          token_pin(settings)))  # fmt: skip
    hsm.open()
    try:
        digest = hashlib.sha256(b"setpay bench auth").digest()
        info = hsm.key_info(f"{base}-kx")
        exchange: Callable[[], object]
        if info.kind is KeyKind.P256:
            peer = (
                ec.generate_private_key(ec.SECP256R1())
                .public_key()
                .public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                )
            )
            exchange = lambda: hsm.derive(f"{base}-kx", peer, b"bench", 32)  # noqa: E731
        else:
            oaep = OaepHash(get_suite(settings.suite).oaep_hash)
            algo = hashes.SHA1() if oaep is OaepHash.SHA1 else hashes.SHA256()  # noqa: S303
            pub: Any = serialization.load_der_public_key(info.public_key)
            ct = pub.encrypt(b"k" * 32, padding.OAEP(padding.MGF1(algo), algo, None))
            exchange = lambda: hsm.decrypt(f"{base}-kx", ct, oaep)  # noqa: E731
        rates = []
        for fn in (lambda: hsm.sign(f"{base}-sig", digest), exchange):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                fn()
                n += 1
            rates.append(n / (time.perf_counter() - start))
        out.put(("ok", rates[0], rates[1]))
    except Exception as exc:  # reported to the parent, which raises BenchError
        out.put(("error", f"{type(exc).__name__}: {exc}", 0.0))
    finally:
        hsm.close()


def hsm_rates(settings: Settings, workers: int, seconds: float) -> tuple[float, float]:
    """(signs/s, key transports/s) of ``workers`` processes on the environment's token at
    once, in spawned children so PKCS#11 is never initialised in this process."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    args = (settings, settings.broker_user_prefix, seconds, out)
    procs = [ctx.Process(target=_hsm_child, args=args) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        got = [out.get(timeout=2 * seconds + 120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    bad = [g[1] for g in got if g[0] != "ok"]
    if bad:
        raise BenchError(f"direct HSM timing failed: {bad[0]}")
    return sum(g[1] for g in got), sum(g[2] for g in got)


async def raw_broker_rate(url: str, sizes: list[int], n: int, window: int = 256) -> float:
    """Messages/s of raw aio-pika for bodies of one purchase's ``sizes`` (as `setpay bench
    broker` measures it: persistent, confirmed, ``window`` in flight, manual ack)."""
    from bench.broker import throughput_raw

    bodies = [secrets.token_bytes(max(1, size)) for size in sizes]
    return await throughput_raw(url, n, window, bodies)


async def broker_rate(settings: Settings, sizes: list[int], n: int) -> tuple[float, float]:
    """(``raw_broker_rate``, raw aio-pika RPC round trips/s at 64 in flight, as `setpay bench
    broker` measures them) in a throw-away vhost, deleted afterwards."""
    from broker import admin

    vhost = f"setpay-bench-auth-{secrets.token_hex(4)}"
    await asyncio.to_thread(admin.create_vhost, vhost)
    try:
        await asyncio.to_thread(admin.set_permissions, vhost, settings.broker_admin_user,
                                ".*", ".*", ".*")  # fmt: skip
        from urllib.parse import urlsplit

        parts = urlsplit(settings.amqp_url)
        url = (
            f"amqp://{quote(settings.broker_admin_user, safe='')}:"
            f"{quote(settings.broker_admin_password, safe='')}@"
            f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}/{quote(vhost, safe='')}"
        )
        from bench.broker import rpc_raw

        messages = await raw_broker_rate(url, sizes, n)
        calls, _ = await rpc_raw(url, n, 64)
        return messages, calls
    finally:
        await asyncio.to_thread(admin.delete_vhost, vhost)


@dataclass
class Bounds:
    """Purchases/s the raw costs allow, measured in this run (Rule 5)."""

    workers: int
    sign_rate: float
    exchange_rate: float
    crypto: float
    message_rate: float
    rpc_rate: float
    broker_set_only: float  # the SET envelopes alone (the bound before the keystore's traffic)
    broker: float  # the SET envelopes and the keystore round trips

    @property
    def both(self) -> float:
        return min(self.crypto, self.broker)


async def measure_bounds(settings: Settings, found: Probe, workers: int, seconds: float,
                         messages: int) -> Bounds:  # fmt: skip
    """The crypto and the broker bound for one purchase as ``found`` counted it."""
    sign, exchange = await asyncio.to_thread(hsm_rates, settings, workers, seconds)
    per = found.private.get("sign", 0) / sign + found.private.get("exchange", 0) / exchange
    rate, rpc = await broker_rate(settings, found.sizes, messages)
    broker_seconds = found.messages_total / rate + found.keystore_calls / rpc
    return Bounds(workers, sign, exchange, 1 / per if per else math.inf, rate, rpc,
                  rate / found.messages_total, 1 / broker_seconds)  # fmt: skip


# -- output -------------------------------------------------------------------------------------


def _ratio(value: float, bound: float) -> float | None:
    return value / bound if bound and math.isfinite(bound) else None


def report(results: Results, found: Probe | None, bounds: Bounds | None, context: dict[str, Any]
           ) -> dict[str, Any]:  # fmt: skip
    """The machine-readable result (``--json``); the table is printed from it."""
    out: dict[str, Any] = dict(context)
    out.update({
        "mode": results.mode,
        "purchases": {"measured": results.completed, "succeeded": results.succeeded,
                      "failed": results.failed, "warmup": results.warmup_done,
                      "by_kind": dict(results.by_kind)},
        "seconds": round(results.seconds, 3),
        "throughput": results.throughput,
        "latency_ms": {"corrected": percentiles(results.corrected),
                       "uncorrected": percentiles(results.uncorrected)},
        "outcomes": dict(results.outcomes),
        "errors": dict(results.errors),
        "timeline": timeline(results),
    })  # fmt: skip
    if found is not None:
        out["per_purchase"] = {
            "private_key_ops": found.private_total, "private_by_rate": found.private,
            "keystore_ops": found.ops, "ops_source": found.ops_source,
            "set_messages": found.messages_total, "messages_by_type": found.messages,
            "mean_message_bytes": sum(found.sizes) / len(found.sizes),
            "keystore_calls": found.keystore_calls,
            "messages_source": found.messages_source,
        }  # fmt: skip
    if bounds is not None:
        out["bounds"] = {
            "keystore_workers": bounds.workers,
            "hsm_sign_per_s": bounds.sign_rate, "hsm_exchange_per_s": bounds.exchange_rate,
            "crypto_purchases_per_s": bounds.crypto,
            "broker_messages_per_s": bounds.message_rate,
            "broker_rpc_per_s": bounds.rpc_rate,
            "broker_set_only_purchases_per_s": bounds.broker_set_only,
            "broker_purchases_per_s": bounds.broker,
            "min_purchases_per_s": bounds.both,
        }  # fmt: skip
        out["ratios"] = {
            "crypto": _ratio(results.throughput, bounds.crypto),
            "broker": _ratio(results.throughput, bounds.broker),
            "min": _ratio(results.throughput, bounds.both),
        }
    return out


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def print_table(r: dict[str, Any]) -> None:
    """The readable summary of ``report``'s dict."""
    load = (f"closed loop, {r['concurrency']} in flight" if r["mode"] == "closed"
            else f"open loop, {r['rate']:g} purchases/s offered")  # fmt: skip
    p = r["purchases"]
    print(f"setpay bench auth: suite {r['suite']}, {load}, mix {r['mix']}")
    print(
        f"cardholders  {r['enrolment']['cardholders']} enrolled "
        f"({r['enrolment']['failed']} failed, {r['enrolment']['seconds']:.1f} s, untimed)"
    )
    print(f"purchases    {p['measured']} measured (+{p['warmup']} warm-up) in "
          f"{r['seconds']:.1f} s: {r['throughput']:.1f}/s;  succeeded {p['succeeded']}, "
          f"failed {p['failed']}")  # fmt: skip
    print("by kind      " + ", ".join(f"{k} {n}" for k, n in sorted(p["by_kind"].items())))
    heads = ["p50", "p90", "p99", "p99.9", "max"]
    print(f"\n{'latency (ms)':<26}" + "".join(f"{h:>10}" for h in heads))
    rows = [("from intended start", "corrected"), ("from actual start", "uncorrected")]
    if r["mode"] == "closed":
        rows = [("per purchase", "corrected")]
    for name, key in rows:
        lat = r["latency_ms"][key]
        print(f"  {name:<24}" + "".join(f"{lat[h if h == 'max' else 'p' + h[1:]]:>10.1f}"
                                        for h in heads))  # fmt: skip
    print()
    for outcome, n in sorted(r["outcomes"].items(), key=lambda kv: -kv[1]):
        print(f"outcome      {outcome:<48} {n:>7}")
    for code, n in sorted(r["errors"].items(), key=lambda kv: -kv[1]):
        print(f"FAILED       {code:<48} {n:>7}")
    if "bounds" in r:
        b, per = r["bounds"], r["per_purchase"]
        priv = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per["private_by_rate"].items()))
        print(f"\nbounds, measured in this run ({b['keystore_workers']} keystore workers)")
        print(f"  crypto   {per['private_key_ops']:.1f} private-key ops/purchase ({priv}; "
              f"{per['ops_source']})")  # fmt: skip
        print(f"           direct on the token: {b['hsm_sign_per_s']:,.0f} signs/s, "
              f"{b['hsm_exchange_per_s']:,.0f} key transports/s "
              f"-> {b['crypto_purchases_per_s']:,.1f} purchases/s")  # fmt: skip
        print(
            f"  broker   {per['set_messages']:.1f} SET envelopes/purchase, mean "
            f"{per['mean_message_bytes']:,.0f} B ({per['messages_source']})"
        )
        print("           " + ", ".join(f"{t} {n:.1f}" for t, n in per["messages_by_type"].items()))
        print(f"           and {per['keystore_calls']:.1f} keystore round trips/purchase "
              f"(one purchase alone: none coalesced)")  # fmt: skip
        print(f"           raw aio-pika publish+consume with confirms: "
              f"{b['broker_messages_per_s']:,.0f} msg/s (SET envelopes alone -> "
              f"{b['broker_set_only_purchases_per_s']:,.1f} purchases/s); raw RPC "
              f"{b['broker_rpc_per_s']:,.0f} round trips/s; both -> "
              f"{b['broker_purchases_per_s']:,.1f} purchases/s")  # fmt: skip
        q = r["ratios"]
        print(f"  achieved {r['throughput']:.1f} purchases/s = {_pct(q['crypto'])} of the "
              f"crypto bound, {_pct(q['broker'])} of the broker bound, {_pct(q['min'])} of "
              f"min(both) = {b['min_purchases_per_s']:,.1f}/s")  # fmt: skip


def write_hdr_log(path: str, runs: list[tuple[str, Results]], interval: float = 1.0) -> None:
    """An HdrHistogram interval log of the corrected latencies (µs; max column in ms), one
    histogram per ``interval`` s of completions, runs one after the other, each tagged."""
    from hdrh.log import HistogramLogWriter

    starts = [r.window_start for _, r in runs if r.ends]
    base = min(starts) if starts else time.perf_counter()
    wall = time.time() - (time.perf_counter() - base)
    with open(path, "w") as f:
        writer = HistogramLogWriter(f)
        writer.output_comment("[Logged with setpay bench auth; latencies in microseconds]")
        # StartTime and BaseTime from one string: a reader skips an interval whose start falls
        # before StartTime, and a StartTime rounded up past BaseTime dropped the first one.
        at = f"{wall:.6f}"
        f.write(f"#[StartTime: {at} (seconds since epoch)]\n")
        f.write(f"#[BaseTime: {at} (seconds since epoch)]\n")
        f.write(
            '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"\n'
        )
        for tag, results in runs:
            slots: dict[int, HdrHistogram] = {}
            for ended, value in results.ends:
                k = int((ended - base) // interval)
                slots.setdefault(k, new_histogram()).record_value(value)
            for k in sorted(slots):
                hist = slots[k]
                line = (
                    f"Tag={tag},{k * interval:.3f},{interval:.3f},"
                    f"{hist.get_max_value() / 1000:.3f},{hist.encode().decode()}\n"
                )
                f.write(line)


def timeline(results: Results, interval: float = 1.0) -> list[dict[str, float]]:
    """Throughput and latency over time: per ``interval`` s of the measurement window, the
    purchases completed per second and their corrected p50/p99 (ms)."""
    slots: dict[int, HdrHistogram] = {}
    for ended, value in results.ends:
        k = max(0, int((ended - results.window_start) // interval))
        slots.setdefault(k, new_histogram()).record_value(min(value, HIGHEST_US))
    return [
        {
            "t": round(k * interval, 3),
            "purchases_per_s": slots[k].get_total_count() / interval,
            "p50_ms": slots[k].get_value_at_percentile(50) / 1000,
            "p99_ms": slots[k].get_value_at_percentile(99) / 1000,
        }
        for k in sorted(slots)
    ]


def plot(path: str, r: dict[str, Any] | None, sweep: list[dict[str, Any]] | None) -> str:
    """A PNG if matplotlib is installed (the ``plot`` extra): throughput and latency over
    time of one run (its ``timeline``), or the sweep's throughput and p99 per offered rate;
    what happened, as one line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "--plot: matplotlib is not installed, no plot written (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if sweep:
        offered = [s["offered"] for s in sweep]
        ax.plot(offered, [s["throughput"] for s in sweep], "o-", label="achieved purchases/s")
        ax.set_xlabel("offered purchases/s")
        ax.set_ylabel("purchases/s")
        ax2 = ax.twinx()
        ax2.plot(offered, [s["p99_ms"] for s in sweep], "s--", color="tab:red", label="p99 ms")
        ax2.set_ylabel("p99 latency (ms)")
        ax.legend(loc="upper left")
    elif r is not None:
        points = r.get("timeline") or []
        t = [p["t"] for p in points]
        ax.plot(t, [p["purchases_per_s"] for p in points], "-", label="purchases/s")
        ax.set_xlabel("seconds into the measurement")
        ax.set_ylabel("purchases/s")
        ax2 = ax.twinx()
        ax2.plot(t, [p["p50_ms"] for p in points], "--", color="tab:green", label="p50 ms")
        ax2.plot(t, [p["p99_ms"] for p in points], ":", color="tab:red", label="p99 ms")
        ax2.set_ylabel("latency (ms, from the intended start)")
        ax.legend(loc="upper left")
        ax2.legend(loc="upper right")
    ax.set_title(f"setpay bench auth ({r['suite'] if r else ''})")
    fig.tight_layout()
    fig.savefig(path)
    return f"plot written to {path}"


# -- the command --------------------------------------------------------------------------------


def env_suite(settings: Settings) -> str:
    """The suite of the environment's keys (the gateway's signature certificate)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from actors.environment import GATEWAY_INSTANCE
    from actors.gateway.identity import GatewayIdentity, identity_path

    key = GatewayIdentity.load(identity_path(settings.data_dir, GATEWAY_INSTANCE)
                               ).sig_cert.public_key()  # fmt: skip
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "p256"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072:
        return "rsa3072"
    return settings.suite if settings.suite.startswith("rsa2048") else "rsa2048"


def keystore_workers(settings: Settings) -> int:
    """The running keystore's worker count, summed over its processes (their health reports:
    ``keystore.main.health``, ``keystore.main@1.health``...), else the setting."""
    from actors.supervisor import run_dir

    total = 0
    for health in run_dir(settings).glob("keystore.main*.health"):
        try:
            total += int(json.loads(health.read_text())["workers"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return total or settings.keystore_workers


def scale_steps(text: str) -> list[int]:
    """``--scale 1,2,3`` -> process counts per step."""
    try:
        steps = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError("--scale: give process counts, e.g. 1,2,3") from None
    if not steps or any(not 1 <= n <= 16 for n in steps):
        raise BenchError("--scale: process counts are 1..16, e.g. 1,2,3")
    return steps


def rescale(settings: Settings, roles: list[str], n: int | dict[str, int],
            timeout: float = 240.0) -> list[str]:
    """Have the running supervisor run ``n`` processes of each of ``roles`` (or the counts
    given); wait until exactly those run and are ready. Returns the processes' names."""
    from actors import supervisor

    counts = n if isinstance(n, dict) else {role: n for role in roles}
    try:
        supervisor.set_replicas(settings, counts)
        return supervisor.wait_scaled(settings, timeout)
    except supervisor.SupervisorError as exc:
        raise BenchError(f"--scale: {exc}") from None


def sweep_rates(text: str) -> list[float]:
    """``--sweep 2,4,8`` -> rates; ``auto`` -> doubling from 2/s (stopped at the knee)."""
    if text == "auto":
        return [2.0 * 2**i for i in range(10)]
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError("--sweep: give offered rates, e.g. 2,4,8,16, or auto") from None
    if not rates or min(rates) <= 0:
        raise BenchError("--sweep: rates must be positive")
    return sorted(rates)


async def _main(args: argparse.Namespace, settings: Settings, mix: dict[str, float],
                suite: str) -> tuple[int, dict[str, Any]]:  # fmt: skip
    from actors import demo_cases

    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    from broker.connection import connect

    wallet, pos = demo_cases.connect_clients(settings)  # HTTPS, as every thin client
    # The probe counts SET envelopes on the trace tap: a bus login for that alone.
    from broker.provision import operator_url

    bus = await connect(operator_url(settings.data_dir, settings.broker_vhost, settings.amqp_url,
                                     user_prefix=settings.broker_user_prefix),
                        name="setpay-bench-probe")  # fmt: skip
    try:
        root = client_root(settings) if "debit" in mix else None
        say(f"enrolling {args.cardholders} cardholders (untimed) …")
        pools, enrol_failed, enrol_s = await enroll(
            shoppers(wallet, mix, args.cardholders, args.cardholder_prefix),
            args.enrol_concurrency,
        )
        if any("too many requests" in str(e) for e in enrol_failed):
            say("the wallet limits new cardholders per client address (web_source_registrations):"
                " start the environment with SETPAY_WEB_SOURCE_REGISTRATIONS above --cardholders")
        empty = [k for k, pool in pools.items() if not pool]
        if empty:
            raise BenchError(f"no cardholder could enrol for {', '.join(empty)}: "
                             f"{dict(enrol_failed)}")  # fmt: skip
        shop = Shop(wallet, pos, root, pools, schedule(mix))
        enrolment = {"cardholders": sum(len(p) for p in pools.values()),
                     "failed": sum(enrol_failed.values()), "errors": dict(enrol_failed),
                     "seconds": round(enrol_s, 2)}  # fmt: skip
        found = bounds = None
        if not args.no_bounds:
            say("counting one purchase's keystore operations and SET messages (probe) …")
            found = await probe(shop, bus, audit_log(settings), mix, args.probe)
            workers = keystore_workers(settings)
            say(f"timing the bounds: HSM direct ({workers} processes), raw broker …")
            bounds = await measure_bounds(settings, found, workers, args.bound_seconds,
                                          args.broker_messages)  # fmt: skip
        context = {"suite": suite, "mix": ",".join(f"{k}={w:.2f}" for k, w in mix.items()),
                   "concurrency": args.concurrency, "rate": args.rate, "count": args.count,
                   "duration": args.duration, "warmup": args.warmup,
                   "enrolment": enrolment}  # fmt: skip
        tty_ok = not args.quiet

        if args.scale:
            from actors import supervisor

            roles = [r for r in args.scale_roles.split(",") if r]
            before = {r: supervisor.read_replicas(settings).get(r, 1) for r in roles}
            rows: list[dict[str, Any]] = []
            runs = []
            try:
                for n in scale_steps(args.scale):
                    say(f"scaling {', '.join(roles)} to {n} process(es) each …")
                    names = await asyncio.to_thread(rescale, settings, roles, n)
                    results = await drive(
                        shop.purchase, count=args.count, duration=args.duration,
                        concurrency=args.concurrency, rate=args.rate, warmup=args.warmup,
                        progress=Progress(f"{n} per role", enabled=tty_ok),
                    )  # fmt: skip
                    runs.append((f"processes-{n}", results))
                    lat = percentiles(results.corrected)
                    row = {"processes": n, "processes_running": len(names),
                           "throughput": results.throughput, "p50_ms": lat["p50"],
                           "p99_ms": lat["p99"], "failed": results.failed,
                           "measured": results.completed,
                           "errors": dict(results.errors)}  # fmt: skip
                    if bounds is not None:
                        row["of_min_bound"] = _ratio(results.throughput,
                                                     bounds.both)  # fmt: skip
                    rows.append(row)
            finally:
                await asyncio.to_thread(rescale, settings, roles, before)
            out = {**context, "mode": "scale", "scale_roles": roles, "scale": rows}
            if bounds is not None and found is not None:
                out.update({k: v for k, v in report(runs[-1][1], found, bounds, context).items()
                            if k in ("bounds", "per_purchase")})  # fmt: skip
            if args.hdr_log:
                write_hdr_log(args.hdr_log, runs)
            failed = sum(r["failed"] for r in rows)
        elif args.sweep:
            steps: list[dict[str, Any]] = []
            runs: list[tuple[str, Results]] = []
            for offered in sweep_rates(args.sweep):
                results = await drive(
                    shop.purchase, duration=args.duration or 10.0, rate=offered,
                    warmup=args.warmup, progress=Progress(f"sweep {offered:g}/s",
                                                          enabled=tty_ok),
                )  # fmt: skip
                runs.append((f"rate-{offered:g}", results))
                lat = percentiles(results.corrected)
                steps.append(
                    {
                        "offered": offered,
                        "throughput": results.throughput,
                        "p50_ms": lat["p50"],
                        "p99_ms": lat["p99"],
                        "failed": results.failed,
                        "measured": results.completed,
                    }
                )
                if args.sweep == "auto" and results.throughput < 0.9 * offered:
                    break  # past the knee: the system no longer keeps up
            out = {**context, "mode": "sweep", "sweep": steps,
                   "knee_purchases_per_s": max((s["offered"] for s in steps
                                                if s["throughput"] >= 0.9 * s["offered"]),
                                               default=None),
                   "enrolment": enrolment}  # fmt: skip
            if bounds is not None and found is not None:
                out.update({k: v for k, v in report(runs[-1][1], found, bounds, context).items()
                            if k in ("bounds", "per_purchase")})  # fmt: skip
            if args.hdr_log:
                write_hdr_log(args.hdr_log, runs)
            failed = sum(s["failed"] for s in steps)
        else:
            results = await drive(
                shop.purchase, count=args.count, duration=args.duration,
                concurrency=args.concurrency, rate=args.rate, warmup=args.warmup,
                progress=Progress("auth", enabled=tty_ok),
            )  # fmt: skip
            out = report(results, found, bounds, context)
            if args.hdr_log:
                write_hdr_log(args.hdr_log, [("auth", results)])
            failed = results.failed
    finally:
        await demo_cases.close_clients(wallet, pos)
        await bus.close()
    failed += enrolment["failed"]
    return (1 if failed else 0), out


def print_scale(r: dict[str, Any]) -> None:
    how = f"{r['concurrency']} in flight" if r["concurrency"] else f"{r['rate']:g}/s offered"
    print(f"setpay bench auth --scale: suite {r['suite']}, mix {r['mix']}, {how}, "
          f"processes of {', '.join(r['scale_roles'])}")  # fmt: skip
    print(f"\n{'processes':>10} {'purchases/s':>12} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'failed':>7} {'of bound':>9}")  # fmt: skip
    for s in r["scale"]:
        print(f"{s['processes']:>10} {s['throughput']:>12.1f} {s['p50_ms']:>9.1f} "
              f"{s['p99_ms']:>9.1f} {s['failed']:>7} {_pct(s.get('of_min_bound')):>9}")
    if "bounds" in r:
        b = r["bounds"]
        print(
            f"bounds (same run): crypto {b['crypto_purchases_per_s']:,.1f}/s, broker "
            f"{b['broker_purchases_per_s']:,.1f}/s"
        )


def print_sweep(r: dict[str, Any]) -> None:
    print(f"setpay bench auth --sweep: suite {r['suite']}, mix {r['mix']}, open loop")
    print(f"\n{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>9} {'p99 ms':>9} {'failed':>7}")
    for s in r["sweep"]:
        print(f"{s['offered']:>10g} {s['throughput']:>11.1f} {s['p50_ms']:>9.1f} "
              f"{s['p99_ms']:>9.1f} {s['failed']:>7}")  # fmt: skip
    knee = r["knee_purchases_per_s"]
    print(
        f"\nknee: {'none held' if knee is None else f'{knee:g}/s'} (highest offered rate "
        "achieved within 90 %)"
    )
    if "bounds" in r:
        b = r["bounds"]
        print(
            f"bounds (same run): crypto {b['crypto_purchases_per_s']:,.1f}/s, broker "
            f"{b['broker_purchases_per_s']:,.1f}/s"
        )


def _cmd(args: argparse.Namespace, settings: Settings) -> int:
    from actors import supervisor
    from actors.environment import SetupError, ensure
    from setpay import logs
    from setpay.cli import CommandError

    logs.configure(settings.log_format, "warning")
    try:
        mix = parse_mix(args.mix)
        if args.scale and (args.sweep or args.plot):
            raise BenchError("--scale runs one load per process count: not with --sweep/--plot")
        if args.scale:
            scale_steps(args.scale)  # a bad list is refused before anything starts
        if args.sweep:
            args.concurrency = 0
            if args.count:
                raise BenchError("--sweep runs each rate for --duration seconds, not --count")
        elif args.rate:
            args.concurrency = 0
        if not args.sweep and not args.count and not args.duration:
            args.count = 200
        if args.suite:
            settings = settings.replace(suite=args.suite)
            # The environment's commands and processes read the suite from the environment.
            os.environ["SETPAY_SUITE"] = args.suite
        # An environment this command starts lets its simulated cardholders, all on this
        # machine's address, register (the wallet limits registrations per address).
        os.environ.setdefault("SETPAY_WEB_SOURCE_REGISTRATIONS",
                              str(max(1000, 2 * args.cardholders)))
        try:
            env = ensure(settings, say=lambda text: print(text, file=sys.stderr, flush=True))
        except SetupError as exc:
            raise BenchError(str(exc)) from None
        try:
            suite = env_suite(settings)
            if args.suite and suite != args.suite:
                raise BenchError(
                    f"the running environment's suite is {suite}, not "
                    f"{args.suite}: `setpay down` it or run without --suite"
                )
            code, out = asyncio.run(_main(args, settings, mix, suite))
        finally:
            if args.down and env.started:
                supervisor.down(settings, grace=10.0)
    except BenchError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    elif args.scale:
        print_scale(out)
    elif args.sweep:
        print_sweep(out)
    else:
        print_table(out)
    if args.plot:
        print(plot(args.plot, None if args.sweep else out, out.get("sweep")), file=sys.stderr)
    return code


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `setpay bench auth`."""
    p = sub.add_parser("auth", help="purchases end to end (PInit … PRes): latency histograms, "
                       "throughput against the crypto and broker bounds")  # fmt: skip
    what = p.add_mutually_exclusive_group()
    what.add_argument("--count", type=int, default=0, help="measured purchases (default 200)")
    what.add_argument("--duration", type=float, default=0.0, help="measured seconds")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=8,
                      help="closed loop: purchases in flight (default 8)")  # fmt: skip
    load.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: purchases/s offered, latency from the intended start",
    )
    load.add_argument(
        "--sweep",
        metavar="RATES",
        help="open loop at rising rates (comma list, or auto) to find the knee",
    )
    p.add_argument(
        "--scale",
        metavar="COUNTS",
        help="one run per process count of --scale-roles, e.g. 1,2,3 (replicas)",
    )
    p.add_argument(
        "--scale-roles",
        default="merchant,gateway",
        help="roles --scale sets the process count of (default merchant,gateway)",
    )
    p.add_argument("--warmup", type=float, default=2.0, help="seconds not counted (default 2)")
    p.add_argument(
        "--mix",
        default="credit=1",
        help="card mix, e.g. credit=8,debit=1,decline=1 (default credit=1)",
    )
    p.add_argument(
        "--cardholders",
        type=int,
        default=200,
        help="simulated cardholders, enrolled up front (default 200)",
    )
    p.add_argument(
        "--cardholder-prefix",
        default="bench-",
        help="wallet user names of the cardholders (a new one enrols new ones)",
    )
    p.add_argument(
        "--enrol-concurrency", type=int, default=8, help="enrolments in flight (default 8)"
    )
    p.add_argument(
        "--suite",
        choices=("rsa2048", "rsa3072", "p256"),
        help="the environment's suite (for one this command starts)",
    )
    p.add_argument("--json", action="store_true", help="machine output on stdout")
    p.add_argument("--hdr-log", metavar="FILE", help="HdrHistogram interval log of latencies")
    p.add_argument("--plot", metavar="FILE.png", help="a plot (needs matplotlib)")
    p.add_argument("--no-bounds", action="store_true", help="skip the probe and the bounds")
    p.add_argument("--probe", type=int, default=2, help="probe purchases per kind (default 2)")
    p.add_argument(
        "--bound-seconds",
        type=float,
        default=1.5,
        help="seconds per direct HSM timing (default 1.5)",
    )
    p.add_argument(
        "--broker-messages",
        type=int,
        default=3000,
        help="messages of the raw broker timing (default 3000)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.add_argument(
        "--down",
        action="store_true",
        help="stop the environment afterwards if this command started it",
    )
    p.set_defaults(func=_cmd)
