"""``setpay trace replay --attack``: every recorded request sent again; none may take effect.

Rule 1: against the live environment that produced the trace, each recorded request is
re-published byte for byte, with its recorded AMQP type, to its recorded routing key on the
SET exchange, as the very login that sent it (the broker-validated user id the trace shows;
its password from the environment's credential store): the insider who holds that party's
credentials. A fresh correlation id, and a reply-to inbox of the replayer's own under that
login (``broker.inbox``).
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
Rule 4: a truncated or corrupted trace is replayed up to the bad frame; then ``TraceCorrupt``
names its byte offset (the requests before it were sent and reported).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from actors.trace.fileformat import TraceCorrupt, TraceRecord, read_trace
from actors.trace.wire import WireMessage, is_request, parse_wrapper, short, view
from broker.connection import Bus, connect
from broker.credentials import CredentialsError, amqp_url
from broker.errors import BrokerError, PeerUnavailable
from broker.inbox import Inbox
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


def recorded_answers(path: Path) -> dict[str, list[bytes]]:
    """The bodies recorded as answers, by correlation id, in trace order; a truncated or
    corrupted trace yields those before the bad frame (the replay then stops there too)."""
    header, records = read_trace(path)
    answers: dict[str, list[bytes]] = {}
    try:
        for offset, rec in records:
            m = view(offset, rec, header.user_prefix)
            if m.msg_type is not None and not is_request(m.msg_type):
                answers.setdefault(rec.correlation_id, []).append(rec.body)
    except TraceCorrupt:
        pass  # raised again, with its offset, when the requests reach the same frame
    return answers


def requests(path: Path) -> Iterator[tuple[WireMessage, TraceRecord, list[bytes]]]:
    """Every request of the trace with the bodies recorded as answers to it (by correlation
    id). Reads the trace twice: the answers first, then the requests, in order; ``TraceCorrupt``
    after the requests before a bad frame (Rule 4)."""
    answers = recorded_answers(path)
    header, records = read_trace(path)
    for offset, rec in records:
        m = view(offset, rec, header.user_prefix)
        if m.msg_type is not None and is_request(m.msg_type) and not m.problem:
            yield m, rec, answers.get(rec.correlation_id, [])


class Senders:
    """One connection and inbox per recorded sender's login (Rule 1); ``send`` publishes a
    recorded request as it was and waits for its answer."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self._by_login: dict[str, tuple[Bus, Inbox]] = {}

    async def _as(self, login: str) -> tuple[Bus, Inbox]:
        if login not in self._by_login:
            s = self.settings
            bus = await connect(amqp_url(s.data_dir, login, s.broker_vhost, s.amqp_url),
                                name="setpay-trace-replay")  # fmt: skip
            self._by_login[login] = bus, await Inbox(bus, SET_EXCHANGE).start()
        return self._by_login[login]

    async def send(self, rec: TraceRecord) -> tuple[str, bytes | str]:
        """(``"answer"``, its body) or (a verdict, a detail) when there was none."""
        try:
            bus, inbox = await self._as(rec.user_id)
        except (CredentialsError, BrokerError) as exc:
            return UNANSWERED, f"(cannot log in as {rec.user_id!r}: {exc})"
        cid = bus.new_id()
        future = inbox.expect(cid, lambda _login: True)  # every answer is classified
        message = bus.message(rec.body, msg_type=rec.msg_type, correlation_id=cid,
                              reply_to=inbox.key)  # fmt: skip
        try:
            await bus.publish(rec.routing_key, message, exchange=SET_EXCHANGE)
            reply = await asyncio.wait_for(future, self.timeout)
            return "answer", reply.body
        except PeerUnavailable:
            return UNROUTABLE, "(no queue takes it any more)"
        except TimeoutError:
            return UNANSWERED, f"(no answer within {self.timeout:g}s)"
        except BrokerError as exc:
            return UNANSWERED, f"({exc})"
        finally:
            inbox.forget(cid)

    async def close(self) -> None:
        for bus, _inbox in self._by_login.values():
            await bus.close()


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
    senders = Senders(settings, timeout)
    results: list[Replayed] = []
    try:
        for m, rec, recorded in requests(path):
            kind, answer = await senders.send(rec)
            if isinstance(answer, bytes):
                verdict, detail = classify(answer, set(recorded))
            else:
                verdict, detail = kind, answer
            result = Replayed(m.txn, m.type_name, rec.routing_key, verdict, detail)
            results.append(result)
            report(result)
    finally:
        await senders.close()
    return results
