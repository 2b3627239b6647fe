"""A merchant as an insider after authorization, against a running gateway actor, the real
keystore, RabbitMQ and issuer host: merchant M-3008 holds its own broker login, keys and
certificates, and whatever it stole of merchant M-3001's traffic (its CapTokens, XIDs,
AuthRRPIDs, batch ids).

It cannot capture, refund or reverse another merchant's authorization with a stolen CapToken
(``unknownXID``, nothing recorded, nothing at the host), cannot claim the victim's merchant id
under its own signature (``invalidField``), and reaches only its own batches (the victim's
batch id names nothing of the attacker's: ``unknownBatchID``; the victim's batch stays open).
What the gateway and the POS keep after authorization holds no card number.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from actors.gateway.actor import GatewayActor
from actors.gateway.identity import identity_path, ledger_path, register
from actors.issuer.accounts import Store
from actors.issuer.host import IssuerHost
from actors.issuer.seed import seed
from actors.merchant.payments import REQUESTS
from actors.merchant.service import MerchantService
from actors.merchant.store import MerchantRow, MerchantStore
from broker.peer import PeerLink
from keystore.keyring import KeyRing
from protocol import clearing, codec, ids, pan
from protocol import payment as pw
from protocol.certs import cert_thumbprint, certificate_der, public_key_of
from protocol.keys import get_suite, suite_for_public_key
from protocol.messages import (
    AuthCode,
    AuthReqData,
    AuthReqPayload,
    AuthTags,
    BAStatus,
    BatchAdminReqData,
    BatchOperation,
    CapItem,
    CapPayload,
    CapReqData,
    CapRevOrCredItem,
    CapRevOrCredReqData,
    CurrAmt,
    EntityKind,
    IDData,
    MerTermIDs,
    RRTags,
    TransIDs,
)
from protocol.requester import CAClient, register_cardholder, register_entity
from protocol.states import merchant_order
from protocol.wrapper import decode_message
from tests.fixtures_ca import CAEnv, files_bytes, new_key
from tests.gateway.conftest import ACCOUNTS, BRAND, MERCHANT_ID, Card, GatewayEnv, error_code

pytestmark = pytest.mark.integration

ATTACKER_ID = "M-3008"
ROUTE = "gateway.gw7"


class Attacker:
    """Merchant M-3008: its own login, keys and certificates; builds requests as it likes."""

    def __init__(self, link: Any, sig: Any, kx: Any, certs: list[Any], env: GatewayEnv) -> None:
        self.link, self.sig, self.kx, self.certs, self.env = link, sig, kx, certs, env

    async def send(self, pair: clearing.Pair, data: Any, tokens: list[bytes]) -> bytes:
        gw_kx = public_key_of(self.env.identity.kx_cert)
        wrapped = await clearing.build_request(
            pair, self.sig, cert_thumbprint(self.certs[0]), suite_for_public_key(gw_kx), gw_kx,
            cert_thumbprint(self.env.identity.kx_cert), data, tokens,
            [certificate_der(c) for c in self.certs], ids.SystemClock().now_ms(),
        )  # fmt: skip
        _, reply = await self.link.request_raw(pair.req_amqp, wrapped)
        return bytes(reply)

    async def answer(self, pair: clearing.Pair, reply: bytes) -> Any:
        decoded = decode_message(reply, now_ms=ids.SystemClock().now_ms())
        data, _ = await clearing.open_response(
            pair, self.kx, cert_thumbprint(self.certs[1]), decoded.body,
            public_key_of(self.env.identity.sig_cert),
        )  # fmt: skip
        return data

    def tags(self, merchant_id: str = ATTACKER_ID) -> RRTags:
        return RRTags(
            ids.new_rrpid(), MerTermIDs(merchant_id, None, None), ids.SystemClock().now_ms()
        )


@pytest.fixture(scope="module")
async def world(
    ca_env: CAEnv, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[GatewayEnv, MerchantService, Attacker, Path]]:
    """Gateway gw7 (its own issuer host), victim POS M-3001 and attacker M-3008."""
    from tests.issuer.softsecurity import SoftIssuerSecurity

    data_dir = tmp_path_factory.mktemp("after-attack")
    security = SoftIssuerSecurity()
    store_path = data_dir / "issuer.sqlite"
    host_store = Store(store_path)
    await seed(host_store, security, [ACCOUNTS["after"]], security.pin_block)
    host = IssuerHost(host_store, security)
    await host.start()
    gw_client, gw_keys = await ca_env.requester("gateway.gw7")
    identity = await register(
        gw_client, KeyRing(gw_keys, get_suite(ca_env.settings.suite)), root=ca_env.root,
        brand=BRAND, gateway_id="P-3007", acquirer_bin="411111",
    )  # fmt: skip
    await gw_client.close()
    await gw_keys.close()
    identity.save(identity_path(data_dir, "gw7"))
    actor = GatewayActor(
        ca_env.settings.replace(data_dir=data_dir), "gw7",
        url=ca_env.deployment.url_for("gateway.gw7"), keystore_queue=ca_env.deployment.queue,
        issuer_port=host.port,
    )  # fmt: skip
    await actor.start()

    async def merchant(login: str, merchant_id: str) -> tuple[Any, Any, list[Any], Any]:
        client, keys = await ca_env.requester(login, queue_suffix="after-ca")
        sig, kx = await new_key(keys, "after-sig"), await new_key(keys, "after-kx", exchange=True)
        reg = await register_entity(
            client, root=ca_env.root, brand=BRAND, requester=EntityKind.MERCHANT,
            id_data=IDData(merchant_id, "411111", None), sig_key=sig, kx_key=kx,
            values={"merchant_id": merchant_id, "merchant_name": "Shop", "mcc": "5942"},
        )  # fmt: skip
        await client.close()
        link = await PeerLink(keys.rpc.bus, "merchant", login.split(".")[1] + "-after",
                              target=ROUTE).start()  # fmt: skip
        return (sig, kx, [reg.sig_cert, reg.kx_cert, *reg.chain], (keys, link))

    m_sig, m_kx, m_certs, (m_keys, m_link) = await merchant("merchant.m1", MERCHANT_ID)
    a_sig, a_kx, a_certs, (a_keys, a_link) = await merchant("merchant.m8", ATTACKER_ID)
    w_client, w_keys = await ca_env.requester("wallet.w7")
    account = ACCOUNTS["after"]
    key = await new_key(w_keys, "card-after-attack")
    reg = await register_cardholder(
        w_client, root=ca_env.root, brand=BRAND,
        account=pan.Account(pan.AccountKind.CARD, account.reference), expiry=account.expiry or "",
        key=key, values={"name": "Hanako Test", "postal_code": "100-0001"},
    )  # fmt: skip
    await w_client.close()
    cards = {"after": Card(key, reg.cert, list(reg.chain), account.reference,
                           account.expiry or "", reg.pan_secret)}  # fmt: skip
    env = GatewayEnv(
        ca_env, actor, identity, store_path, ledger_path(data_dir, "gw7"), CAClient(m_link),
        m_sig, m_kx, m_certs, cards,
    )  # fmt: skip
    pos_store = MerchantStore.open(data_dir, "victim")
    pos_store.save_merchant(
        MerchantRow(
            MERCHANT_ID, BRAND, "sig", "kx", certificate_der(m_certs[0]),
            certificate_der(m_certs[1]), [certificate_der(c) for c in m_certs[2:]],
            certificate_der(ca_env.root), identity.bci, list(identity.crls),
        ),
        ids.SystemClock().now_ms(),
    )  # fmt: skip
    labels = {"sig": m_sig, "kx": m_kx}

    async def keys(label: str) -> Any:
        return labels[label]

    pos = MerchantService(pos_store, keys, m_link)
    pos.add_gateway(BRAND, identity.kx_cert, list(identity.chain))
    attacker = Attacker(a_link, a_sig, a_kx, a_certs, env)
    try:
        yield env, pos, attacker, data_dir
    finally:
        pos.close()
        pos_store.close()
        for link in (m_link, a_link):
            await link.close()
        for k in (m_keys, a_keys, w_keys):
            await k.close()
        await actor.stop()
        await host.stop()
        host_store.close()


async def authorized(
    env: GatewayEnv, pos: MerchantService, amount: int, first: int | None = None
) -> tuple[bytes, Any]:
    """One purchase authorized (``first``: only the first shipment of it, with an AuthToken
    for the rest), recorded at the victim's POS as its PReq flow does."""
    p = await env.purchase("after", amount, auth_amount=first)
    data, baggage = await env.authorize(p, "after")
    assert data.payload.auth_code is AuthCode.APPROVED
    assert (baggage.auth_token is not None) == (first is not None)
    trans = p.data.auth_tags.trans_ids
    assert trans.lid_m is not None
    now = ids.SystemClock().now_ms()
    pos.store.add_order(trans.lid_m, MERCHANT_ID, "a book", CurrAmt("JPY", amount), False,
                        merchant_order().to_bytes(), now, first)  # fmt: skip
    with pos.store.transaction() as db:
        pos.store.update_order(
            db, trans.lid_m, now, xid=trans.xid, trans_ids=codec.encode(trans),
            auth_rrpid=p.data.auth_tags.rrpid, auth_code=0, auth_amount=first or amount,
            cap_token=baggage.cap_token, auth_token=baggage.auth_token,
        )  # fmt: skip
    return trans.lid_m, p.data


