"""The issuer/acquirer host: an asyncio ISO 8583 server on 127.0.0.1 over ``accounts.Store``.

Rule 1: decision order: unknown account 14, stolen 43, expired (or field 14 not the card's
date) 54, PIN tries exhausted 75,
wrong PIN 55 (the third wrong PIN in a row answers 75), velocity 61, funds/limit 51, else 00
with an approval code. 0100 places a hold; 0200 posts at once.
Rule 2: requests are idempotent by transmission key (acquirer, field 7, STAN, RRN): a repeat is
answered from the store and never applied twice; reversals (0400/0420 and repeats) restore
their original once and are always acknowledged.
Rule 3: a message that does not decode is logged (never its bytes) and answered 30 when its
MTI is readable, else dropped; a broken frame closes that connection only. The host keeps
serving.
Rule 4: a security module that cannot answer gives 96 and stores nothing, so a retry can
succeed. Responses echo no account number, expiry or PIN block.
Rule 6 (after authorization): an 0220/0221 advice names its original in field 90 and its
batch in field 48; processing code 00xxxx completes the original's hold with field 4 (the
rest is released), 20xxxx refunds field 4; applied once per transmission key (accounts.py
Rule 5), answered 00, or 12/13 when the original cannot take it. A reversal with field 95
lowers its original's hold to that amount. An 0500 sums the batch of field 48 and answers
00 when its counts and amounts (74/76/86/88) equal the host's, else 95; the 0510 carries
the host's own totals either way.
Rule 5: an account verification (0100, processing code 33xxxx, amount zero) answers 14 for an
account not on file, 43 stolen, 54 expired (or field 14 not the card's date), else 00; it
checks no PIN and funds, and changes nothing (no hold, no posting, no stored answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import string
from collections.abc import Callable
from datetime import datetime
from typing import Any

from actors.iso8583 import framing, spec
from actors.iso8583.codes import ResponseCode
from actors.iso8583.errors import FramingError, MessageError
from actors.issuer.accounts import Decision, Effect, Snapshot, Store, TxRequest
from actors.issuer.errors import SecurityUnavailable
from actors.issuer.security import IssuerSecurity
from setpay.clock import CLOCK
from setpay.logs import get_logger

MAX_PIN_TRIES = 3
MAX_IN_FLIGHT_PER_CONNECTION = 256  # beyond this the host stops reading: TCP backpressure
ECHOED = ("3", "4", "7", "11", "12", "32", "37", "41", "42", "48", "49", "70", "90")
_APPROVAL_ALPHABET = string.ascii_uppercase + string.digits


def approval_code() -> str:
    """A fresh 6-character approval code (field 38)."""
    return "".join(secrets.choice(_APPROVAL_ALPHABET) for _ in range(6))


def expired(expiry: str | None, now: datetime) -> bool:
    """True if the YYMM ``expiry`` lies before the month of ``now``."""
    if expiry is None:
        return False
    return expiry < now.strftime("%y%m")


def decide(
    snap: Snapshot | None,
    *,
    amount: int,
    mti: str,
    pin_ok: bool | None,
    now: datetime,
    expiry: str | None = None,
) -> Decision:
    """The host's decision rules (Rule 1) over a consistent account snapshot. ``expiry`` is
    field 14 when the request carries it; a card's date that does not match counts as 54."""
    if snap is None:
        return Decision(ResponseCode.INVALID_CARD)
    account = snap.account
    if account.stolen:
        return Decision(ResponseCode.STOLEN_CARD)
    if expired(account.expiry, now) or (expiry is not None and expiry != account.expiry):
        return Decision(ResponseCode.EXPIRED_CARD)
    tries: int | None = None
    if account.pvv is not None:
        if account.pin_tries >= MAX_PIN_TRIES:
            return Decision(ResponseCode.PIN_TRIES_EXCEEDED)
        if not pin_ok:
            tries = account.pin_tries + 1
            code = (
                ResponseCode.PIN_TRIES_EXCEEDED
                if tries >= MAX_PIN_TRIES
                else ResponseCode.WRONG_PIN
            )
            return Decision(code, pin_tries=tries)
        tries = 0 if account.pin_tries else None
    if snap.recent_approvals >= account.velocity_count:
        return Decision(ResponseCode.VELOCITY_EXCEEDED, pin_tries=tries)
    if snap.available < amount:
        return Decision(ResponseCode.INSUFFICIENT_FUNDS, pin_tries=tries)
    effect = Effect.POSTING if mti == spec.FINANCIAL_REQUEST else Effect.HOLD
    return Decision(ResponseCode.APPROVED, effect, pin_tries=tries)


