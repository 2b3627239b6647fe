"""The issuer host after authorization, over real TCP and a real SQLite store: completion and
refund advices (0220/0221), partial reversals (field 95), reversals of advices (0420) and the
0500 reconciliation of a batch (actors/issuer/host.py Rule 6, accounts.py Rule 5)."""

from __future__ import annotations

from actors.iso8583 import spec
from actors.iso8583.codes import ResponseCode
from tests.issuer.conftest import next_stan, request
from tests.issuer.test_host import reversal, snapshot

BATCH = "M-1:7"


def advice(original: spec.Message, amount: int, *, refund: bool = False, stan: str | None = None):
    stan = stan or next_stan()
    return {
        "t": spec.ADVICE,
        "3": spec.REFUND_PROCESSING if refund else spec.CARD_PROCESSING,
        "4": f"{amount:012d}",
        "7": "1124130000",
        "11": stan,
        "32": original["32"],
        "37": original["37"],
        "41": original["41"],
        "48": BATCH,
        "49": original["49"],
        "90": spec.original_data(original["t"], original["11"], original["7"], original["32"]),
    }


def totals(credits: tuple[int, int], debits: tuple[int, int]) -> spec.Message:
    return {
        "t": spec.RECONCILIATION_REQUEST, "7": "1124140000", "11": next_stan(), "32": "4321",
        "48": BATCH, "74": f"{credits[0]:010d}", "76": f"{debits[0]:010d}",
        "86": f"{credits[1]:016d}", "88": f"{debits[1]:016d}",
    }  # fmt: skip


async def test_completion_posts_the_capture_and_releases_the_hold_once(
    client, accounts, store, security
):
    visa = accounts["visa-ok"]
    original = request(visa, 10_000)
    assert (await client.request(original))["39"] == ResponseCode.APPROVED
    completion = advice(original, 6_000)
    for message in (completion, completion, {**completion, "t": spec.ADVICE_REPEAT}):
        answer = await client.request(message)
        assert (answer["t"], answer["39"]) == (spec.ADVICE_RESPONSE, ResponseCode.APPROVED)
        snap = await snapshot(store, security, visa)
        assert (snap.account.balance, snap.held) == (visa.balance + 6_000, 0)
    # a second completion of the same hold is refused: the hold is gone
    again = await client.request(advice(original, 1_000))
    assert again["39"] == ResponseCode.INVALID_TRANSACTION
    # its reversal undoes the posting and the hold holds again
    undo = {**reversal(completion, mti=spec.REVERSAL_ADVICE, stan=next_stan())}
    assert (await client.request(undo))["39"] == ResponseCode.APPROVED
    snap = await snapshot(store, security, visa)
    assert (snap.account.balance, snap.held) == (visa.balance, 10_000)


async def test_completion_above_the_hold_is_13_and_changes_nothing(
    client, accounts, store, security
):
    visa = accounts["visa-ok"]
    original = request(visa, 2_000)
    assert (await client.request(original))["39"] == ResponseCode.APPROVED
    assert (await client.request(advice(original, 2_001)))["39"] == ResponseCode.INVALID_AMOUNT
    snap = await snapshot(store, security, visa)
    assert (snap.account.balance, snap.held) == (visa.balance, 2_000)


async def test_partial_reversal_lowers_the_hold(client, accounts, store, security):
    visa = accounts["visa-ok"]
    original = request(visa, 9_000)
    assert (await client.request(original))["39"] == ResponseCode.APPROVED
    partial = {**reversal(original, stan=next_stan()), "95": spec.replacement_amount(4_000)}
    assert (await client.request(partial))["39"] == ResponseCode.APPROVED
    assert (await snapshot(store, security, visa)).held == 4_000
    higher = {**reversal(original, stan=next_stan()), "95": spec.replacement_amount(8_000)}
    assert (await client.request(higher))["39"] == ResponseCode.APPROVED
    assert (await snapshot(store, security, visa)).held == 4_000  # never raised
    assert (await client.request(advice(original, 4_001)))["39"] == ResponseCode.INVALID_AMOUNT


async def test_refunds_and_the_batch_reconciliation(client, accounts, store, security):
    visa = accounts["visa-ok"]
    original = request(visa, 5_000)
    assert (await client.request(original))["39"] == ResponseCode.APPROVED
    assert (await client.request(advice(original, 5_000)))["39"] == ResponseCode.APPROVED
    refund = advice(original, 1_500, refund=True)
    assert (await client.request(refund))["39"] == ResponseCode.APPROVED
    assert (await client.request(advice(original, 500, refund=True)))["39"] == "00"
    assert (await snapshot(store, security, visa)).account.balance == visa.balance + 3_000
    undo = reversal(refund, mti=spec.REVERSAL_ADVICE, stan=next_stan())
    assert (await client.request(undo))["39"] == ResponseCode.APPROVED
    assert (await snapshot(store, security, visa)).account.balance == visa.balance + 4_500
    balanced = await client.request(totals((1, 500), (1, 5_000)))
    assert (balanced["t"], balanced["39"]) == (spec.RECONCILIATION_RESPONSE, ResponseCode.APPROVED)
    assert (balanced["74"], balanced["88"]) == ("0000000001", "0000000000005000")
    off = await client.request(totals((2, 2_000), (1, 5_000)))  # counts the reversed refund
    assert off["39"] == ResponseCode.RECONCILE_ERROR
    assert off["86"] == "0000000000000500"  # the host's own totals come back