def host_card(env: GatewayEnv) -> tuple[int, int, int]:
    """(balance, active holds, completions and refunds) of the card at the issuer host."""
    with sqlite3.connect(env.issuer_store_path) as db:
        balance = db.execute("SELECT balance FROM accounts").fetchone()[0]
        held = db.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM transactions "
            "WHERE effect = 'hold' AND state = 'active'"
        ).fetchone()[0]
        advised = db.execute("SELECT COUNT(*) FROM transactions WHERE mti = '0220'").fetchone()[0]
    return int(balance), int(held), int(advised)


async def test_a_stolen_cap_token_captures_and_refunds_nothing(world: Any) -> None:
    env, pos, attacker, _ = world
    lid, auth = await authorized(env, pos, 6_000)
    order = pos.store.order(lid)
    await env.actor.link.saf_idle()
    before = host_card(env)
    item = CapItem(auth.auth_tags.trans_ids, auth.auth_tags.rrpid,
                   CapPayload(ids.SystemClock().now_ms(), CurrAmt("JPY", 6_000), None))  # fmt: skip
    reply = await attacker.send(clearing.CAPTURE, CapReqData(attacker.tags(), [item]),
                                [order.cap_token])  # fmt: skip
    res = await attacker.answer(clearing.CAPTURE, reply)
    assert res.items[0].payload.cap_code.name == "UNKNOWN_XID"
    assert env.actor.books.payment(auth.auth_tags.rrpid) is None
    # under the victim's merchant id, but its own signature: the message itself is refused
    forged = CapReqData(attacker.tags(MERCHANT_ID), [item])
    reply = await attacker.send(clearing.CAPTURE, forged, [order.cap_token])
    assert error_code(reply).name == "INVALID_FIELD"
    # the victim captures; the attacker tries to refund and to reverse it
    [ok] = await pos.after.capture([lid])
    assert ok.code == "SUCCESS"
    await env.actor.link.saf_idle()
    captured = host_card(env)
    assert captured == (before[0] + 6_000, before[1] - 6_000, before[2] + 1)
    refund = CapRevOrCredItem(
        auth.auth_tags.trans_ids, auth.auth_tags.rrpid, item.payload, None,
        ids.SystemClock().now_ms(), CurrAmt("JPY", 6_000),
    )  # fmt: skip
    for pair in (clearing.CREDIT, clearing.CAPTURE_REVERSAL):
        reply = await attacker.send(pair, CapRevOrCredReqData(attacker.tags(), [refund]),
                                    [order.cap_token])  # fmt: skip
        res = await attacker.answer(pair, reply)
        assert res.items[0].code.name == "UNKNOWN_XID"
    await env.actor.link.saf_idle()
    assert host_card(env) == captured
    p = env.actor.books.payment(auth.auth_tags.rrpid)
    assert (p.state, p.captured, p.credited, p.merchant_id) == ("captured", 6_000, 0, MERCHANT_ID)