def account_reference(message: spec.Message) -> tuple[str, str]:
    """(account reference the index is keyed by, digits a PIN block binds to)."""
    if message.get("2"):
        pan = str(message["2"])
        if not pan.isdigit():
            raise MessageError("field 2 must be digits")
        return pan, pan
    if message.get("102"):
        ref = str(message["102"])
        parts = ref.split("-")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise MessageError("field 102 must be bank-branch-number digits")
        return ref, parts[2]
    raise MessageError("an account (field 2 or 102) is required")


def transmission_key(acquirer: str, f7: str, stan: str, rrn: str) -> str:
    """The idempotency key of a request: acquirer, transmission time, STAN and RRN (two
    acquirer nodes may reuse a STAN in the same second; their RRNs differ)."""
    return f"{acquirer}:{f7}:{stan}:{rrn}"


def fingerprint(message: spec.Message, pan_index: bytes) -> bytes:
    """A digest of what the request asks, to tell a retransmission from a key collision."""
    parts = [message.get(k, "") for k in ("t", "3", "4", "14", "37", "41", "42", "49")]
    return hashlib.sha256("|".join(map(str, parts)).encode() + b"|" + pan_index).digest()


class IssuerHost:
    """The ISO 8583 server. ``latency`` and ``hold_answers`` delay answers (fault injection:
    the request is applied, only the answer is late)."""

    def __init__(
        self,
        store: Store,
        security: IssuerSecurity,
        *,
        now: Callable[[], datetime] = CLOCK.now,
        latency: float = 0.0,
    ) -> None:
        self.store = store
        self.security = security
        self.now = now
        self.latency = latency
        self.log = get_logger(actor="issuer")
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.malformed = 0
        self._gate = asyncio.Event()
        self._gate.set()

    def hold_answers(self) -> None:
        """Fault injection: keep processing requests but send no answer until released."""
        self._gate.clear()

    def release_answers(self) -> None:
        """Send the held answers and answer normally again."""
        self._gate.set()

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 picks a free port; see ``port``)."""
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        self.log.info("issuer_listening", host=host, port=self.port)

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests, close client connections."""
        if self.server is not None:
            self.server.close()
        self._gate.set()  # held answers go out (or nowhere) so in-flight work can finish
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if self._handlers:  # each sees its closed stream end and returns
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
            me.add_done_callback(self._handlers.discard)
        slots = asyncio.Semaphore(MAX_IN_FLIGHT_PER_CONNECTION)
        try:
            while True:
                try:
                    raw = await framing.read_frame(reader)
                except FramingError as exc:
                    self.malformed += 1
                    self.log.warning("frame_broken", error=str(exc))
                    return
                if raw is None:
                    return
                await slots.acquire()
                task = asyncio.create_task(self._answer(raw, writer))
                task.add_done_callback(lambda _t: slots.release())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (ConnectionError, OSError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, raw: bytes, writer: asyncio.StreamWriter) -> None:
        response = await self.handle(raw)
        if response is None:
            return
        await self._gate.wait()
        if self.latency:
            await asyncio.sleep(self.latency)
        if writer.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError):
            framing.write_frame(writer, response)
            await writer.drain()

    async def handle(self, raw: bytes) -> bytes | None:
        """The packed answer to one request frame, or None to drop it. Never raises."""
        try:
            message = spec.unpack(raw)
        except MessageError as exc:
            return self._format_error(raw, None, exc)
        mti = str(message.get("t", ""))
        try:
            if mti in (spec.AUTH_REQUEST, spec.FINANCIAL_REQUEST):
                answer = await self._financial(message)
            elif mti in spec.REVERSALS:
                answer = self._reversal(message)
            elif mti in spec.ADVICES:
                answer = self._advice(message)
            elif mti == spec.RECONCILIATION_REQUEST:
                answer = self._reconciliation(message)
            elif mti == spec.ECHO_REQUEST:
                answer = self._response(message, ResponseCode.APPROVED)
            else:
                self.malformed += 1
                self.log.warning("unexpected_mti", mti=mti)
                return None
        except MessageError as exc:
            return self._format_error(raw, message, exc)
        except Exception as exc:  # the host must keep serving; the error is logged
            self.log.error("request_failed", mti=mti, error_type=type(exc).__name__)
            answer = self._response(message, ResponseCode.SYSTEM_MALFUNCTION)
        self.handled += 1
        try:
            return spec.pack(answer)
        except MessageError as exc:
            self.log.error("response_unpackable", mti=mti, error=str(exc))
            return None

    def _format_error(
        self, raw: bytes, message: spec.Message | None, exc: Exception
    ) -> bytes | None:
        self.malformed += 1
        mti = raw[:4].decode("ascii", "replace")
        self.log.warning("malformed_message", mti=mti, error=str(exc), length=len(raw))
        if mti not in spec.RESPONSE_TO:
            return None
        base = message if message is not None else {"t": mti}
        answer = self._response(base, ResponseCode.FORMAT_ERROR)
        try:
            return spec.pack(answer)
        except MessageError:
            return spec.pack({"t": spec.RESPONSE_TO[mti], "39": str(ResponseCode.FORMAT_ERROR)})

    def _response(
        self, message: spec.Message, code: ResponseCode, approval: str = ""
    ) -> spec.Message:
        answer: spec.Message = {"t": spec.RESPONSE_TO[str(message["t"])]}
        for name in ECHOED:
            if message.get(name):
                answer[name] = message[name]
        if approval:
            answer["38"] = approval
        answer["39"] = str(code)
        return answer

    async def _financial(self, message: spec.Message) -> spec.Message:
        spec.require(message, "3", "4", "7", "11", "32", "37", "41", "49")
        mti = str(message["t"])
        amount_text = str(message["4"])
        if not amount_text.isdigit():
            raise MessageError("field 4 must be digits")
        amount = int(amount_text)
        expiry = str(message["14"]) if message.get("14") else None
        if expiry is not None and not (len(expiry) == 4 and expiry.isdigit()):
            raise MessageError("field 14 must be YYMM")
        reference, binding = account_reference(message)
        log = self.log.bind(mti=mti, stan=message["11"], rrn=message["37"])
        if spec.is_verification(message):
            return await self._verify(message, reference, amount, expiry, log)
        if amount <= 0:
            log.info("declined", code=str(ResponseCode.INVALID_AMOUNT))
            return self._response(message, ResponseCode.INVALID_AMOUNT)
        try:
            pan_index = await self.security.pan_index(reference)
            tx = TxRequest(
                key=transmission_key(
                    str(message["32"]), str(message["7"]), str(message["11"]), str(message["37"])
                ),
                rrn=str(message["37"]),
                mti=mti,
                fingerprint=fingerprint(message, pan_index),
                pan_index=pan_index,
                amount=amount,
            )
            previous = self.store.stored(tx)
            if previous is not None:
                log.info("duplicate", code=str(previous.code), account=f"…{previous.last4}")
                return self._response(message, previous.code, previous.approval_code)
            pin_ok = await self._check_pin(message, binding, pan_index)
        except SecurityUnavailable as exc:
            log.warning("security_unavailable", error=str(exc))
            return self._response(message, ResponseCode.SYSTEM_MALFUNCTION)
        now = self.now()

        def rules(snap: Snapshot | None) -> Decision:
            return decide(snap, amount=amount, mti=mti, pin_ok=pin_ok, now=now, expiry=expiry)

        outcome = self.store.process(tx, rules, approval_code)
        log.info(
            "decided",
            code=str(outcome.code),
            amount=amount,
            account=f"…{outcome.last4}",
            duplicate=outcome.duplicate,
        )
        return self._response(message, outcome.code, outcome.approval_code)

    async def _verify(
        self, message: spec.Message, reference: str, amount: int, expiry: str | None, log: Any
    ) -> spec.Message:
        """An account verification (Rule 5): the account's standing, nothing changed."""
        if amount != 0:
            raise MessageError("an account verification carries amount zero")
        try:
            account = self.store.account(await self.security.pan_index(reference))
        except SecurityUnavailable as exc:
            log.warning("security_unavailable", error=str(exc))
            return self._response(message, ResponseCode.SYSTEM_MALFUNCTION)
        if account is None:
            code = ResponseCode.INVALID_CARD
        elif account.stolen:
            code = ResponseCode.STOLEN_CARD
        elif expired(account.expiry, self.now()) or (
            expiry is not None and expiry != account.expiry
        ):
            code = ResponseCode.EXPIRED_CARD
        else:
            code = ResponseCode.APPROVED
        log.info("verified", code=str(code))
        return self._response(message, code)

    async def _check_pin(
        self, message: spec.Message, binding: str, pan_index: bytes
    ) -> bool | None:
        """None where the account has no PIN; else whether field 52 holds its PIN. A PIN
        account's request without field 52 is a format error (30), never a wrong PIN: it
        counts toward no lockout."""
        block = spec.pin_block_of(message)
        account = self.store.account(pan_index)
        if account is None or account.pvv is None:
            return None
        if block is None:
            raise MessageError("a PIN account's request without a PIN block (field 52)")
        return await self.security.verify_pin(binding, block, account.pvv)

    def _reversal(self, message: spec.Message) -> spec.Message:
        spec.require(message, "7", "11", "32", "37", "90")
        orig_mti, orig_stan, orig_f7, orig_acq = spec.parse_original_data(str(message["90"]))
        if orig_mti not in (spec.AUTH_REQUEST, spec.FINANCIAL_REQUEST, spec.ADVICE):
            raise MessageError("field 90 names no authorization, financial request or advice")
        # Repeats (0401/0421) keep the first attempt's STAN and time, so they share its key.
        rrn = str(message["37"])  # a reversal carries its original's RRN
        key = "rev:" + transmission_key(
            str(message["32"]), str(message["7"]), str(message["11"]), rrn
        )
        original = transmission_key(orig_acq, orig_f7, orig_stan, rrn)
        remaining = spec.parse_replacement_amount(str(message["95"])) if message.get("95") else None
        restored = self.store.reverse(key, original, str(message["37"]), remaining=remaining)
        self.log.info(
            "reversed",
            mti=message["t"],
            stan=message["11"],
            rrn=message["37"],
            restored=restored,
        )
        return self._response(message, ResponseCode.APPROVED)

    def _advice(self, message: spec.Message) -> spec.Message:
        """A completion or refund advice (Rule 6)."""
        spec.require(message, "3", "4", "7", "11", "32", "37", "48", "90")
        orig_mti, orig_stan, orig_f7, orig_acq = spec.parse_original_data(str(message["90"]))
        amount_text = str(message["4"])
        if not amount_text.isdigit() or int(amount_text) <= 0:
            raise MessageError("field 4 must be a positive amount")
        processing = str(message["3"])
        if processing.startswith("20"):
            effect = Effect.CREDIT
        elif processing.startswith("00"):
            effect = Effect.COMPLETION
        else:
            raise MessageError("an advice completes (00xxxx) or refunds (20xxxx)")
        rrn = str(message["37"])
        # Repeats (0221) keep the first attempt's STAN and time, so they share its key.
        key = transmission_key(str(message["32"]), str(message["7"]), str(message["11"]), rrn)
        original = transmission_key(orig_acq, orig_f7, orig_stan, rrn)
        code = self.store.advise(key, original, rrn, effect, int(amount_text), str(message["48"]))
        self.log.info(
            "advised", mti=message["t"], stan=message["11"], rrn=rrn, effect=str(effect),
            amount=int(amount_text), code=str(code), original_mti=orig_mti,
        )  # fmt: skip
        return self._response(message, code)

    def _reconciliation(self, message: spec.Message) -> spec.Message:
        """An 0500: the batch's totals against the host's (Rule 6)."""
        spec.require(message, "7", "11", "32", "48")
        batch = str(message["48"])
        credits, credit_amount, debits, debit_amount = self.store.batch_totals(batch)
        own = {
            "74": f"{credits:010d}", "76": f"{debits:010d}",
            "86": f"{credit_amount:016d}", "88": f"{debit_amount:016d}",
        }  # fmt: skip
        balanced = all(str(message.get(k, "")).lstrip("0") == v.lstrip("0") for k, v in own.items())
        code = ResponseCode.APPROVED if balanced else ResponseCode.RECONCILE_ERROR
        self.log.info(
            "reconciled", batch=batch, code=str(code), credits=credits,
            credit_amount=credit_amount, debits=debits, debit_amount=debit_amount,
        )  # fmt: skip
        answer = self._response(message, code)
        answer.update(own)
        return answer
