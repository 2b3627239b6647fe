"""The gateway's batch administration (BatchAdminReq/Res, set-protocol.md §3.6) and settlement
with the issuer host.

Rule 1: a merchant reaches only its own batches (keyed by the merchant id its signature
certificate carries, capture.py Rule 1). Operations move the batch through ``GATEWAY_BATCH``
(protocol/states.py): open (a new id, or the one named; an id in use is
``batchAlreadyOpen``/``batchIDUnavailable``), close (only an open batch; ``batchClosed``
otherwise), purge (an open batch: every live capture and credit in it is reversed, as
CapRevReq/CredRevReq would, and the batch stays open), a query (summary and detail, in any
state). A refused operation changes nothing and answers its BAStatus.
Rule 2: close takes the merchant's totals (``BatchStatus``) if it sends them; totals that do
not balance with the gateway's (debits = captures not reversed, credits = credits not
reversed) answer ``totalsOutOfBalance`` and leave the batch open.
Rule 3 (settlement): once closed, the batch settles when every host message its items owe is
acknowledged by the issuer host (the link's journal) and the host's 0510 to an 0500 with the
batch's totals answers 00 (the host summed the same completions and refunds); then it is
``settled`` (a LOCAL event of the table) once, with the host's answer and time recorded. A
host that is silent or still has advices to take leaves it ``closed`` with transmission status
pending: a later query of the batch tries again. "Acknowledged" is answered by two counts
when nothing is outstanding (no outbox row unqueued, no journal entry pending or failed: then
every advice was queued and acknowledged), and key by key only otherwise, so a close costs
two indexed counts, not a lookup per item, on a quiet link. A host out of balance (95) is
recorded and
logged as an error; the batch stays closed, the operator's case.
Rule 4: close is idempotent by the request's RRPID like every request (the stored answer);
a close redelivered after a crash between closing and answering finds the batch closed by its
own RRPID and resumes at settlement.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable

from actors.entrypoint import SetHandler
from actors.gateway.books import Batch, Books, Work
from actors.gateway.capture import ClearingService, Opened, Refused, batch_ref
from actors.iso8583.codes import ResponseCode
from actors.iso8583.link import IsoLink
from protocol import clearing, codec
from protocol.messages import (
    BAStatus,
    BatchAdminReqData,
    BatchAdminResData,
    BatchItemKind,
    BatchOperation,
    CapPayload,
    CapRevOrCredItem,
    CurrAmt,
    MessageType,
    SettlementInfo,
    TransDetailItem,
    TransDetails,
    TransIDs,
    TransmissionStatus,
)
from protocol.states import Direction, Event, GatewayBatch, Machine, MachineKind, Outcome
from protocol.wrapper import Decoded
from setpay.logs import get_logger

log = get_logger(component="gateway")

M = MessageType
_B = GatewayBatch
SETTLE_WAIT_S = 5.0  # how long a close waits for the host to take the batch's advices
OPS = {
    BatchOperation.OPEN: Outcome.OPEN,
    BatchOperation.CLOSE: Outcome.CLOSE,
    BatchOperation.PURGE: Outcome.PURGE,
}


class BatchService:
    """BatchAdminReq for one gateway, over the clearing service's books and lock."""

    def __init__(self, clearing_service: ClearingService) -> None:
        self.c = clearing_service
        self.books = clearing_service.books

    @property
    def handlers(self) -> dict[MessageType, SetHandler]:
        return {M.BATCH_ADMIN_REQ: self._batch_admin}

    async def _batch_admin(self, decoded: Decoded) -> tuple[str, bytes]:
        pair = clearing.BATCH_ADMIN
        rrpid = decoded.header.rrpid or b""
        digest = _digest(decoded)
        stored = self.c.stored(rrpid, digest)
        if stored is not None:
            return stored
        o = await self.c.open(pair, decoded)
        data: BatchAdminReqData = o.data
        async with self.c.lock:
            stored = self.c.stored(rrpid, digest)
            if stored is not None:
                return stored
            work = Work()
            status, b = await self._operate(o, data, work)
            if b is not None and b.state == _B.CLOSED:
                if work.dirty_batches:  # commit the close before the host is asked (Rule 4)
                    self.books.save_batch(b)
                    work.dirty_batches.discard((b.merchant_id, b.batch_id))
                await self.settle(b)
            res = self._result(data, b, status, work)
            reply = await self.c.respond(o, res, None)
            self.books.commit(
                work, o.rrpid, o.digest, pair.res_amqp, reply, self.c.gw.clock.now_ms()
            )
        await self.c.forward(work.outbox)
        return pair.res_amqp, reply

    async def _operate(
        self, o: Opened, data: BatchAdminReqData, work: Work
    ) -> tuple[BAStatus, Batch | None]:
        merchant = o.merchant_id
        now = self.c.gw.clock.now_ms()
        op = data.operation
        if op is BatchOperation.OPEN:
            batch_id = data.batch_id or self.books.next_batch_id(merchant)
            b = self.books.batch(merchant, batch_id)
            if b is not None:
                code = (
                    BAStatus.BATCH_ALREADY_OPEN
                    if b.state == _B.OPEN
                    else BAStatus.BATCH_ID_UNAVAILABLE
                )
                return code, b
            currency = data.batch_status.currency if data.batch_status else self._currency()
            b = Batch(merchant, batch_id, _B.NONE, currency, now)
            b.state = Machine(MachineKind.GATEWAY_BATCH, b.state).receive(
                M.BATCH_ADMIN_REQ, Outcome.OPEN
            )
            work.batches[(merchant, batch_id)] = b
            work.dirty_batches.add((merchant, batch_id))
            log.info("gateway_batch_opened", merchant_id=merchant, batch=batch_id)
            return BAStatus.SUCCESS, b
        if data.batch_id is None:
            return BAStatus.UNKNOWN_BATCH_ID, None
        b = self.books.batch(merchant, data.batch_id)
        if b is None:
            return BAStatus.UNKNOWN_BATCH_ID, None
        if op is None:
            return BAStatus.SUCCESS, b
        machine = Machine(MachineKind.GATEWAY_BATCH, b.state)
        if op is BatchOperation.CLOSE and b.closed_by == o.rrpid:
            return BAStatus.SUCCESS, b  # Rule 4: this request closed it before a crash
        if not machine.can(Event(Direction.RECEIVE, M.BATCH_ADMIN_REQ, OPS[op])):
            return BAStatus.BATCH_CLOSED, b
        if op is BatchOperation.CLOSE:
            ours = self.c.status(b)
            theirs = data.batch_status
            if theirs is not None and (
                (theirs.debit_count, theirs.debit_amount, theirs.credit_count, theirs.credit_amount)
                != (ours.debit_count, ours.debit_amount, ours.credit_count, ours.credit_amount)
            ):
                log.warning("gateway_batch_out_of_balance", merchant_id=merchant, batch=b.batch_id)
                return BAStatus.TOTALS_OUT_OF_BALANCE, b
            close_batch(b, o.rrpid, now)
            work.batches[(merchant, b.batch_id)] = b
            work.dirty_batches.add((merchant, b.batch_id))
            log.info("gateway_batch_closed", merchant_id=merchant, batch=b.batch_id)
            return BAStatus.SUCCESS, b
        # purge: reverse every live capture and credit of the batch, newest first (Rule 1)
        for item in reversed(self.books.items_of(merchant, b.batch_id)):
            if not item.live or item.kind not in (BatchItemKind.CAPTURE, BatchItemKind.CREDIT):
                continue
            p = work.payments.get(item.auth_rrpid) or self.books.payment(item.auth_rrpid)
            assert p is not None
            work.payments[p.auth_rrpid] = p
            reverse = (
                self.c._capture_reversal_item if item.kind is BatchItemKind.CAPTURE
                else self.c._credit_reversal_item
            )  # fmt: skip
            fake = CapRevOrCredItem(
                codec.decode(TransIDs, p.trans_ids), p.auth_rrpid,
                CapPayload(now, CurrAmt(p.currency, item.amount), None), None, now,
                CurrAmt(p.currency, item.amount),
            )  # fmt: skip
            try:
                reverse(work, o, item.seq, fake, p)
            except Refused as r:  # a capture with credits: its credits go first, in this loop
                log.warning("gateway_purge_item_refused", code=r.code.name, reason=r.why)
        b = work.batches.get((merchant, b.batch_id), b)
        log.info("gateway_batch_purged", merchant_id=merchant, batch=b.batch_id)
        return BAStatus.SUCCESS, b

    def _currency(self) -> str:
        return sorted(self.c.gw.currencies)[0] if self.c.gw.currencies else "JPY"

    async def settle(self, b: Batch) -> None:
        """Rule 3: settle a closed batch with the issuer host, once."""
        await settle_batch(self.books, self.c.gw.link, b, self.c.gw.identity.brand,
                           self.c.gw.clock.now_ms)  # fmt: skip

    def _result(
        self, data: BatchAdminReqData, b: Batch | None, status: BAStatus, work: Work
    ) -> BatchAdminResData:
        if b is None:
            return BatchAdminResData(
                data.rr_tags, data.batch_id or 0, status, None, None, None, None
            )
        batch_status = (
            self.c._status_after(work, b) if (data.return_summary or data.operation) else None
        )
        if b.state == _B.NONE:
            batch_status = None
        transmission = settlement = None
        if b.state in (_B.CLOSED, _B.SETTLED):
            if b.state == _B.SETTLED:
                transmission = TransmissionStatus.SUCCESS
                t = self.books.totals(b.merchant_id, b.batch_id)
                net = t.debit[1] - t.credit[1]  # a batch of refunds settles to the cardholders
                settlement = SettlementInfo(
                    CurrAmt(b.currency, abs(net)), "netDebit" if net >= 0 else "netCredit",
                    f"merchant:{b.merchant_id}", b.settled or 0,
                )  # fmt: skip
            elif b.host_code not in (None, ResponseCode.APPROVED):
                transmission = TransmissionStatus.FAILED
            else:
                transmission = TransmissionStatus.PENDING
        details = None
        if data.detail is not None and b.state != _B.NONE:
            items = self.books.items_of(b.merchant_id, b.batch_id)
            if data.detail.errors_only:
                items = []
            start = data.detail.starting_point
            page = items[start : start + data.detail.maximum_items]
            nxt = start + len(page) if start + len(page) < len(items) else None
            details = TransDetails(nxt, [
                TransDetailItem(
                    codec.decode(TransIDs, self.books.payment(i.auth_rrpid).trans_ids),  # type: ignore[union-attr]
                    i.auth_rrpid, i.kind, CurrAmt(b.currency, i.amount), i.seq, False,
                )
                for i in page
            ])  # fmt: skip
        return BatchAdminResData(
            data.rr_tags, b.batch_id, status, batch_status, transmission, settlement, details
        )


