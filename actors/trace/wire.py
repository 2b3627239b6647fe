"""What the wire shows of one recorded envelope: who sent it to whom, its type and ids.

Rule 1: only the wrapper is read (``protocol.codec`` strict decoding of ``MessageWrapper``),
without the date window, so an old trace still reads; protected parts of the body are never
opened. An Error is read with ``protocol.set_error.read_error`` (its code and the header of the
message it refused are outside any encryption; a signature is not verified here).
Rule 2: a party's role is the first dot-separated part of its broker login (after the
environment's user prefix) or of the routing key a message was published to.
Rule 3: requests and responses are told apart by message type: ``*REQ`` is a request,
``*RES`` and ``ERROR`` are responses, matched to their request by correlation id.
Rule 4: ``SENDERS`` says which role sends which type (set-protocol.md: the cardholder's wallet,
the merchant's POS, the gateway, the CA); an Error may come from any role that was asked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from actors.trace.fileformat import TraceRecord
from protocol import codec
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import Error
from protocol.messages import MessageType as M
from protocol.set_error import read_error
from protocol.wrapper import MessageHeader, MessageWrapper, amqp_type

_REGISTRATION_REQS = frozenset({M.CERT_REQ, M.CERT_INQ_REQ})
SENDERS: dict[str, frozenset[M]] = {
    "wallet": frozenset({M.PINIT_REQ, M.PREQ, M.INQ_REQ, M.CARD_CINIT_REQ, M.REG_FORM_REQ,
                         *_REGISTRATION_REQS}),
    "merchant": frozenset({M.PINIT_RES, M.PRES, M.INQ_RES, M.AUTH_REQ, M.AUTH_REV_REQ,
                           M.CAP_REQ, M.CAP_REV_REQ, M.CRED_REQ, M.CRED_REV_REQ, M.PCERT_REQ,
                           M.BATCH_ADMIN_REQ, M.ME_AQ_CINIT_REQ, *_REGISTRATION_REQS}),
    "gateway": frozenset({M.AUTH_RES, M.AUTH_REV_RES, M.CAP_RES, M.CAP_REV_RES, M.CRED_RES,
                          M.CRED_REV_RES, M.PCERT_RES, M.BATCH_ADMIN_RES, M.ME_AQ_CINIT_REQ,
                          *_REGISTRATION_REQS}),
    "ca": frozenset({M.CARD_CINIT_RES, M.ME_AQ_CINIT_RES, M.REG_FORM_RES, M.CERT_RES,
                     M.CERT_INQ_RES, M.BCI_DISTRIBUTION}),
}  # fmt: skip


ONE_WAY = frozenset({M.BCI_DISTRIBUTION})  # broadcasts: neither request nor response


def is_request(t: M) -> bool:
    return t.name.endswith("REQ")


def answers(request: M) -> frozenset[M]:
    """The response types that answer ``request`` (its ``*_RES`` or an Error)."""
    return frozenset({M[request.name[:-3] + "RES"], M.ERROR})


def role_of(name: str, prefix: str = "") -> str:
    """The role in a broker login or routing key (Rule 2)."""
    if prefix and name.startswith(prefix):
        name = name[len(prefix) :]
    return name.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class WireMessage:
    """One recorded envelope as the wire shows it; ``msg_type`` is None if it does not
    decode as a wrapper (``problem`` says why)."""

    offset: int
    t_ns: int
    sender: str
    sender_role: str
    receiver: str
    receiver_role: str
    amqp_type: str
    correlation_id: str
    reply_to: str
    msg_type: M | None
    xid: bytes | None
    rrpid: bytes | None
    size: int
    digest: bytes
    error: ErrorCode | None = None  # an Error's code
    refused_xid: bytes | None = None  # the XID/RRPID of the message an Error refused
    refused_rrpid: bytes | None = None
    problem: str = ""

    @property
    def type_name(self) -> str:
        return self.msg_type.name if self.msg_type is not None else f"?{self.amqp_type}"

    @property
    def txn(self) -> bytes | None:
        """The XID this message belongs to: its own, or for an Error the refused one's."""
        return self.xid if self.xid is not None else self.refused_xid


def _ids(header: MessageHeader) -> tuple[bytes | None, bytes | None]:
    xid = header.message_ids.xid if header.message_ids is not None else None
    return xid, header.rrpid


def parse_wrapper(body: bytes) -> tuple[MessageHeader, M, bytes]:
    """(header, type, body record bytes) of a SET wrapper; ``ProtocolError`` if it is not one."""
    wrapper = codec.decode(MessageWrapper, body)
    return wrapper.header, wrapper.msg_type, wrapper.body


def view(offset: int, record: TraceRecord, prefix: str = "") -> WireMessage:
    """What the wire shows of ``record`` (Rule 1)."""
    common = dict(
        offset=offset, t_ns=record.t_ns, sender=record.user_id,
        sender_role=role_of(record.user_id, prefix), receiver=record.routing_key,
        receiver_role=role_of(record.routing_key), amqp_type=record.msg_type,
        correlation_id=record.correlation_id, reply_to=record.reply_to,
        size=len(record.body), digest=hashlib.sha256(record.body).digest(),
    )  # fmt: skip
    try:
        header, msg_type, inner = parse_wrapper(record.body)
    except ProtocolError as exc:
        return WireMessage(**common, msg_type=None, xid=None, rrpid=None,
                           problem=f"not a SET wrapper ({exc.code.name})")  # fmt: skip
    xid, rrpid = _ids(header)
    problem = ""
    if record.msg_type != amqp_type(msg_type):
        problem = f"AMQP type {record.msg_type!r} is not the wrapper's {msg_type.name}"
    if msg_type is not M.ERROR:
        return WireMessage(**common, msg_type=msg_type, xid=xid, rrpid=rrpid, problem=problem)
    code = refused_xid = refused_rrpid = None
    try:
        tbs, _ = read_error(codec.decode(Error, inner), 0)
        code = tbs.code
        if tbs.error_msg:
            refused_xid, refused_rrpid = _ids(codec.decode(MessageHeader, tbs.error_msg))
    except ProtocolError as exc:
        problem = problem or f"unreadable Error ({exc.code.name})"
    return WireMessage(**common, msg_type=msg_type, xid=xid, rrpid=rrpid, error=code,
                       refused_xid=refused_xid, refused_rrpid=refused_rrpid,
                       problem=problem)  # fmt: skip


def short(value: bytes | None) -> str:
    """The first 8 bytes of an id, hex (``-`` if absent)."""
    return value[:8].hex() if value is not None else "-"
