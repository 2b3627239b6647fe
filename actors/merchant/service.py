"""The server-managed POS: PInit, PReq (with authorization at the gateway) and Inq for many
merchants (no transport; ``actors/merchant/actor.py`` moves the bytes).

Rule 1: every handler runs all its checks (wrapper, header ids, session, challenges, HOD,
cardholder chain, dual signature) before it changes state; a failed check raises
``ProtocolError``, answered with a SET Error, and stores nothing.
Rule 2: the merchant never sees PAN or PIN: it verifies the dual signature with OIData and
H(PIData) only and forwards the PI unopened as AuthReq baggage; the CapToken is kept opaque.
Rule 3: exactly-once effects: a PInitReq/PReq reply is committed with its state change under
the request's RRPID; the same request again gets the stored reply, another request under that
RRPID or a second PReq for an XID is refused (``replay``). The AuthReq is committed before it
is sent, so a PReq redelivered after a crash re-sends the same bytes (the gateway answers a
duplicate from its store) instead of authorizing twice.
Rule 4: no answer from the gateway leaves the order ``auth_sent`` and answers PRes
``orderReceived`` without storing it; the cardholder's retry (same PReq) finishes it, and so
does the POS itself: ``resolve_silent`` resends the committed AuthReq of orders left so (the
gateway answers a duplicate from its books) and commits the outcome with the PRes the
cardholder's retry or inquiry then gets, so the merchant's books never stay behind the
gateway's.
Rule 5: merchant replicas share the store: the AuthReq and the PRes are committed only while
the order is still in the state the PReq was checked in; the replica that loses either race
resumes with the other's AuthReq (the gateway answers it from its reply store) or answers
the other's stored PRes, so a PReq taken by two processes at once authorizes once.
Rule 6: a PInitReq for an order whose session has no PReq yet (a wallet that died after its
PInit, or a retried start) opens a new session (new XID and Chall-M): nothing was committed
on the old one, and a PReq of the old session no longer matches; once a PReq has been taken
a PInitReq is refused (``replay``). Every commit compares the order's state and XID.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cryptography import x509

from actors.entrypoint import SetHandler
from actors.merchant.after import MerchantAfter
from actors.merchant.errors import MerchantError
from actors.merchant.store import MerchantRow, MerchantStore, OrderRow
from actors.trust import CERTIFICATE_STANDING, RevocationCache
from broker.errors import BrokerError
from protocol import codec, dualsig, ids
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    certificate_der,
    load_certificate,
    public_key_of,
    set_extension,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey, Suite, suite_for_public_key
from protocol.messages import (
    AccountKind,
    AuthCode,
    AuthReqData,
    AuthReqPayload,
    AuthRes,
    AuthResBaggage,
    AuthResData,
    AuthStatus,
    AuthTags,
    CapCode,
    CapStatus,
    CheckDigests,
    CompletionCode,
    CurrAmt,
    InqReq,
    InqReqData,
    InqRes,
    MerTermIDs,
    MessageType,
    OIData,
    PIKind,
    PInitReq,
    PInitRes,
    PInitResData,
    PReq,
    PRes,
    PResData,
    TransIDs,
)
from protocol.order import hod
from protocol.payment import (
    AUTH_REQ_TYPE,
    build_auth_req,
    check_auth_header,
    open_auth_res,
    wrap_auth_req,
)
from protocol.primitives import thumbprint
from protocol.revocation import bci_thumbprint
from protocol.set_error import ErrorSigner, RemoteError, expect_reply
from protocol.signed import SignedData, open_signed, sign_data
from protocol.states import Machine, MerchantOrder, merchant_order
from protocol.trustview import Trust, load_all, pick
from protocol.wrapper import (
    Decoded,
    check_header_trans_ids,
    encode_message,
    make_header,
)
from setpay.clock import CLOCK
from setpay.logs import get_logger

log = get_logger(component="merchant")

MAX_DESCRIPTION = 4096
KeyLookup = Callable[[str], Awaitable[PrivateKey]]  # a KeyRing's ``get``


class GatewayLink(Protocol):
    """Sends a wrapped request to the gateway and returns (reply type, reply bytes)."""

    async def request_raw(self, msg_type: str, data: bytes) -> tuple[str, bytes]: ...


def _amqp(t: MessageType) -> str:
    return str(int(t))


def _digest(body: Any) -> bytes:
    return hashlib.sha256(codec.encode(body)).digest()


@dataclass
class _Purchase:
    """One PReq between its checks and its PRes: what was verified, and the AuthReq decided."""

    m: MerchantRow
    trust: Trust
    order: OrderRow
    oi: OIData
    req: PReq | None  # None: a committed AuthReq finished without its PReq (Rule 4)
    machine: Machine
    digest: bytes
    leaf: x509.Certificate | None
    ch_chain: list[x509.Certificate]
    gw_kx: x509.Certificate | None
    auth_req: bytes | None = None
    auth_rrpid: bytes | None = None


class MerchantService:
    """Answers PInitReq, PReq and InqReq for every merchant in ``store`` (Rules 1-4)."""

    def __init__(
        self,
        store: MerchantStore,
        keys: KeyLookup,
        gateway: GatewayLink | None,
        *,
        clock: ids.Clock | None = None,
        window_ms: int = ids.DEFAULT_WINDOW_MS,
        peer_suite: Callable[[PublicKey], Suite] = suite_for_public_key,
    ) -> None:
        self.store = store
        self.peer_suite = peer_suite  # the key ring's: the gateway's key under our OAEP hash
        # Revocation caches (actors/trust.py) beside the POS database, one per root:
        # seeded with the BCI/CRLs of registration, fed by AuthRes and the operator's refresh.
        self._trust_caches: dict[bytes, RevocationCache] = {}
        self.keys = keys
        self.gateway = gateway
        self.clock = clock or CLOCK
        self.window_ms = window_ms
        self.handlers: dict[MessageType, SetHandler] = {
            MessageType.PINIT_REQ: self._pinit,
            MessageType.PREQ: self._preq,
            MessageType.INQ_REQ: self._inq,
        }
        self._locks: weakref.WeakValueDictionary[bytes, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # after authorization: capture, reversals, credits, batches (actors/merchant/after.py)
        self.after = MerchantAfter(self)

    # -- the operator's side --------------------------------------------------------------------

    def add_gateway(
        self, brand: str, kx_cert: x509.Certificate, chain: list[x509.Certificate]
    ) -> None:
        """Use ``kx_cert`` (a gateway key-exchange certificate) for purchases of ``brand``."""
        if set_extension(kx_cert).key_use is not KeyUse.KEY_EXCHANGE:
            raise MerchantError("not a key-exchange certificate")
        self.store.save_gateway(
            brand, certificate_der(kx_cert), [certificate_der(c) for c in chain],
            self.clock.now_ms(),
        )  # fmt: skip

    def create_order(
        self, merchant_id: str, description: str, amount: CurrAmt, *, sale: bool = False,
        first_shipment: int | None = None,
    ) -> bytes:
        """Record an order the cardholder agreed to on the shop; returns its LID-M. With
        ``first_shipment``, the purchase authorizes only that much (split shipment: the
        gateway's AuthToken authorizes the next shipments, ``after.authorize_next``)."""
        if self.store.merchant(merchant_id) is None:
            raise MerchantError(f"merchant {merchant_id!r} is not hosted here")
        if not description or len(description) > MAX_DESCRIPTION:
            raise MerchantError("order description must be 1-4096 characters")
        if amount.amount <= 0 or len(amount.currency) != 3:
            raise MerchantError("amount must be positive, in an ISO 4217 currency")
        if first_shipment is not None and not 0 < first_shipment < amount.amount:
            raise MerchantError("the first shipment must be above 0 and below the amount")
        if first_shipment is not None and sale:
            raise MerchantError("a split shipment is not a sale")
        lid_m = ids.new_lid()
        self.store.add_order(
            lid_m, merchant_id, description, amount, sale, merchant_order().to_bytes(),
            self.clock.now_ms(), first_shipment,
        )  # fmt: skip
        return lid_m

    # -- what the SET entrypoint asks (actors/entrypoint.py) -----------------------------------

    party = "merchant"

    async def error_signer(self, decoded: Decoded) -> ErrorSigner | None:
        """The POS answers its Errors unsigned."""
        return None

    def _lock(self, lid_m: bytes) -> asyncio.Lock:
        lock = self._locks.get(lid_m)
        if lock is None:
            lock = self._locks[lid_m] = asyncio.Lock()
        return lock

    def _stored(self, rrpid: bytes, digest: bytes) -> tuple[str, bytes] | None:
        stored = self.store.reply_for(rrpid)
        if stored is None:
            return None
        if stored[0] != digest:
            raise ProtocolError(ErrorCode.REPLAY, "RRPID already used by another request")
        log.info("merchant_duplicate_answered")
        return stored[1], stored[2]

    # -- shared helpers -------------------------------------------------------------------------

    def _merchant(self, merchant_id: str) -> MerchantRow:
        row = self.store.merchant(merchant_id)
        if row is None:  # an order always names a hosted merchant; the row vanished
            raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, "merchant no longer hosted")
        return row

    def trust_cache(self, root: x509.Certificate) -> RevocationCache:
        """The revocation cache of ``root``'s hierarchy (opened on first use)."""
        thumb = cert_thumbprint(root)
        cache = self._trust_caches.get(thumb)
        if cache is None:
            path = self.store.path.with_name(
                f"{self.store.path.stem}-trust-{thumb[:4].hex()}.sqlite"
            )
            cache = self._trust_caches[thumb] = RevocationCache(path, root)
        return cache

    def close(self) -> None:
        for cache in self._trust_caches.values():
            cache.close()
        self._trust_caches.clear()

    def _revocation_data(self, m: MerchantRow) -> tuple[bytes | None, list[bytes]]:
        """The current BCI and CRLs for ``m``'s brand: the cache's, seeded on first use with
        what the CA gave at registration."""
        cache = self.trust_cache(load_certificate(m.root))
        held = cache.held(m.brand)
        if held is None and m.bci is not None:
            cache.offer(load_all(m.chain), m.bci, m.crls, self.clock.now_ms())
            held = cache.held(m.brand)
        return (m.bci, m.crls) if held is None else (held.bci, list(held.crls))

    def _trust(self, m: MerchantRow) -> Trust:
        certs = load_all(m.chain)
        bci, crls = self._revocation_data(m)
        return Trust.load(load_certificate(m.root), m.brand, certs, bci, crls, self.clock.now_ms())

    def _gateway_cert(
        self, brand: str, trust: Trust
    ) -> tuple[x509.Certificate, list[x509.Certificate]]:
        held = self.store.gateway(brand)
        if held is None:
            raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, "no gateway for this brand")
        kx, chain = load_certificate(held[0]), load_all(held[1])
        trust.validate(kx, chain, CertType.GATEWAY, KeyUse.KEY_EXCHANGE, self.clock.now_ms())
        return kx, chain

    async def _sign(self, m: MerchantRow, content_type: str, record: Any) -> bytes:
        key = await self.keys(m.sig_label)
        thumb = cert_thumbprint(load_certificate(m.sig_cert))
        return codec.encode(await sign_data(key, thumb, content_type, codec.encode(record)))

    def _header(self, trans: TransIDs, rrpid: bytes) -> Any:
        return make_header(
            self.clock.now_ms(), xid=trans.xid, lid_c=trans.lid_c, lid_m=trans.lid_m, rrpid=rrpid
        )

    # -- PInit ----------------------------------------------------------------------------------

    async def _pinit(self, d: Decoded) -> tuple[str, bytes]:
        req: PInitReq = d.body
        if req.lid_m is None:
            raise ProtocolError(ErrorCode.UNKNOWN_LID, "PInitReq names no order (LID-M)")
        if self.store.order(req.lid_m) is None:
            raise ProtocolError(ErrorCode.UNKNOWN_LID, "no such order")
        digest = _digest(req)
        async with self._lock(req.lid_m):
            for _ in range(2):  # a second round when another replica changed the order first
                order = self.store.order(req.lid_m)
                assert order is not None  # orders are never deleted
                stored = self._stored(req.rrpid, digest)
                if stored is not None:
                    return stored
                answered = await self._pinit_once(req, order, digest)
                if answered is not None:
                    return answered
            raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, "order changed while answering")

    async def _pinit_once(
        self, req: PInitReq, order: OrderRow, digest: bytes
    ) -> tuple[str, bytes] | None:
        """Check, decide and commit one PInitRes (Rule 6); None when another replica changed
        the order meanwhile."""
        machine = Machine.from_bytes(order.state)
        if machine.state not in (MerchantOrder.IDLE, MerchantOrder.PINIT_SENT):
            raise ProtocolError(ErrorCode.REPLAY, "this order has already been started")
        if machine.state == MerchantOrder.PINIT_SENT:  # no PReq yet: a new session
            machine = merchant_order()
        m = self._merchant(order.merchant_id)
        if req.brand_id != m.brand:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "brand not accepted by this merchant")
        if not req.bin.isdigit() or not 6 <= len(req.bin) <= 11:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "BIN must be 6-11 digits")
        trust = self._trust(m)
        gw_kx, gw_chain = self._gateway_cert(m.brand, trust)
        caps = set_extension(gw_kx).gateway
        if req.account_kind is AccountKind.BANK and not (caps and caps.pin_debit):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "gateway takes no bank debit")
        now = self.clock.now_ms()
        trans = TransIDs(req.lid_c, req.lid_m, ids.new_xid(), now, None, req.language)
        pe_thumb = cert_thumbprint(gw_kx)
        held_bci, held_crls = self._revocation_data(m)
        bci_thumb = None if held_bci is None else bci_thumbprint(held_bci)
        data = PInitResData(
            trans, req.rrpid, req.chall_c, ids.new_challenge(), pe_thumb, bci_thumb
        )
        held = set(req.thumbs)
        certs = [m.sig_cert, *m.chain, certificate_der(gw_kx)]
        certs += [certificate_der(c) for c in gw_chain]
        certs = [c for c in dict.fromkeys(certs) if thumbprint(c) not in held]
        crls = [c for c in held_crls if thumbprint(c) not in held]
        bci = None if bci_thumb is None or bci_thumb in held else held_bci
        body = PInitRes(await self._sign(m, "PInitRes", data), certs, crls, bci)
        reply = encode_message(self._header(trans, req.rrpid), body)
        machine.receive(MessageType.PINIT_REQ)
        machine.send(MessageType.PINIT_RES)
        with self.store.transaction() as db:
            won = self.store.update_order(
                db, req.lid_m, now, expect={"state": order.state, "xid": order.xid},
                state=machine.to_bytes(), xid=trans.xid, trans_ids=codec.encode(trans),
                chall_c=req.chall_c, chall_m=data.chall_m, pe_thumb=pe_thumb,
                brand=req.brand_id, bin=req.bin,
            )  # fmt: skip
            if won:
                self.store.save_reply(
                    db, req.rrpid, digest, _amqp(MessageType.PINIT_RES), reply, now
                )
        if not won:
            return None
        log.info("merchant_pinit", merchant_id=m.merchant_id, xid=trans.xid.hex(),
                 again=order.xid is not None)  # fmt: skip
        return _amqp(MessageType.PINIT_RES), reply

    # -- PReq -----------------------------------------------------------------------------------

    def _check_session(self, order: OrderRow, oi: OIData) -> None:
        """OIData against this merchant's own session (XID, challenges, brand, HOD)."""
        assert order.trans_ids is not None
        if codec.decode(TransIDs, order.trans_ids) != oi.trans_ids:
            raise ProtocolError(ErrorCode.UNKNOWN_XID, "TransIDs differ from the PInitRes")
        if oi.chall_m != order.chall_m:
            raise ProtocolError(ErrorCode.CHALLENGE_MISMATCH, "Chall-M is not this session's")
        if oi.chall_c != order.chall_c:
            raise ProtocolError(ErrorCode.CHALLENGE_MISMATCH, "Chall-C is not this session's")
        if oi.brand_id != order.brand or oi.bin != order.bin:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "brand or BIN differ from PInitReq")
        if hod(order.description, order.amount, oi.od_salt) != oi.hod:
            raise ProtocolError(
                ErrorCode.LINKAGE_FAILURE, "HOD is not this order's (description or amount)"
            )

    def _check_cardholder(
        self, req: PReq, trust: Trust, m: MerchantRow, pe_thumb: bytes
    ) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """The cardholder chain and the dual signature over OIData and H(PIData)."""
        pid = codec.decode(dualsig.PIDualSigned, req.pi)
        certs = load_all(req.certs)
        leaf = pick(certs, pid.signature.signer)
        trust.validate(leaf, certs, CertType.CARDHOLDER, KeyUse.SIGNATURE, self.clock.now_ms())
        merchant_thumb = cert_thumbprint(load_certificate(m.sig_cert))
        dualsig.verify_oi_at_merchant(
            req.pi, req.oi_data, req.pi_data_digest, public_key_of(leaf), merchant_thumb, pe_thumb
        )
        return leaf, [c for c in certs if c != leaf]

    async def _preq(self, d: Decoded) -> tuple[str, bytes]:
        """PReq: verify everything, decide (the AuthReq), commit it, then authorize and reply.
        The order's lock is held throughout: it is what makes the PRes exactly-once when the
        same PReq arrives twice at once (other orders are never blocked by it)."""
        req: PReq = d.body
        if req.pi_kind is not PIKind.DUAL_SIGNED:
            raise ProtocolError(ErrorCode.SIGNATURE_REQUIRED, "this POS takes signed PReqs only")
        oi = codec.decode(OIData, req.oi_data)
        check_header_trans_ids(d.header, oi.trans_ids, oi.rrpid)
        found = self.store.order_by_xid(oi.trans_ids.xid)
        if found is None:
            raise ProtocolError(ErrorCode.UNKNOWN_XID, "no purchase with this XID")
        digest = _digest(req)
        async with self._lock(found.lid_m):
            for _ in range(2):  # a second round when another replica committed first
                # the order before the reply store: a PRes another replica commits in between
                # (state and reply in one transaction) is then found as a stored reply
                order = self.store.order(found.lid_m)
                stored = self._stored(oi.rrpid, digest)
                if stored is not None:
                    return stored
                assert order is not None
                p = self._verify_preq(order, req, oi, digest)  # verify: no effect yet
                if p.auth_req is None and not await self._commit_auth_req(p):
                    continue  # another replica committed its AuthReq: resume with that one
                return await self._authorize(p)  # authorize, commit the PRes, reply
            raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, "order changed while answering")

    async def _commit_auth_req(self, p: _Purchase) -> bool:
        """Decide the AuthReq and commit it before the gateway sees it, only while the order
        is still where this PReq found it (merchant replicas share the store: Rule 5)."""
        assert p.req is not None and p.leaf is not None
        p.auth_req, p.auth_rrpid = await self._auth_req(p)
        p.machine.receive(MessageType.PREQ)
        p.machine.send(MessageType.AUTH_REQ)
        state = p.machine.to_bytes()
        with self.store.transaction() as db:
            won = self.store.update_order(
                db, p.order.lid_m, self.clock.now_ms(),
                expect={"state": p.order.state, "xid": p.order.xid}, state=state,
                preq_digest=p.digest, cardholder_thumb=cert_thumbprint(p.leaf),
                auth_req=p.auth_req, auth_rrpid=p.auth_rrpid, oi_data=p.req.oi_data,
            )  # fmt: skip
        if won:
            p.order = replace(p.order, state=state)
        return won

    def _verify_preq(self, order: OrderRow, req: PReq, oi: OIData, digest: bytes) -> _Purchase:
        """Every check of a PReq (state, session, cardholder chain and dual signature, the
        gateway key the cardholder sealed to), before any state changes."""
        assert order.pe_thumb is not None
        machine = Machine.from_bytes(order.state)
        resume = machine.state == MerchantOrder.AUTH_SENT and order.preq_digest == digest
        if machine.state != MerchantOrder.PINIT_SENT and not resume:
            raise ProtocolError(ErrorCode.REPLAY, "a PReq for this XID was already received")
        m = self._merchant(order.merchant_id)
        trust = self._trust(m)
        self._check_session(order, oi)
        leaf, ch_chain = self._check_cardholder(req, trust, m, order.pe_thumb)
        gw_kx, _ = self._gateway_cert(m.brand, trust)
        if cert_thumbprint(gw_kx) != order.pe_thumb:
            raise ProtocolError(ErrorCode.THUMBS_MISMATCH, "gateway key changed since PInitRes")
        p = _Purchase(m, trust, order, oi, req, machine, digest, leaf, ch_chain, gw_kx)
        if resume:  # committed AuthReq, no answer yet (a crash or a silent gateway): resend it
            p.auth_req, p.auth_rrpid = order.auth_req, order.auth_rrpid
        return p

    async def _auth_req(self, p: _Purchase) -> tuple[bytes, bytes]:
        """Build and wrap AuthReq = EncB(M, P, AuthReqData, PI): the PI is unopened baggage."""
        m, order, oi = p.m, p.order, p.oi
        assert p.req is not None and p.gw_kx is not None and p.leaf is not None
        now = self.clock.now_ms()
        rrpid = ids.new_rrpid()
        data = AuthReqData(
            AuthTags(rrpid, MerTermIDs(m.merchant_id, None, None), now, oi.trans_ids),
            CheckDigests(dualsig.oi_digest(p.req.oi_data), oi.hod),
            AuthReqPayload(False, self._asked(order), None, None, None),
            order.sale,
            None,
        )
        key = await self.keys(m.sig_label)
        gw_public = public_key_of(p.gw_kx)
        certs = [m.sig_cert, m.kx_cert, *m.chain, certificate_der(p.leaf)]
        certs += [certificate_der(c) for c in p.ch_chain]
        auth_req = await build_auth_req(
            key,
            cert_thumbprint(load_certificate(m.sig_cert)),
            self.peer_suite(gw_public),
            gw_public,
            order.pe_thumb or b"",
            data,
            p.req.pi,
            list(dict.fromkeys(certs)),
        )
        return wrap_auth_req(now, auth_req, data), rrpid

    @staticmethod
    def _asked(order: OrderRow) -> CurrAmt:
        """AuthReqAmt of the purchase: the first shipment's, or the whole amount."""
        if order.first_amount is None:
            return order.amount
        return CurrAmt(order.amount.currency, order.first_amount)

    async def _open_auth_res(
        self, m: MerchantRow, trust: Trust, reply: bytes, auth_rrpid: bytes, oi: OIData
    ) -> tuple[AuthResData, AuthResBaggage]:
        decoded = expect_reply(
            reply, self.clock.now_ms(), AuthRes, who="gateway", window_ms=self.window_ms
        )
        res: AuthRes = decoded.body
        certs = load_all(res.certs)

        def gateway_key(thumb: bytes) -> PublicKey:
            leaf = pick(certs, thumb)
            trust.validate(leaf, certs, CertType.GATEWAY, KeyUse.SIGNATURE, self.clock.now_ms())
            return public_key_of(leaf)

        kx_key = await self.keys(m.kx_label)
        kx_thumb = cert_thumbprint(load_certificate(m.kx_cert))
        data, baggage = await open_auth_res(kx_key, kx_thumb, res, gateway_key)
        check_auth_header(decoded.header, data.auth_tags)
        if data.auth_tags.rrpid != auth_rrpid:
            raise ProtocolError(ErrorCode.UNKNOWN_RRPID, "AuthRes answers another AuthReq")
        if data.auth_tags.trans_ids != oi.trans_ids:
            raise ProtocolError(ErrorCode.UNKNOWN_XID, "AuthRes for another purchase")
        if res.bci is not None or res.crls:
            try:  # BCI/CRLs ride outside the signature: taken only if they verify themselves
                cache = self.trust_cache(trust.root)
                cache.offer([*certs, trust.brand_cert], res.bci, res.crls, self.clock.now_ms())
            except ProtocolError as exc:
                log.warning("merchant_bci_refused", code=exc.code.name, detail=exc.detail)
        return data, baggage

    async def resolve_silent(self, older_than_ms: int, limit: int = 32) -> int:
        """Rule 4: finish the authorizations the gateway left unanswered for ``older_than_ms``
        (resend the committed AuthReq, commit the outcome and its PRes); how many were."""
        finished = 0
        for lid_m in self.store.unanswered_auths(self.clock.now_ms() - older_than_ms, limit):
            async with self._lock(lid_m):
                order = self.store.order(lid_m)
                if order is None or order.oi_data is None or order.preq_digest is None:
                    continue  # answered meanwhile, or committed before OIData was kept
                machine = Machine.from_bytes(order.state)
                if machine.state != MerchantOrder.AUTH_SENT:
                    continue
                m = self._merchant(order.merchant_id)
                oi = codec.decode(OIData, order.oi_data)
                p = _Purchase(m, self._trust(m), order, oi, None, machine, order.preq_digest,
                              None, [], None, order.auth_req, order.auth_rrpid)  # fmt: skip
                await self._authorize(p)
                done = self.store.order(lid_m)
                if done is not None and done.completion is not None:
                    finished += 1
                    log.info("merchant_silent_auth_finished", xid=oi.trans_ids.xid.hex(),
                             completion=CompletionCode(done.completion).name)  # fmt: skip
        return finished

    async def _authorize(self, p: _Purchase) -> tuple[str, bytes]:
        """Send the committed AuthReq, then answer and store the PRes (Rules 3, 4)."""
        m, trust, order, oi, machine = p.m, p.trust, p.order, p.oi, p.machine
        assert p.auth_req is not None and p.auth_rrpid is not None
        wrapped, auth_rrpid, digest = p.auth_req, p.auth_rrpid, p.digest
        xid = oi.trans_ids.xid.hex()
        if self.gateway is None:
            raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, "no gateway link configured")
        try:
            _, reply = await self.gateway.request_raw(AUTH_REQ_TYPE, wrapped)
        except (TimeoutError, BrokerError) as exc:
            log.warning("merchant_gateway_silent", xid=xid, error=type(exc).__name__)
            pres = PResData(
                oi.trans_ids, oi.rrpid, oi.chall_c, CompletionCode.ORDER_RECEIVED, None, None,
                [], None,
            )  # fmt: skip
            body = PRes(await self._sign(m, "PRes", pres), [m.sig_cert, *m.chain], [], None)
            return _amqp(MessageType.PRES), encode_message(
                self._header(oi.trans_ids, oi.rrpid), body
            )
        now = self.clock.now_ms()
        auth_status = cap_status = None
        cap_token = acq_card_msg = None
        cols: dict[str, object] = {}
        try:
            data, baggage = await self._open_auth_res(m, trust, reply, auth_rrpid, oi)
        except RemoteError as exc:  # the gateway refused: its code, read by read_error
            log.warning("merchant_auth_refused", xid=xid, code=exc.code.name)
            if exc.code in CERTIFICATE_STANDING:  # actors/trust.py: said as is, nothing stored
                raise ProtocolError(exc.code, "the gateway refused a certificate") from None
            machine.receive(MessageType.ERROR)
            completion = CompletionCode.ORDER_REJECTED
        except ProtocolError as exc:
            log.warning("merchant_auth_failed", xid=xid, code=exc.code.name, detail=exc.detail)
            machine.receive(MessageType.ERROR)
            completion = CompletionCode.ORDER_REJECTED
        else:
            machine.receive(MessageType.AUTH_RES)
            payload = data.payload
            auth_status = AuthStatus(now, payload.auth_code, payload.auth_amt)
            completion = CompletionCode.AUTHORIZATION_PERFORMED
            cap = data.cap_res_payload
            if payload.auth_code is AuthCode.APPROVED and cap is not None:
                cap_status = CapStatus(now, cap.cap_code, cap.cap_amt)
                if cap.cap_code is CapCode.SUCCESS:
                    completion = CompletionCode.CAPTURE_PERFORMED
                    cols["cap_amount"] = cap.cap_amt.amount
            cap_token, acq_card_msg = baggage.cap_token, baggage.acq_card_msg
            cols["auth_token"] = baggage.auth_token  # opaque, sealed to the gateway
            cols.update(auth_code=int(payload.auth_code), auth_amount=payload.auth_amt.amount)
        machine.send(MessageType.PRES)
        pres = PResData(
            oi.trans_ids, oi.rrpid, oi.chall_c, completion, auth_status, cap_status, [],
            acq_card_msg,
        )  # fmt: skip
        body = PRes(await self._sign(m, "PRes", pres), [m.sig_cert, *m.chain], [], None)
        res = encode_message(self._header(oi.trans_ids, oi.rrpid), body)
        with self.store.transaction() as db:
            won = self.store.update_order(
                db, order.lid_m, now, expect={"state": order.state, "xid": order.xid},
                state=machine.to_bytes(),
                completion=int(completion), cap_token=cap_token, pres_data=codec.encode(pres),
                **cols,
            )  # fmt: skip
            if won:
                self.store.save_reply(db, oi.rrpid, digest, _amqp(MessageType.PRES), res, now)
        if not won:  # another replica answered the same PReq first: its PRes is the answer
            stored = self._stored(oi.rrpid, digest)
            if stored is None:
                raise ProtocolError(ErrorCode.UNSPECIFIED_FAILURE, "order changed while answering")
            return stored
        log.info(
            "merchant_purchase_done", merchant_id=m.merchant_id, xid=xid,
            completion=completion.name,
            auth_code=None if auth_status is None else auth_status.auth_code.name,
        )  # fmt: skip
        return _amqp(MessageType.PRES), res

    # -- Inq ------------------------------------------------------------------------------------

    async def _inq(self, d: Decoded) -> tuple[str, bytes]:
        req: InqReq = d.body
        signer: bytes | None = None
        if req.signed:
            signed = codec.decode(SignedData, req.content)
            signer = signed.signer
            content = signed.content
        else:
            content = req.content
        inq = codec.decode(InqReqData, content)
        check_header_trans_ids(d.header, inq.trans_ids, inq.rrpid)
        digest = _digest(req)
        stored = self._stored(inq.rrpid, digest)  # a replayed InqReq: the same bytes again
        if stored is not None:
            return stored
        order = self.store.order_by_xid(inq.trans_ids.xid)
        if order is None or order.trans_ids is None:
            raise ProtocolError(ErrorCode.UNKNOWN_XID, "no purchase with this XID")
        trans = codec.decode(TransIDs, order.trans_ids)
        if (trans.lid_c, trans.lid_m) != (inq.trans_ids.lid_c, inq.trans_ids.lid_m):
            raise ProtocolError(ErrorCode.UNKNOWN_XID, "no purchase with these ids")
        m = self._merchant(order.merchant_id)
        if signer is not None:
            if signer != order.cardholder_thumb:
                raise ProtocolError(ErrorCode.UNKNOWN_XID, "not the cardholder of this purchase")
            trust = self._trust(m)
            certs = load_all(req.certs)
            leaf = pick(certs, signer)
            trust.validate(leaf, certs, CertType.CARDHOLDER, KeyUse.SIGNATURE, self.clock.now_ms())
            open_signed(codec.decode(SignedData, req.content), public_key_of(leaf), "InqReq")
        if order.pres_data is not None:
            last = codec.decode(PResData, order.pres_data)
            completion, auth, cap = last.completion, last.auth_status, last.cap_status
        else:
            state = Machine.from_bytes(order.state).state
            completion = (
                CompletionCode.ORDER_RECEIVED
                if state == MerchantOrder.AUTH_SENT
                else CompletionCode.ORDER_NOT_RECEIVED
            )
            auth = cap = None
        data = PResData(trans, inq.rrpid, inq.chall_c2, completion, auth, cap, [], None)
        body = InqRes(await self._sign(m, "InqRes", data), [m.sig_cert, *m.chain], [], None)
        reply = encode_message(self._header(trans, inq.rrpid), body)
        now = self.clock.now_ms()
        with self.store.transaction() as db:
            self.store.save_reply(db, inq.rrpid, digest, _amqp(MessageType.INQ_RES), reply, now)
        log.info("merchant_inquiry", xid=trans.xid.hex(), completion=completion.name)
        return _amqp(MessageType.INQ_RES), reply
