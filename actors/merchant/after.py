"""The server-managed POS after authorization: capture, authorization reversal, credit,
capture and credit reversal, batch administration, each a request to the gateway over the
POS's peer link (protocol/clearing.py).

Rule 1: a payment (one authorized order) moves through the merchant's ``MERCHANT_PAYMENT``
table (protocol/states.py): sending a request moves it to a ``*_SENT`` state, the gateway's
per-item code moves it on (or back). A request the table does not allow is refused locally
(``stateViolation``) and nothing is sent.
Rule 2 (exactly once): the request is built, signed and committed (its bytes, and the
payments in their ``*_SENT`` states) before it is sent; no answer (a timeout, the gateway
down) leaves it pending, and ``resend`` sends the same bytes again, which the gateway answers
from its store. The answer's outcome and the payments' new states commit in one transaction.
Rule 3: the merchant never sees a PAN: it returns the gateway's CapTokens unopened (they are
sealed to the gateway) and keeps them as opaque bytes; an AuthRevRes's new CapToken replaces
the old one.
Rule 5 (split shipment): ``authorize_next`` sends a subsequent AuthReq for an order whose
purchase left part of its amount unauthorized: the gateway's AuthToken (kept opaque on the
order) replaces the PI, no cardholder takes part. The request is committed before it is sent
and sent again with the same bytes while unanswered. An approved one is a payment of its own
(a shipment: a new id, its own AuthRRPID and CapToken, ``parent`` = the order), captured,
reversed and refunded like any other; the AuthToken the answer carries (if any) replaces the
spent one.
Rule 4: answers are verified as every gateway answer (signature chain to the brand's root
with revocation, sealed to the merchant's key-exchange key, RRPID and header ids) before any
state changes; a SET Error from the gateway is ``RemoteError`` and moves each payment back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography import x509

from actors.merchant.errors import MerchantError
from actors.merchant.payments import BATCHES, PAYMENTS, REQUESTS
from actors.merchant.store import MerchantRow, OrderRow
from broker.errors import BrokerError
from protocol import clearing, codec, ids
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    load_certificate,
    public_key_of,
    set_extension,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PublicKey
from protocol.messages import (
    AuthCode,
    AuthReqData,
    AuthReqPayload,
    AuthResPayload,
    AuthRevCode,
    AuthRevReqData,
    AuthTags,
    BatchAdminReqData,
    BatchAdminResData,
    BatchOperation,
    BatchStatus,
    BrandAndBIN,
    CapCode,
    CapItem,
    CapPayload,
    CapReqData,
    CapRevOrCredCode,
    CapRevOrCredItem,
    CapRevOrCredReqData,
    CurrAmt,
    MerTermIDs,
    MessageType,
    PCertCode,
    PCertReq,
    PCertReqData,
    PCertRes,
    PCertResData,
    ResponseData,
    ReturnTransactionDetail,
    RRTags,
    SaleDetail,
    TransIDs,
)
from protocol.payment import AUTH_REQ_TYPE, build_auth_req, wrap_auth_req
from protocol.set_error import RemoteError, expect_reply
from protocol.signed import SignedData, open_signed, sign_data
from protocol.states import Machine, MachineKind, MerchantPayment, Outcome
from protocol.trustview import load_all, pick
from protocol.wrapper import amqp_type, check_header_ids, encode_message, make_header
from setpay.logs import get_logger

log = get_logger(component="merchant")

_MP = MerchantPayment
M = MessageType


@dataclass(frozen=True, slots=True)
class Payment:
    lid_m: bytes
    merchant_id: str
    state: str
    currency: str
    authorized: int
    captured: int
    credited: int
    cap_token: bytes
    cap_payload: bytes | None
    batch_id: int | None
    pending: bytes | None
    auth_rrpid: bytes | None = None  # a shipment's own (Rule 5); else the order's
    trans_ids: bytes | None = None
    parent: bytes | None = None


@dataclass(frozen=True, slots=True)
class NextShipment:
    """The outcome of ``authorize_next``: the shipment's payment id (approved only), the
    gateway's AuthCode or SET Error name, the amount authorized, whether more may follow."""

    lid_m: bytes | None
    code: str
    amount: int
    more: bool

    @property
    def ok(self) -> bool:
        return self.code == "APPROVED"


