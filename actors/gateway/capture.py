"""The gateway after authorization: capture, authorization reversal, credit, capture and
credit reversal (set-protocol.md §3.4, §5), over the books (books.py) and the issuer link.

Rule 1 (verify): a request opens with the gateway's key-exchange key; its signer is a
merchant signature certificate of this brand (chain, revocation), the merchant id it certifies
is the RRTags' and the header's RRPID the body's. Each CapToken opens under the gateway's own
key and signature (a token another gateway sealed, or a changed one, is ``invalidCapToken``)
and names the item's authorization (AuthRRPID). A failure of the message itself is a SET Error
and changes nothing; a failure of one item is that item's SET code (CapCode, AuthRevCode,
CapRevOrCredCode) and changes nothing of that item.
Rule 2 (decide): every item moves its payment through ``GATEWAY_TRANSACTION`` and its batch
through ``GATEWAY_BATCH`` (protocol/states.py) or is refused: not this merchant's or unknown
(``unknownXID``), wrong state (capture of a captured payment: ``duplicateRequest``; a
reversal of a captured authorization: ``alreadyCaptured``; a credit of an uncaptured one:
``originalNotFound``; a capture reversal after a credit: ``originalProcessed``), amount above
what the state allows (capture > authorized, Σ credits > captured: ``amountError`` /
``amountExceeded``; currency other than the authorization's), a closed batch
(``batchClosed``). The money invariants are books.py Rule 2.
Rule 3 (commit, reply): the request's effects, the host messages they owe and the signed
answer commit in one transaction under the request's RRPID (books.py Rule 3); the same request
again gets the stored answer, another request under that RRPID ``replay``. One lock orders
the requests of this process, so two requests never decide over the same rows at once.
Rule 4 (issuer host): a capture sends an 0220 completion (processing 00) that posts the
captured amount and releases the rest of the hold; a credit an 0220 refund (processing 20);
a full authorization reversal an 0400, a partial one an 0400 with field 95 (the hold that
stays); a capture or credit reversal an 0420 of its 0220. Field 48 names the batch. All go
through the link's store-and-forward journal, so the host gets each once, also across
restarts.
Rule 5: logs name XIDs, RRPIDs, codes and amounts; never a PAN (the gateway has none here).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography import x509

from actors.entrypoint import SetHandler
from actors.gateway.books import Advice, Batch, Books, Item, Payment, Work
from actors.gateway.ledger import AUTHS
from actors.gateway.service import GatewayService, _load
from actors.iso8583 import spec
from keystore.errors import BadRequest
from protocol import clearing, codec
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    public_key_of,
    set_extension,
)
from protocol.chain import Expect
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PublicKey
from protocol.messages import (
    AuthCode,
    AuthResBaggage,
    AuthRevCode,
    AuthRevReqData,
    AuthRevResData,
    BatchItemKind,
    BatchStatus,
    CapCode,
    CapReqData,
    CapResData,
    CapResItem,
    CapResPayload,
    CapRevOrCredCode,
    CapRevOrCredItem,
    CapRevOrCredReqData,
    CapRevOrCredResData,
    CapRevOrCredResItem,
    CapTokenData,
    CurrAmt,
    MessageType,
    ResponseData,
    TransIDs,
)
from protocol.states import (
    Direction,
    Event,
    GatewayBatch,
    GatewayTransaction,
    Machine,
    MachineKind,
    Outcome,
)
from protocol.treatments import make_enc, open_enc
from protocol.wrapper import Decoded
from setpay.logs import get_logger

log = get_logger(component="gateway")

M = MessageType
_G = GatewayTransaction


def batch_ref(merchant_id: str, batch_id: int) -> str:
    """Field 48 of the host messages of a batch."""
    return f"{merchant_id}:{batch_id}"


class Refused(Exception):
    """One item refused with its SET code (Rule 2)."""

    def __init__(self, code: Any, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


@dataclass
class Opened:
    """A request that passed every check of the message (Rule 1)."""

    pair: clearing.Pair
    data: Any
    tokens: list[CapTokenData | None]
    merchant_id: str
    merchant_kx: x509.Certificate
    rrpid: bytes
    digest: bytes


class ClearingService:
    """Capture, reversals and credits of one gateway (Rules 1-5); batch administration lives
    in batch.py and shares these books."""

    def __init__(self, gateway: GatewayService, books: Books) -> None:
        self.gw = gateway
        self.books = books
        self.lock = asyncio.Lock()

    @property
    def handlers(self) -> dict[MessageType, SetHandler]:
        return {
            M.CAP_REQ: self._capture,
            M.AUTH_REV_REQ: self._auth_reversal,
            M.CRED_REQ: self._credit,
            M.CAP_REV_REQ: self._capture_reversal,
            M.CRED_REV_REQ: self._credit_reversal,
        }

    # -- Rule 1 ---------------------------------------------------------------------------------

    def stored(self, rrpid: bytes, digest: bytes) -> tuple[str, bytes] | None:
        known = self.books.reply(rrpid)
        if known is None:
            return None
        if not hmac.compare_digest(known.digest, digest):
            raise ProtocolError(ErrorCode.REPLAY, "RRPID already used by another request")
        log.info("gateway_duplicate_answered")
        return known.reply_type, known.reply

    async def open(self, pair: clearing.Pair, decoded: Decoded) -> Opened:
        """Every check of the message; the tokens opened (None where one is refused)."""
        rrpid = decoded.header.rrpid
        if rrpid is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE_HEADER, f"{pair.req_content} without RRPID")
        body = decoded.body
        certs = [_load(der) for der in body.certs]
        by_thumb = {cert_thumbprint(c): c for c in certs}
        signers: dict[bytes, x509.Certificate] = {}
        brand = self.gw.identity.brand

        def merchant_key(thumb: bytes) -> PublicKey:
            cert = by_thumb.get(thumb)
            if cert is None:
                raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "merchant certificate not sent")
            self.gw._validate(cert, certs, Expect(CertType.MERCHANT, KeyUse.SIGNATURE, brand))
            signers[thumb] = cert
            return public_key_of(cert)

        data, raw_tokens, signer = await clearing.open_request(
            pair, self.gw.kx_key, self.gw.kx_thumb, body, merchant_key
        )
        clearing.check_header(decoded.header, data)
        tags = getattr(data, "rr_tags", None) or data.auth_tags
        merchant = set_extension(signers[signer]).merchant
        if merchant is None or merchant.merchant_id != tags.mer_term_ids.merchant_id:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "merchant id is not the signer's")
        merchant_kx = self.gw._merchant_kx(certs, merchant.merchant_id)
        tokens = [await self._open_token(t) for t in raw_tokens]
        digest = hashlib.sha256(codec.encode(body)).digest()
        return Opened(pair, data, tokens, merchant.merchant_id, merchant_kx, rrpid, digest)

    async def _open_token(self, token: bytes) -> CapTokenData | None:
        try:
            opened = await open_enc(
                self.gw.kx_key, self.gw.kx_thumb, token,
                public_key_of(self.gw.identity.sig_cert), clearing.CAP_TOKEN,
            )  # fmt: skip
            return codec.decode(CapTokenData, opened.content)
        except ProtocolError as exc:
            log.info("gateway_cap_token_refused", code=exc.code.name)
            return None
        except BadRequest:  # a wrap the keystore will not even try: the token is not ours
            log.info("gateway_cap_token_refused", code="badRequest")
            return None

    async def cap_token(self, auth_rrpid: bytes, amount: CurrAmt, rrn: str) -> bytes:
        """A CapToken = Enc(P, P, CapTokenData) sealed to this gateway (as at authorization)."""
        gw = self.gw
        token = CapTokenData(auth_rrpid, amount, rrn.encode("ascii"))
        return await make_enc(
            gw.sig_key, gw.sig_thumb, gw.peer_suite(gw.kx_public), gw.kx_public, gw.kx_thumb,
            clearing.CAP_TOKEN, codec.encode(token),
        )  # fmt: skip

    # -- payments and batches (Rule 2) -----------------------------------------------------------

    def payment(self, work: Work, merchant_id: str, auth_rrpid: bytes, trans: TransIDs) -> Payment:
        """The payment of ``auth_rrpid`` as this request sees it; ``unknownXID`` if it is not
        this merchant's approved authorization of that XID."""
        p = work.payments.get(auth_rrpid) or self.books.payment(auth_rrpid)
        if p is None:
            p = self._from_auth(auth_rrpid, trans)
        if p is None or p.merchant_id != merchant_id or p.xid != trans.xid:
            raise Refused("unknown", "no such authorization of this merchant")
        work.payments[auth_rrpid] = p
        return p

    def _from_auth(self, auth_rrpid: bytes, trans: TransIDs) -> Payment | None:
        a = AUTHS.c
        row = self.gw.ledger.db.one(
            sa.select(
                a.merchant_id, a.xid, a.currency, a.rrn, a.state, a.auth_code, a.auth_amount,
                a.capture_now,
            ).where(a.rrpid == auth_rrpid)
        )  # fmt: skip
        if row is None or row.state != "done" or row.rrn is None:
            return None
        machine = Machine(MachineKind.GATEWAY_TRANSACTION)
        machine.receive(M.AUTH_REQ)
        approved = row.auth_code == int(AuthCode.APPROVED) and (row.auth_amount or 0) > 0
        outcome = (
            Outcome.SALE if approved and row.capture_now
            else Outcome.APPROVED if approved else Outcome.DECLINED
        )  # fmt: skip
        machine.send(M.AUTH_RES, outcome)
        amount = int(row.auth_amount or 0)
        return Payment(
            auth_rrpid, str(row.merchant_id), bytes(row.xid), codec.encode(trans),
            str(row.currency), str(row.rrn), machine.state, amount,
            amount if outcome is Outcome.SALE else 0, 0, None, self.gw.clock.now_ms(),
        )  # fmt: skip

    def batch_for(
        self, work: Work, merchant_id: str, currency: str, batch_id: int | None, event: M
    ) -> Batch:
        """The batch an item joins (the one named, else the merchant's open batch in this
        currency, else a new one), moved by ``event``; ``batchClosed`` if it takes no more."""
        if batch_id is None:
            mine = [b for (m, _), b in work.batches.items() if m == merchant_id]
            current = next(
                (b for b in mine if b.state == GatewayBatch.OPEN and b.currency == currency),
                None,
            ) or self.books.open_batch(merchant_id, currency)  # fmt: skip
            if current is not None:
                batch_id = current.batch_id
            else:
                batch_id = max([self.books.next_batch_id(merchant_id),
                                *(b.batch_id + 1 for b in mine)])  # fmt: skip
        key = (merchant_id, batch_id)
        b = work.batches.get(key) or self.books.batch(merchant_id, batch_id)
        now = self.gw.clock.now_ms()
        if b is None:
            b = Batch(merchant_id, batch_id, GatewayBatch.NONE, currency, now)
        if b.currency != currency:
            raise Refused("batch", "batch holds another currency")
        machine = Machine(MachineKind.GATEWAY_BATCH, b.state)
        if not machine.can(_recv(event)):
            raise Refused("closed", f"batch {batch_id} is {b.state}")
        machine.receive(event)
        b.state = machine.state
        work.batches[key] = b
        work.dirty_batches.add(key)
        return b

    def add_item(
        self, work: Work, b: Batch, p: Payment, kind: BatchItemKind, amount: int,
        rrpid: bytes, reverses: int | None, advice: Advice | None,
    ) -> Item:  # fmt: skip
        item = Item(
            b.merchant_id, b.batch_id, b.next_seq, p.auth_rrpid, kind, amount, True, reverses,
            rrpid, None if advice is None else advice.key, self.gw.clock.now_ms(),
        )  # fmt: skip
        b.next_seq += 1
        work.items.append(item)
        if advice is not None:
            work.outbox.append(advice)
        return item

    def advice(
        self, rrpid: bytes, index: int, p: Payment, mti: str, fields: dict[str, str],
        original_key: str | None = None,
    ) -> Advice:  # fmt: skip
        return Advice(
            f"{mti}:{rrpid.hex()}:{index}", p.rrn, mti, json.dumps(fields), original_key, False,
            self.gw.clock.now_ms(),
        )  # fmt: skip

    def status(self, b: Batch) -> BatchStatus:
        """A batch's BatchStatus from the books (committed items) and this request's."""
        t = self.books.totals(b.merchant_id, b.batch_id)
        return BatchStatus(
            b.opened, b.closed, b.currency, t.credit[0], t.credit[1], t.debit[0], t.debit[1]
        )

    # -- Rule 3, 4 ------------------------------------------------------------------------------

    async def _serve(
        self, pair: clearing.Pair, decoded: Decoded, decide: Callable[[Opened, Work], Any]
    ) -> tuple[str, bytes]:
        rrpid = decoded.header.rrpid or b""
        digest = hashlib.sha256(codec.encode(decoded.body)).digest()
        stored = self.stored(rrpid, digest)
        if stored is not None:
            return stored
        opened = await self.open(pair, decoded)
        async with self.lock:
            stored = self.stored(rrpid, digest)  # answered while this one was being opened
            if stored is not None:
                return stored
            work = Work()
            data, baggage = await decide(opened, work)
            reply = await self.respond(opened, data, baggage)
            self.books.commit(
                work, opened.rrpid, opened.digest, pair.res_amqp, reply, self.gw.clock.now_ms()
            )
        await self.forward(work.outbox)
        return pair.res_amqp, reply

    async def respond(self, opened: Opened, data: Any, baggage: AuthResBaggage | None) -> bytes:
        gw = self.gw
        merchant_public = public_key_of(opened.merchant_kx)
        held = gw.trust.held(gw.identity.brand)
        return await clearing.build_response(
            opened.pair, gw.sig_key, gw.sig_thumb, gw.peer_suite(merchant_public),
            merchant_public, cert_thumbprint(opened.merchant_kx), data, gw.own_certs,
            gw.clock.now_ms(), baggage=baggage,
            crls=None if held is None else list(held.crls),
            bci=None if held is None else held.bci,
        )  # fmt: skip

    async def forward(self, outbox: list[Advice]) -> None:
        """Hand the committed host messages to the link's journal (Rule 4, books.py Rule 3)."""
        for advice in outbox:
            queued = await self.gw.link.advise(
                advice.key, advice.rrn, advice.mti, json.loads(advice.fields),
                original_key=advice.original_key,
            )  # fmt: skip
            if not queued:
                log.error("gateway_advice_without_original", key=advice.key, rrn=advice.rrn)
            self.books.mark_queued(advice.key)

    async def recover(self) -> None:
        """Queue what a crash left in the outbox (books.py Rule 3); called at start."""
        left = self.books.unqueued()
        if left:
            log.warning("gateway_outbox_recovered", count=len(left))
        await self.forward(left)

    # -- CapReq ---------------------------------------------------------------------------------

    async def _capture(self, decoded: Decoded) -> tuple[str, bytes]:
        return await self._serve(clearing.CAPTURE, decoded, self._decide_capture)

    async def _decide_capture(self, o: Opened, work: Work) -> tuple[CapResData, None]:
        data: CapReqData = o.data
        items: list[CapResItem] = []
        touched: dict[tuple[str, int], Batch] = {}
        for index, item in enumerate(data.items):
            amt = item.payload.cap_req_amt
            token = o.tokens[index] if index < len(o.tokens) else None
            try:
                if index >= len(o.tokens):
                    raise Refused(CapCode.CAP_TOKEN_MISSING, "no CapToken for the item")
                if token is None or token.auth_rrpid != item.auth_rrpid:
                    raise Refused(CapCode.INVALID_CAP_TOKEN, "CapToken does not open or match")
                p = self._payment(work, o, item.auth_rrpid, item.trans_ids, CapCode.UNKNOWN_XID)
                machine = Machine(MachineKind.GATEWAY_TRANSACTION, p.state)
                if not machine.can(_recv(M.CAP_REQ)):
                    code = (
                        CapCode.DUPLICATE_REQUEST
                        if p.state in (_G.CAPTURED, _G.CREDITED) else CapCode.INVALID_AUTH_DATA
                    )  # fmt: skip
                    raise Refused(code, f"payment is {p.state}")
                if token.token_opaque != p.rrn.encode("ascii"):
                    raise Refused(CapCode.INVALID_CAP_TOKEN, "CapToken of another authorization")
                if amt.currency != p.currency or not 0 < amt.amount <= p.authorized:
                    raise Refused(CapCode.AMOUNT_ERROR, "capture above the authorized amount")
                sale = item.payload.sale_detail
                b = self._batch(work, o, p.currency, sale.batch_id if sale else None, M.CAP_REQ,
                                CapCode.BATCH_CLOSED, CapCode.BATCH_UNKNOWN)  # fmt: skip
                machine.receive(M.CAP_REQ)
                p.state = machine.send(M.CAP_RES, Outcome.APPROVED)
                p.captured = amt.amount
                p.updated = self.gw.clock.now_ms()
                work.dirty_payments.add(p.auth_rrpid)
                ref = batch_ref(b.merchant_id, b.batch_id)
                adv = self.advice(o.rrpid, index, p, spec.ADVICE, {
                    "3": spec.CARD_PROCESSING, "4": f"{amt.amount:012d}", "48": ref,
                })  # fmt: skip
                it = self.add_item(work, b, p, BatchItemKind.CAPTURE, amt.amount, o.rrpid, None,
                                   adv)  # fmt: skip
                touched[(b.merchant_id, b.batch_id)] = b
                payload = CapResPayload(CapCode.SUCCESS, amt, b.batch_id, it.seq)
                log.info("gateway_captured", xid=item.trans_ids.xid.hex(), amount=amt.amount,
                         batch=b.batch_id)  # fmt: skip
            except Refused as r:
                log.info("gateway_capture_refused", code=r.code.name, reason=r.why)
                payload = CapResPayload(r.code, CurrAmt(amt.currency, 0), None, None)
            items.append(CapResItem(item.trans_ids, item.auth_rrpid, payload))
        statuses = [self._status_after(work, b) for b in touched.values()]
        return CapResData(data.rr_tags, items, statuses), None

    def _status_after(self, work: Work, b: Batch) -> BatchStatus:
        """BatchStatus including this request's own items (not committed yet)."""
        base = self.status(b)
        credit_n, credit_a, debit_n, debit_a = (
            base.credit_count,
            base.credit_amount,
            base.debit_count,
            base.debit_amount,
        )
        for item in work.items:
            if (item.merchant_id, item.batch_id) != (b.merchant_id, b.batch_id):
                continue
            if item.kind is BatchItemKind.CAPTURE:
                debit_n, debit_a = debit_n + 1, debit_a + item.amount
            elif item.kind is BatchItemKind.CREDIT:
                credit_n, credit_a = credit_n + 1, credit_a + item.amount
        for dead in work.dead.values():
            if (dead.merchant_id, dead.batch_id) != (b.merchant_id, b.batch_id):
                continue
            if dead.kind is BatchItemKind.CAPTURE:
                debit_n, debit_a = debit_n - 1, debit_a - dead.amount
            elif dead.kind is BatchItemKind.CREDIT:
                credit_n, credit_a = credit_n - 1, credit_a - dead.amount
        return BatchStatus(b.opened, b.closed, b.currency, credit_n, credit_a, debit_n, debit_a)

    def _payment(
        self, work: Work, o: Opened, auth_rrpid: bytes, trans: TransIDs, unknown: Any
    ) -> Payment:
        try:
            return self.payment(work, o.merchant_id, auth_rrpid, trans)
        except Refused as r:
            raise Refused(unknown, r.why) from None

    def _batch(
        self, work: Work, o: Opened, currency: str, batch_id: int | None, event: M,
        closed: Any, unknown: Any,
    ) -> Batch:  # fmt: skip
        try:
            return self.batch_for(work, o.merchant_id, currency, batch_id, event)
        except Refused as r:
            raise Refused(closed if r.code == "closed" else unknown, r.why) from None

    # -- AuthRevReq -----------------------------------------------------------------------------

    async def _auth_reversal(self, decoded: Decoded) -> tuple[str, bytes]:
        return await self._serve(clearing.AUTH_REVERSAL, decoded, self._decide_auth_reversal)

    async def _decide_auth_reversal(
        self, o: Opened, work: Work
    ) -> tuple[AuthRevResData, AuthResBaggage]:
        data: AuthRevReqData = o.data
        new = data.auth_new_amt
        auth_rrpid = data.auth_req_data.auth_tags.rrpid
        token = o.tokens[0]
        baggage = AuthResBaggage(None, None, None)
        try:
            if token is None or token.auth_rrpid != auth_rrpid:
                raise Refused(AuthRevCode.INVALID_TRANSACTION, "CapToken does not open or match")
            if data.auth_req_data.auth_tags.trans_ids != data.auth_tags.trans_ids:
                raise Refused(AuthRevCode.ORIGINAL_NOT_FOUND, "another purchase's authorization")
            p = self._payment(work, o, auth_rrpid, data.auth_tags.trans_ids,
                              AuthRevCode.ORIGINAL_NOT_FOUND)  # fmt: skip
            machine = Machine(MachineKind.GATEWAY_TRANSACTION, p.state)
            if not machine.can(_recv(M.AUTH_REV_REQ)):
                code = (
                    AuthRevCode.ALREADY_CAPTURED
                    if p.state in (_G.CAPTURED, _G.CREDITED) else AuthRevCode.INVALID_TRANSACTION
                )  # fmt: skip
                raise Refused(code, f"payment is {p.state}")
            if new.currency != p.currency or not 0 <= new.amount < p.authorized:
                raise Refused(AuthRevCode.AMOUNT_ERROR, "new amount not below the authorized")
            machine.receive(M.AUTH_REV_REQ)
            full = new.amount == 0
            p.state = machine.send(M.AUTH_REV_RES, Outcome.FULL if full else Outcome.PARTIAL)
            p.authorized = new.amount
            p.updated = self.gw.clock.now_ms()
            work.dirty_payments.add(p.auth_rrpid)
            fields = {} if full else {"95": spec.replacement_amount(new.amount)}
            work.outbox.append(self.advice(o.rrpid, 0, p, spec.REVERSAL_REQUEST, fields))
            if not full:
                baggage = AuthResBaggage(await self.cap_token(auth_rrpid, new, p.rrn), None, None)
            code, amount = AuthRevCode.APPROVED, new
            log.info("gateway_auth_reversed", xid=p.xid.hex(), remaining=new.amount)
        except Refused as r:
            log.info("gateway_auth_reversal_refused", code=r.code.name, reason=r.why)
            code, amount = r.code, CurrAmt(new.currency, 0)
        res = AuthRevResData(data.auth_tags, code, amount, ResponseData(None, None, None, None))
        return res, baggage

    # -- CredReq, CapRevReq, CredRevReq -----------------------------------------------------------

    async def _credit(self, decoded: Decoded) -> tuple[str, bytes]:
        return await self._serve(clearing.CREDIT, decoded, self._decide_items)

    async def _capture_reversal(self, decoded: Decoded) -> tuple[str, bytes]:
        return await self._serve(clearing.CAPTURE_REVERSAL, decoded, self._decide_items)

    async def _credit_reversal(self, decoded: Decoded) -> tuple[str, bytes]:
        return await self._serve(clearing.CREDIT_REVERSAL, decoded, self._decide_items)

    async def _decide_items(self, o: Opened, work: Work) -> tuple[CapRevOrCredResData, None]:
        data: CapRevOrCredReqData = o.data
        one = {
            clearing.CREDIT.req_type: self._credit_item,
            clearing.CAPTURE_REVERSAL.req_type: self._capture_reversal_item,
            clearing.CREDIT_REVERSAL.req_type: self._credit_reversal_item,
        }[o.pair.req_type]
        items: list[CapRevOrCredResItem] = []
        touched: dict[tuple[str, int], Batch] = {}
        for index, item in enumerate(data.items):
            token = o.tokens[index] if index < len(o.tokens) else None
            try:
                if index >= len(o.tokens):
                    raise Refused(CapRevOrCredCode.MISSING_CAP_TOKEN, "no CapToken for the item")
                if token is None or token.auth_rrpid != item.auth_rrpid:
                    raise Refused(CapRevOrCredCode.INVALID_CAP_TOKEN, "CapToken does not match")
                p = self._payment(work, o, item.auth_rrpid, item.trans_ids,
                                  CapRevOrCredCode.UNKNOWN_XID)  # fmt: skip
                if token.token_opaque != p.rrn.encode("ascii"):
                    raise Refused(CapRevOrCredCode.INVALID_CAP_TOKEN, "another authorization's")
                if item.amount.currency != p.currency:
                    raise Refused(CapRevOrCredCode.CAPTURE_DATA_MISMATCH, "currency differs")
                b, it, actual = one(work, o, index, item, p)
                touched[(b.merchant_id, b.batch_id)] = b
                res = CapRevOrCredResItem(
                    item.trans_ids, item.auth_rrpid, CapRevOrCredCode.SUCCESS, actual,
                    b.batch_id, it.seq,
                )  # fmt: skip
            except Refused as r:
                log.info("gateway_item_refused", msg=o.pair.req_content, code=r.code.name,
                         reason=r.why)  # fmt: skip
                res = CapRevOrCredResItem(
                    item.trans_ids, item.auth_rrpid, r.code, CurrAmt(item.amount.currency, 0),
                    None, None,
                )  # fmt: skip
            items.append(res)
        statuses = [self._status_after(work, b) for b in touched.values()]
        return CapRevOrCredResData(data.rr_tags, items, statuses), None

    def _moved(self, p: Payment, event: M, refusals: dict[str, Any]) -> Machine:
        machine = Machine(MachineKind.GATEWAY_TRANSACTION, p.state)
        if not machine.can(_recv(event)):
            code = refusals.get(p.state, CapRevOrCredCode.ORIGINAL_NOT_FOUND)
            raise Refused(code, f"payment is {p.state}")
        machine.receive(event)
        return machine

    def _credit_item(
        self, work: Work, o: Opened, index: int, item: CapRevOrCredItem, p: Payment
    ) -> tuple[Batch, Item, CurrAmt]:
        machine = self._moved(p, M.CRED_REQ, {})
        if not 0 < item.amount.amount <= p.captured - p.credited:
            raise Refused(CapRevOrCredCode.AMOUNT_EXCEEDED, "credits above the captured amount")
        b = self._batch(work, o, p.currency, item.new_batch_id, M.CRED_REQ,
                        CapRevOrCredCode.BATCH_CLOSED, CapRevOrCredCode.BATCH_UNKNOWN)  # fmt: skip
        p.state = machine.send(M.CRED_RES, Outcome.APPROVED)
        p.credited += item.amount.amount
        p.updated = self.gw.clock.now_ms()
        work.dirty_payments.add(p.auth_rrpid)
        adv = self.advice(o.rrpid, index, p, spec.ADVICE, {
            "3": spec.REFUND_PROCESSING, "4": f"{item.amount.amount:012d}",
            "48": batch_ref(b.merchant_id, b.batch_id),
        })  # fmt: skip
        it = self.add_item(work, b, p, BatchItemKind.CREDIT, item.amount.amount, o.rrpid, None,
                           adv)  # fmt: skip
        log.info("gateway_credited", xid=p.xid.hex(), amount=item.amount.amount)
        return b, it, item.amount

    def _capture_reversal_item(
        self, work: Work, o: Opened, index: int, item: CapRevOrCredItem, p: Payment
    ) -> tuple[Batch, Item, CurrAmt]:
        machine = self._moved(p, M.CAP_REV_REQ, {_G.CREDITED: CapRevOrCredCode.ORIGINAL_PROCESSED})
        captured = self.books.item(p.capture_item) if p.capture_item is not None else None
        if captured is None or not captured.live:  # a sale: captured at authorization
            raise Refused(CapRevOrCredCode.ORIGINAL_NOT_FOUND, "no capture to reverse")
        if item.amount.amount != captured.amount:
            raise Refused(CapRevOrCredCode.CAPTURE_DATA_MISMATCH, "not the captured amount")
        b = self._batch(work, o, p.currency, captured.batch_id, M.CAP_REV_REQ,
                        CapRevOrCredCode.BATCH_CLOSED, CapRevOrCredCode.BATCH_UNKNOWN)  # fmt: skip
        p.state = machine.send(M.CAP_REV_RES, Outcome.APPROVED)
        p.captured = 0
        p.capture_item = None
        p.updated = self.gw.clock.now_ms()
        work.dirty_payments.add(p.auth_rrpid)
        assert captured.id is not None
        work.dead[captured.id] = captured
        adv = self.advice(o.rrpid, index, p, spec.REVERSAL_ADVICE, {}, captured.advice_key)
        it = self.add_item(work, b, p, BatchItemKind.CAPTURE_REVERSAL, captured.amount, o.rrpid,
                           captured.id, adv)  # fmt: skip
        log.info("gateway_capture_reversed", xid=p.xid.hex(), amount=captured.amount)
        return b, it, CurrAmt(p.currency, captured.amount)

    def _credit_reversal_item(
        self, work: Work, o: Opened, index: int, item: CapRevOrCredItem, p: Payment
    ) -> tuple[Batch, Item, CurrAmt]:
        machine = self._moved(p, M.CRED_REV_REQ, {})
        credit = next(
            (c for c in self.books.live_credits(p.auth_rrpid)
             if c.amount == item.amount.amount and c.id not in work.dead),
            None,
        )  # fmt: skip
        if credit is None:
            raise Refused(CapRevOrCredCode.CAPTURE_DATA_MISMATCH, "no live credit of this amount")
        b = self._batch(work, o, p.currency, credit.batch_id, M.CRED_REV_REQ,
                        CapRevOrCredCode.BATCH_CLOSED, CapRevOrCredCode.BATCH_UNKNOWN)  # fmt: skip
        p.credited -= credit.amount
        outcome = Outcome.FULL if p.credited == 0 else Outcome.PARTIAL
        p.state = machine.send(M.CRED_REV_RES, outcome)
        p.updated = self.gw.clock.now_ms()
        work.dirty_payments.add(p.auth_rrpid)
        assert credit.id is not None
        work.dead[credit.id] = credit
        adv = self.advice(o.rrpid, index, p, spec.REVERSAL_ADVICE, {}, credit.advice_key)
        it = self.add_item(work, b, p, BatchItemKind.CREDIT_REVERSAL, credit.amount, o.rrpid,
                           credit.id, adv)  # fmt: skip
        log.info("gateway_credit_reversed", xid=p.xid.hex(), amount=credit.amount)
        return b, it, CurrAmt(p.currency, credit.amount)


def _recv(event: M, outcome: Outcome | None = None) -> Event:
    return Event(Direction.RECEIVE, event, outcome)
