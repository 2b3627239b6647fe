"""`setpay ledgers`: do the merchant's, the gateway's and the issuer host's books agree?

Rule 1 (what it reads): the stores of one environment's merchant POS (``pos1``), payment
gateway (``pg1``: its authorization ledger, its books after authorization and its ISO 8583
link journal) and issuer host (``host1``), found and opened as those actors open them
(``MerchantStore.open``, ``ledger_path``/``books_path``/``journal_path``, the issuer's
``<data_dir>/issuer/<instance>.sqlite``; with ``store_url`` the same names resolve to their
PostgreSQL schemas, setpay/store.py Rule 6). It only reads: opening runs the store layer's
migration check, which changes nothing on an up-to-date store; a store that does not exist is
never created, it is reported. Like actors/status.py it is an operator tool above the parties:
it lives outside every party package (tests/test_layers.py: a party imports no other party;
this module is none of them) and imports their store modules, never their services.
Rule 2 (the join): one row per authorization. The gateway's ledger names each AuthReq by its
RRPID, with the XID and the RRN it sent the issuer; the merchant keeps the same AuthReq RRPID
on its order (or, for a split shipment's next authorization, on its payment); the issuer
keeps every message of one authorization under its RRN (the authorization or sale, its
completions, refunds and reversals all carry the original's RRN).
Rule 3 (what must agree): an approved authorization at the gateway is approved at the issuer
and held by the merchant, with the same amount; what the gateway captured and credited is
what the issuer posted (live completions, or the sale's debit; live credits) and what the
merchant recorded. ``double`` is an effect applied twice: two authorizations/debits at the
issuer under one RRN, two live completions there, or two live captures in the gateway's
books for one authorization. ``merchant_only``: the merchant's (and gateway's) books hold an
approval or money the issuer has no effect for; ``issuer_only``: the issuer holds or moved
money for an authorization the merchant's books do not hold. Where a reversal or advice for an
RRN still waits in the gateway's journal or outbox, that authorization is pending, not a
disagreement: ``pending_reversal``/``pending_advice`` count the waiting messages.
Rule 4: ``problems`` names ids (XID, RRN, RRPID prefixes) and what differs; never a PAN: none
of these stores holds one.
Rule 5: exit 0 when everything agrees and nothing is pending, 1 when something disagrees
(double, *_only, amount_mismatch), 2 when only pending work remains; a readable table, or
one JSON document with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa

from actors.gateway.books import ITEMS, OUTBOX, Books, books_path
from actors.gateway.books import PAYMENTS as G_PAYMENTS
from actors.gateway.identity import journal_path, ledger_path
from actors.gateway.ledger import AUTHS, Ledger
from actors.iso8583.saf import SAF, Journal
from actors.issuer.accounts import TRANSACTIONS, Effect
from actors.issuer.accounts import Store as IssuerStore
from actors.merchant.payments import PAYMENTS as M_PAYMENTS
from actors.merchant.store import ORDERS, MerchantStore
from actors.supervisor import DEFAULT_INSTANCE
from protocol.messages import AuthCode, BatchItemKind
from setpay.config import Settings
from setpay.store import Store, StoreError, store_exists

AGREE, DISAGREE, PENDING = 0, 1, 2
KEYS: Final = (
    "purchases", "authorized", "declined", "captured", "refunded", "agree", "pending_reversal",
    "pending_advice", "double", "merchant_only", "issuer_only", "amount_mismatch",
)  # fmt: skip
DISAGREEING: Final = ("double", "merchant_only", "issuer_only", "amount_mismatch")
APPROVED = "00"
ORIGINAL_MTIS: Final = ("0100", "0200")
REVERSAL_MTIS: Final = ("0400", "0401", "0420", "0421")
ADVICE_MTIS: Final = ("0220", "0221")
T = TypeVar("T")


def _hex(b: bytes | None, n: int = 8) -> str:
    return "-" if b is None else bytes(b).hex()[: 2 * n]


@dataclass
class _Merchant:
    xid: bytes | None
    approved: bool
    amount: int | None  # what it recorded as authorized (the order's own authorization)
    captured: int
    credited: int


@dataclass
class _Issuer:
    originals: list[Any] = field(default_factory=list)  # authorization / financial rows
    completions: list[int] = field(default_factory=list)  # live completion amounts
    credits: list[int] = field(default_factory=list)  # live refund amounts

    @property
    def approved(self) -> bool:
        return any(o.response_code == APPROVED for o in self.originals)

    @property
    def held(self) -> bool:
        """Money held or moved right now (an approved original not reversed)."""
        return any(o.response_code == APPROVED and o.state != "reversed" for o in self.originals)

    @property
    def captured(self) -> int:
        posted = sum(
            int(o.amount) for o in self.originals
            if o.effect == str(Effect.POSTING) and o.state == "active"
        )  # fmt: skip
        return posted + sum(self.completions)


@dataclass
class _Books:
    """What one reconciliation read: each party's rows, keyed for the join (Rule 2)."""

    merchant: dict[bytes, _Merchant] = field(default_factory=dict)  # by AuthReq RRPID
    auths: list[Any] = field(default_factory=list)  # the gateway ledger's rows
    payments: dict[bytes, Any] = field(default_factory=dict)  # gateway books, by RRPID
    live_captures: dict[bytes, int] = field(default_factory=dict)  # by RRPID
    issuer: dict[str, _Issuer] = field(default_factory=lambda: defaultdict(_Issuer))
    waiting: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # rrn→kinds
    pending_reversal: int = 0
    pending_advice: int = 0
    missing: list[str] = field(default_factory=list)


