"""The issuer host over real TCP and a real SQLite store: decisions, idempotency, reversals."""

from __future__ import annotations

from structlog.testing import capture_logs

from actors.iso8583 import spec
from actors.iso8583.codes import ResponseCode
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import SeedAccount
from tests.issuer.conftest import RawClient, request
from tests.issuer.softsecurity import SoftIssuerSecurity


async def snapshot(store: Store, security: SoftIssuerSecurity, account: SeedAccount):
    snap = store.snapshot(await security.pan_index(account.reference))
    assert snap is not None
    return snap


async def test_approval_places_a_hold_with_an_approval_code(client, accounts, store, security):
    """0100 on a good card: 00, a 6-character approval code, the amount held."""
    visa = accounts["visa-ok"]
    answer = await client.request(request(visa, 12_345))
    assert answer["t"] == spec.AUTH_RESPONSE
    assert answer["39"] == ResponseCode.APPROVED
    assert len(answer["38"]) == 6 and answer["38"].isalnum()
    snap = await snapshot(store, security, visa)
    assert snap.held == 12_345
    assert snap.available == visa.credit_limit - 12_345
    assert "2" not in answer and "52" not in answer  # no account number echoed


async def test_both_brands_approve(client, accounts):
    """A card of each brand is approved."""
    for name in ("visa-ok", "mc-ok"):
        answer = await client.request(request(accounts[name], 1_000))
        assert answer["39"] == ResponseCode.APPROVED, name


async def test_unknown_card_is_14(client):
    """A PAN the issuer does not hold: 14."""
    answer = await client.request(request("4242424242424242", 1_000))
    assert answer["39"] == ResponseCode.INVALID_CARD
    assert "38" not in answer


async def test_expired_card_is_54(client, accounts):
    answer = await client.request(request(accounts["visa-expired"], 1_000))
    assert answer["39"] == ResponseCode.EXPIRED_CARD


async def test_wrong_expiry_is_54_and_right_expiry_approves(client, accounts):
    """Field 14 must be the card's date when present."""
    visa = accounts["visa-ok"]
    wrong = {**request(visa, 1_000), "14": "0101"}
    assert (await client.request(wrong))["39"] == ResponseCode.EXPIRED_CARD
    right = {**request(visa, 1_000), "14": visa.expiry}
    assert (await client.request(right))["39"] == ResponseCode.APPROVED


async def test_stolen_card_is_43(client, accounts):
    answer = await client.request(request(accounts["mc-stolen"], 1_000))
    assert answer["39"] == ResponseCode.STOLEN_CARD


async def test_over_limit_is_51_and_holds_nothing(client, accounts, store, security):
    """Low-limit card: over the limit is 51 and nothing is held; within it is approved."""
    low = accounts["visa-low-limit"]
    answer = await client.request(request(low, low.credit_limit + 1))
    assert answer["39"] == ResponseCode.INSUFFICIENT_FUNDS
    assert (await snapshot(store, security, low)).held == 0
    answer = await client.request(request(low, low.credit_limit))
    assert answer["39"] == ResponseCode.APPROVED
    answer = await client.request(request(low, 1))
    assert answer["39"] == ResponseCode.INSUFFICIENT_FUNDS


async def test_velocity_is_61(client, accounts):
    """The velocity card allows two approvals per window; the third is 61."""
    card = accounts["mc-velocity"]
    codes = [(await client.request(request(card, 100)))["39"] for _ in range(3)]
    assert codes == [ResponseCode.APPROVED, ResponseCode.APPROVED, ResponseCode.VELOCITY_EXCEEDED]


async def test_pin_debit_posts_at_once(client, accounts, store, security):
    """0200 with the right PIN on a bank account: 00 and the balance is debited now."""
    bank = accounts["bank-ok"]
    block = await security.pin_block(bank.binding, "739146")
    answer = await client.request(request(bank, 7_000, mti=spec.FINANCIAL_REQUEST, pin_block=block))
    assert answer["t"] == spec.FINANCIAL_RESPONSE
    assert answer["39"] == ResponseCode.APPROVED
    snap = await snapshot(store, security, bank)
    assert snap.account.balance == bank.balance - 7_000
    assert snap.held == 0


async def test_pin_debit_over_balance_is_51(client, accounts, security):
    bank = accounts["bank-low"]
    block = await security.pin_block(bank.binding, "987654")
    answer = await client.request(
        request(bank, bank.balance + 1, mti=spec.FINANCIAL_REQUEST, pin_block=block)
    )
    assert answer["39"] == ResponseCode.INSUFFICIENT_FUNDS