@dataclass(frozen=True, slots=True)
class _Trans:
    trans_ids: TransIDs


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One payment's outcome: the gateway's SET code (name), the amount it moved, its batch."""

    lid_m: bytes
    code: str
    amount: int
    batch_id: int | None
    batch_seq: int | None
    state: str

    @property
    def ok(self) -> bool:
        return self.code in ("SUCCESS", "APPROVED")


class MerchantAfter:
    """The POS's requests after authorization, for every merchant it hosts (Rules 1-4)."""

    def __init__(self, service: Any) -> None:
        # ``service`` is the MerchantService this extends (its store, keys, gateway link,
        # trust and clock); typed loosely because service.py imports this module.
        self.s = service
        self.db = service.store.db

    # -- reads ----------------------------------------------------------------------------------

    def payment(self, lid_m: bytes) -> Payment | None:
        """The payment of an authorized order (made from the order on first use), or None."""
        row = self.db.one(sa.select(PAYMENTS).where(PAYMENTS.c.lid_m == lid_m))
        if row is not None:
            return _payment(row)
        order = self.s.store.order(lid_m)
        if order is None or order.cap_token is None or order.auth_code != int(AuthCode.APPROVED):
            return None
        amount = order.auth_amount or 0
        captured = order.cap_amount or 0
        state = _MP.CAPTURED if captured else _MP.AUTHORIZED
        return Payment(lid_m, order.merchant_id, state, order.amount.currency, amount, captured,
                       0, order.cap_token, None, None, None)  # fmt: skip

    def payments(self, merchant_id: str) -> list[Payment]:
        p = PAYMENTS.c
        rows = self.db.all(
            sa.select(PAYMENTS).where(p.merchant_id == merchant_id).order_by(p.updated)
        )
        return [_payment(r) for r in rows]

    def batch_status(self, merchant_id: str, batch_id: int) -> BatchAdminResData | None:
        b = BATCHES.c
        last = self.db.scalar(
            sa.select(b.last).where(b.merchant_id == merchant_id, b.batch_id == batch_id)
        )
        return None if last is None else codec.decode(BatchAdminResData, last)

    def pending(self) -> list[bytes]:
        """RRPIDs of requests sent and not answered (Rule 2)."""
        r = REQUESTS.c
        return [bytes(x[0]) for x in self.db.all(sa.select(r.rrpid).where(r.answer.is_(None)))]

    # -- the operations -------------------------------------------------------------------------

    async def capture(
        self,
        lid_ms: Sequence[bytes],
        amounts: Sequence[int] | None = None,
        *,
        batch_id: int | None = None,
    ) -> list[ItemResult]:
        """Capture authorized orders (each its full authorized amount unless ``amounts``
        names one), into ``batch_id`` or the gateway's open batch."""
        now = self.s.clock.now_ms()
        pays = self._payments(lid_ms, M.CAP_REQ)
        m = self._merchant_of(pays)
        items, payloads = [], []
        for i, p in enumerate(pays):
            amount = amounts[i] if amounts is not None else p.authorized
            sale = SaleDetail(batch_id, None, False, None, None, None, None, None, None)
            payload = CapPayload(now, CurrAmt(p.currency, amount),
                                 sale if batch_id is not None else None)  # fmt: skip
            items.append(CapItem(self._trans(p.lid_m), self._auth_rrpid(p.lid_m), payload))
            payloads.append(codec.encode(payload))
        data = CapReqData(self._tags(m, now), items)
        extra = {p.lid_m: {"cap_payload": payloads[i]} for i, p in enumerate(pays)}
        return await self._exchange(clearing.CAPTURE, m, pays, data, extra)

    async def reverse_authorization(self, lid_m: bytes, new_amount: int = 0) -> ItemResult:
        """AuthRevReq: leave ``new_amount`` authorized (0: all of it is released)."""
        now = self.s.clock.now_ms()
        pays = self._payments([lid_m], M.AUTH_REV_REQ)
        p, m = pays[0], self._merchant_of(pays)
        order = self._order(lid_m)
        trans = self._trans(lid_m)
        auth_tags = AuthTags(ids.new_rrpid(), MerTermIDs(m.merchant_id, None, None), now, trans)
        original = AuthReqData(
            AuthTags(self._auth_rrpid(lid_m), MerTermIDs(m.merchant_id, None, None), now, trans),
            None, AuthReqPayload(p.parent is not None, order.amount, None, None, None),
            order.sale, None,
        )  # fmt: skip
        payload = AuthResPayload(
            CurrAmt(p.currency, p.authorized), AuthCode.APPROVED,
            ResponseData(None, None, None, None),
        )  # fmt: skip
        data = AuthRevReqData(auth_tags, original, payload, CurrAmt(p.currency, new_amount))
        return (await self._exchange(clearing.AUTH_REVERSAL, m, pays, data, {}))[0]

    async def credit(self, lid_m: bytes, amount: int, *, batch_id: int | None = None) -> ItemResult:
        """CredReq: refund ``amount`` of the capture (several credits may follow)."""
        return await self._one_item(clearing.CREDIT, M.CRED_REQ, lid_m, amount, batch_id)

    async def reverse_capture(self, lid_m: bytes) -> ItemResult:
        """CapRevReq: undo the capture (its batch still open); the authorization remains."""
        p = self.payment(lid_m)
        return await self._one_item(
            clearing.CAPTURE_REVERSAL, M.CAP_REV_REQ, lid_m, p.captured if p else 0, None
        )

    async def reverse_credit(self, lid_m: bytes, amount: int) -> ItemResult:
        """CredRevReq: undo the credit of ``amount`` (its batch still open)."""
        return await self._one_item(clearing.CREDIT_REVERSAL, M.CRED_REV_REQ, lid_m, amount, None)

    async def batch(
        self,
        merchant_id: str,
        operation: BatchOperation | None,
        batch_id: int | None = None,
        *,
        summary: bool = True,
        detail: tuple[int, int] | None = None,
        totals: BatchStatus | None = None,
    ) -> BatchAdminResData:
        """BatchAdminReq: open/close/purge a batch or ask for its summary and detail (a page
        of ``detail`` = (starting point, maximum items)); ``totals`` balance a close."""
        m = self.s._merchant(merchant_id)
        now = self.s.clock.now_ms()
        data = BatchAdminReqData(
            self._tags(m, now), batch_id, [], operation, summary,
            None if detail is None else ReturnTransactionDetail(detail[0], detail[1], False),
            totals,
        )  # fmt: skip
        wrapped = await self._build(clearing.BATCH_ADMIN, m, data, [])
        with self.s.store.transaction() as db:
            db.execute(sa.insert(REQUESTS).values(
                rrpid=data.rr_tags.rrpid, merchant_id=m.merchant_id,
                msg_type=int(M.BATCH_ADMIN_REQ), lid_ms=codec.packb([]), request=wrapped,
                created=now,
            ))  # fmt: skip
        res, _ = await self._send(clearing.BATCH_ADMIN, m, data.rr_tags.rrpid, wrapped)
        with self.s.store.transaction() as db:
            db.execute(sa.update(REQUESTS).where(REQUESTS.c.rrpid == data.rr_tags.rrpid)
                       .values(answer=codec.encode(res)))  # fmt: skip
            if res.ba_status is not None and res.batch_id:
                db.execute(self.s.store.db.upsert(BATCHES, {
                    "merchant_id": m.merchant_id, "batch_id": res.batch_id,
                    "last": codec.encode(res), "updated": now,
                }))  # fmt: skip
        log.info("merchant_batch_admin", merchant_id=m.merchant_id, batch=res.batch_id,
                 operation=None if operation is None else operation.name,
                 status=None if res.ba_status is None else res.ba_status.name)  # fmt: skip
        return res

    async def fetch_gateway_certs(self, merchant_id: str) -> x509.Certificate:
        """PCertReq: the gateway's current key-exchange certificate for the merchant's brand,
        validated to the brand's root (with revocation) and kept for its purchases; returns it.
        """
        m = self.s._merchant(merchant_id)
        now = self.s.clock.now_ms()
        data = PCertReqData(self._tags(m, now), [BrandAndBIN(m.brand, None)], [])
        key = await self.s.keys(m.sig_label)
        signed = await sign_data(
            key, cert_thumbprint(load_certificate(m.sig_cert)), "PCertReq", codec.encode(data)
        )
        req = PCertReq(codec.encode(signed), list(dict.fromkeys([m.sig_cert, *m.chain])))
        wrapped = encode_message(make_header(now, rrpid=data.rr_tags.rrpid), req)
        if self.s.gateway is None:
            raise MerchantError("no gateway link configured")
        _, reply = await self.s.gateway.request_raw(amqp_type(M.PCERT_REQ), wrapped)
        decoded = expect_reply(reply, self.s.clock.now_ms(), PCertRes, who="gateway",
                               window_ms=self.s.window_ms)  # fmt: skip
        res: PCertRes = decoded.body
        trust = self.s._trust(m)
        certs = load_all(res.certs)
        outer = codec.decode(SignedData, res.signed)
        leaf = pick(certs, outer.signer)
        trust.validate(leaf, certs, CertType.GATEWAY, KeyUse.SIGNATURE, self.s.clock.now_ms())
        got = codec.decode(PCertResData, open_signed(outer, public_key_of(leaf), "PCertRes"))
        check_header_ids(decoded.header, rrpid=data.rr_tags.rrpid)
        if got.rr_tags.rrpid != data.rr_tags.rrpid:
            raise ProtocolError(ErrorCode.UNKNOWN_RRPID, "PCertRes answers another request")
        if got.code is not PCertCode.SUCCESS:
            raise MerchantError(f"the gateway answered {got.code.name}")
        named = [c for c in certs if cert_thumbprint(c) in set(got.cert_thumbs)]
        kx = next(
            (c for c in named if set_extension(c).cert_type is CertType.GATEWAY
             and set_extension(c).key_use is KeyUse.KEY_EXCHANGE),
            None,
        )  # fmt: skip
        if kx is None:
            raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "no gateway key-exchange cert")
        chain = [c for c in certs if set_extension(c).cert_type not in (CertType.GATEWAY,)]
        trust.validate(kx, certs, CertType.GATEWAY, KeyUse.KEY_EXCHANGE, self.s.clock.now_ms())
        self.s.add_gateway(m.brand, kx, chain)
        log.info("merchant_gateway_certs_fetched", merchant_id=merchant_id, brand=m.brand)
        return kx

    async def authorize_next(self, lid_m: bytes, amount: int) -> NextShipment:
        """Rule 5: authorize the next shipment of ``lid_m`` for ``amount`` with the order's
        AuthToken (SubsequentAuthInd; no PI, no cardholder)."""
        s = self.s
        order = self._order(lid_m)
        if order.auth_token is None or order.trans_ids is None:
            raise ProtocolError(ErrorCode.STATE_VIOLATION, "no AuthToken for this order")
        m = s._merchant(order.merchant_id)
        trans = codec.decode(TransIDs, order.trans_ids)
        r = REQUESTS.c
        pending = self.db.one(sa.select(REQUESTS).where(
            r.msg_type == int(M.AUTH_REQ), r.lid_ms == codec.packb([lid_m]), r.answer.is_(None),
        ))  # fmt: skip
        if pending is not None:  # Rule 5: the same bytes again
            wrapped, rrpid = bytes(pending.request), bytes(pending.rrpid)
        else:
            if amount <= 0:
                raise MerchantError("the shipment's amount must be positive")
            now = s.clock.now_ms()
            rrpid = ids.new_rrpid()
            data = AuthReqData(
                AuthTags(rrpid, MerTermIDs(m.merchant_id, None, None), now, trans), None,
                AuthReqPayload(True, CurrAmt(order.amount.currency, amount), None, None, None),
                False, None,
            )  # fmt: skip
            trust = s._trust(m)
            gw_kx, _ = s._gateway_cert(m.brand, trust)
            gw_public = public_key_of(gw_kx)
            key = await s.keys(m.sig_label)
            req = await build_auth_req(
                key, cert_thumbprint(load_certificate(m.sig_cert)), s.peer_suite(gw_public),
                gw_public, cert_thumbprint(gw_kx), data, order.auth_token,
                list(dict.fromkeys([m.sig_cert, m.kx_cert, *m.chain])),
            )  # fmt: skip
            wrapped = wrap_auth_req(now, req, data)
            with s.store.transaction() as db:  # committed before it is sent
                db.execute(sa.insert(REQUESTS).values(
                    rrpid=rrpid, merchant_id=m.merchant_id, msg_type=int(M.AUTH_REQ),
                    lid_ms=codec.packb([lid_m]), request=wrapped, created=now,
                ))  # fmt: skip
        if s.gateway is None:
            raise MerchantError("no gateway link configured")
        try:
            _, reply = await s.gateway.request_raw(AUTH_REQ_TYPE, wrapped)
        except (TimeoutError, BrokerError) as exc:
            log.warning("merchant_gateway_silent", msg="AuthReq", error=type(exc).__name__)
            raise MerchantError("the gateway did not answer; the request stays pending") from None
        now = s.clock.now_ms()
        try:
            res, baggage = await s._open_auth_res(m, s._trust(m), reply, rrpid, _Trans(trans))
        except RemoteError as exc:  # refused as a message: the token stays as it was
            log.warning("merchant_next_shipment_refused", code=exc.code.name)
            with s.store.transaction() as db:
                db.execute(sa.update(REQUESTS).where(r.rrpid == rrpid)
                           .values(answer=codec.packb(exc.code.name)))  # fmt: skip
            return NextShipment(None, exc.code.name, 0, True)
        code = res.payload.auth_code
        approved = code is AuthCode.APPROVED and baggage.cap_token is not None
        shipment = ids.new_lid() if approved else None
        with s.store.transaction() as db:
            if approved:
                db.execute(sa.insert(PAYMENTS).values(
                    lid_m=shipment, merchant_id=m.merchant_id, state=_MP.AUTHORIZED,
                    currency=res.payload.auth_amt.currency,
                    authorized=res.payload.auth_amt.amount, captured=0, credited=0,
                    cap_token=baggage.cap_token, updated=now, auth_rrpid=rrpid,
                    trans_ids=order.trans_ids, parent=lid_m,
                ))  # fmt: skip
                s.store.update_order(db, lid_m, now, auth_token=baggage.auth_token)
            db.execute(sa.update(REQUESTS).where(r.rrpid == rrpid)
                       .values(answer=codec.encode(res)))  # fmt: skip
        more = (baggage.auth_token is not None) if approved else True
        log.info("merchant_next_shipment", merchant_id=m.merchant_id, code=code.name,
                 amount=res.payload.auth_amt.amount, more=more)  # fmt: skip
        return NextShipment(shipment, code.name, res.payload.auth_amt.amount, more)

    def shipments(self, lid_m: bytes) -> list[Payment]:
        """The next shipments' payments of an order (Rule 5)."""
        p = PAYMENTS.c
        rows = self.db.all(sa.select(PAYMENTS).where(p.parent == lid_m).order_by(p.updated))
        return [_payment(r) for r in rows]

    async def resend(self, rrpid: bytes) -> list[ItemResult]:
        """Send a pending request again (Rule 2): the same bytes, the gateway's stored answer."""
        r = REQUESTS.c
        row = self.db.one(sa.select(REQUESTS).where(r.rrpid == rrpid))
        if row is None or row.answer is not None:
            raise MerchantError("no such pending request")
        pair = clearing.PAIRS[MessageType(row.msg_type)]
        lid_ms = [bytes(x) for x in codec.unpackb(row.lid_ms)]
        pays = [self.payment(lid) for lid in lid_ms]
        m = self.s._merchant(row.merchant_id)
        return await self._finish(pair, m, [p for p in pays if p], rrpid, bytes(row.request))

    # -- the exchange (Rules 1, 2, 4) -------------------------------------------------------------

    async def _one_item(
        self, pair: clearing.Pair, event: M, lid_m: bytes, amount: int, batch_id: int | None
    ) -> ItemResult:
        now = self.s.clock.now_ms()
        pays = self._payments([lid_m], event)
        p, m = pays[0], self._merchant_of(pays)
        cap_payload = (
            codec.decode(CapPayload, p.cap_payload) if p.cap_payload
            else CapPayload(now, CurrAmt(p.currency, p.captured), None)
        )  # fmt: skip
        item = CapRevOrCredItem(
            self._trans(lid_m), self._auth_rrpid(lid_m), cap_payload, batch_id, now,
            CurrAmt(p.currency, amount),
        )  # fmt: skip
        data = CapRevOrCredReqData(self._tags(m, now), [item])
        return (await self._exchange(pair, m, pays, data, {}))[0]

    async def _exchange(
        self, pair: clearing.Pair, m: MerchantRow, pays: list[Payment], data: Any,
        extra: dict[bytes, dict[str, Any]],
    ) -> list[ItemResult]:  # fmt: skip
        rrpid = clearing.rrpid_of(data)
        wrapped = await self._build(pair, m, data, [p.cap_token for p in pays])
        now = self.s.clock.now_ms()
        with self.s.store.transaction() as db:  # Rule 2: committed before it is sent
            for p in pays:
                machine = Machine(MachineKind.MERCHANT_PAYMENT, p.state)
                machine.send(pair.req_type)
                values = {
                    "lid_m": p.lid_m, "merchant_id": p.merchant_id, "state": machine.state,
                    "currency": p.currency, "authorized": p.authorized, "captured": p.captured,
                    "credited": p.credited, "cap_token": p.cap_token,
                    "cap_payload": p.cap_payload, "batch_id": p.batch_id, "pending": rrpid,
                    "updated": now, "auth_rrpid": p.auth_rrpid, "trans_ids": p.trans_ids,
                    "parent": p.parent, **extra.get(p.lid_m, {}),
                }  # fmt: skip
                db.execute(self.s.store.db.upsert(PAYMENTS, values))
            db.execute(sa.insert(REQUESTS).values(
                rrpid=rrpid, merchant_id=m.merchant_id, msg_type=int(pair.req_type),
                lid_ms=codec.packb([p.lid_m for p in pays]), request=wrapped, created=now,
            ))  # fmt: skip
        pays = [self.payment(p.lid_m) or p for p in pays]
        return await self._finish(pair, m, pays, rrpid, wrapped)

    async def _finish(
        self, pair: clearing.Pair, m: MerchantRow, pays: list[Payment], rrpid: bytes,
        wrapped: bytes,
    ) -> list[ItemResult]:  # fmt: skip
        try:
            res, baggage = await self._send(pair, m, rrpid, wrapped)
        except RemoteError as exc:  # the gateway refused the message: every payment goes back
            log.warning("merchant_after_refused", msg=pair.req_content, code=exc.code.name)
            return self._record(pair, pays, rrpid, None, None, exc.code.name)
        return self._record(pair, pays, rrpid, res, baggage, None)

    def _record(
        self, pair: clearing.Pair, pays: list[Payment], rrpid: bytes, res: Any, baggage: Any,
        error: str | None,
    ) -> list[ItemResult]:  # fmt: skip
        now = self.s.clock.now_ms()
        results: list[ItemResult] = []
        with self.s.store.transaction() as db:
            for i, p in enumerate(pays):
                machine = Machine(MachineKind.MERCHANT_PAYMENT, p.state)
                cols: dict[str, Any] = {}
                if error is not None:
                    machine.receive(M.ERROR)
                    result = (error, 0, None, None)
                else:
                    outcome, result, cols = self._outcome(pair, p, res, baggage, i)
                    machine.receive(pair.res_type, outcome)
                db.execute(sa.update(PAYMENTS).where(PAYMENTS.c.lid_m == p.lid_m).values(
                    state=machine.state, pending=None, updated=now, **cols,
                ))  # fmt: skip
                results.append(ItemResult(p.lid_m, *result, machine.state))
            db.execute(sa.update(REQUESTS).where(REQUESTS.c.rrpid == rrpid).values(
                answer=codec.encode(res) if res is not None else codec.packb(error),
            ))  # fmt: skip
        for r in results:
            log.info("merchant_after_done", msg=pair.req_content, code=r.code, amount=r.amount,
                     state=r.state)  # fmt: skip
        return results

    def _outcome(
        self, pair: clearing.Pair, p: Payment, res: Any, baggage: Any, i: int
    ) -> tuple[Outcome, tuple[str, int, int | None, int | None], dict[str, Any]]:
        cols: dict[str, Any] = {}
        if pair is clearing.AUTH_REVERSAL:
            code = res.code
            ok = code is AuthRevCode.APPROVED
            new = res.auth_new_amt.amount
            outcome = (Outcome.FULL if new == 0 else Outcome.PARTIAL) if ok else Outcome.DECLINED
            if ok:
                cols["authorized"] = new
                if baggage is not None and baggage.cap_token is not None:
                    cols["cap_token"] = baggage.cap_token  # Rule 3
            return outcome, (code.name, new if ok else 0, None, None), cols
        if pair is clearing.CAPTURE:
            item = res.items[i]
            if item.auth_rrpid != self._auth_rrpid(p.lid_m):
                raise ProtocolError(ErrorCode.UNKNOWN_RRPID, "CapRes items out of order")
            pl = item.payload
            ok = pl.cap_code is CapCode.SUCCESS
            if ok:
                cols.update(captured=pl.cap_amt.amount, batch_id=pl.batch_id)
            outcome = Outcome.APPROVED if ok else Outcome.DECLINED
            return outcome, (pl.cap_code.name, pl.cap_amt.amount, pl.batch_id, pl.batch_seq), cols
        item = res.items[i]
        if item.auth_rrpid != self._auth_rrpid(p.lid_m):
            raise ProtocolError(ErrorCode.UNKNOWN_RRPID, "answer items out of order")
        ok = item.code is CapRevOrCredCode.SUCCESS
        amount = item.actual_amt.amount
        outcome = Outcome.APPROVED if ok else Outcome.DECLINED
        if ok and pair is clearing.CREDIT:
            cols["credited"] = p.credited + amount
        elif ok and pair is clearing.CAPTURE_REVERSAL:
            cols.update(captured=0, batch_id=None, cap_payload=None)
        elif ok and pair is clearing.CREDIT_REVERSAL:
            left = p.credited - amount
            cols["credited"] = left
            outcome = Outcome.FULL if left == 0 else Outcome.PARTIAL
        return outcome, (item.code.name, amount, item.batch_id, item.batch_seq), cols

    async def _send(
        self, pair: clearing.Pair, m: MerchantRow, rrpid: bytes, wrapped: bytes
    ) -> tuple[Any, Any]:
        if self.s.gateway is None:
            raise MerchantError("no gateway link configured")
        try:
            _, reply = await self.s.gateway.request_raw(pair.req_amqp, wrapped)
        except (TimeoutError, BrokerError) as exc:
            log.warning("merchant_gateway_silent", msg=pair.req_content, error=type(exc).__name__)
            raise MerchantError("the gateway did not answer; the request stays pending") from None
        return await self._open(pair, m, rrpid, reply)

    async def _open(self, pair: clearing.Pair, m: MerchantRow, rrpid: bytes, reply: bytes) -> Any:
        s = self.s
        decoded = expect_reply(reply, s.clock.now_ms(), pair.res_body, who="gateway",
                               window_ms=s.window_ms)  # fmt: skip
        trust = s._trust(m)
        certs = load_all(decoded.body.certs)

        def gateway_key(thumb: bytes) -> PublicKey:
            leaf = pick(certs, thumb)
            trust.validate(leaf, certs, CertType.GATEWAY, KeyUse.SIGNATURE, s.clock.now_ms())
            return public_key_of(leaf)

        kx_key = await s.keys(m.kx_label)
        kx_thumb = cert_thumbprint(load_certificate(m.kx_cert))
        data, baggage = await clearing.open_response(pair, kx_key, kx_thumb, decoded.body,
                                                     gateway_key)  # fmt: skip
        clearing.check_header(decoded.header, data)
        if clearing.rrpid_of(data) != rrpid:
            raise ProtocolError(ErrorCode.UNKNOWN_RRPID, "answer to another request")
        return data, baggage

    async def _build(
        self, pair: clearing.Pair, m: MerchantRow, data: Any, tokens: list[bytes]
    ) -> bytes:
        s = self.s
        trust = s._trust(m)
        gw_kx, _ = s._gateway_cert(m.brand, trust)
        gw_public = public_key_of(gw_kx)
        key = await s.keys(m.sig_label)
        return await clearing.build_request(
            pair, key, cert_thumbprint(load_certificate(m.sig_cert)), s.peer_suite(gw_public),
            gw_public, cert_thumbprint(gw_kx), data, tokens,
            list(dict.fromkeys([m.sig_cert, m.kx_cert, *m.chain])), s.clock.now_ms(),
        )  # fmt: skip

    # -- helpers --------------------------------------------------------------------------------

    def _payments(self, lid_ms: Sequence[bytes], event: M) -> list[Payment]:
        if not lid_ms:
            raise MerchantError("name at least one order")
        pays = []
        for lid_m in lid_ms:
            p = self.payment(lid_m)
            if p is None:
                raise ProtocolError(ErrorCode.UNKNOWN_LID, "no authorized payment for this order")
            if p.pending is not None:
                raise ProtocolError(ErrorCode.STATE_VIOLATION, "a request for it is pending")
            Machine(MachineKind.MERCHANT_PAYMENT, p.state).send(event)  # Rule 1: or refused
            pays.append(p)
        return pays

    def _merchant_of(self, pays: list[Payment]) -> MerchantRow:
        ids_ = {p.merchant_id for p in pays}
        if len(ids_) != 1:
            raise MerchantError("one request names the orders of one merchant")
        return self.s._merchant(ids_.pop())

    def _order(self, lid_m: bytes) -> OrderRow:
        """The order of ``lid_m``: itself, or the order a shipment belongs to (Rule 5)."""
        order = self.s.store.order(lid_m)
        if order is None:
            p = self._row(lid_m)
            if p is not None and p.parent is not None:
                order = self.s.store.order(p.parent)
        if order is None:
            raise ProtocolError(ErrorCode.UNKNOWN_LID, "no such order")
        return order

    def _row(self, lid_m: bytes) -> Payment | None:
        row = self.db.one(sa.select(PAYMENTS).where(PAYMENTS.c.lid_m == lid_m))
        return None if row is None else _payment(row)

    def _trans(self, lid_m: bytes) -> TransIDs:
        p = self._row(lid_m)
        if p is not None and p.trans_ids is not None:
            return codec.decode(TransIDs, p.trans_ids)
        order = self._order(lid_m)
        assert order.trans_ids is not None
        return codec.decode(TransIDs, order.trans_ids)

    def _auth_rrpid(self, lid_m: bytes) -> bytes:
        p = self._row(lid_m)
        if p is not None and p.auth_rrpid is not None:
            return p.auth_rrpid
        order = self._order(lid_m)
        assert order.auth_rrpid is not None
        return order.auth_rrpid

    def _tags(self, m: MerchantRow, now: int) -> RRTags:
        return RRTags(ids.new_rrpid(), MerTermIDs(m.merchant_id, None, None), now)


def _payment(row: Any) -> Payment:
    return Payment(
        bytes(row.lid_m), row.merchant_id, row.state, row.currency, int(row.authorized),
        int(row.captured), int(row.credited), bytes(row.cap_token),
        None if row.cap_payload is None else bytes(row.cap_payload), row.batch_id,
        None if row.pending is None else bytes(row.pending),
        *(None if getattr(row, c) is None else bytes(getattr(row, c))
          for c in ("auth_rrpid", "trans_ids", "parent")),
    )  # fmt: skip