@contextmanager
def _opened(
    stack: ExitStack, books: _Books, what: str, path: Path, opener: Callable[[], T]
) -> Iterator[T | None]:
    """``opener()`` if the store at ``path`` exists (never created here, Rule 1), else None."""
    if not store_exists(path):
        books.missing.append(f"{what}: no store at {path}")
        yield None
        return
    try:
        opened = opener()
    except StoreError as exc:
        books.missing.append(f"{what}: {exc}")
        yield None
        return
    stack.callback(opened.close)  # type: ignore[attr-defined]
    yield opened


def _read(settings: Settings, merchant: str, gateway: str, issuer: str) -> _Books:
    data_dir = Path(settings.data_dir)
    out = _Books()
    with ExitStack() as stack:
        m_path = data_dir / "merchant" / f"{merchant}.sqlite"
        with _opened(stack, out, f"merchant {merchant}", m_path,
                     lambda: MerchantStore.open(data_dir, merchant)) as m:  # fmt: skip
            if m is not None:
                _read_merchant(m.db, out)
        with _opened(stack, out, f"gateway {gateway} ledger", ledger_path(data_dir, gateway),
                     lambda: Ledger(ledger_path(data_dir, gateway))) as g:  # fmt: skip
            if g is not None:
                out.auths = g.db.all(sa.select(AUTHS))
        with _opened(stack, out, f"gateway {gateway} books", books_path(data_dir, gateway),
                     lambda: Books(books_path(data_dir, gateway))) as b:  # fmt: skip
            if b is not None:
                _read_books(b.db, out)
        with _opened(stack, out, f"gateway {gateway} link journal",
                     journal_path(data_dir, gateway),
                     lambda: Journal(journal_path(data_dir, gateway))) as j:  # fmt: skip
            if j is not None:
                _read_journal(j.db, out)
        i_path = data_dir / "issuer" / f"{issuer}.sqlite"
        with _opened(stack, out, f"issuer {issuer}", i_path,
                     lambda: IssuerStore(i_path)) as i:  # fmt: skip
            if i is not None:
                _read_issuer(i.db, out)
    return out


def _read_merchant(db: Store, out: _Books) -> None:
    o, p = ORDERS.c, M_PAYMENTS.c
    paid = {bytes(r.lid_m): r for r in db.all(sa.select(M_PAYMENTS))}
    for r in db.all(sa.select(ORDERS).where(o.auth_rrpid.is_not(None))):
        pay = paid.get(bytes(r.lid_m))
        approved = r.auth_code == int(AuthCode.APPROVED) and (r.auth_amount or 0) > 0
        captured = int(pay.captured) if pay is not None else int(r.cap_amount or 0)
        credited = int(pay.credited) if pay is not None else 0
        out.merchant[bytes(r.auth_rrpid)] = _Merchant(
            None if r.xid is None else bytes(r.xid), approved, r.auth_amount, captured, credited
        )
    for r in db.all(sa.select(M_PAYMENTS).where(p.auth_rrpid.is_not(None))):  # next shipments
        out.merchant[bytes(r.auth_rrpid)] = _Merchant(
            None, True, None, int(r.captured), int(r.credited)
        )


def _read_books(b: Store, out: _Books) -> None:
    out.payments = {bytes(r.auth_rrpid): r for r in b.all(sa.select(G_PAYMENTS))}
    i = ITEMS.c
    live = sa.select(i.auth_rrpid, sa.func.count()).where(
        i.live, i.kind == int(BatchItemKind.CAPTURE)
    ).group_by(i.auth_rrpid)  # fmt: skip
    out.live_captures = {bytes(r[0]): int(r[1]) for r in b.all(live)}
    for r in b.all(sa.select(OUTBOX.c.rrn, OUTBOX.c.mti).where(sa.not_(OUTBOX.c.queued))):
        _waiting(out, str(r.rrn), str(r.mti))