async def test_wrong_pin_is_55_then_75_after_three(client, accounts, store, security):
    """Two wrong PINs give 55, the third 75; afterwards even the right PIN gets 75."""
    bank = accounts["bank-ok"]
    wrong = await security.pin_block(bank.binding, "9999")
    right = await security.pin_block(bank.binding, "739146")
    codes = [
        (await client.request(request(bank, 100, mti="0200", pin_block=wrong)))["39"]
        for _ in range(3)
    ]
    assert codes == [
        ResponseCode.WRONG_PIN,
        ResponseCode.WRONG_PIN,
        ResponseCode.PIN_TRIES_EXCEEDED,
    ]
    answer = await client.request(request(bank, 100, mti="0200", pin_block=right))
    assert answer["39"] == ResponseCode.PIN_TRIES_EXCEEDED
    snap = await snapshot(store, security, bank)
    assert snap.account.balance == bank.balance  # nothing debited
    assert snap.account.pin_tries == 3


async def test_right_pin_resets_the_try_counter(client, accounts, store, security):
    bank = accounts["bank-ok"]
    wrong = await security.pin_block(bank.binding, "4321")
    right = await security.pin_block(bank.binding, "739146")
    await client.request(request(bank, 100, mti="0200", pin_block=wrong))
    assert (await snapshot(store, security, bank)).account.pin_tries == 1
    answer = await client.request(request(bank, 100, mti="0200", pin_block=right))
    assert answer["39"] == ResponseCode.APPROVED
    assert (await snapshot(store, security, bank)).account.pin_tries == 0


async def test_missing_pin_block_is_30_and_no_try(client, accounts, store, security):
    """No PIN block is a format error, not a wrong PIN: three of them lock nothing."""
    bank = accounts["bank-ok"]
    for _ in range(3):
        answer = await client.request(request(bank, 100, mti="0200"))
        assert answer["39"] == ResponseCode.FORMAT_ERROR
    assert (await snapshot(store, security, bank)).account.pin_tries == 0
    right = await security.pin_block(bank.binding, "739146")
    answer = await client.request(request(bank, 100, mti="0200", pin_block=right))
    assert answer["39"] == ResponseCode.APPROVED


async def test_foreign_pin_block_is_55(client, accounts, security):
    """A block bound to another account is a wrong PIN."""
    bank, other = accounts["bank-ok"], accounts["bank-low"]
    foreign = await security.pin_block(other.binding, "739146")
    answer = await client.request(request(bank, 100, mti="0200", pin_block=foreign))
    assert answer["39"] == ResponseCode.WRONG_PIN


async def test_duplicate_request_is_answered_from_the_store(client, accounts, store, security):
    """The same STAN/RRN/time twice: same answer and approval code, applied once."""
    bank = accounts["bank-ok"]
    block = await security.pin_block(bank.binding, "739146")
    message = request(bank, 5_000, mti=spec.FINANCIAL_REQUEST, pin_block=block)
    first = await client.request(message)
    second = await client.request(message)
    assert first["39"] == second["39"] == ResponseCode.APPROVED
    assert first["38"] == second["38"]
    snap = await snapshot(store, security, bank)
    assert snap.account.balance == bank.balance - 5_000


async def test_duplicate_hold_is_held_once(client, accounts, store, security):
    visa = accounts["visa-ok"]
    message = request(visa, 2_500)
    for _ in range(3):
        assert (await client.request(message))["39"] == ResponseCode.APPROVED
    assert (await snapshot(store, security, visa)).held == 2_500


async def test_reused_key_with_other_content_is_94(client, accounts, store, security):
    """Same STAN and time but another amount: 94, and nothing changes."""
    visa = accounts["visa-ok"]
    message = request(visa, 1_000)
    assert (await client.request(message))["39"] == ResponseCode.APPROVED
    answer = await client.request({**message, "4": f"{9_999:012d}"})
    assert answer["39"] == ResponseCode.DUPLICATE_TRANSMISSION
    assert (await snapshot(store, security, visa)).held == 1_000


def reversal(original: spec.Message, *, mti: str = spec.REVERSAL_REQUEST, stan: str = "900001"):
    return {
        "t": mti,
        "3": original["3"],
        "4": original["4"],
        "7": "1124120500",
        "11": stan,
        "32": original["32"],
        "37": original["37"],
        "41": original["41"],
        "49": original["49"],
        "90": spec.original_data(original["t"], original["11"], original["7"], original["32"]),
    }


