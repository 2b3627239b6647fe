"""The gateway-side ISO 8583 link: request/response matching, deadlines, store-and-forward.

Rule 1: answers are matched to requests by (response MTI, STAN), as jPOS QMUX does; an
answer nobody waits for (late, or unknown) is logged and dropped.
Rule 2: a request whose bytes may have reached the host but got no answer by its deadline
(timeout, or the connection died) returns ``ISSUER_UNAVAILABLE`` (retryable) to the caller
and queues a reversal advice (0420) in the journal in the same transaction; a request that
never left (no connection) just returns the retryable decline.
Rule 3: the SAF task forwards queued reversals oldest first - 0420/0400 then repeats
0421/0401 with the same STAN - until the host acknowledges (00), across restarts of the
link; a reversal the host refuses with another code is parked as failed and logged.
Rule 4: a caller's RRN is its idempotency key: asking again for an answered RRN returns the
journalled answer without sending; a timed-out RRN stays declined (its reversal is queued).
Rule 5: an account verification (``verify``, the CA's check before it certifies an account)
holds nothing at the host, so it is neither journalled nor reversed: no answer in time is
``ISSUER_UNAVAILABLE``, and the caller refuses rather than assumes.
Rule 6 (replicas): several processes of one gateway identity may share one journal, each
with its own connection and its own ``owner`` name (saf.py Rules 6-8). At start a link
reverses its own unanswered requests (its previous life's), and another process's only when
stale (unchanged for ``stale_after``, default max(60 s, 4 x the deadline): that process is
gone); a recovery round does the same for stale rows every ``recovery_interval`` while it
runs. An answer to a request another process already timed out is late: the caller gets the
retryable decline and the reversal stands, so no authorization is both reversed and
approved. The SAF task claims entries under a lease (``saf_lease``) and polls every
``saf_poll_interval`` for entries other processes queued or left behind.
Rule 7: an RRN asked again while its journal row is still ``sent`` (the replica that sent it
died, or still waits) is sent again as the same transmission (same STAN, F7 and fields; the
account and PIN block, never journalled, from the caller's request): the host is idempotent
by transmission key, so the caller gets the one outcome instead of a retryable decline, and
the compare-and-set of answer and time-out keeps one outcome in the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from actors.iso8583 import codes, framing, spec
from actors.iso8583.codes import ResponseCode
from actors.iso8583.errors import FramingError, LinkClosed, MessageError
from actors.iso8583.saf import DEFAULT_OWNER, Journal, Journalled, SafEntry
from actors.iso8583.security import mask_account
from setpay import metrics
from setpay.clock import CLOCK
from setpay.durability import GROUP
from setpay.lifecycle import Periodic
from setpay.logs import get_logger
from setpay.store import IntegrityError

REPEAT_OF = {
    spec.ADVICE: spec.ADVICE_REPEAT,
    spec.REVERSAL_ADVICE: spec.REVERSAL_ADVICE_REPEAT,
    spec.REVERSAL_REQUEST: spec.REVERSAL_REPEAT,
}


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """An authorization (0100) or financial (0200) request as the gateway asks it."""

    rrn: str  # 12 characters; the caller's idempotency key
    account: str = field(repr=False)  # PAN, or bank-branch-number for OPE debit
    amount: int  # minor units
    mti: str = spec.AUTH_REQUEST
    currency: str = "392"
    expiry: str | None = field(default=None, repr=False)  # YYMM, cards (field 14)
    pin_block: bytes | None = field(default=None, repr=False)  # format 4 under the ZPK
    terminal_id: str = "SETPAYGW"
    merchant_id: str = ""

    def validate(self) -> None:
        if self.mti not in (spec.AUTH_REQUEST, spec.FINANCIAL_REQUEST):
            raise MessageError("a link request is an 0100 or an 0200")
        if len(self.rrn) != 12:
            raise MessageError("RRN must be 12 characters")
        if not 0 < self.amount < 10**12:
            raise MessageError("amount must be 1..999999999999 minor units")


@dataclass(frozen=True, slots=True)
class LinkResult:
    code: ResponseCode
    approval_code: str = ""
    stan: str = ""
    timed_out: bool = False  # True: a reversal of this request is stored and forwarded
    duplicate: bool = False  # True: the RRN was asked before (journalled answer, or a repeat)

    @property
    def approved(self) -> bool:
        return self.code.approved

    @property
    def retryable(self) -> bool:
        return self.code.retryable


class IsoLink:
    """One TCP connection to the host, reconnected on demand, with a persistent SAF queue."""

    def __init__(
        self,
        host: str,
        port: int,
        journal_path: Path | str,
        *,
        acquirer: str = "4321",
        deadline: float = 5.0,
        connect_timeout: float = 2.0,
        saf_retry_interval: float = 1.0,
        now: Callable[[], datetime] = CLOCK.now,
        group_commit: bool = False,
        owner: str = DEFAULT_OWNER,
        stale_after: float | None = None,
        recovery_interval: float | None = None,
        saf_lease: float | None = None,
        saf_poll_interval: float = 5.0,
        journal_clock: Callable[[], float] = time.time,
    ) -> None:
        """``owner``: this process's name (Rule 6); ``stale_after`` (default max(60 s, 4 x
        ``deadline``)): how long another process's unanswered row waits before this one
        reverses it, checked every ``recovery_interval`` (default half of it); ``saf_lease``
        (default ``stale_after``): how long a claimed SAF entry is this process's;
        ``journal_clock``: the journal's seconds (tests move it)."""
        self.host = host
        self.port = port
        self.acquirer = acquirer
        self.deadline = deadline
        self.connect_timeout = connect_timeout
        self.saf_retry_interval = saf_retry_interval
        self.now = now
        self.owner = owner
        self.stale_after = stale_after if stale_after is not None else max(60.0, 4 * deadline)
        self.recovery_interval = recovery_interval or self.stale_after / 2
        self.saf_lease = saf_lease if saf_lease is not None else self.stale_after
        self.saf_poll_interval = saf_poll_interval
        busy = deadline + connect_timeout  # longest a request of this link stays in flight
        if self.stale_after <= busy or self.saf_lease <= busy:
            raise ValueError("stale_after and saf_lease must exceed deadline + connect_timeout")
        self.journal = Journal(
            journal_path, clock=journal_clock, group_commit=group_commit, owner=owner
        )
        self.log = get_logger(actor="issuer-link", owner=owner)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._pending: dict[tuple[str, str], asyncio.Future[spec.Message]] = {}
        self._inflight: dict[str, asyncio.Task[LinkResult]] = {}
        self._saf_wake = asyncio.Event()
        self._saf_idle = asyncio.Event()
        self._saf_task: asyncio.Task[None] | None = None
        self._recovery = Periodic("journal_recovery", self._recover_stale, self.recovery_interval)
        self._closing = False
        self.stray = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Turn requests left unanswered by a crash (this owner's, and other processes'
        stale ones: Rule 6) into reversals, start forwarding and the recovery rounds."""
        self._recover(self.journal.unanswered(owner=self.owner))
        await self._recover_stale()
        self._saf_task = asyncio.create_task(self._forward())
        self._recovery.start()

    async def _recover_stale(self) -> None:
        """One recovery round: reverse every request unanswered for ``stale_after``."""
        stale = self.journal.unanswered(older_than=self.journal.clock() - self.stale_after)
        self._recover([rrn for rrn in stale if rrn not in self._inflight])

    def _recover(self, rrns: list[str]) -> None:
        for rrn in rrns:
            if self.journal.time_out(rrn, self.journal.next_stan(), self._f7()):
                self.log.warning("recovered_unanswered", rrn=rrn)
                self._saf_wake.set()

    async def close(self) -> None:
        """Stop forwarding, fail waiting callers, close the connection and the journal."""
        self._closing = True
        self._saf_wake.set()
        await self._recovery.stop()
        if self._saf_task is not None:
            self._saf_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saf_task
        for task in list(self._inflight.values()):
            with contextlib.suppress(Exception):
                await task
        await self._disconnect()
        self.journal.close()

    async def saf_idle(self) -> None:
        """Wait until no reversal is pending (each queued one acknowledged or parked, by
        this process or another sharing the journal)."""
        while self.journal.pending_count():
            self._saf_idle.clear()
            self._saf_wake.set()
            await self._saf_idle.wait()
            if self.journal.pending_count():  # held by another process's lease meanwhile
                await asyncio.sleep(self.saf_retry_interval)

    # -- connection -------------------------------------------------------------------------

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if self._closing:
                raise LinkClosed("link is closing")
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.connect_timeout
                )
            except (OSError, TimeoutError) as exc:
                raise LinkClosed(f"cannot connect to the host: {type(exc).__name__}") from None
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader, writer))
            self.log.info("link_connected", host=self.host, port=self.port)
            return writer

    async def _disconnect(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._writer = None

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (raw := await framing.read_frame(reader)) is not None:
                self._dispatch(raw)
        except (FramingError, ConnectionError, OSError) as exc:
            self.log.warning("link_read_failed", error=type(exc).__name__)
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            lost = LinkClosed("connection to the host lost")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(lost)
            self.log.info("link_disconnected")

    def _dispatch(self, raw: bytes) -> None:
        try:
            message = spec.unpack(raw)
        except MessageError as exc:
            self.stray += 1
            self.log.warning("undecodable_answer", error=str(exc))
            return
        key = (str(message.get("t", "")), str(message.get("11", "")))
        fut = self._pending.get(key)
        if fut is None or fut.done():
            self.stray += 1
            self.log.warning("unmatched_answer", mti=key[0], stan=key[1], code=message.get("39"))
            return
        fut.set_result(message)

    async def _exchange(
        self, message: spec.Message, *, before_send: Callable[[], None]
    ) -> spec.Message:
        """Send ``message`` and await its answer within the deadline.

        Raises ``LinkClosed`` before anything was sent (``before_send`` not called), and
        ``TimeoutError`` or ``ConnectionError`` after."""
        mti = str(message["t"])
        started = asyncio.get_running_loop().time()
        outcome = "error"
        try:
            answer = await self._exchange_once(message, before_send)
            outcome = "answered"
            return answer
        except TimeoutError:
            outcome = "timeout"
            raise
        except LinkClosed:
            outcome = "closed"
            raise
        except ConnectionError:
            outcome = "connection_error"
            raise
        finally:
            metrics.ISO_REQUESTS.labels(mti=mti, outcome=outcome).inc()
            if outcome == "answered":
                metrics.ISO_SECONDS.labels(mti=mti).observe(
                    asyncio.get_running_loop().time() - started
                )

    async def _exchange_once(
        self, message: spec.Message, before_send: Callable[[], None]
    ) -> spec.Message:
        writer = await self._connect()
        key = (spec.RESPONSE_TO[str(message["t"])], str(message["11"]))
        if key in self._pending:
            raise MessageError("a request with this STAN is already in flight")
        payload = spec.pack(message)
        fut: asyncio.Future[spec.Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            before_send()
            try:
                # setpay/durability.py: what before_send committed is on disk before the host
                # sees the message (a failed sync is a failed write: nothing was sent).
                await GROUP.barrier()
                framing.write_frame(writer, payload)
                await writer.drain()
            except (ConnectionError, OSError) as exc:
                raise ConnectionError(f"write failed: {type(exc).__name__}") from None
            async with asyncio.timeout(self.deadline):
                try:
                    return await fut
                except LinkClosed:
                    raise ConnectionError("connection lost before the answer") from None
        finally:
            self._pending.pop(key, None)

    def _f7(self) -> str:
        return spec.transmission_time(self.now())

    # -- requests ---------------------------------------------------------------------------

    async def request(self, req: LinkRequest) -> LinkResult:
        """Ask the host; a retryable decline when it cannot answer in time (Rule 2)."""
        req.validate()
        running = self._inflight.get(req.rrn)
        if running is not None:
            return await asyncio.shield(running)
        # Shielded: a caller giving up must not cut the journal's bookkeeping short.
        task = asyncio.create_task(self._request(req))
        self._inflight[req.rrn] = task
        task.add_done_callback(lambda _t: self._inflight.pop(req.rrn, None))
        return await asyncio.shield(task)

    async def _request(self, req: LinkRequest) -> LinkResult:
        known = self.journal.get(req.rrn)
        if known is not None:
            return await self._again(req, known)
        stan = self.journal.next_stan()
        message = self._message(req, stan)
        log = self.log.bind(rrn=req.rrn, stan=stan, mti=req.mti, account=mask_account(req.account))
        sent = False

        def journal_sent() -> None:
            nonlocal sent
            self.journal.record_sent(req.rrn, message)
            sent = True

        try:
            answer = await self._exchange(message, before_send=journal_sent)
        except LinkClosed as exc:
            log.warning("host_unreachable", error=str(exc))
            return LinkResult(ResponseCode.ISSUER_UNAVAILABLE, stan=stan)
        except IntegrityError:  # another process journalled this RRN first: it asks the host
            log.warning("rrn_journalled_elsewhere")
            known = self.journal.get(req.rrn)
            if known is None:
                return LinkResult(ResponseCode.ISSUER_UNAVAILABLE, stan=stan, duplicate=True)
            return await self._again(req, known)
        except (TimeoutError, ConnectionError, asyncio.CancelledError) as exc:
            if not sent:
                raise
            self.journal.time_out(req.rrn, self.journal.next_stan(), self._f7())
            self._saf_wake.set()
            log.warning("no_answer_reversal_queued", error=type(exc).__name__)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return LinkResult(ResponseCode.ISSUER_UNAVAILABLE, stan=stan, timed_out=True)
        code = codes.parse(str(answer.get("39", "")))
        approval = str(answer.get("38", ""))
        if not self.journal.record_answer(req.rrn, str(code), approval):
            # Rule 6: another process timed it out meanwhile; its reversal stands.
            log.warning("answer_after_reversal", code=str(code))
            return LinkResult(ResponseCode.ISSUER_UNAVAILABLE, stan=stan, timed_out=True)
        log.info("answered", code=str(code))
        return LinkResult(code, approval, stan)

    async def _again(self, req: LinkRequest, known: Journalled) -> LinkResult:
        """Rules 4, 7: an RRN asked before - its journalled answer, the retryable decline when
        it was timed out, or, while it is still unanswered (sent by another replica that died
        or is still waiting, or by this process before a restart), the same transmission
        again: same STAN and F7, so the host answers it from its books or applies it once."""
        if known.state == "answered":
            return LinkResult(codes.parse(known.response_code or ""), known.approval_code or "",
                              known.stan, duplicate=True)  # fmt: skip
        declined = LinkResult(
            ResponseCode.ISSUER_UNAVAILABLE, stan=known.stan, timed_out=True, duplicate=True
        )
        kept = self.journal.fields(req.rrn)
        if known.state != "sent" or kept is None:
            return declined
        message: spec.Message = {**self._message(req, known.stan), **kept}
        log = self.log.bind(rrn=req.rrn, stan=known.stan, mti=req.mti, resent=True)
        try:
            answer = await self._exchange(message, before_send=lambda: None)
        except LinkClosed as exc:
            log.warning("host_unreachable", error=str(exc))
            return LinkResult(ResponseCode.ISSUER_UNAVAILABLE, stan=known.stan, duplicate=True)
        except (TimeoutError, ConnectionError) as exc:
            if self.journal.time_out(req.rrn, self.journal.next_stan(), self._f7()):
                self._saf_wake.set()
                log.warning("no_answer_reversal_queued", error=type(exc).__name__)
            return declined
        code, approval = codes.parse(str(answer.get("39", ""))), str(answer.get("38", ""))
        if self.journal.record_answer(req.rrn, str(code), approval):
            log.info("answered", code=str(code))
            return LinkResult(code, approval, known.stan, duplicate=True)
        now = self.journal.get(req.rrn)  # another process recorded it first, or timed it out
        if now is not None and now.state == "answered":
            return LinkResult(codes.parse(now.response_code or ""), now.approval_code or "",
                              now.stan, duplicate=True)  # fmt: skip
        log.warning("answer_after_reversal", code=str(code))
        return declined

    def _message(self, req: LinkRequest, stan: str) -> spec.Message:
        bank = "-" in req.account
        message: spec.Message = {
            "t": req.mti,
            "3": spec.DEBIT_PROCESSING if bank else spec.CARD_PROCESSING,
            "4": f"{req.amount:012d}",
            "7": self._f7(),
            "11": stan,
            "32": self.acquirer,
            "37": req.rrn,
            "41": req.terminal_id,
            "49": req.currency,
            ("102" if bank else "2"): req.account,
        }
        if req.expiry is not None:
            message["14"] = req.expiry
        if req.merchant_id:
            message["42"] = req.merchant_id
        if req.pin_block is not None:
            message["52"] = spec.pin_block_field(req.pin_block)
        return message

    async def reverse(self, rrn: str) -> bool:
        """Queue a reversal (0400) of an answered request; False if there is none to reverse."""
        queued = self.journal.enqueue_reversal(rrn, self.journal.next_stan(), self._f7())
        if queued:
            self._saf_wake.set()
        return queued

    async def advise(
        self,
        key: str,
        rrn: str,
        mti: str,
        extra: dict[str, str],
        *,
        original_key: str | None = None,
    ) -> bool:
        """Store and forward ``mti`` (an 0220 completion or refund, an 0400 partial or full
        reversal, an 0420 reversal of an advice) under the caller's ``key``, once per key
        (saf.py Rule 5); its original is the answered request ``rrn`` or the entry queued
        under ``original_key``. False if that original is unknown."""
        queued = self.journal.enqueue_keyed(
            key, rrn, mti, self.journal.next_stan(), self._f7(), extra, original_key=original_key
        )
        if queued:
            self._saf_wake.set()
        return queued

    async def reconcile(self, fields: dict[str, str]) -> spec.Message | None:
        """An 0500 reconciliation request (``fields``: 48, 74, 76, 86, 88); the 0510, or
        None when the host does not answer in time (the caller asks again later). Holds
        nothing at the host, so nothing is journalled or reversed."""
        message: spec.Message = {
            "t": spec.RECONCILIATION_REQUEST,
            "7": self._f7(),
            "11": self.journal.next_stan(),
            "32": self.acquirer,
            **fields,
        }
        try:
            return await self._exchange(message, before_send=lambda: None)
        except (LinkClosed, TimeoutError, ConnectionError) as exc:
            self.log.warning("reconciliation_unanswered", error=type(exc).__name__)
            return None

    async def verify(self, account: str, expiry: str | None = None) -> ResponseCode:
        """Account verification (0100, processing 33, amount zero) of a PAN or
        ``bank-branch-number`` (Rule 5); ``ISSUER_UNAVAILABLE`` if the host cannot answer."""
        bank = "-" in account
        stan = self.journal.next_stan()
        message: spec.Message = {
            "t": spec.AUTH_REQUEST,
            "3": spec.VERIFY_BANK_PROCESSING if bank else spec.VERIFY_CARD_PROCESSING,
            "4": f"{0:012d}",
            "7": self._f7(),
            "11": stan,
            "32": self.acquirer,
            "37": f"V{stan}{secrets.token_hex(3).upper()}"[:12].ljust(12, "0"),
            "41": "SETPAYCA",
            "49": "392",
            ("102" if bank else "2"): account,
        }
        if expiry is not None:
            message["14"] = expiry
        log = self.log.bind(stan=stan, mti=spec.AUTH_REQUEST, account=mask_account(account))
        try:
            answer = await self._exchange(message, before_send=lambda: None)
        except (LinkClosed, TimeoutError, ConnectionError) as exc:
            log.warning("verification_unanswered", error=type(exc).__name__)
            return ResponseCode.ISSUER_UNAVAILABLE
        code = codes.parse(str(answer.get("39", "")))
        log.info("verified", code=str(code))
        return code

    async def echo(self) -> ResponseCode:
        """An 0800 echo test; raises ``LinkClosed``/``TimeoutError`` if the host is silent."""
        message = {
            "t": spec.ECHO_REQUEST,
            "7": self._f7(),
            "11": self.journal.next_stan(),
            "70": spec.ECHO_CODE,
        }
        answer = await self._exchange(message, before_send=lambda: None)
        return codes.parse(str(answer.get("39", "")))

    # -- store and forward ------------------------------------------------------------------

    async def _forward(self) -> None:
        while not self._closing:
            entry = self.journal.claim(self.owner, self.saf_lease)
            metrics.ISO_SAF_BACKLOG.set(self.journal.pending_count())
            if entry is None:  # nothing, or only what other processes hold: look again later
                self._saf_idle.set()
                await self._saf_sleep(self.saf_poll_interval)
            elif not await self._forward_one(entry):
                await self._saf_sleep(self.saf_retry_interval)

    async def _saf_sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when something is queued (``_saf_wake``)."""
        self._saf_wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._saf_wake.wait()

    async def _forward_one(self, entry: SafEntry) -> bool:
        """One attempt; True when the entry is settled (acknowledged or parked)."""
        message = dict(entry.message)
        if entry.attempts:
            message["t"] = REPEAT_OF.get(entry.mti, entry.mti)
        log = self.log.bind(
            rrn=entry.rrn, mti=message["t"], stan=message["11"], attempt=entry.attempts + 1
        )
        try:
            answer = await self._exchange(message, before_send=lambda: None)
        except (LinkClosed, TimeoutError, ConnectionError) as exc:
            self.journal.attempted(entry.id)
            log.info("saf_retry_later", error=type(exc).__name__)
            return False
        code = str(answer.get("39", ""))
        acked = code == ResponseCode.APPROVED
        if not self.journal.settle(entry.id, code, acked=acked):
            log.info("saf_settled_elsewhere", code=code)
        elif acked:
            log.info("saf_acknowledged")
        else:
            log.error("saf_refused", code=code)
        return True
