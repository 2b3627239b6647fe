"""The POS operator's after-authorization API over HTTPS (actors/merchant/api.py Rule 4) and
`setpay pos` over it (actors/merchant/cli.py Rule 3), against the running gateway actor, the
real keystore, RabbitMQ and issuer host: the POS's front door on a real TLS listener, real
operator accounts (scrypt), real sessions. Operators of two merchants: each sees and acts on
its own merchant's transactions only.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.merchant.api import PosClient, PosSession, front_door
from actors.merchant.errors import MerchantError
from actors.merchant.operators import add_operator
from actors.merchant.store import MerchantRow
from actors.web import tls
from protocol import ids
from protocol.certs import certificate_der
from tests.gateway.after_fixtures import (  # noqa: F401 - the fixture
    Pos,
    card,
    pos_fixture,
)
from tests.gateway.conftest import BRAND, MERCHANT_ID
from tests.web.conftest import free_port

pytestmark = pytest.mark.integration

OTHER = "M-3999"  # a second merchant of the same POS (never reaches the gateway here)
PASS_A, PASS_B = "operator a passphrase", "operator b passphrase"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def door(pos: Pos, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    data_dir = tmp_path_factory.mktemp("pos-door")
    settings = pos.env.ca.settings.replace(data_dir=data_dir, pos_web_port=free_port(),
                                               web_source_failures=10_000)  # fmt: skip
    tls.ensure_test_certificate(settings)
    env = pos.env
    identity = env.identity
    pos.store.save_merchant(
        MerchantRow(
            OTHER, BRAND, "sig", "kx", certificate_der(env.m_certs[0]),
            certificate_der(env.m_certs[1]), [certificate_der(c) for c in env.m_certs[2:]],
            certificate_der(env.ca.root), identity.bci, list(identity.crls),
        ),
        ids.SystemClock().now_ms(),
    )  # fmt: skip
    now = ids.SystemClock().now_ms()
    add_operator(pos.store.db, "op-a", MERCHANT_ID, PASS_A, now, replace=True)
    add_operator(pos.store.db, "op-b", OTHER, PASS_B, now, replace=True)
    api = front_door(settings, pos.service, "p1")
    await api.start()
    client = PosClient.for_settings(settings)
    a = await client.login("op-a", PASS_A)
    b = await client.login("op-b", PASS_B)
    try:
        yield settings, a, b
    finally:
        await client.close()
        await api.stop()


async def test_capture_refund_and_every_reversal_over_https(pos: Pos, door: Any) -> None:
    _, a, _ = door
    session: PosSession = a
    lid = await pos.authorized(8_000)
    tx = lid.hex()
    assert any(t["id"] == tx and t["authorized"] == 8_000 for t in await session.transactions())
    over = await session.capture(tx, 9_000)
    assert (over["ok"], over["code"]) == (False, "AMOUNT_ERROR")
    with pytest.raises(MerchantError, match="state_violation"):
        await session.refund(tx, 100)  # nothing captured yet: refused before it is sent
    cap = await session.capture(tx, 6_000)
    assert (cap["ok"], cap["amount"], cap["state"]) == (True, 6_000, "captured")
    ref = await session.refund(tx, 1_000)
    assert (ref["code"], ref["amount"]) == ("SUCCESS", 1_000)
    undo = await session.reverse(tx, "credit", 1_000)
    assert undo["code"] == "SUCCESS"
    uncap = await session.reverse(tx, "capture")
    assert (uncap["code"], uncap["state"]) == ("SUCCESS", "authorized")
    part = await session.reverse(tx, "authorization", 2_000)
    assert (part["code"], part["amount"]) == ("APPROVED", 2_000)
    [t] = [t for t in await session.transactions() if t["id"] == tx]
    assert (t["authorized"], t["captured"], t["credited"]) == (2_000, 0, 0)


async def test_an_operator_reaches_only_its_own_merchants_transactions(pos: Pos, door: Any) -> None:
    _, a, b = door
    lid = await pos.authorized(3_000, first=1_000)
    tx = lid.hex()
    assert tx not in {t["id"] for t in await b.transactions()}
    for call in (b.capture(tx), b.refund(tx, 100), b.reverse(tx, "authorization"),
                 b.reverse(tx, "capture"), b.next_shipment(tx, 500)):  # fmt: skip
        with pytest.raises(MerchantError, match="no such transaction"):
            await call
    # nothing moved: A still finds its authorization untouched, and ships the rest
    [t] = [t for t in await a.transactions() if t["id"] == tx]
    assert (t["state"], t["authorized"], t["captured"]) == ("authorized", 1_000, 0)
    nxt = await a.next_shipment(tx, 2_000)
    assert (nxt["ok"], nxt["amount"], nxt["more"]) == (True, 2_000, False)
    shipments = [t for t in await a.transactions() if t["order"] == tx and t["shipment"]]
    assert [s["id"] for s in shipments] == [nxt["id"]]
    with pytest.raises(MerchantError, match="no such transaction"):
        await b.capture(nxt["id"])


async def test_batch_open_capture_summary_detail_close(pos: Pos, door: Any) -> None:
    _, a, _ = door
    opened = await a.batch("open")
    assert opened["status"] == "SUCCESS"
    batch = opened["batch"]
    lids = [await pos.authorized(n) for n in (1_100, 2_200)]
    for lid in lids:
        r = await a.capture(lid.hex(), batch=batch)
        assert (r["ok"], r["batch"]) == (True, batch)
    assert (await a.refund(lids[1].hex(), 200, batch))["ok"]
    summary = await a.batch("summary", batch)
    assert (summary["debit_count"], summary["debit_amount"]) == (2, 3_300)
    assert (summary["credit_count"], summary["credit_amount"]) == (1, 200)
    page = await a.batch("detail", batch, start=0, maximum=2)
    assert [i["kind"] for i in page["items"]] == ["CAPTURE", "CAPTURE"] and page["next"] == 2
    await pos.settled()
    closed = await a.batch("close", batch)
    assert (closed["status"], closed["transmission"]) == ("SUCCESS", "SUCCESS")
    assert closed["settlement"]["amount"] == 3_100
    again = await a.batch("close", batch)
    assert again["status"] == "BATCH_CLOSED"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def _setpay(settings: Any, *argv: str, passphrase: str = PASS_A) -> Ran:
    """``setpay pos ARGV`` as a child process (the front door answers on this event loop)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SETPAY_CONFIG": "",
           "SETPAY_DATA_DIR": str(settings.data_dir),
           "SETPAY_POS_WEB_PORT": str(settings.pos_web_port),
           "SETPAY_POS_PASSPHRASE": passphrase}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "pos", *argv, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def test_setpay_pos_commands(pos: Pos, door: Any) -> None:
    settings, _, _ = door
    lid = await pos.authorized(4_000)
    tx = lid.hex()
    listed = await _setpay(settings, "transactions", "--user", "op-a", "--json")
    assert listed.returncode == 0, listed.stderr
    assert any(t["id"] == tx for t in json.loads(listed.stdout))
    table = await _setpay(settings, "transactions", "--user", "op-a")
    assert table.stdout.splitlines()[0].split()[:3] == ["id", "order", "state"]
    cap = await _setpay(settings, "capture", tx, "--amount", "2500", "--user", "op-a")
    assert cap.returncode == 0, cap.stderr
    assert cap.stdout.startswith(f"capture {tx}: SUCCESS 2500")
    over = await _setpay(settings, "refund", tx, "--amount", "9000", "--user", "op-a")
    assert over.returncode == 2 and over.stdout == ""
    assert len(over.stderr.strip().splitlines()) == 1 and "AMOUNT_EXCEEDED" in over.stderr
    other = await _setpay(settings, "refund", tx, "--amount", "10", "--user", "op-b",
                          passphrase=PASS_B)  # fmt: skip
    assert other.returncode == 2 and "no such transaction" in other.stderr
    summary = await _setpay(
        settings, "batch", "summary", "--batch", "1", "--user", "op-a", "--json"
    )
    assert summary.returncode in (0, 1) and "batch" in json.loads(summary.stdout)
