"""Reversals from several gateway replicas (actors/iso8583/link.py Rule 6) at the issuer host:
one replica's reversal, its repeat sent by the replica that took the entry over after its
lease ran out, and another replica's own reversal of the same original, arriving at once on
two connections, restore the original once (host.py Rule 2, accounts.py Rule 3)."""

from __future__ import annotations

import asyncio

from actors.iso8583 import spec
from actors.iso8583.codes import ResponseCode
from tests.issuer.conftest import RawClient, next_stan, request
from tests.issuer.test_host import reversal, snapshot
from tests.issuer.test_host_after import advice


async def from_two_replicas(port: int, messages: list[spec.Message]) -> list[spec.Message]:
    """Each replica (its own connection) sends every other message of ``messages`` in turn,
    both at once; their answers."""

    async def replica(half: list[spec.Message]) -> list[spec.Message]:
        connection = await RawClient.connect(port)
        try:
            return [await connection.request(m) for m in half]
        finally:
            await connection.close()

    answers = await asyncio.gather(replica(messages[0::2]), replica(messages[1::2]))
    return answers[0] + answers[1]


def twice_each(original: spec.Message, mti: str) -> list[spec.Message]:
    """A's reversal, B's repeat of it (same STAN and time), and B's own reversal, twice."""
    first = reversal(original, mti=mti, stan=next_stan())
    repeat = {
        **first,
        "t": spec.REVERSAL_ADVICE_REPEAT if mti == spec.REVERSAL_ADVICE else spec.REVERSAL_REPEAT,
    }
    own = {**reversal(original, mti=mti, stan=next_stan()), "7": "1124120600"}
    return [first, repeat, own, first, repeat, own]


async def test_a_posting_reversed_by_two_replicas_is_restored_once(
    host, client, accounts, store, security
):
    bank = accounts["bank-ok"]
    block = await security.pin_block(bank.binding, "739146")
    original = request(bank, 9_000, mti=spec.FINANCIAL_REQUEST, pin_block=block)
    assert (await client.request(original))["39"] == ResponseCode.APPROVED
    answers = await from_two_replicas(host.port, twice_each(original, spec.REVERSAL_REQUEST))
    assert {a["39"] for a in answers} == {ResponseCode.APPROVED}
    assert (await snapshot(store, security, bank)).account.balance == bank.balance


async def test_a_hold_and_a_completion_reversed_by_two_replicas_are_undone_once(
    host, client, accounts, store, security
):
    """The completion's reversal, sent by both replicas, puts its hold back once; the
    authorization's reversal, sent by both, releases that hold once."""
    visa = accounts["visa-ok"]
    original = request(visa, 10_000)
    assert (await client.request(original))["39"] == ResponseCode.APPROVED
    completion = advice(original, 6_000)
    assert (await client.request(completion))["39"] == ResponseCode.APPROVED
    undo = await from_two_replicas(host.port, twice_each(completion, spec.REVERSAL_ADVICE))
    assert {a["39"] for a in undo} == {ResponseCode.APPROVED}
    snap = await snapshot(store, security, visa)
    assert (snap.account.balance, snap.held) == (visa.balance, 10_000)
    release = await from_two_replicas(host.port, twice_each(original, spec.REVERSAL_ADVICE))
    assert {a["39"] for a in release} == {ResponseCode.APPROVED}
    snap = await snapshot(store, security, visa)
    assert (snap.account.balance, snap.held) == (visa.balance, 0)
