"""Wallet ⇄ merchant ⇄ gateway purchases over RabbitMQ + SoftHSM2 + the CA: the merchant
authorizes with a PI it cannot read, keeps no PAN, and refuses tampered or replayed PReqs
without changing state."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from actors.entrypoint import SetEntry
from actors.merchant.store import MerchantStore
from actors.wallet import purchase
from actors.wallet.errors import WalletError
from protocol import codec, dualsig, pan
from protocol.certs import load_certificate
from protocol.detached import DetachedSignature
from protocol.errors import ErrorCode
from protocol.ids import SystemClock
from protocol.messages import (
    AuthCode,
    CompletionCode,
    CurrAmt,
    Error,
    ErrorTBS,
    MessageType,
    PInitRes,
    PReq,
)
from protocol.states import Machine, MerchantOrder
from protocol.wrapper import decode_message, encode_message, make_header
from tests.merchant.conftest import MERCHANT_ID, PurchaseEnv

PAN = "4111111111111111"
EXPIRY = "3012"
USER, PASS = "hanako", "correct horse battery"
FORM = {"name": "Hanako Test", "postal_code": "100-0001"}
ROUTE = "merchant.pos1"


def leaked(blob: bytes, secrets_: list[bytes]) -> bool:
    forms = [PAN.encode(), PAN.encode("utf-16-le"), bytes.fromhex(PAN), PAN[4:].encode()]
    return any(f in blob for f in forms + secrets_)


def merchant_db_bytes(env: PurchaseEnv) -> bytes:
    return b"".join(p.read_bytes() for p in Path(env.merchant_dir).rglob("*.sqlite*"))


@pytest.fixture(scope="module")
async def card(purchase_env: PurchaseEnv) -> str:
    wallet = purchase_env.wallet
    wallet.register(USER, PASS)
    return await wallet.enroll(
        USER, brand="alpha", account=pan.Account(pan.AccountKind.CARD, PAN),
        expiry=EXPIRY, values=FORM,
    )  # fmt: skip


async def test_purchase_end_to_end_without_pan_at_the_merchant(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """PInit → PReq → AuthReq/AuthRes → PRes; the gateway reads the PAN, the merchant never."""
    env = purchase_env
    service = env.merchant.service
    assert service is not None
    amount = CurrAmt("JPY", 12_800)
    lid_m = service.create_order(MERCHANT_ID, "2 books: SET explained", amount)
    with capture_logs() as logs:
        result = await env.wallet.buy(
            USER, card_id=card, merchant=ROUTE, lid_m=lid_m,
            description="2 books: SET explained", amount=amount,
        )  # fmt: skip
    assert result.completion is CompletionCode.AUTHORIZATION_PERFORMED
    assert result.auth_code == AuthCode.APPROVED
    # The gateway opened the PI: the account and PANSecret match the cardholder certificate.
    view = env.gateway.seen[-1]
    pan_data = pan.decode_pan_data(view.pan_data)
    assert pan_data.account.number == PAN
    row = env.merchant.store.order(lid_m)  # type: ignore[union-attr]
    assert row is not None and row.cap_token == env.gateway.cap_tokens[-1]  # kept opaque
    assert Machine.from_bytes(row.state).state == MerchantOrder.DONE
    # Least knowledge: nothing the merchant received, stored or logged holds the PAN or
    # the secrets that travel with it.
    secrets_ = [pan_data.pan_secret, pan_data.ex_nonce]
    assert env.received and not any(leaked(m, secrets_) for m in env.received)
    assert not any(leaked(m, secrets_) for m in env.gateway.sent)  # AuthRes it received
    assert not leaked(merchant_db_bytes(env), secrets_)
    assert PAN not in repr(logs) and PAN[-8:] not in repr(logs)
    # Inquiry answers the stored outcome.
    inq = await env.wallet.inquire(USER, result.xid)
    assert (inq.completion, inq.auth_code) == (result.completion, result.auth_code)


async def test_duplicate_preq_gets_stored_pres_and_no_second_authorization(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """The same PReq again is answered from the store; the gateway is not asked twice."""
    env = purchase_env
    preqs = [
        m for m in env.received if decode_message(m, now_ms=_now()).msg_type is MessageType.PREQ
    ]
    assert preqs
    authorizations = len(env.gateway.seen)
    first = await env.wallet.peers.request(ROUTE, str(int(MessageType.PREQ)), preqs[-1])
    again = await env.wallet.peers.request(ROUTE, str(int(MessageType.PREQ)), preqs[-1])
    assert first[1] == again[1]
    assert decode_message(first[1], now_ms=_now()).msg_type is MessageType.PRES
    assert len(env.gateway.seen) == authorizations


def _now() -> int:
    return SystemClock().now_ms()


async def _offer(env: PurchaseEnv, card: str, lid_m: bytes) -> tuple[purchase.Offer, object]:
    """Run PInit by hand, as the wallet does, and return the checked offer."""
    wallet = env.wallet
    row = wallet.store.card(card)
    assert row is not None
    secrets_ = await wallet.vault.open(card, row.sealed)
    account = secrets_.account
    init = purchase.pinit_req(pan.merchant_bin(account), account.kind, "alpha", lid_m)
    header = make_header(_now(), lid_c=init.lid_c, lid_m=lid_m, rrpid=init.rrpid)
    res, res_header = await wallet._reply(ROUTE, header, init, PInitRes)
    offer = purchase.check_pinit_res(res, res_header, init, load_certificate(row.root), _now())
    return offer, secrets_


async def _send_preq(env: PurchaseEnv, preq: PReq, oi: object) -> bytes:
    trans = oi.trans_ids  # type: ignore[attr-defined]
    header = make_header(
        _now(),
        xid=trans.xid,
        lid_c=trans.lid_c,
        lid_m=trans.lid_m,
        rrpid=oi.rrpid,  # type: ignore[attr-defined]
    )
    _, reply = await env.wallet.peers.request(
        ROUTE, str(int(MessageType.PREQ)), encode_message(header, preq)
    )
    return reply


def _error_code(reply: bytes) -> ErrorCode | None:
    body = decode_message(reply, now_ms=_now()).body
    return codec.decode(ErrorTBS, body.content).code if isinstance(body, Error) else None


async def test_tampered_and_misdirected_preqs_are_refused_without_state_change(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """Amount mismatch, a flipped signature byte, a PReq replayed into another session: each
    gets a SET Error and the order stays as it was; the genuine PReq then succeeds."""
    env = purchase_env
    service, store = env.merchant.service, env.merchant.store
    assert service is not None and isinstance(store, MerchantStore)
    wallet = env.wallet
    row = wallet.store.card(card)
    assert row is not None
    key = await wallet.keystore.private_key(row.key_label)
    cert, chain = load_certificate(row.cert), [load_certificate(c) for c in row.chain]
    amount = CurrAmt("JPY", 5_000)
    lid_m = service.create_order(MERCHANT_ID, "1 lamp", amount)
    offer, secrets_ = await _offer(env, card, lid_m)
    before = store.order(lid_m)
    authorizations = len(env.gateway.seen)

    # 1. The cardholder signed another amount than the merchant's order: HOD differs.
    cheaper, oi = await purchase.build_preq(
        offer,
        key,
        cert,
        chain,
        secrets_,
        "1 lamp",
        CurrAmt("JPY", 50),  # type: ignore[arg-type]
    )
    assert _error_code(await _send_preq(env, cheaper, oi)) is ErrorCode.LINKAGE_FAILURE
    # 2. One flipped byte in the dual signature.
    good, good_oi = await purchase.build_preq(
        offer,
        key,
        cert,
        chain,
        secrets_,
        "1 lamp",
        amount,  # type: ignore[arg-type]
    )
    pid = codec.decode(dualsig.PIDualSigned, good.pi)
    flipped = bytearray(pid.signature.signature)
    flipped[-1] ^= 0x01
    forged = dualsig.PIDualSigned(
        DetachedSignature(pid.signature.content_type, pid.signature.signer, bytes(flipped)),
        pid.envelope,
    )
    bad = PReq(good.pi_kind, codec.encode(forged), good.oi_data, good.pi_data_digest, good.certs)
    assert _error_code(await _send_preq(env, bad, good_oi)) is ErrorCode.SIGNATURE_FAILURE
    # 3. The PI of the earlier, finished purchase swapped into this session's PReq.
    old = [m for m in env.received if decode_message(m, now_ms=_now()).msg_type is MessageType.PREQ]
    old_pi = decode_message(old[0], now_ms=_now()).body.pi
    swapped = PReq(good.pi_kind, old_pi, good.oi_data, good.pi_data_digest, good.certs)
    assert _error_code(await _send_preq(env, swapped, good_oi)) is ErrorCode.SIGNATURE_FAILURE
    # Nothing changed for the order under attack, the gateway was not asked.
    assert store.order(lid_m) == before
    assert len(env.gateway.seen) == authorizations
    assert Machine.from_bytes(before.state).state == MerchantOrder.PINIT_SENT  # type: ignore[union-attr]
    # The genuine PReq still goes through.
    reply = await _send_preq(env, good, good_oi)
    assert _error_code(reply) is None
    assert len(env.gateway.seen) == authorizations + 1
    # And once done, a second PReq for the same XID is refused.
    again, again_oi = await purchase.build_preq(
        offer,
        key,
        cert,
        chain,
        secrets_,
        "1 lamp",
        amount,  # type: ignore[arg-type]
    )
    assert _error_code(await _send_preq(env, again, again_oi)) is ErrorCode.REPLAY


async def test_wallet_lists_only_the_cardholders_cards(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """The service answers for the cardholder its front door authenticated (the passphrase is
    checked once, at login: tests/web, tests/attacks/test_web_live.py); nobody else's cards."""
    cards = purchase_env.wallet.cards(USER)
    assert [c.card_id for c in cards] == [card] and cards[0].hint == PAN[-4:]
    assert purchase_env.wallet.cards("somebody-else") == []


