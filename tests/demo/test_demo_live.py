"""`setpay demo` end to end: it brings up the whole test environment (keystore, CA, gateway,
issuer host, POS, wallet as separate processes over the real RabbitMQ and SoftHSM2) in a
throw-away vhost and data dir, and every outcome row is the expected one.

Rule 1: broker users are broker-wide and have no test prefix in the supervisor yet, so the
test reuses the machine's identity passwords (the checkout's ``var/broker/credentials.json``)
instead of resetting them; users it had to create are deleted, with the vhost, afterwards.
Rule 2: the merchant's database and log hold no PAN of any card the demo used.
Rule 3: OPE PIN debit goes through the real processes: the right PIN is a captured sale, the
wrong one is declined with the issuer's 55; neither PIN nor its clear format 0 block is in
the wallet's, merchant's or gateway's databases or logs (files read by a child process).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.demo_cases import APPROVED, DECLINED, SALE_APPROVED, WRONG_PIN
from actors.environment import DEBIT_PAN, DEBIT_PIN, LOAD_PANS
from broker import admin
from protocol.pin import encode_format0
from tests.fixtures_ca import files_bytes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SETPAY = (sys.executable, "-c", "import sys; from setpay.cli import main; sys.exit(main())")
IDENTITIES = ("keystore.main", "ca.main", "gateway.pg1", "issuer.host1", "merchant.pos1",
              "wallet.main")  # fmt: skip
PANS = (LOAD_PANS[0], "4000000000000002", "4000000000000010", "4000000000000028", DEBIT_PAN)


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
    assert SALE_APPROVED in _row(out, "OPE debit, right PIN")
    assert DECLINED in _row(out, "OPE debit, wrong PIN")
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


def _party_files(data_dir: Path) -> list[bytes]:
    """Every file of the wallet, merchant and gateway (databases, WAL, identity) and their
    logs, read by a child process (tests/fixtures_ca.files_bytes)."""
    blobs: list[bytes] = []
    for party in ("wallet", "merchant", "gateway"):
        root = data_dir / party
        folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
        for folder in folders:
            blobs += files_bytes(folder)
    run = data_dir / "run"
    for log in ("wallet.main.log", "merchant.pos1.log", "gateway.pg1.log"):
        blobs.append((run / log).read_bytes())
    return blobs


def test_ope_pin_debit_rows_and_the_issuers_55(demo_run: tuple[Path, str]) -> None:
    data_dir, out = demo_run
    assert "enrolled" in _row(out, f"enroll card …{DEBIT_PAN[-4:]}")
    assert SALE_APPROVED in _row(out, "OPE debit, right PIN")
    assert DECLINED in _row(out, "OPE debit, wrong PIN")
    # The issuer's answers to the PIN account, as the gateway's link logged them: 0200 (a
    # sale with field 52), 00 for the right PIN, 55 (wrong PIN) for the wrong one.
    answers = []
    for line in (data_dir / "run" / "gateway.pg1.log").read_text().splitlines():
        if '"answered"' in line and DEBIT_PAN[-4:] in line:
            event = json.loads(line[line.index("{") :])
            answers.append((event["mti"], event["code"]))
    assert answers == [("0200", "00"), ("0200", "55")]


def test_no_pin_or_clear_pin_block_in_party_databases_and_logs(
    demo_run: tuple[Path, str],
) -> None:
    data_dir, out = demo_run
    assert "OPE debit, right PIN" in out
    blobs = _party_files(data_dir)
    assert any(b"wallet_purchase_done" in blob for blob in blobs)  # the logs were read
    for pin in (DEBIT_PIN, WRONG_PIN):
        block = encode_format0(pin, DEBIT_PAN)
        # The PIN as a token of its own (digits around it would be another number).
        token = re.compile(rb"(?<![0-9])" + pin.encode() + rb"(?![0-9])")
        forms = (pin.encode("utf-16-le"), block, block.hex().encode(),
                 block.hex().upper().encode())  # fmt: skip
        for blob in blobs:
            assert token.search(blob) is None
            assert not any(form in blob for form in forms)