def _read_journal(db: Store, out: _Books) -> None:
    q = SAF.c
    for r in db.all(sa.select(q.rrn, q.mti).where(q.state == "pending")):
        _waiting(out, str(r.rrn), str(r.mti))


def _waiting(out: _Books, rrn: str, mti: str) -> None:
    if mti in REVERSAL_MTIS:
        out.pending_reversal += 1
        out.waiting[rrn].add("reversal")
    elif mti in ADVICE_MTIS:
        out.pending_advice += 1
        out.waiting[rrn].add("advice")


def _read_issuer(db: Store, out: _Books) -> None:
    t = TRANSACTIONS.c
    for r in db.all(sa.select(t.rrn, t.mti, t.amount, t.effect, t.state, t.response_code)):
        entry = out.issuer[str(r.rrn)]
        if r.mti in ORIGINAL_MTIS and r.effect != str(Effect.TOMBSTONE):
            entry.originals.append(r)
        elif r.effect == str(Effect.COMPLETION) and r.state == "active":
            entry.completions.append(int(r.amount))
        elif r.effect == str(Effect.CREDIT) and r.state == "active":
            entry.credits.append(int(r.amount))


def _compare(books: _Books) -> dict[str, Any]:
    counts = dict.fromkeys(KEYS, 0)
    counts["pending_reversal"] = books.pending_reversal
    counts["pending_advice"] = books.pending_advice
    problems: list[str] = [*books.missing]
    seen_rrpids: set[bytes] = set()
    seen_rrns: set[str] = set()
    for a in books.auths:
        rrpid, rrn = bytes(a.rrpid), None if a.rrn is None else str(a.rrn)
        seen_rrpids.add(rrpid)
        if rrn is not None:
            seen_rrns.add(rrn)
        if a.state != "done":
            continue  # in flight at the gateway: its link settles it (a reversal if unanswered)
        counts["purchases"] += 1
        name = f"xid {_hex(a.xid)} rrn {rrn or '-'}"
        found = _one(a, rrn, books, name)
        for key in found.counted:
            counts[key] += 1
        if found.kinds:
            for kind in found.kinds:
                counts[kind] += 1
            problems += found.problems
        elif not (rrn is not None and books.waiting.get(rrn)):
            counts["agree"] += 1
    for rrpid, m in books.merchant.items():
        if rrpid in seen_rrpids or not m.approved:
            continue
        counts["purchases"] += 1
        counts["authorized"] += 1
        counts["merchant_only"] += 1
        problems.append(f"xid {_hex(m.xid)} rrpid {_hex(rrpid)}: authorized at the merchant, "
                        "unknown to the gateway")  # fmt: skip
    for rrn, entry in books.issuer.items():
        if rrn in seen_rrns or not entry.originals:
            continue
        counts["purchases"] += 1
        counts["issuer_only"] += 1
        problems.append(f"rrn {rrn}: {len(entry.originals)} issuer record(s) "
                        f"({'approved' if entry.approved else 'declined'}), "
                        "unknown to the gateway and the merchant")  # fmt: skip
    return {**counts, "problems": problems}


@dataclass
class _Found:
    counted: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def differs(self, kind: str, text: str) -> None:
        if kind not in self.kinds:
            self.kinds.append(kind)
        self.problems.append(text)