async def test_another_merchants_batch_is_out_of_reach(world: Any) -> None:
    env, pos, attacker, _ = world
    opened = await pos.after.batch(MERCHANT_ID, BatchOperation.OPEN)
    assert opened.ba_status is BAStatus.SUCCESS
    victim_batch = opened.batch_id
    for op in (BatchOperation.CLOSE, BatchOperation.PURGE, None):
        data = BatchAdminReqData(attacker.tags(), victim_batch, [], op, True, None, None)
        reply = await attacker.send(clearing.BATCH_ADMIN, data, [])
        res = await attacker.answer(clearing.BATCH_ADMIN, reply)
        assert res.ba_status is BAStatus.UNKNOWN_BATCH_ID, op
        assert res.batch_status is None
    assert env.actor.books.batch(MERCHANT_ID, victim_batch).state == "open"


async def test_the_books_hold_no_card_number(world: Any) -> None:
    env, pos, _, data_dir = world
    lid, _ = await authorized(env, pos, 1_200)
    [ok] = await pos.after.capture([lid])
    assert ok.code == "SUCCESS"
    assert (await pos.after.credit(lid, 200)).code == "SUCCESS"
    await env.actor.link.saf_idle()
    number = env.cards["after"].number.encode()
    folders = [data_dir / "gateway" / "gw7", data_dir / "merchant"]
    blobs = [b for folder in folders for b in files_bytes(folder)]
    assert blobs and all(number not in b for b in blobs)


