"""`setpay demo` end to end: it brings up the whole test environment (keystore, CA, gateway,
issuer host, POS, wallet as separate processes over the real RabbitMQ and SoftHSM2) in a
throw-away vhost and data dir, and every outcome row is the expected one.

Rule 1: one `setpay demo` run serves the whole package (tests/demo/conftest.py ``demo_run``).
Rule 2: the merchant's database and log hold no PAN of any card the demo used.
Rule 3: OPE PIN debit from the seeded bank account goes through the real processes: the
gateway sends it as field 102 (debit processing code), the right PIN is a captured sale, the
wrong one is declined with the issuer's 55; neither PIN, its clear format 0 block nor the
account number is in the wallet's, merchant's or gateway's databases or logs (files read by
a child process).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from actors import demo_cases
from actors.demo_cases import APPROVED, DECLINED, SALE_APPROVED, WRONG_PIN
from actors.environment import (
    DEBIT_BANK,
    DEBIT_BRANCH,
    DEBIT_NUMBER,
    DEBIT_PIN,
    LOAD_PANS,
)
from actors.iso8583.spec import DEBIT_PROCESSING
from actors.wallet.api import StartedPurchase, WalletSession, seal_for
from actors.wallet.errors import WalletError
from protocol.certs import CertType, load_certificate, set_extension
from protocol.messages import CurrAmt
from protocol.pin import encode_format0
from setpay.config import load
from tests.fixtures_ca import files_bytes

pytestmark = pytest.mark.integration

PANS = (LOAD_PANS[0], "4000000000000002", "4000000000000010", "4000000000000028")
BANK_REF = f"{DEBIT_BANK}-{DEBIT_BRANCH}-{DEBIT_NUMBER}"  # the host's field 102
ACCOUNT_FORMS = (DEBIT_NUMBER.encode(), DEBIT_NUMBER.encode("utf-16-le"), BANK_REF.encode())
# A 4-digit PIN as a token: no digit, letter (hex) or decimal point next to it.
PIN_TOKEN = rb"(?<![0-9A-Za-z.])%s(?![0-9A-Za-z.])"


def _row(out: str, case: str) -> str:
    lines = [line for line in out.splitlines() if case in line]
    assert lines, f"no row for {case!r} in:\n{out}"
    return lines[0]


def test_every_outcome_row_is_the_expected_one(demo_run: tuple[Path, str]) -> None:
    _, out = demo_run
    for pan in PANS:
        assert "enrolled" in _row(out, f"enroll card …{pan[-4:]}")
    assert "enrolled" in _row(out, f"enroll account …{DEBIT_NUMBER[-4:]}")
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


def test_after_authorization_rows_and_the_reconciled_batch(demo_run: tuple[Path, str]) -> None:
    """Issue 12's rows, driven through the POS's HTTPS API (demo_cases.py Rule 5): each moved
    what it says, and the batch's totals at close equal the issuer host's own sums."""
    _, out = demo_run
    assert "SUCCESS 3000" in _row(out, "partial capture, 3000 of 5000")
    assert "SUCCESS 1000" in _row(out, "refund 1000 of the capture")
    assert "next APPROVED 4000, captured SUCCESS 4000" in _row(
        out, "split shipment: 2000, then 4000 by AuthToken"
    )
    assert "APPROVED 0" in _row(out, "authorization reversal, all of 2500")
    assert "SUCCESS 1800" in _row(out, "capture reversal of 1800")
    assert "SUCCESS 500" in _row(out, "credit reversal of a 500 refund")
    close = _row(out, "close, totals")
    assert demo_cases.BATCH_SETTLED in close and "expected" not in close
    # the numbers printed: live captures 3000 + 2000 + 4000 (the 1800 reversed), one 1000
    # refund (the 500 reversed); "= issuer host" only when the host's sums are the same
    assert re.search(r"batch \d+ close, totals", close)


def test_merchant_database_and_log_hold_no_pan(demo_run: tuple[Path, str]) -> None:
    data_dir, out = demo_run
    assert "rows as expected" in out
    blobs = [p.read_bytes() for p in (data_dir / "merchant").rglob("*.sqlite*")]
    blobs += [(data_dir / "run" / "merchant.pos1.log").read_bytes()]
    for pan in PANS:
        for form in (pan.encode(), pan[4:].encode(), pan.encode("utf-16-le")):
            assert not any(form in blob for blob in blobs)
    for form in ACCOUNT_FORMS:
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


def _journal_fields(data_dir: Path) -> dict[str, dict[str, str]]:
    """STAN -> the non-sensitive fields the gateway's link journalled, read by a child
    process (tests/fixtures_ca.files_bytes says why)."""
    script = (
        "import json, sqlite3, sys; db = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', "
        "uri=True); print(json.dumps(dict(db.execute('SELECT stan, fields FROM requests'))))"
    )
    path = data_dir / "gateway" / "pg1" / "link.sqlite"
    run = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return {stan: json.loads(fields) for stan, fields in json.loads(run.stdout).items()}


def test_ope_pin_debit_rows_and_the_issuers_55(demo_run: tuple[Path, str]) -> None:
    data_dir, out = demo_run
    assert "enrolled" in _row(out, f"enroll account …{DEBIT_NUMBER[-4:]}")
    assert SALE_APPROVED in _row(out, "OPE debit, right PIN")
    assert DECLINED in _row(out, "OPE debit, wrong PIN")
    # The issuer's answers to the bank account, as the gateway's link logged them (account
    # masked to its last four digits): 0200 (a sale with field 52), 00 for the right PIN,
    # 55 (wrong PIN) for the wrong one.
    answers, stans = [], []
    for line in (data_dir / "run" / "gateway.pg1.log").read_text().splitlines():
        if '"answered"' in line and DEBIT_NUMBER[-4:] in line:
            event = json.loads(line[line.index("{") :])
            answers.append((event["mti"], event["code"]))
            stans.append(event["stan"])
    assert answers == [("0200", "00"), ("0200", "55")]
    # The account went as field 102 (bank-branch-number), not field 2: the debit processing
    # code; neither account field is journalled.
    journal = _journal_fields(data_dir)
    for stan in stans:
        assert journal[stan]["3"] == DEBIT_PROCESSING
        assert "2" not in journal[stan] and "102" not in journal[stan]


def test_no_pin_or_clear_pin_block_in_party_databases_and_logs(
    demo_run: tuple[Path, str],
) -> None:
    data_dir, out = demo_run
    assert "OPE debit, right PIN" in out
    blobs = _party_files(data_dir)
    assert any(b"wallet_purchase_done" in blob for blob in blobs)  # the logs were read
    for pin in (DEBIT_PIN, WRONG_PIN):
        block = encode_format0(pin, DEBIT_NUMBER)
        # The PIN as a token of its own (digits around it would be another number).
        token = re.compile(PIN_TOKEN % pin.encode())
        forms = (pin.encode("utf-16-le"), block, block.hex().encode(),
                 block.hex().upper().encode())  # fmt: skip
        for blob in blobs:
            assert token.search(blob) is None
            assert not any(form in blob for form in forms)
    for blob in blobs:
        assert not any(form in blob for form in ACCOUNT_FORMS)


def _other_root() -> x509.Certificate:
    """A self-signed CA certificate the environment's gateway does not chain to."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not the SET root")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip


async def test_thin_client_pin_purchase_refusals_and_finish(
    demo_run: tuple[Path, str], demo_env: dict[str, str]
) -> None:
    """Against the live environment: the wallet hands the thin client the gateway certificate,
    refuses a PIN account without a seal and a card with one, and the thin client refuses a
    gateway it cannot validate; the same started purchase then finishes with the seal."""
    data_dir, out = demo_run
    assert "rows as expected" in out
    root = load_certificate((data_dir / "wallet" / "root.der").read_bytes())
    wallet, pos = demo_cases.connect_clients(load(demo_env))
    try:
        erin = demo_cases.debit_shopper(wallet)
        alice = demo_cases.Shopper(wallet, "demo-alice", LOAD_PANS[0])
        await erin.card()
        await alice.card()
        erin_s, alice_s = await erin.session(), await alice.session()
        value = CurrAmt("JPY", 700)

        async def start(session: WalletSession, card_id: str) -> StartedPurchase:
            order = await pos.create_order("M-1001", "thin client", value, sale=True)
            return await session.start_purchase(card_id=card_id, offer=order.offer)

        started = await start(erin_s, erin.card_id)
        assert started.pin_binding == DEBIT_NUMBER and DEBIT_NUMBER not in repr(started)
        gateway = load_certificate(started.gateway_cert)
        assert set_extension(gateway).cert_type is CertType.GATEWAY
        with pytest.raises(WalletError, match="PIN not sealed"):
            await seal_for(started, _other_root(), DEBIT_PIN)
        with pytest.raises(WalletError) as bad_pin:
            await seal_for(started, root, "12ab")
        assert "12ab" not in str(bad_pin.value)
        with pytest.raises(WalletError, match="needs a sealed PIN"):
            await erin_s.finish_purchase(started.purchase_id)
        seal = await seal_for(started, root, DEBIT_PIN)
        card = await start(alice_s, alice.card_id)
        assert card.pin_binding is None
        with pytest.raises(WalletError, match="takes no PIN"):
            await alice_s.finish_purchase(card.purchase_id, seal)
        # Another cardholder's session cannot finish erin's purchase.
        with pytest.raises(WalletError, match="no such started purchase"):
            await alice_s.finish_purchase(started.purchase_id, seal)
        # The refusals consumed nothing: the PIN purchase still finishes, once.
        done = await erin_s.finish_purchase(started.purchase_id, seal)
        assert done.describe() == SALE_APPROVED and done.xid == started.xid
        with pytest.raises(WalletError, match="no such started purchase"):
            await erin_s.finish_purchase(started.purchase_id, seal)
        with pytest.raises(WalletError, match="PIN account"):
            await erin.buy(pos, "M-1001", 700)
    finally:
        await demo_cases.close_clients(wallet, pos)