def _one(a: Any, rrn: str | None, books: _Books, name: str) -> _Found:
    """One authorization across the three books (Rule 3)."""
    found = _Found()
    rrpid = bytes(a.rrpid)
    g_ok = a.auth_code == int(AuthCode.APPROVED) and (a.auth_amount or 0) > 0
    pay = books.payments.get(rrpid)
    g_auth = int(a.auth_amount or 0)
    g_captured = int(pay.captured) if pay is not None else (g_auth if g_ok and a.capture_now
                                                            else 0)  # fmt: skip
    g_credited = int(pay.credited) if pay is not None else 0
    found.counted.append("authorized" if g_ok else "declined")
    if g_captured:
        found.counted.append("captured")
    if g_credited:
        found.counted.append("refunded")
    issuer = books.issuer.get(rrn) if rrn is not None else None
    waiting = books.waiting.get(rrn, set()) if rrn is not None else set()
    m = books.merchant.get(rrpid)
    # double effects (Rule 3)
    if issuer is not None and len(issuer.originals) > 1:
        found.differs("double", f"{name}: {len(issuer.originals)} authorizations/debits "
                                "at the issuer for one RRN")  # fmt: skip
    if issuer is not None and len(issuer.completions) > 1:
        found.differs("double", f"{name}: {len(issuer.completions)} live completions at the issuer")
    if books.live_captures.get(rrpid, 0) > 1:
        found.differs("double", f"{name}: {books.live_captures[rrpid]} live captures "
                                "in the gateway's books")  # fmt: skip
    # the merchant's side
    if m is None:
        if g_ok and (issuer is None or issuer.held):
            found.differs("issuer_only", f"{name}: approved at the gateway"
                          f"{' and held at the issuer' if issuer else ''}, "
                          "unknown to the merchant")  # fmt: skip
    elif m.approved != g_ok:
        if g_ok:
            found.differs("issuer_only", f"{name}: approved at the gateway, declined in the "
                                         "merchant's books")  # fmt: skip
        else:
            found.differs("merchant_only", f"{name}: approved in the merchant's books, declined "
                                           "at the gateway")  # fmt: skip
    elif g_ok:
        if m.amount is not None and int(m.amount) != g_auth:
            found.differs("amount_mismatch", f"{name}: authorized {m.amount} at the merchant, "
                                             f"{g_auth} at the gateway")  # fmt: skip
        if m.captured != g_captured:
            found.differs("amount_mismatch", f"{name}: captured {m.captured} at the merchant, "
                                             f"{g_captured} at the gateway")  # fmt: skip
        if m.credited != g_credited:
            found.differs("amount_mismatch", f"{name}: refunded {m.credited} at the merchant, "
                                             f"{g_credited} at the gateway")  # fmt: skip
    # the issuer's side
    if g_ok and (issuer is None or not issuer.approved):
        found.differs("merchant_only", f"{name}: approved at the gateway, "
                      f"{'no record' if issuer is None else 'declined'} at the issuer")  # fmt: skip
    elif not g_ok and issuer is not None and issuer.held and "reversal" not in waiting:
        found.differs("issuer_only", f"{name}: declined at the gateway, held at the issuer")
    elif g_ok and issuer is not None and not waiting:
        original = next(o for o in issuer.originals if o.response_code == APPROVED)
        amounts = {g_auth} | ({int(pay.authorized)} if pay is not None else set())
        if int(original.amount) not in amounts and original.state != "reversed":
            found.differs("amount_mismatch", f"{name}: authorized {g_auth} at the gateway, "
                                             f"{original.amount} at the issuer")  # fmt: skip
        if issuer.captured != g_captured:
            found.differs("amount_mismatch", f"{name}: captured {g_captured} at the gateway, "
                                             f"{issuer.captured} posted at the issuer")  # fmt: skip
        if sum(issuer.credits) != g_credited:
            found.differs("amount_mismatch", f"{name}: refunded {g_credited} at the gateway, "
                          f"{sum(issuer.credits)} credited at the issuer")  # fmt: skip
    return found


def reconcile(
    settings: Settings,
    *,
    merchant: str = DEFAULT_INSTANCE["merchant"],
    gateway: str = DEFAULT_INSTANCE["gateway"],
    issuer: str = DEFAULT_INSTANCE["issuer"],
) -> dict[str, Any]:
    """The counts of Rule 3 (keys ``KEYS``) and ``problems``, for the environment under
    ``settings.data_dir`` (its default instances unless named)."""
    return _compare(_read(settings, merchant, gateway, issuer))


def exit_code(report: dict[str, Any]) -> int:
    """Rule 5: 1 on any disagreement, else 2 while work is pending, else 0."""
    if any(report[k] for k in DISAGREEING):
        return DISAGREE
    if report["pending_reversal"] or report["pending_advice"]:
        return PENDING
    return AGREE


def lines(report: dict[str, Any]) -> list[str]:
    """The readable form: one count a line, then the problems."""
    width = max(map(len, KEYS))
    out = [f"{k.replace('_', ' '):<{width}}  {report[k]:>6}" for k in KEYS]
    verdict = {AGREE: "the books agree", DISAGREE: "the books disagree",
               PENDING: "the books agree but for pending work"}[exit_code(report)]  # fmt: skip
    out += ["", verdict]
    out += [f"  - {p}" for p in report["problems"]]
    return out


def _cmd_ledgers(args: argparse.Namespace, settings: Settings) -> int:
    report = reconcile(settings, merchant=args.merchant, gateway=args.gateway, issuer=args.issuer)
    code = exit_code(report)
    if args.json:
        print(json.dumps({**report, "code": code}, indent=2))
    else:
        print("\n".join(lines(report)))
    return code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``setpay ledgers [--json]``."""
    p = sub.add_parser(
        "ledgers",
        help="compare the merchant's, gateway's and issuer host's books, purchase by purchase",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--merchant", default=DEFAULT_INSTANCE["merchant"], help="POS instance")
    p.add_argument("--gateway", default=DEFAULT_INSTANCE["gateway"], help="gateway instance")
    p.add_argument("--issuer", default=DEFAULT_INSTANCE["issuer"], help="issuer host instance")
    p.set_defaults(func=_cmd_ledgers)