async def test_reversal_restores_a_posting_once(client, accounts, store, security):
    """0400 after an 0200 restores the balance; the same reversal again, a repeat (0401) and
    a second reversal of the same original are acknowledged without a second credit."""
    bank = accounts["bank-ok"]
    block = await security.pin_block(bank.binding, "739146")
    original = request(bank, 9_000, mti=spec.FINANCIAL_REQUEST, pin_block=block)
    assert (await client.request(original))["39"] == ResponseCode.APPROVED
    assert (await snapshot(store, security, bank)).account.balance == bank.balance - 9_000
    first = reversal(original)
    for message in (
        first,
        first,
        {**first, "t": spec.REVERSAL_REPEAT},
        reversal(original, stan="900002"),
    ):
        answer = await client.request(message)
        assert answer["t"] == spec.REVERSAL_RESPONSE
        assert answer["39"] == ResponseCode.APPROVED
        assert (await snapshot(store, security, bank)).account.balance == bank.balance


async def test_reversal_advice_releases_a_hold(client, accounts, store, security):
    visa = accounts["visa-ok"]
    original = request(visa, 4_000)
    assert (await client.request(original))["39"] == ResponseCode.APPROVED
    answer = await client.request(reversal(original, mti=spec.REVERSAL_ADVICE))
    assert answer["t"] == spec.REVERSAL_ADVICE_RESPONSE and answer["39"] == "00"
    assert (await snapshot(store, security, visa)).held == 0


async def test_reversal_before_its_original_refuses_the_late_original(
    client, accounts, store, security
):
    """A reversal whose original never arrived is acknowledged; the late original is 12."""
    visa = accounts["visa-ok"]
    original = request(visa, 3_000)
    answer = await client.request(reversal(original, mti=spec.REVERSAL_ADVICE))
    assert answer["39"] == ResponseCode.APPROVED
    late = await client.request(original)
    assert late["39"] == ResponseCode.INVALID_TRANSACTION
    assert (await snapshot(store, security, visa)).held == 0


async def test_echo(client):
    answer = await client.request({"t": "0800", "7": "1124120000", "11": "000777", "70": "301"})
    assert answer == {"t": "0810", "7": "1124120000", "11": "000777", "70": "301", "39": "00"}


async def test_malformed_messages_do_not_stop_the_host(host: IssuerHost, client, accounts):
    """Garbage after a readable MTI gets 30; unreadable garbage is dropped; a frame-level
    error closes that connection only; the host keeps serving everyone."""
    with capture_logs() as events:
        answer = await client.send_raw(b"0200\xff\xff\xff")
    assert answer is not None
    [event] = [e for e in events if e["event"] == "malformed_message"]
    assert event["mti"] == "0200" and event["length"] == 7
    assert "\\xff" not in repr(event)  # the bytes themselves are never logged
    assert spec.unpack(answer) == {"t": "0210", "39": ResponseCode.FORMAT_ERROR}
    # A decodable request missing required fields: 30 with its STAN echoed.
    answer_msg = await client.request({"t": "0100", "11": "000123"})
    assert answer_msg["39"] == ResponseCode.FORMAT_ERROR and answer_msg["11"] == "000123"
    # Unreadable: dropped; the next request on the same connection is still served.
    client.writer.write(b"\x00\x05zzzzz")
    assert (await client.request(request(accounts["visa-ok"], 100)))["39"] == "00"
    # A zero-length frame breaks framing: the host closes this connection...
    client.writer.write(b"\x00\x00")
    await client.writer.drain()
    assert await client.reader.read() == b""
    # ...and serves a new one.
    other = await RawClient.connect(host.port)
    try:
        assert (await other.request(request(accounts["mc-ok"], 100)))["39"] == "00"
    finally:
        await other.close()
    assert host.malformed >= 4


async def test_db_holds_no_pan_and_no_pin(client, accounts, store, security, tmp_path):
    """After every kind of request, no account number or PIN is in the DB files' bytes."""
    for account in accounts.values():
        pin_block = None
        if account.pin:
            pin_block = await security.pin_block(account.binding, account.pin)
        mti = spec.FINANCIAL_REQUEST if account.kind == "bank" else spec.AUTH_REQUEST
        await client.request(request(account, 100, mti=mti, pin_block=pin_block))
    store.db.checkpoint()
    files = [p for p in tmp_path.iterdir() if p.name.startswith("issuer.sqlite")]
    blob = b"".join(p.read_bytes() for p in files)
    assert len(blob) > 0
    for account in accounts.values():
        digits = account.reference.replace("-", "")
        for needle in {account.reference, digits, account.binding}:
            assert needle.encode() not in blob, account.name
            assert needle.encode("utf-16-le") not in blob, account.name
        if len(digits) % 2 == 0:
            assert bytes.fromhex(digits) not in blob, account.name  # packed BCD
        if account.pin:
            assert account.pin.encode() not in blob, account.name