async def test_wallet_actor_enrols_a_card_as_its_own_identity(
    purchase_env: PurchaseEnv, tmp_path: Path
) -> None:
    """``actors.wallet`` as an actor: root from its data dir, a card enrolled, sealed at rest."""
    from actors.wallet.actor import WalletActor
    from actors.web.tls import ensure_test_certificate
    from protocol.certs import certificate_der
    from tests.ops.environments import free_port

    dep = purchase_env.ca.deployment
    (tmp_path / "wallet").mkdir()
    (tmp_path / "wallet" / "root.der").write_bytes(certificate_der(purchase_env.ca.root))
    settings = purchase_env.ca.settings.replace(data_dir=tmp_path, wallet_web_port=free_port())
    ensure_test_certificate(settings)  # its HTTPS front door (the supervisor makes it in an env)
    actor = WalletActor(settings, "w2", url=dep.url_for("wallet.w2"), keystore_queue=dep.queue)
    await actor.start()
    try:
        assert actor.service is not None
        actor.service.register("taro", "another long passphrase")
        beta = "5555555555554444"
        card_id = await actor.service.enroll(
            "taro", brand="beta",
            account=pan.Account(pan.AccountKind.CARD, beta), expiry=EXPIRY, values=FORM,
        )  # fmt: skip
        cards = actor.service.cards("taro")
        assert [(c.card_id, c.brand, c.hint) for c in cards] == [(card_id, "beta", "4444")]
    finally:
        await actor.stop()
    db = b"".join(p.read_bytes() for p in (tmp_path / "wallet").glob("*.sqlite*"))
    assert beta.encode() not in db and b"another long passphrase" not in db


