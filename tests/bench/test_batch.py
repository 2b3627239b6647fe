"""`setpay bench batch` at small sizes: the books, journal and issuer host store seeded
through their store layers, each batch closed and settled by the gateway's own code against a
real ``IssuerHost`` over TCP (bench/batch.py); the figures are those the host reconciled.

No timing assertions (the machine is shared): counts, totals and states only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.gateway.batch import batch_ref
from actors.gateway.books import Books
from actors.issuer.accounts import Store
from bench.batch import MERCHANT, _amount, growth, measure, run

ROOT = Path(__file__).resolve().parents[2]


async def test_each_batch_closes_and_settles_with_the_hosts_totals(tmp_path: Path) -> None:
    n = 300
    result = await measure(n, 2, tmp_path)
    assert (result.transactions, result.closes, result.host_code) == (n, 2, "00")
    assert result.debit_amount == sum(_amount(i) for i in range(n))
    assert result.median_s > 0 and result.per_tx_us > 0
    books = Books(tmp_path / "books.sqlite")
    host = Store(tmp_path / "issuer.sqlite")
    try:
        for batch_id in (1, 2):
            b = books.batch(MERCHANT, batch_id)
            assert b is not None and (b.state, b.host_code) == ("settled", "00")
            t = books.totals(MERCHANT, batch_id)
            assert t.debit == (n, result.debit_amount) and t.credit == (0, 0)
            # the host's own sum of the batch: what the 0500 was reconciled against
            assert host.batch_totals(batch_ref(MERCHANT, batch_id)) == (
                0, 0, n, result.debit_amount,
            )  # fmt: skip
    finally:
        books.close()
        host.close()


async def test_with_an_advice_outstanding_the_batch_still_settles(tmp_path: Path) -> None:
    """Rule 5: another batch's failed advice forces the key-by-key check; this batch's are
    all acknowledged, so it settles as before."""
    result = await measure(200, 1, tmp_path, busy=True)
    assert (result.host_code, result.debit_amount) == ("00", sum(_amount(i) for i in range(200)))


async def test_two_sizes_give_a_growth_ratio(tmp_path: Path) -> None:
    results = await run([100, 400], 1, tmp_path)
    assert [r.transactions for r in results] == [100, 400]
    assert growth(results) == results[1].per_tx_us / results[0].per_tx_us > 0
    assert growth(results, of_min=True) == results[1].min_per_tx_us / results[0].min_per_tx_us
    assert list(tmp_path.iterdir()) == []  # each size's stores were thrown away


@pytest.mark.slow
def test_the_command_prints_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SETPAY_CONFIG": "",
           "SETPAY_DATA_DIR": str(tmp_path), "SETPAY_LOG_LEVEL": "warning"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "bench", "batch", "--sizes", "50,200", "--repeat", "1", "--json"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [r["transactions"] for r in data["results"]] == [50, 200]
    assert all(r["host_code"] == "00" for r in data["results"]) and data["growth_ratio"] > 0
    assert data["growth_ratio_min"] > 0