def close_batch(b: Batch, rrpid: bytes, now: int) -> Batch:
    """Rule 1: an open batch closed by the request ``rrpid`` (the table's move; the caller
    saves it). What a BatchAdminReq close does, and what the bench times."""
    b.state = Machine(MachineKind.GATEWAY_BATCH, b.state).receive(M.BATCH_ADMIN_REQ, Outcome.CLOSE)
    b.closed, b.closed_by = now, rrpid
    return b


async def settle_batch(
    books: Books, link: IsoLink, b: Batch, brand: str, now_ms: Callable[[], int]
) -> None:
    """Rule 3: settle a closed batch with the issuer host (its 0500), once."""
    if b.state != _B.CLOSED:
        return

    def unacknowledged() -> int:
        # Every item's advice has an outbox row written with it: none unqueued means each is
        # in the journal, and a journal owing nothing means each is acknowledged. Only when
        # something is outstanding are the batch's own keys looked up one by one.
        if not books.unqueued_count() and not link.journal.unsettled_count():
            return 0
        keys = books.advice_keys(b.merchant_id, b.batch_id)
        states = link.journal.keyed_states(keys)
        return sum(states.get(k) != "acked" for k in keys)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SETTLE_WAIT_S):
            while link.journal.pending_count() and unacknowledged():
                await link.saf_idle()
    left = unacknowledged()
    if left:
        log.warning("gateway_batch_settlement_waits", batch=b.batch_id, unacknowledged=left)
        return
    t = books.totals(b.merchant_id, b.batch_id)
    answer = await link.reconcile({
        "48": batch_ref(b.merchant_id, b.batch_id),
        "74": f"{t.credit[0]:010d}", "76": f"{t.debit[0]:010d}",
        "86": f"{t.credit[1]:016d}", "88": f"{t.debit[1]:016d}",
    })  # fmt: skip
    if answer is None:
        return
    code = str(answer.get("39", ""))
    b.host_code = code
    if code == ResponseCode.APPROVED:
        b.state = Machine(MachineKind.GATEWAY_BATCH, b.state).local(Outcome.SETTLED)
        b.settled = now_ms()
        log.info(
            "gateway_batch_settled", merchant_id=b.merchant_id, batch=b.batch_id,
            brand=brand, currency=b.currency,
            captures=t.captures, capture_reversals=t.capture_reversals,
            credits=t.credits, credit_reversals=t.credit_reversals,
            net=t.debit[1] - t.credit[1],
        )  # fmt: skip
    else:
        log.error("gateway_batch_out_of_balance_at_host", batch=b.batch_id, host_code=code)
    books.save_batch(b)


def _digest(decoded: Decoded) -> bytes:
    return hashlib.sha256(codec.encode(decoded.body)).digest()
