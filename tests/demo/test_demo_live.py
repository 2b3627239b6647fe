"""`setpay demo` end to end: it brings up the whole test environment (keystore, CA, gateway,
issuer host, POS, wallet as separate processes over the real RabbitMQ and SoftHSM2) in a
throw-away vhost and data dir, and every outcome row is the expected one.

Rule 1: broker users are broker-wide and have no test prefix in the supervisor yet, so the
test reuses the machine's identity passwords (the checkout's ``var/broker/credentials.json``)
instead of resetting them; users it had to create are deleted, with the vhost, afterwards.
Rule 2: the merchant's database and log hold no PAN of any card the demo used.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.demo_cases import APPROVED, DECLINED
from actors.environment import LOAD_PANS
from broker import admin

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SETPAY = (sys.executable, "-c", "import sys; from setpay.cli import main; sys.exit(main())")
IDENTITIES = ("keystore.main", "ca.main", "gateway.pg1", "issuer.host1", "merchant.pos1",
              "wallet.main")  # fmt: skip
PANS = (LOAD_PANS[0], "4000000000000002", "4000000000000010", "4000000000000028")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    data_dir = tmp_path_factory.mktemp("demo-var")
    vhost = f"setpay-test-demo-{secrets.token_hex(4)}"
    shared = ROOT / "var" / "broker" / "credentials.json"
    if shared.exists():
        (data_dir / "broker").mkdir()
        shutil.copy2(shared, data_dir / "broker" / "credentials.json")
    existing = set(admin.list_users())
    env = {**os.environ, "SETPAY_DATA_DIR": str(data_dir), "SETPAY_BROKER_VHOST": vhost,
           "SETPAY_KEYSTORE_WORKERS": "1", "SETPAY_LOG_FORMAT": "json"}  # fmt: skip
    try:
        proc = subprocess.run(
            [*SETPAY, "demo"], env=env, capture_output=True, text=True, timeout=300,
            cwd=ROOT, check=False,
        )  # fmt: skip
        yield data_dir, proc.stdout + "\n--stderr--\n" + proc.stderr
    finally:
        subprocess.run([*SETPAY, "down", "--grace", "5"], env=env, capture_output=True,
                       timeout=120, check=False)  # fmt: skip
        for user in set(IDENTITIES) - existing:
            if user in set(admin.list_users()):
                admin.delete_user(user)
        admin.delete_vhost(vhost)


def _row(out: str, case: str) -> str:
    lines = [line for line in out.splitlines() if case in line]
    assert lines, f"no row for {case!r} in:\n{out}"
    return lines[0]


def test_every_outcome_row_is_the_expected_one(demo_run: tuple[Path, str]) -> None:
    _, out = demo_run
    for pan in PANS:
        assert "enrolled" in _row(out, f"enroll card …{pan[-4:]}")
    assert APPROVED in _row(out, "credit purchase, approved")
    assert DECLINED in _row(out, "credit, insufficient funds")
    assert "AUTHORIZATION_PERFORMED/EXPIRED_CARD" in _row(out, "credit, expired card")
    assert DECLINED in _row(out, "credit, stolen card")
    assert "CAPTURE_PERFORMED/APPROVED" in _row(out, "sale, capture now")
    assert APPROVED in _row(out, "inquiry about the approved purchase")
    assert "not available yet" in _row(out, "OPE debit, right PIN")
    assert "<-- expected" not in out
    assert "rows as expected" in out


def test_merchant_database_and_log_hold_no_pan(demo_run: tuple[Path, str]) -> None:
    data_dir, out = demo_run
    assert "rows as expected" in out
    blobs = [p.read_bytes() for p in (data_dir / "merchant").rglob("*.sqlite*")]
    blobs += [(data_dir / "run" / "merchant.pos1.log").read_bytes()]
    for pan in PANS:
        for form in (pan.encode(), pan[4:].encode(), pan.encode("utf-16-le")):
            assert not any(form in blob for blob in blobs)
