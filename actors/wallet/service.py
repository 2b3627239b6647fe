"""The server-managed wallet: many cardholders, their cards, keys and purchases.

Rule 1: the cardholder is authenticated once per session by the front door (actors/web/:
one scrypt per login, off the event loop); every call names that authenticated cardholder and
a card is used only by the cardholder who enrolled it.
Rule 2: each card's signature key is generated in the token under the wallet identity
(label ``<identity>/card-<card_id>``); card data is stored sealed (actors/wallet/vault.py)
and opened only in memory for the purchase that needs it.
Rule 3: enrolment is cardholder registration with the CA (protocol/requester.py steps, each
answer checked); a purchase is PInit → PReq → PRes with the merchant (actors/wallet/
purchase.py), every answer checked before it is believed.
Rule 4: errors reaching the caller are ``WalletError``; they name the SET code or the step,
never a PAN, passphrase or secret.
Rule 5: a purchase is two calls: ``start_purchase`` (PInit; the offer is kept in memory under
a random id for ``PENDING_SECONDS``) and ``finish_purchase`` (PReq with the thin client's
``pin.seal_pin`` for a PIN account). The wallet never sees a clear PIN or PIN block; a PIN
account's purchase without a seal, or a card's with one, is refused.
Rule 6: a PRes `orderReceived` (the merchant's gateway has not answered yet), or no answer
in time, is not the end: the wallet sends the same PReq again after a pause, twice, and the
merchant answers the outcome once it has it (actors/merchant/service.py Rule 4); still none
leaves the started purchase to be finished by the next call (``PurchaseInProgress``).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from actors.wallet import purchase
from actors.wallet.errors import IN_PROGRESS, PurchaseInProgress, WalletError
from actors.wallet.store import CardRow, PurchaseRow, StartedRow, WalletStore
from actors.wallet.vault import CardSecrets, Vault, new_passphrase_record
from broker.peer import PeerLink
from keystore.client import KeystoreClient
from keystore.errors import KeystoreError
from keystore.keyring import KeyRing
from protocol import codec, ids, pan
from protocol.certs import certificate_der, load_certificate
from protocol.errors import ProtocolError
from protocol.keys import Suite, get_suite
from protocol.messages import (
    MESSAGE_TYPES,
    CertRes,
    CompletionCode,
    CurrAmt,
    InqRes,
    MessageType,
    PInitRes,
    PRes,
    RegFormRes,
    TransIDs,
)
from protocol.requester import (
    CAClient,
    CARequestError,
    build_cardholder_cert_req,
    build_reg_form_req,
    card_cinit,
    check_cardholder_cert_res,
    check_reg_form_res,
)
from protocol.set_error import RemoteError, expect_reply
from protocol.states import Machine, cardholder_purchase
from protocol.trustview import load_all
from protocol.wrapper import MessageHeader, encode_message, make_header
from setpay.clock import CLOCK
from setpay.logs import get_logger

log = get_logger(component="wallet")
PENDING_SECONDS = 300.0  # a started purchase not finished by then is forgotten
# A replica finishing a purchase holds it this long; if it dies, another may take over then
# (longer than the peer timeout a PReq waits for its PRes, so no live claimer is overtaken).
LEASE_SECONDS = 30.0
ASK_AGAIN_SECONDS = (1.0, 3.0)  # pauses before the same PReq again after `orderReceived`
MAX_PENDING = 4096


@dataclass(frozen=True, slots=True)
class CardInfo:
    card_id: str
    brand: str
    hint: str  # last four digits, for the cardholder to recognise the card
    pin: bool = False  # an OPE PIN account


@dataclass(frozen=True, slots=True)
class Started:
    """A purchase after PInit: what the thin client needs to seal a PIN (Rule 5)."""

    purchase_id: str
    xid: bytes
    gateway_cert: bytes  # DER of the key-exchange certificate PEThumb names, validated
    brand: str
    certs: list[bytes]  # the PInitRes's certificates, BCI and CRLs: the thin client revalidates
    crls: list[bytes]
    bci: bytes | None
    pin_binding: str | None = field(default=None, repr=False)  # PIN account: the block binds it
    oaep_hash: str = "sha1"  # the wallet's suite: the thin client seals under the same hash


@dataclass(frozen=True, slots=True)
class PurchaseResult:
    xid: bytes
    completion: CompletionCode
    auth_code: int | None


def _amqp(body: object) -> str:
    return str(int(MESSAGE_TYPES[type(body)]))


class WalletService:
    """Cardholder operations (Rules 1-4); transport-free but for the injected clients."""

    def __init__(
        self,
        store: WalletStore,
        keystore: KeystoreClient,
        peers: PeerLink,
        ca: CAClient,
        *,
        root: x509.Certificate | None,
        clock: ids.Clock | None = None,
        suite: Suite | None = None,
        owner: str = "wallet",
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.store = store
        self.owner = owner  # this process's name: who holds a started purchase (store Rule 4)
        self.lease_ms = int(lease_seconds * 1000)
        self.keystore = keystore
        self.keys = KeyRing(keystore, suite or get_suite("rsa2048"))  # cards' keys, this suite
        self.vault = Vault(keystore)
        self.peers = peers
        self.ca = ca
        self.root = root
        self.clock = clock or CLOCK
        self.floor = purchase.BciFloor(store)  # the newest BCI seen per brand (purchase Rule 4)

    async def start(self) -> None:
        await self.vault.ensure_key()

    # -- cardholders ----------------------------------------------------------------------------

    def register(self, user: str, passphrase: str) -> None:
        """A new cardholder with this passphrase (only its scrypt hash is stored)."""
        if not user or len(user) > 64:
            raise WalletError("user name must be 1-64 characters")
        if self.store.cardholder(user) is not None:  # before the scrypt: a refusal costs nothing
            raise WalletError(f"cardholder {user!r} exists")
        try:
            salt, digest, n = new_passphrase_record(passphrase)
        except ValueError as exc:
            raise WalletError(str(exc)) from None
        if not self.store.add_cardholder(user, salt, digest, n, self.clock.now_ms()):
            raise WalletError(f"cardholder {user!r} exists")

    def cards(self, user: str) -> list[CardInfo]:
        return [CardInfo(c.card_id, c.brand, c.hint, c.pin) for c in self.store.cards(user)]

    def _card(self, user: str, card_id: str) -> CardRow:
        card = self.store.card(card_id)
        if card is None or card.user != user:
            raise WalletError("no such card")
        return card

    def _root(self) -> x509.Certificate:
        if self.root is None:
            raise WalletError("the wallet has no trusted root certificate configured")
        return self.root

    # -- enrolment ------------------------------------------------------------------------------

    async def enroll(
        self,
        user: str,
        *,
        brand: str,
        account: pan.Account,
        expiry: str,
        values: dict[str, str],
        pin_account: bool = False,
    ) -> str:
        """Register a card with the CA; returns its card id (Rules 2, 3). ``pin_account``: the
        issuer keeps a PIN for it (OPE debit), so its purchases need the thin client's seal."""
        try:
            account.validate()
            pan.validate_expiry(expiry)
        except ProtocolError as exc:
            raise WalletError(f"card data refused: {exc.detail}") from None
        root = self._root()
        card_id = secrets.token_hex(8)
        try:
            key = await self.keys.create(f"card-{card_id}", exchange=False)
            client = self.ca
            lid = ids.new_lid()
            ca = await card_cinit(client, root, brand, lid, account.kind)
            req2, data2 = await build_reg_form_req(ca, lid, account)
            form = check_reg_form_res(
                await client.request(req2, data2.rrpid, RegFormRes), data2, ca
            )
            pending = await build_cardholder_cert_req(
                ca, form, key=key, account=account, expiry=expiry, values=values, lid=lid
            )
            res: CertRes = await client.request(pending.req, pending.data.rrpid, CertRes)
            reg = check_cardholder_cert_res(
                res, pending, ca, key=key, account=account, expiry=expiry,
                now_ms=self.clock.now_ms(),
            )  # fmt: skip
            card = CardSecrets(account, expiry, reg.pan_secret, pending.card_secret)
            sealed = await self.vault.seal(card_id, card)
        except CARequestError as exc:
            raise WalletError(f"CA refused the card ({exc})") from None
        except ProtocolError as exc:
            raise WalletError(f"registration failed: {exc.code.name}") from None
        except (KeystoreError, TimeoutError) as exc:
            raise WalletError(f"registration failed: {type(exc).__name__}") from None
        hint = account.number[-4:]
        row = CardRow(
            card_id, user, brand, hint, key.key_id, certificate_der(reg.cert),
            [certificate_der(c) for c in reg.chain], certificate_der(root), sealed, pin_account,
            pan.merchant_bin(account), int(account.kind),
        )  # fmt: skip
        self.store.add_card(row, self.clock.now_ms())
        log.info("wallet_card_enrolled", card_id=card_id, brand=brand, pin=pin_account)
        return card_id

    # -- purchase -------------------------------------------------------------------------------

    async def start_purchase(
        self,
        user: str,
        *,
        card_id: str,
        merchant: str,
        lid_m: bytes,
        description: str,
        amount: CurrAmt,
    ) -> Started:
        """PInit with the merchant at routing key ``merchant``; the checked offer waits for
        ``finish_purchase`` (Rules 3, 5)."""
        row = self._card(user, card_id)
        root = load_certificate(row.root)
        machine = cardholder_purchase()
        try:
            pin_binding = None
            if row.merchant_bin is not None and row.kind is not None and not row.pin:
                # what PInitReq names was kept at enrolment: no sealed card is opened here
                named = (row.merchant_bin, pan.AccountKind(row.kind))
            else:  # a PIN account (the thin client seals to its binding) or a card from v3
                account = (await self.vault.open(card_id, row.sealed)).account
                named = (pan.merchant_bin(account), account.kind)
                pin_binding = account.pin_binding_number if row.pin else None
            init = purchase.pinit_req(*named, row.brand, lid_m)
            header = make_header(
                self.clock.now_ms(), lid_c=init.lid_c, lid_m=lid_m, rrpid=init.rrpid
            )
            machine.send(MessageType.PINIT_REQ)
            res, res_header = await self._reply(merchant, header, init, PInitRes)
            offer = purchase.check_pinit_res(
                res, res_header, init, root, self.clock.now_ms(), self.floor
            )
            machine.receive(MessageType.PINIT_RES)
        except ProtocolError as exc:
            raise WalletError(f"purchase failed: {exc.code.name}") from None
        except (KeystoreError, TimeoutError) as exc:
            raise WalletError(f"purchase failed: {type(exc).__name__}") from None
        purchase_id = secrets.token_hex(16)
        now = self.clock.now_ms()
        self.store.save_started(  # every replica of this wallet finishes it (store Rule 4)
            StartedRow(purchase_id, user, card_id, merchant, purchase.offer_to_bytes(offer),
                       machine.to_bytes(), description, amount.currency, amount.amount, now),
            expire_before=now - int(PENDING_SECONDS * 1000), keep=MAX_PENDING,
        )  # fmt: skip
        return Started(
            purchase_id, offer.data.trans_ids.xid, certificate_der(offer.gateway_cert),
            offer.brand, offer.certs, offer.crls, offer.bci,
            pin_binding, self.keys.suite.oaep_hash,
        )  # fmt: skip

    async def finish_purchase(
        self, user: str, purchase_id: str, pin_seal: bytes | None = None
    ) -> PurchaseResult:
        """PReq → PRes for a started purchase; ``pin_seal`` is the thin client's sealed PIN
        block (required for a PIN account, refused otherwise; Rule 5). Any wallet replica
        finishes it; one whose claimer died resends the claimer's PReq (store Rule 4)."""
        gone = "no such started purchase (expired or finished)"
        now = self.clock.now_ms()
        not_before = now - int(PENDING_SECONDS * 1000)
        peek = self.store.started(purchase_id, user, not_before=not_before)
        row = None if peek is None else self.store.card(peek.card_id)
        if peek is None or row is None:
            raise WalletError(gone)
        if row.pin and pin_seal is None and peek.preq is None:
            raise WalletError("this card is a PIN account: the purchase needs a sealed PIN")
        if not row.pin and pin_seal is not None:
            raise WalletError("this card takes no PIN")
        pending = self.store.claim_started(purchase_id, user, not_before=not_before,
                                           owner=self.owner, now=now,
                                           lease_ms=self.lease_ms)  # fmt: skip
        if pending == "busy":
            raise PurchaseInProgress(IN_PROGRESS)
        if isinstance(pending, str):
            raise WalletError(gone)
        machine = Machine.from_bytes(pending.machine)
        merchant, description = pending.merchant, pending.description
        amount = CurrAmt(pending.currency, pending.amount)
        try:
            card = await self.vault.open(row.card_id, row.sealed)
            offer = purchase.offer_from_bytes(pending.offer, card.account)
            if pending.preq is not None and pending.preq_check is not None:
                # its claimer died after sending (or before): the same bytes again; the
                # merchant answers a PReq it has seen from its reply store
                message = pending.preq
                rrpid, chall_c, raw_trans = codec.unpackb(pending.preq_check)
                trans = codec.decode(TransIDs, raw_trans)
                log.warning("wallet_purchase_resumed", purchase=purchase_id)
            else:
                key = await self.keys.get(row.key_label)
                preq, oi = await purchase.build_preq(
                    offer, key, load_certificate(row.cert), load_all(row.chain), card,
                    description, amount, pin_seal, peer_suite=self.keys.peer_suite,
                )  # fmt: skip
                trans, rrpid, chall_c = oi.trans_ids, oi.rrpid, oi.chall_c
                machine.send(MessageType.PREQ)
                pheader = make_header(
                    self.clock.now_ms(), xid=trans.xid, lid_c=trans.lid_c, lid_m=trans.lid_m,
                    rrpid=rrpid,
                )  # fmt: skip
                message = encode_message(pheader, preq)
                self.store.record_preq(
                    purchase_id, message, codec.packb([rrpid, chall_c, codec.encode(trans)]),
                    machine.to_bytes(),
                )
            saved = PurchaseRow(
                trans.xid, row.card_id, merchant, codec.encode(trans),
                certificate_der(offer.merchant_cert), description, amount.currency,
                amount.amount, machine.to_bytes(), None, None,
            )  # fmt: skip
            self.store.save_purchase(saved, self.clock.now_ms())
            for pause in (*ASK_AGAIN_SECONDS, None):
                try:
                    pres, pres_header = await self._reply_raw(
                        merchant, str(int(MessageType.PREQ)), message, PRes
                    )
                except TimeoutError:  # Rule 6: no answer is no outcome: the same PReq again
                    if pause is None:
                        raise
                    log.info("wallet_preq_unanswered_asking_again", xid=trans.xid.hex())
                    await asyncio.sleep(pause)
                    continue
                data = purchase.check_result(
                    pres.signed, pres_header, offer.merchant_cert, "PRes", rrpid, chall_c,
                    trans,
                )  # fmt: skip
                if data.completion is not CompletionCode.ORDER_RECEIVED or pause is None:
                    break
                # Rule 6: the gateway has not answered the merchant yet: the same PReq again
                log.info("wallet_order_received_asking_again", xid=trans.xid.hex(), pause=pause)
                await asyncio.sleep(pause)
        except ProtocolError as exc:
            self.store.drop_started(purchase_id)  # one PReq per offer, whatever happens next
            raise WalletError(f"purchase failed: {exc.code.name}") from None
        except TimeoutError:
            if self._preq_left(purchase_id, user, not_before):
                # Rule 6: the PReq left, its outcome is the merchant's: the next call asks again
                self.store.release_started(purchase_id)
                raise PurchaseInProgress(IN_PROGRESS) from None
            self.store.drop_started(purchase_id)
            raise WalletError("purchase failed: TimeoutError") from None
        except KeystoreError as exc:
            self.store.drop_started(purchase_id)
            raise WalletError(f"purchase failed: {type(exc).__name__}") from None
        except WalletError:
            self.store.drop_started(purchase_id)
            raise
        machine.receive(MessageType.PRES)
        auth_code = None if data.auth_status is None else int(data.auth_status.auth_code)
        self.store.save_purchase(
            PurchaseRow(
                saved.xid, saved.card_id, saved.merchant, saved.trans_ids, saved.merchant_cert,
                saved.description, saved.currency, saved.amount, machine.to_bytes(),
                int(data.completion), auth_code,
            ),
            self.clock.now_ms(),
        )  # fmt: skip
        self.store.drop_started(purchase_id)
        log.info("wallet_purchase_done", xid=trans.xid.hex(), completion=data.completion.name,
                 pin=pin_seal is not None)  # fmt: skip
        return PurchaseResult(trans.xid, data.completion, auth_code)

    def _preq_left(self, purchase_id: str, user: str, not_before: int) -> bool:
        """Whether the started purchase's PReq was recorded (and so may have reached the
        merchant)."""
        row = self.store.started(purchase_id, user, not_before=not_before)
        return row is not None and row.preq is not None

    async def buy(
        self,
        user: str,
        *,
        card_id: str,
        merchant: str,
        lid_m: bytes,
        description: str,
        amount: CurrAmt,
    ) -> PurchaseResult:
        """A card purchase in one call: ``start_purchase`` then ``finish_purchase`` without a
        PIN (a PIN account needs the thin client's seal: use the two steps)."""
        started = await self.start_purchase(
            user, card_id=card_id, merchant=merchant, lid_m=lid_m,
            description=description, amount=amount,
        )  # fmt: skip
        if started.pin_binding is not None:
            self.store.drop_started(started.purchase_id)
            raise WalletError("this card is a PIN account: the purchase needs a sealed PIN")
        return await self.finish_purchase(user, started.purchase_id)

    async def _reply(
        self, target: str, header: MessageHeader, body: object, expect: type
    ) -> tuple[Any, MessageHeader]:
        """Send one message; the reply body (of type ``expect``) and its header."""
        return await self._reply_raw(target, _amqp(body), encode_message(header, body), expect)

    async def _reply_raw(
        self, target: str, amqp_type: str, message: bytes, expect: type
    ) -> tuple[Any, MessageHeader]:
        """Send one encoded message; the reply body (of type ``expect``) and its header."""
        _, reply = await self.peers.request(target, amqp_type, message)
        try:
            decoded = expect_reply(reply, self.clock.now_ms(), expect, who="merchant")
        except RemoteError as exc:  # read by protocol.set_error.read_error
            raise WalletError(str(exc)) from None
        return decoded.body, decoded.header

    async def inquire(self, user: str, xid: bytes) -> PurchaseResult:
        """InqReq → InqRes about one of this cardholder's purchases."""
        row = self.store.purchase(xid)
        card = None if row is None else self.store.card(row.card_id)
        if row is None or card is None or card.user != user:
            raise WalletError("no such purchase")  # the same for another's: no oracle
        trans = codec.decode(TransIDs, row.trans_ids)
        req, data = purchase.inq_req(trans)
        header = make_header(
            self.clock.now_ms(), xid=trans.xid, lid_c=trans.lid_c, lid_m=trans.lid_m,
            rrpid=data.rrpid,
        )  # fmt: skip
        try:
            res, res_header = await self._reply(row.merchant, header, req, InqRes)
            out = purchase.check_result(
                res.signed, res_header, load_certificate(row.merchant_cert), "InqRes",
                data.rrpid, data.chall_c2, trans,
            )  # fmt: skip
        except ProtocolError as exc:
            raise WalletError(f"inquiry failed: {exc.code.name}") from None
        except TimeoutError:
            raise WalletError("inquiry failed: merchant silent") from None
        auth_code = None if out.auth_status is None else int(out.auth_status.auth_code)
        return PurchaseResult(xid, out.completion, auth_code)