async def test_a_second_wallet_replica_finishes_a_purchase_the_first_started(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """Started purchases live in the wallet's store (actors/wallet/store.py Rule 4): a second
    wallet process on the same store finishes it, once; the stored row holds no PAN."""
    from actors.wallet.service import WalletService
    from actors.wallet.store import WalletStore

    env = purchase_env
    first = env.wallet
    service = env.merchant.service
    assert service is not None
    amount = CurrAmt("JPY", 4_200)
    lid_m = service.create_order(MERCHANT_ID, "a map", amount)
    started = await first.start_purchase(
        USER, card_id=card, merchant=ROUTE, lid_m=lid_m, description="a map", amount=amount
    )
    path = first.store.path
    assert PAN.encode() not in b"".join(p.read_bytes() for p in path.parent.glob("*.sqlite*"))
    store = WalletStore.open(path.parent.parent, path.stem)
    second = WalletService(store, first.keystore, first.peers, first.ca, root=env.ca.root)
    try:
        result = await second.finish_purchase(USER, started.purchase_id)
        assert result.completion is CompletionCode.AUTHORIZATION_PERFORMED
        with pytest.raises(WalletError, match="no such started purchase"):
            await first.finish_purchase(USER, started.purchase_id)
        # the purchase's record is the same row whichever replica finished it
        assert first.store.purchase(result.xid) is not None
    finally:
        store.close()


async def test_a_purchase_whose_wallet_died_after_its_preq_is_finished_once_by_another(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """The wallet process finishing a purchase dies right after its PReq left (here: its task
    is cancelled once the merchant answered, before it saw the answer). Once its lease runs
    out another replica resends the stored PReq: the merchant answers from its reply store,
    the gateway authorizes once, and the cardholder gets the outcome."""
    import asyncio

    from actors.wallet.service import WalletService
    from actors.wallet.store import WalletStore

    env = purchase_env
    service = env.merchant.service
    assert service is not None
    path = env.wallet.store.path
    stores = [WalletStore.open(path.parent.parent, path.stem) for _ in range(2)]
    w = env.wallet
    dying, taking_over = (
        WalletService(s, w.keystore, w.peers, w.ca, root=env.ca.root, owner=f"wallet.w1@{n}",
                      lease_seconds=0.5)
        for n, s in enumerate(stores, start=1)
    )  # fmt: skip
    try:
        amount = CurrAmt("JPY", 3_300)
        lid_m = service.create_order(MERCHANT_ID, "a lamp", amount)
        started = await dying.start_purchase(
            USER, card_id=card, merchant=ROUTE, lid_m=lid_m, description="a lamp", amount=amount
        )
        sent = dying._reply_raw

        async def send_then_die(*args: object) -> object:
            await sent(*args)  # type: ignore[arg-type]
            raise asyncio.CancelledError  # the process is gone before it reads the PRes

        dying._reply_raw = send_then_die  # type: ignore[method-assign]
        authorizations = len(env.gateway.seen)
        with pytest.raises(asyncio.CancelledError):
            await dying.finish_purchase(USER, started.purchase_id)
        assert len(env.gateway.seen) == authorizations + 1
        with pytest.raises(WalletError, match="being finished"):  # its lease still runs
            await taking_over.finish_purchase(USER, started.purchase_id)
        await asyncio.sleep(0.6)
        result = await taking_over.finish_purchase(USER, started.purchase_id)
        assert result.completion is CompletionCode.AUTHORIZATION_PERFORMED
        assert len(env.gateway.seen) == authorizations + 1  # authorized once
        with pytest.raises(WalletError, match="no such started purchase"):
            await taking_over.finish_purchase(USER, started.purchase_id)
    finally:
        for s in stores:
            s.close()


async def test_one_preq_taken_by_two_merchant_replicas_at_once_authorizes_once(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """Two POS processes on one store get the same PReq at the same moment (a redelivery
    from a dead replica while the cardholder's wallet resends it): they commit one AuthReq
    between them (service Rule 5), the loser sending the winner's bytes, and both answer
    the same PRes, stored once."""
    import asyncio

    from actors.merchant.service import MerchantService

    env = purchase_env
    first, store = env.merchant.service, env.merchant.store
    assert first is not None and isinstance(store, MerchantStore)
    other_store = MerchantStore.open(store.path.parent.parent, store.path.stem)
    second = MerchantService(
        other_store, env.merchant.keys.get, env.merchant.gateway,
        peer_suite=env.merchant.keys.peer_suite,
    )  # fmt: skip
    try:
        wallet = env.wallet
        row = wallet.store.card(card)
        assert row is not None
        key = await wallet.keystore.private_key(row.key_label)
        amount = CurrAmt("JPY", 6_100)
        lid_m = first.create_order(MERCHANT_ID, "a clock", amount)
        offer, secrets_ = await _offer(env, card, lid_m)
        preq, oi = await purchase.build_preq(
            offer, key, load_certificate(row.cert), [load_certificate(c) for c in row.chain],
            secrets_, "a clock", amount,  # type: ignore[arg-type]
        )  # fmt: skip
        trans = oi.trans_ids
        header = make_header(
            _now(), xid=trans.xid, lid_c=trans.lid_c, lid_m=trans.lid_m, rrpid=oi.rrpid
        )
        message = encode_message(header, preq)
        asked = len(env.gateway.requests)
        replies = await asyncio.gather(
            *(SetEntry(s).handle(None, message) for s in (first, second))
        )
        bodies = [r[1] for r in replies if r is not None]
        assert len(bodies) == 2 and bodies[0] == bodies[1]
        pres = decode_message(bodies[0], now_ms=_now())
        assert pres.msg_type is MessageType.PRES
        sent = env.gateway.requests[asked:]
        assert sent and len(set(sent)) == 1  # one AuthReq; a repeat is the same bytes
        order = store.order(lid_m)
        assert order is not None and order.completion is not None
        assert Machine.from_bytes(order.state).state != MerchantOrder.AUTH_SENT
        assert store.reply_for(oi.rrpid) is not None
    finally:
        second.close()
        other_store.close()


async def test_an_authorization_the_gateway_left_unanswered_is_finished_by_the_pos(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """A POS whose gateway does not answer commits its AuthReq and answers `orderReceived`
    (service Rule 4) - then `resolve_silent` resends the committed AuthReq and commits the
    outcome: the order is authorized once, and the cardholder's retry of the same PReq gets
    that stored PRes."""
    from actors.merchant.service import MerchantService
    from broker.peer import PeerLink

    env = purchase_env
    first, store = env.merchant.service, env.merchant.store
    assert first is not None and isinstance(store, MerchantStore) and env.merchant.bus
    silent_store = MerchantStore.open(store.path.parent.parent, store.path.stem)
    nowhere = await PeerLink(env.merchant.bus, "merchant", "silent", target="gateway.nobody",
                             timeout=1.0).start()  # fmt: skip
    silent = MerchantService(silent_store, env.merchant.keys.get, nowhere,
                             peer_suite=env.merchant.keys.peer_suite)  # fmt: skip
    try:
        row = env.wallet.store.card(card)
        assert row is not None
        key = await env.wallet.keystore.private_key(row.key_label)
        amount = CurrAmt("JPY", 7_700)
        lid_m = first.create_order(MERCHANT_ID, "a kettle", amount)
        offer, secrets_ = await _offer(env, card, lid_m)
        preq, oi = await purchase.build_preq(
            offer, key, load_certificate(row.cert), [load_certificate(c) for c in row.chain],
            secrets_, "a kettle", amount,  # type: ignore[arg-type]
        )  # fmt: skip
        trans = oi.trans_ids
        header = make_header(
            _now(), xid=trans.xid, lid_c=trans.lid_c, lid_m=trans.lid_m, rrpid=oi.rrpid
        )
        message = encode_message(header, preq)
        asked = len(env.gateway.requests)
        reply = await SetEntry(silent).handle(None, message)
        assert reply is not None
        told = decode_message(reply[1], now_ms=_now()).body
        assert _completion(told) is CompletionCode.ORDER_RECEIVED
        order = store.order(lid_m)
        assert order is not None and order.completion is None and order.auth_req is not None
        assert Machine.from_bytes(order.state).state == MerchantOrder.AUTH_SENT
        assert store.reply_for(oi.rrpid) is None and len(env.gateway.requests) == asked
        # a fresh order is not touched: only those older than the wait
        assert await first.resolve_silent(older_than_ms=3_600_000) == 0
        assert await first.resolve_silent(older_than_ms=0) == 1
        assert len(env.gateway.requests) == asked + 1
        done = store.order(lid_m)
        assert done is not None and done.completion == CompletionCode.AUTHORIZATION_PERFORMED
        assert await first.resolve_silent(older_than_ms=0) == 0  # nothing left
        again = await SetEntry(first).handle(None, message)  # the cardholder's retry
        assert again is not None
        stored = store.reply_for(oi.rrpid)
        assert stored is not None and again[1] == stored[2]
        assert _completion(decode_message(again[1], now_ms=_now()).body) is (
            CompletionCode.AUTHORIZATION_PERFORMED
        )
        assert len(env.gateway.requests) == asked + 1
    finally:
        silent.close()
        await nowhere.close()
        silent_store.close()


def _completion(pres: object) -> CompletionCode:
    """The completion code a PRes carries (its signed content, read without checking)."""
    from protocol.messages import PRes, PResData
    from protocol.signed import SignedData

    assert isinstance(pres, PRes)
    return codec.decode(PResData, codec.decode(SignedData, pres.signed).content).completion


async def test_the_wallet_asks_again_after_order_received_and_gets_the_outcome(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """The merchant's gateway is away for the first PReq: the POS answers `orderReceived`;
    the wallet sends the same PReq again after a pause (wallet service Rule 6) and the
    cardholder gets the authorization, made once."""
    from broker.peer import PeerLink

    env = purchase_env
    service = env.merchant.service
    assert service is not None and env.merchant.bus is not None
    real = service.gateway
    nowhere = await PeerLink(env.merchant.bus, "merchant", "away", target="gateway.nobody",
                             timeout=1.0).start()  # fmt: skip
    sent = env.wallet._reply_raw
    preqs = 0

    async def gateway_back_after_first_preq(*args: object) -> object:
        nonlocal preqs
        try:
            return await sent(*args)  # type: ignore[arg-type]
        finally:
            if args[1] == str(int(MessageType.PREQ)):
                preqs += 1
                service.gateway = real

    amount = CurrAmt("JPY", 2_900)
    lid_m = service.create_order(MERCHANT_ID, "a cup", amount)
    asked = len(env.gateway.requests)
    service.gateway = nowhere
    env.wallet._reply_raw = gateway_back_after_first_preq  # type: ignore[method-assign]
    try:
        result = await env.wallet.buy(
            USER, card_id=card, merchant=ROUTE, lid_m=lid_m, description="a cup", amount=amount
        )
    finally:
        service.gateway = real
        env.wallet._reply_raw = sent  # type: ignore[method-assign]
        await nowhere.close()
    assert result.completion is CompletionCode.AUTHORIZATION_PERFORMED
    assert preqs == 2 and len(env.gateway.requests) == asked + 1


async def test_a_repeated_pinit_before_any_preq_opens_a_new_session(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """A wallet that died after its PInit, or a retried start: a new PInitReq for an order
    with no PReq yet gets a new session (service Rule 6); the old session's PReq is refused,
    the new one authorizes once, and a PInitReq after the PReq is refused (`replay`)."""
    env = purchase_env
    service = env.merchant.service
    assert service is not None
    row = env.wallet.store.card(card)
    assert row is not None
    key = await env.wallet.keystore.private_key(row.key_label)
    cert, chain = load_certificate(row.cert), [load_certificate(c) for c in row.chain]
    amount = CurrAmt("JPY", 4_400)
    lid_m = service.create_order(MERCHANT_ID, "a bowl", amount)
    old_offer, secrets_ = await _offer(env, card, lid_m)
    new_offer, _ = await _offer(env, card, lid_m)
    assert new_offer.data.trans_ids.xid != old_offer.data.trans_ids.xid
    asked = len(env.gateway.requests)
    stale, stale_oi = await purchase.build_preq(
        old_offer, key, cert, chain, secrets_, "a bowl", amount,  # type: ignore[arg-type]
    )  # fmt: skip
    assert _error_code(await _send_preq(env, stale, stale_oi)) is ErrorCode.UNKNOWN_XID
    fresh, fresh_oi = await purchase.build_preq(
        new_offer, key, cert, chain, secrets_, "a bowl", amount,  # type: ignore[arg-type]
    )  # fmt: skip
    assert _error_code(await _send_preq(env, fresh, fresh_oi)) is None
    assert len(env.gateway.requests) == asked + 1
    with pytest.raises(WalletError, match="REPLAY"):
        await _offer(env, card, lid_m)


async def test_a_preq_whose_reply_was_lost_with_the_wallets_link_is_asked_again(
    purchase_env: PurchaseEnv, card: str
) -> None:
    """The wallet's broker link dies (its node went away) while the merchant waits for the
    gateway: the reply due in the wallet's inbox is lost with it. The wallet's peer link sends
    the same PReq again once its inbox is back (broker/peer.py Rule 4); the merchant answers
    it from its reply store: authorized once, and the cardholder gets the outcome."""
    import asyncio

    from tests.broker.test_transient import cut_link

    env = purchase_env
    service = env.merchant.service
    assert service is not None
    amount = CurrAmt("JPY", 3_100)
    lid_m = service.create_order(MERCHANT_ID, "a plate", amount)
    asked = len(env.gateway.requests)
    env.gateway.gate.clear()
    try:
        with capture_logs() as events:
            buying = asyncio.create_task(env.wallet.buy(
                USER, card_id=card, merchant=ROUTE, lid_m=lid_m, description="a plate",
                amount=amount,
            ))  # fmt: skip
            async with asyncio.timeout(20):
                while len(env.gateway.requests) == asked:
                    await asyncio.sleep(0.02)
            await cut_link(env.wallet.peers.bus)
            async with asyncio.timeout(20):
                while not any(e["event"] == "peer_resend" for e in events):
                    await asyncio.sleep(0.02)
            env.gateway.gate.set()
            result = await asyncio.wait_for(buying, 30)
    finally:
        env.gateway.gate.set()
    assert result.completion is CompletionCode.AUTHORIZATION_PERFORMED
    assert len(env.gateway.requests) == asked + 1


async def test_a_preq_left_unanswered_is_in_progress_and_the_next_call_gets_the_outcome(
    purchase_env: PurchaseEnv, card: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway holds its answer longer than the wallet waits, three times: the wallet does
    not call the purchase failed (it may be authorized) but in progress, keeps the started
    purchase, and the cardholder's next call resends the stored PReq and gets the outcome,
    authorized once (wallet service Rule 6)."""
    import asyncio

    from actors.wallet import service as wallet_service
    from actors.wallet.errors import PurchaseInProgress
    from actors.wallet.service import WalletService
    from broker.peer import PeerLink

    env = purchase_env
    service = env.merchant.service
    assert service is not None
    w = env.wallet
    impatient = await PeerLink(w.peers.bus, "wallet", "impatient", timeout=0.5).start()
    wallet = WalletService(w.store, w.keystore, impatient, w.ca, root=env.ca.root,
                           owner="wallet.impatient")  # fmt: skip
    monkeypatch.setattr(wallet_service, "ASK_AGAIN_SECONDS", (0.1, 0.1))
    amount = CurrAmt("JPY", 2_300)
    lid_m = service.create_order(MERCHANT_ID, "a fork", amount)
    asked = len(env.gateway.requests)
    env.gateway.gate.clear()
    try:
        started = await wallet.start_purchase(
            USER, card_id=card, merchant=ROUTE, lid_m=lid_m, description="a fork", amount=amount
        )
        with pytest.raises(PurchaseInProgress):
            await wallet.finish_purchase(USER, started.purchase_id)
        env.gateway.gate.set()
        async with asyncio.timeout(20):
            while service.store.order(lid_m).completion is None:  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
        result = await wallet.finish_purchase(USER, started.purchase_id)
    finally:
        env.gateway.gate.set()
        await impatient.close()
    assert result.completion is CompletionCode.AUTHORIZATION_PERFORMED
    assert len(env.gateway.requests) == asked + 1