# -- split shipment: AuthTokens ------------------------------------------------------------------


async def token_auth_req(
    env: GatewayEnv, sig: Any, certs: list[Any], merchant_id: str, trans: TransIDs,
    amount: int, token: bytes,
) -> bytes:  # fmt: skip
    """A wrapped subsequent AuthReq (SubsequentAuthInd, the AuthToken as its baggage)."""
    now = ids.SystemClock().now_ms()
    data = AuthReqData(
        AuthTags(ids.new_rrpid(), MerTermIDs(merchant_id, None, None), now, trans), None,
        AuthReqPayload(True, CurrAmt("JPY", amount), None, None, None), False, None,
    )  # fmt: skip
    gw_kx = public_key_of(env.identity.kx_cert)
    req = await pw.build_auth_req(
        sig, cert_thumbprint(certs[0]), suite_for_public_key(gw_kx), gw_kx,
        cert_thumbprint(env.identity.kx_cert), data, token, [certificate_der(c) for c in certs],
    )  # fmt: skip
    return pw.wrap_auth_req(now, req, data)


def ledger_rows(env: GatewayEnv) -> int:
    with sqlite3.connect(env.ledger_path) as db:
        return int(db.execute("SELECT COUNT(*) FROM auths").fetchone()[0])


async def test_a_tampered_auth_token_authorizes_nothing(world: Any) -> None:
    env, pos, _, _ = world
    lid, auth = await authorized(env, pos, 9_000, first=3_000)
    token = pos.store.order(lid).auth_token
    await env.actor.link.saf_idle()
    before, rows = host_card(env), ledger_rows(env)
    trans = auth.auth_tags.trans_ids
    for at in (len(token) // 3, len(token) // 2, len(token) - 5):  # wrap, body, tag
        bad = bytearray(token)
        bad[at] ^= 0x01
        wrapped = await token_auth_req(env, env.m_sig, env.m_certs, MERCHANT_ID, trans, 1_000,
                                       bytes(bad))  # fmt: skip
        _, reply = await env.client.request_raw(pw.AUTH_REQ_TYPE, wrapped)
        assert error_code(reply).name in ("DECRYPTION_FAILURE", "DECODING_FAILURE"), at
    wrapped = await token_auth_req(
        env, env.m_sig, env.m_certs, MERCHANT_ID, trans, 1_000, auth.auth_tags.rrpid
    )  # not a token at all
    _, reply = await env.client.request_raw(pw.AUTH_REQ_TYPE, wrapped)
    assert error_code(reply).name in ("DECRYPTION_FAILURE", "DECODING_FAILURE")
    await env.actor.link.saf_idle()
    assert (host_card(env), ledger_rows(env)) == (before, rows)
    # the genuine token still works: nothing was spent by the forgeries
    shipped = await pos.after.authorize_next(lid, 6_000)
    assert (shipped.code, shipped.amount, shipped.more) == ("APPROVED", 6_000, False)


async def test_another_merchants_auth_token_authorizes_nothing(world: Any) -> None:
    env, pos, attacker, _ = world
    lid, auth = await authorized(env, pos, 8_000, first=2_000)
    token = pos.store.order(lid).auth_token
    await env.actor.link.saf_idle()
    before, rows = host_card(env), ledger_rows(env)
    trans = auth.auth_tags.trans_ids
    wrapped = await token_auth_req(env, attacker.sig, attacker.certs, ATTACKER_ID, trans, 2_000,
                                   token)  # fmt: skip
    _, reply = await attacker.link.request_raw(pw.AUTH_REQ_TYPE, wrapped)
    assert error_code(reply).name == "UNKNOWN_XID"
    # under the victim's merchant id with its own signature: the message itself is refused
    wrapped = await token_auth_req(env, attacker.sig, attacker.certs, MERCHANT_ID, trans, 2_000,
                                   token)  # fmt: skip
    _, reply = await attacker.link.request_raw(pw.AUTH_REQ_TYPE, wrapped)
    assert error_code(reply).name == "INVALID_FIELD"
    await env.actor.link.saf_idle()
    assert (host_card(env), ledger_rows(env)) == (before, rows)
    assert pos.store.order(lid).auth_token == token
    shipped = await pos.after.authorize_next(lid, 2_000)
    assert shipped.ok and shipped.more


async def test_a_replayed_auth_token_request_authorizes_once(world: Any) -> None:
    env, pos, _, _ = world
    lid, auth = await authorized(env, pos, 7_000, first=1_000)
    spent = pos.store.order(lid).auth_token
    shipped = await pos.after.authorize_next(lid, 2_500)
    assert shipped.ok and shipped.more
    [sent] = [r for r in pos.after.db.all(sa.select(REQUESTS)) if r.msg_type == 10
              and bytes(r.request) and codec.unpackb(r.lid_ms) == [lid]]  # fmt: skip
    await env.actor.link.saf_idle()
    before, rows = host_card(env), ledger_rows(env)
    # the very same request again: the stored answer, nothing twice
    _, first = await env.client.request_raw(pw.AUTH_REQ_TYPE, bytes(sent.request))
    _, again = await env.client.request_raw(pw.AUTH_REQ_TYPE, bytes(sent.request))
    assert first == again
    # the spent token under a new RRPID: replay, whatever the amount
    trans = auth.auth_tags.trans_ids
    for amount in (2_500, 1_000):
        wrapped = await token_auth_req(env, env.m_sig, env.m_certs, MERCHANT_ID, trans, amount,
                                       spent)  # fmt: skip
        _, reply = await env.client.request_raw(pw.AUTH_REQ_TYPE, wrapped)
        assert error_code(reply).name == "REPLAY"
    assert ledger_rows(env) == rows  # neither the replay nor the spent token was recorded
    # the new token beyond what it allows: amountError, nothing authorized, token not spent
    over = await pos.after.authorize_next(lid, 3_600)
    assert (over.code, over.amount, over.lid_m) == ("AMOUNT_ERROR", 0, None)
    await env.actor.link.saf_idle()
    assert host_card(env) == before
    last = await pos.after.authorize_next(lid, 3_500)
    assert (last.code, last.amount, last.more) == ("APPROVED", 3_500, False)
