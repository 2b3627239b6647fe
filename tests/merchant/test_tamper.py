"""An altered byte anywhere the merchant can check in a PReq is refused with a SET Error, leaves
the order as it was and sends nothing to the gateway; the genuine PReq still succeeds after.

Rule 1: the PI envelope's sealed part (key block, nonce, ciphertext) is opaque to the merchant
by design; the gateway refuses it (tests/gateway/test_refusals.py). Every other part is probed.
"""

from __future__ import annotations

import pytest

from actors.merchant.store import MerchantStore
from actors.wallet import purchase
from protocol import codec, dualsig, envelope, pan
from protocol.certs import load_certificate
from protocol.errors import ErrorCode
from protocol.messages import CurrAmt, MessageType, PReq
from protocol.wrapper import encode_message, make_header
from tests.merchant.conftest import MERCHANT_ID, PurchaseEnv
from tests.merchant.test_purchase import ROUTE, _error_code, _now, _offer

PAN = "4000000000000002"  # alpha BIN 400000, Luhn-valid; not the card test_purchase enrols
USER, PASS = "saburo", "tamper test passphrase"
FORM = {"name": "Saburo Test", "postal_code": "100-0002"}
PREQ_TYPE = str(int(MessageType.PREQ))


@pytest.fixture(scope="module")
async def tamper_card(purchase_env: PurchaseEnv) -> str:
    purchase_env.wallet.register(USER, PASS)
    return await purchase_env.wallet.enroll(
        USER, brand="alpha", account=pan.Account(pan.AccountKind.CARD, PAN),
        expiry="3012", values=FORM,
    )  # fmt: skip


def _regions(wrapped: bytes, preq: PReq) -> list[tuple[str, int, int]]:
    """(name, start, end) of the parts of the wrapped PReq the merchant can check (Rule 1)."""
    pid = codec.decode(dualsig.PIDualSigned, preq.pi)
    env = codec.decode(envelope.Envelope, pid.envelope)
    pi_at = wrapped.index(preq.pi)
    env_at = pi_at + preq.pi.index(pid.envelope)
    sealed_at = env_at + pid.envelope.index(env.key_block)
    return [
        ("header", 0, pi_at),
        ("PI signature", pi_at, env_at),
        ("PI recipient", env_at, sealed_at),
        ("OIData", *_span(wrapped, preq.oi_data)),
        ("PIData digest", *_span(wrapped, preq.pi_data_digest)),
        ("certs", wrapped.index(preq.certs[0]), _span(wrapped, preq.certs[-1])[1]),
    ]


def _span(blob: bytes, part: bytes) -> tuple[int, int]:
    start = blob.index(part)
    return start, start + len(part)


async def test_altered_bytes_across_preq_are_refused_without_state_change(
    purchase_env: PurchaseEnv, tamper_card: str
) -> None:
    env = purchase_env
    service, store = env.merchant.service, env.merchant.store
    assert service is not None and isinstance(store, MerchantStore)
    wallet = env.wallet
    row = wallet.store.card(tamper_card)
    assert row is not None
    key = await wallet.keystore.private_key(row.key_label)
    cert, chain = load_certificate(row.cert), [load_certificate(c) for c in row.chain]
    amount = CurrAmt("JPY", 7_700)
    lid_m = service.create_order(MERCHANT_ID, "1 kettle", amount)
    offer, secrets_ = await _offer(env, tamper_card, lid_m)
    preq, oi = await purchase.build_preq(offer, key, cert, chain, secrets_, "1 kettle", amount)  # type: ignore[arg-type]
    trans = oi.trans_ids
    header = make_header(_now(), xid=trans.xid, lid_c=trans.lid_c, lid_m=trans.lid_m,
                         rrpid=oi.rrpid)  # fmt: skip
    wrapped = encode_message(header, preq)
    before = store.order(lid_m)
    authorizations = len(env.gateway.seen)
    probed = 0
    for name, start, end in _regions(wrapped, preq):
        step = max(1, (end - start) // 4)  # first, last and three inner bytes of each part
        for offset in [*range(start, end, step), end - 1]:
            altered = bytearray(wrapped)
            altered[offset] ^= 0x01
            _, reply = await wallet.peers.request(ROUTE, PREQ_TYPE, bytes(altered))
            assert isinstance(_error_code(reply), ErrorCode), (name, offset)
            probed += 1
    assert probed >= 24
    # No state change: the order is still waiting for its PReq, the gateway was not asked.
    assert store.order(lid_m) == before
    assert before is not None and before.auth_req is None
    assert len(env.gateway.seen) == authorizations
    # The genuine PReq still goes through: nothing was consumed by the refusals.
    _, reply = await wallet.peers.request(ROUTE, PREQ_TYPE, wrapped)
    assert _error_code(reply) is None
    assert len(env.gateway.seen) == authorizations + 1