async def test_starting_a_card_purchase_opens_no_sealed_card(
    demo_run: tuple[Path, str], demo_env: dict[str, str]
) -> None:
    """What PInitReq names (the BIN and the account's kind) is kept at enrolment, so starting
    a card purchase costs no keystore ``open``; finishing it opens the sealed card once (the
    PI needs the PAN), and a PIN account's start still opens it (its PIN binding)."""
    data_dir, out = demo_run
    assert "rows as expected" in out
    audit = data_dir / "run" / "keystore.main.log"

    def wallet_opens() -> int:
        n = 0
        for line in audit.read_text().splitlines():
            if '"keystore_op"' not in line:
                continue
            event = json.loads(line)
            n += event["op"] == "open" and "wallet." in str(event.get("caller"))
        return n

    wallet, pos = demo_cases.connect_clients(load(demo_env))
    try:
        alice = demo_cases.Shopper(wallet, "demo-alice", LOAD_PANS[0])
        erin = demo_cases.debit_shopper(wallet)
        await alice.card()
        await erin.card()
        session, erin_s = await alice.session(), await erin.session()
        value = CurrAmt("JPY", 300)
        before = wallet_opens()
        order = await pos.create_order("M-1001", "no open to start", value)
        started = await session.start_purchase(card_id=alice.card_id, offer=order.offer)
        assert wallet_opens() == before
        done = await session.finish_purchase(started.purchase_id)
        assert done.describe() == APPROVED
        assert wallet_opens() == before + 1
        order = await pos.create_order("M-1001", "PIN account start", value, sale=True)
        await erin_s.start_purchase(card_id=erin.card_id, offer=order.offer)
        assert wallet_opens() == before + 2
    finally:
        await demo_cases.close_clients(wallet, pos)
