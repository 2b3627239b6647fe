"""`setpay ledgers` on a live test environment (actors/ledgers.py): after approved and
declined purchases, a sale, a capture and a refund the three parties' books agree (exit 0,
counts as run); an amount changed in the issuer host's store, then a second debit inserted
there, are named (exit 1).

Rule 1: one throw-away environment (own data dir, vhost, user prefix, ports), brought up by
`setpay demo --purchases 1` (provisioning and one load purchase, not the full demo) and
removed afterwards; the purchases go through the thin clients over HTTPS, as the demo's do.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from actors.demo_cases import Shopper, close_clients, connect_clients
from actors.environment import ISSUER_INSTANCE, LOAD_PANS, MERCHANTS
from protocol.messages import CurrAmt
from setpay.config import load
from tests.ops.environments import Env, new_env, remove_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COUNTED = ("purchases", "authorized", "declined", "captured", "refunded", "agree")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    env = new_env(tmp_path_factory.mktemp("ledgers-var"), "ledgers")
    try:
        up = env.setpay("demo", "--purchases", "1", "--concurrency", "1", timeout=600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield env
    finally:
        remove_env(env)


def ledgers(env: Env) -> tuple[int, dict[str, Any]]:
    proc = env.setpay("ledgers", "--json", timeout=120)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def settled(env: Env) -> tuple[int, dict[str, Any]]:
    """The report once no reversal or advice waits any more (exit 2 means pending)."""
    seen: list[tuple[int, dict[str, Any]]] = []

    def done() -> bool:
        seen.append(ledgers(env))
        return seen[-1][0] != 2

    wait_for(done, 60, "the gateway's advices to reach the issuer host")
    return seen[-1]


async def test_the_books_agree_then_a_tampered_issuer_store_is_named(live: Env) -> None:
    code, before = settled(live)
    assert code == 0, before
    assert before["problems"] == [] and before["agree"] == before["purchases"] >= 1
    merchant = MERCHANTS[0][0]
    wallet, pos = connect_clients(load(live.vars))
    try:
        good = Shopper(wallet, "ledgers-alice", LOAD_PANS[1])
        low = Shopper(wallet, "ledgers-bob", "4000000000000002")
        stolen = Shopper(wallet, "ledgers-dave", "4000000000000028")
        for shopper in (good, low, stolen):
            await shopper.card()
        assert (await good.buy(pos, merchant, 1_010)).describe().endswith("/APPROVED")
        assert "DECLINED" in (await low.buy(pos, merchant, 20_000)).describe()
        assert "DECLINED" in (await stolen.buy(pos, merchant, 2_000)).describe()
        sale = await good.buy(pos, merchant, 1_500, sale=True)
        assert sale.describe() == "CAPTURE_PERFORMED/APPROVED"
        session = await pos.session(merchant)
        order = await session.create_order("ledgers: capture", CurrAmt("JPY", 3_000))
        paid = await (await good.session()).buy(card_id=good.card_id, offer=order.offer)
        assert paid.describe().endswith("/APPROVED")
        assert (await session.capture(order.order, 3_000))["ok"]
        assert (await session.refund(order.order, 1_000))["ok"]
    finally:
        await close_clients(wallet, pos)
    code, after = settled(live)
    assert code == 0, after
    delta = {k: after[k] - before[k] for k in COUNTED}
    assert delta == {"purchases": 5, "authorized": 3, "declined": 2, "captured": 2,
                     "refunded": 1, "agree": 5}, after  # fmt: skip
    assert after["problems"] == [] and after["pending_reversal"] == after["pending_advice"] == 0
    assert all(after[k] == 0 for k in ("double", "merchant_only", "issuer_only",
                                       "amount_mismatch"))  # fmt: skip

    # Tamper with the issuer host's store: the 1010 authorization now says 1011 there.
    issuer_db = live.data_dir / "issuer" / f"{ISSUER_INSTANCE}.sqlite"
    with sqlite3.connect(issuer_db, timeout=30) as db:
        (rrn,) = db.execute(
            "SELECT rrn FROM transactions WHERE mti = '0100' AND amount = 1010"
        ).fetchone()
        db.execute("UPDATE transactions SET amount = 1011 WHERE rrn = ? AND mti = '0100'", (rrn,))
    db.close()
    code, report = ledgers(live)
    assert code == 1, report
    assert report["amount_mismatch"] == 1 and report["double"] == 0, report
    assert any(f"rrn {rrn}" in p and "1011" in p for p in report["problems"]), report
    assert not any(p for p in report["problems"] if LOAD_PANS[1] in p)

    # ... and the sale's debit recorded twice.
    with sqlite3.connect(issuer_db, timeout=30) as db:
        (sale_rrn,) = db.execute(
            "SELECT rrn FROM transactions WHERE mti = '0200' AND amount = 1500"
        ).fetchone()
        db.execute(
            "INSERT INTO transactions (tx_key, rrn, mti, fingerprint, pan_index, amount, effect,"
            " state, response_code, approval_code, created_at, batch)"
            " SELECT 'copy:' || tx_key, rrn, mti, fingerprint, pan_index, amount, effect, state,"
            " response_code, approval_code, created_at, batch FROM transactions"
            " WHERE rrn = ? AND mti = '0200'",
            (sale_rrn,),
        )
    db.close()
    code, report = ledgers(live)
    assert code == 1 and report["double"] == 1, report
    assert any(f"rrn {sale_rrn}" in p and "2 authorizations/debits" in p
               for p in report["problems"]), report  # fmt: skip
