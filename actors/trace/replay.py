"""``setpay trace replay --attack``: every recorded request sent again; none may take effect.

Rule 1: against the live environment that produced the trace, each recorded request is
re-published byte for byte, with its recorded AMQP type, to its recorded routing key on the
SET exchange, as the environment's admin login (a test tool: any login allowed to publish
there), with a fresh correlation id and a reply-to queue of the replayer's own.
Rule 2: each answer is classified: ``refused`` (a SET Error, its code shown), ``stored`` (the
very bytes the trace recorded as the answer to that request: the party's idempotency store
answered, nothing new happened), or ``ACCEPTED`` (any other answer: a failure, named by XID
and type). No answer within the timeout is ``UNANSWERED``, also a failure: the replayer
cannot tell that nothing happened.
Rule 3: what protects each recorded request when it is replayed, and where:
 - every request: its wrapper date. Outside the date window (``protocol.ids``, 5 minutes)
   every party refuses it with ``messageTooOld`` before any handler runs; so a replay is
   only interesting within the window, which is when this tool is meant to run.
 - PReq and PInitReq to the merchant's POS (``merchant.<instance>``): keyed by XID/LID and
   RRPID; a PReq whose XID was already answered gets the stored PRes (same RRPID, same
   body), any other a refusal; the merchant never authorizes an XID twice.
 - AuthReq to the gateway: keyed by XID and RRPID in the gateway's ledger: the stored AuthRes
   for the same request bytes, a refusal for anything else; the PI (and a PIN seal) opens
   only once in the keystore, so no second authorization reaches the issuer.
 - InqReq to the merchant: carries a fresh challenge per inquiry and changes nothing.
 - CardCInitReq, Me-AqCInitReq, RegFormReq, CertReq, CertInqReq to the CA: keyed by RRPID
   (stored answer); a CertReq's registration challenge is consumed by the first CertReq,
   so a copy never yields a second certificate.
 - Replies (``*Res``, Error) are not replayed: they answer a correlation id nobody waits for
   any more and are dropped by the requester's peer link (broker/peer.py Rule 2).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aio_pika.abc import AbstractIncomingMessage

from actors.trace.fileformat import TraceRecord, read_trace
from actors.trace.wire import WireMessage, is_request, parse_wrapper, short, view
from broker.connection import connect
from broker.errors import BrokerError, PeerUnavailable
from broker.topology import SET_EXCHANGE
from protocol import codec
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import Error
from protocol.messages import MessageType as M
from protocol.set_error import read_error
from setpay.config import Settings

REFUSED, STORED, ACCEPTED, UNANSWERED, UNROUTABLE = (
    "refused", "stored", "ACCEPTED", "UNANSWERED", "unroutable")  # fmt: skip
FAILURES = frozenset({ACCEPTED, UNANSWERED})


@dataclass(frozen=True, slots=True)
class Replayed:
    """One replayed request and what came of it (Rule 2)."""

    xid: bytes | None
    msg_type: str
    routing_key: str
    verdict: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in FAILURES

    def __str__(self) -> str:
        return (f"{short(self.xid):<16} {self.msg_type:<16} -> {self.routing_key:<20} "
                f"{self.verdict} {self.detail}").rstrip()  # fmt: skip


def _requests(path: Path) -> Iterator[tuple[WireMessage, TraceRecord, set[bytes]]]:
    """Every request of the trace with the bodies recorded as answers to it (by correlation
    id). Reads the trace twice: the answers first, then the requests, in order."""
    header, records = read_trace(path)
    answers: dict[str, set[bytes]] = {}
    for offset, rec in records:
        m = view(offset, rec, header.user_prefix)
        if m.msg_type is not None and not is_request(m.msg_type):
            answers.setdefault(rec.correlation_id, set()).add(rec.body)
    header, records = read_trace(path)
    for offset, rec in records:
        m = view(offset, rec, header.user_prefix)
        if m.msg_type is not None and is_request(m.msg_type) and not m.problem:
            yield m, rec, answers.get(rec.correlation_id, set())


def classify(reply: bytes, recorded: set[bytes]) -> tuple[str, str]:
    """(verdict, detail) of one answer to a replayed request (Rule 2)."""
    if reply in recorded:
        return STORED, "(the recorded answer, byte for byte)"
    try:
        _, msg_type, inner = parse_wrapper(reply)
    except ProtocolError:
        return ACCEPTED, "answer is not a SET wrapper"
    if msg_type is M.ERROR:
        try:
            tbs, _ = read_error(codec.decode(Error, inner), 0)
            return REFUSED, tbs.code.name
        except ProtocolError:
            return REFUSED, ErrorCode.UNSPECIFIED_FAILURE.name
    return ACCEPTED, f"new {msg_type.name}"


async def replay_attack(
    settings: Settings, path: Path, *, timeout: float = 10.0,
    report: Callable[[Replayed], None] = print,
) -> list[Replayed]:  # fmt: skip
    """Replay every request of the trace at ``path`` (Rules 1, 2); what came of each."""
    bus = await connect(settings.admin_url(), name="setpay-trace-replay")
    results: list[Replayed] = []
    try:
        channel = await bus.channel()
        reply_key = f"trace.replay-{secrets.token_hex(6)}"
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(SET_EXCHANGE, reply_key)
        waiting: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            future = waiting.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(message.body)
            await message.ack()

        await queue.consume(on_reply)
        for m, rec, recorded in _requests(path):
            cid = bus.new_id()
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            waiting[cid] = future
            message = bus.message(rec.body, msg_type=rec.msg_type, correlation_id=cid,
                                  reply_to=reply_key)  # fmt: skip
            try:
                await bus.publish(rec.routing_key, message, exchange=SET_EXCHANGE)
                reply = await asyncio.wait_for(future, timeout)
                verdict, detail = classify(reply, recorded)
            except PeerUnavailable:
                verdict, detail = UNROUTABLE, "(no queue takes it any more)"
            except TimeoutError:
                verdict, detail = UNANSWERED, f"(no answer within {timeout:g}s)"
            except BrokerError as exc:
                verdict, detail = UNANSWERED, f"({exc})"
            finally:
                waiting.pop(cid, None)
            result = Replayed(m.txn, m.type_name, rec.routing_key, verdict, detail)
            results.append(result)
            report(result)
    finally:
        await bus.close()
    return results
