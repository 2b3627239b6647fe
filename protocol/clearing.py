"""Wire conventions after authorization, shared by the merchant and the gateway: capture
(CapReq/CapRes), authorization reversal (AuthRevReq/Res), credit and the reversals of
captures and credits (CapRevReq, CredReq, CredRevReq and their Res), batch administration
(BatchAdminReq/Res) and the gateway's certificates (PCertReq/Res).

Pure functions over ``protocol/`` records and treatments: no I/O, no broker, no store.

Rule 1 (treatments, set-protocol.md §3.4): a merchant request that returns CapTokens is
EncB(M, P, data, baggage) signed with the merchant's signature key and sealed to the gateway's
key-exchange certificate; the baggage is ``TokenSeq`` (one CapToken per item, in item order)
or, for AuthRevReq, the one CapToken. BatchAdminReq is Enc(M, P). Every answer is
Enc(P, M, data) sealed to the merchant's key-exchange certificate, except AuthRevRes, which is
EncB(P, M, data, ``AuthResBaggage``) (the new CapToken). PCertReq is S(M), PCertRes S(P).
Rule 2 (ids): the wrapper's RRPID is the request's RRTags/AuthTags RRPID (the request-pair id
the gateway keys its stored answer by); AuthRev headers also repeat the TransIDs.
Rule 3 (certificates): a request carries the merchant's signature and key-exchange
certificates with its chain (the gateway seals the answer to the latter); an answer carries
the gateway's signature certificate and chain.
Rule 4: failures of these functions are ``ProtocolError`` (from the treatments and codec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import codec
from protocol.keys import PrivateKey, PublicKey, Suite
from protocol.messages import (
    AuthResBaggage,
    AuthRevReq,
    AuthRevReqData,
    AuthRevRes,
    AuthRevResData,
    BatchAdminReq,
    BatchAdminReqData,
    BatchAdminRes,
    BatchAdminResData,
    CapReq,
    CapReqData,
    CapRes,
    CapResData,
    CapRevOrCredReqData,
    CapRevOrCredResData,
    CapRevReq,
    CapRevRes,
    CredReq,
    CredRes,
    CredRevReq,
    CredRevRes,
    MessageType,
    TokenSeq,
)
from protocol.treatments import SenderKey, make_enc, make_encb, open_enc, open_encb
from protocol.wrapper import MessageHeader, amqp_type, check_header_ids, encode_message, make_header

CAP_TOKEN = "CapToken"  # noqa: S105 - a content type, not a secret


@dataclass(frozen=True, slots=True)
class Pair:
    """One request/response pair: message types, body records, content types, data records."""

    req_type: MessageType
    res_type: MessageType
    req_body: type
    res_body: type
    req_content: str
    res_content: str
    req_data: type
    res_data: type
    baggage: bool  # request is EncB (CapTokens as baggage)
    res_baggage: bool  # response is EncB (AuthResBaggage)

    @property
    def req_amqp(self) -> str:
        return amqp_type(self.req_type)

    @property
    def res_amqp(self) -> str:
        return amqp_type(self.res_type)


CAPTURE = Pair(
    MessageType.CAP_REQ, MessageType.CAP_RES, CapReq, CapRes, "CapReq", "CapRes",
    CapReqData, CapResData, True, False,
)  # fmt: skip
AUTH_REVERSAL = Pair(
    MessageType.AUTH_REV_REQ, MessageType.AUTH_REV_RES, AuthRevReq, AuthRevRes,
    "AuthRevReq", "AuthRevRes", AuthRevReqData, AuthRevResData, True, True,
)  # fmt: skip
CAPTURE_REVERSAL = Pair(
    MessageType.CAP_REV_REQ, MessageType.CAP_REV_RES, CapRevReq, CapRevRes,
    "CapRevReq", "CapRevRes", CapRevOrCredReqData, CapRevOrCredResData, True, False,
)  # fmt: skip
CREDIT = Pair(
    MessageType.CRED_REQ, MessageType.CRED_RES, CredReq, CredRes, "CredReq", "CredRes",
    CapRevOrCredReqData, CapRevOrCredResData, True, False,
)  # fmt: skip
CREDIT_REVERSAL = Pair(
    MessageType.CRED_REV_REQ, MessageType.CRED_REV_RES, CredRevReq, CredRevRes,
    "CredRevReq", "CredRevRes", CapRevOrCredReqData, CapRevOrCredResData, True, False,
)  # fmt: skip
BATCH_ADMIN = Pair(
    MessageType.BATCH_ADMIN_REQ, MessageType.BATCH_ADMIN_RES, BatchAdminReq, BatchAdminRes,
    "BatchAdminReq", "BatchAdminRes", BatchAdminReqData, BatchAdminResData, False, False,
)  # fmt: skip
PAIRS: dict[MessageType, Pair] = {
    p.req_type: p for p in (CAPTURE, AUTH_REVERSAL, CAPTURE_REVERSAL, CREDIT, CREDIT_REVERSAL,
                            BATCH_ADMIN)
}  # fmt: skip


def rrpid_of(data: Any) -> bytes:
    """The request-pair id of a request or response data record (Rule 2)."""
    tags = getattr(data, "rr_tags", None) or data.auth_tags
    return bytes(tags.rrpid)


def header_for(now_ms: int, data: Any) -> MessageHeader:
    """The wrapper header of ``data``: its RRPID, and its TransIDs where it has AuthTags."""
    tags = getattr(data, "auth_tags", None)
    if tags is not None:
        t = tags.trans_ids
        return make_header(now_ms, xid=t.xid, lid_c=t.lid_c, lid_m=t.lid_m, rrpid=tags.rrpid)
    return make_header(now_ms, rrpid=rrpid_of(data))


def check_header(header: MessageHeader, data: Any) -> None:
    """Header ids must equal the opened body's (``wrapperMsgMismatch``)."""
    tags = getattr(data, "auth_tags", None)
    if tags is not None:
        t = tags.trans_ids
        check_header_ids(header, xid=t.xid, lid_c=t.lid_c, lid_m=t.lid_m, rrpid=tags.rrpid)
    else:
        check_header_ids(header, rrpid=rrpid_of(data))


def token_baggage(pair: Pair, tokens: list[bytes]) -> bytes:
    """The EncB baggage of ``pair``'s request: the one CapToken of an AuthRevReq, else a
    ``TokenSeq``."""
    if pair is AUTH_REVERSAL:
        if len(tokens) != 1:
            raise ValueError("an AuthRevReq carries one CapToken")
        return tokens[0]
    return codec.encode(TokenSeq(list(tokens)))


async def build_request(
    pair: Pair,
    merchant_key: PrivateKey,
    merchant_thumb: bytes,
    suite: Suite,
    gateway_public: PublicKey,
    gateway_thumb: bytes,
    data: Any,
    tokens: list[bytes],
    certs: list[bytes],
    now_ms: int,
) -> bytes:
    """Merchant: the wrapped request of ``pair`` (Rule 1)."""
    content = codec.encode(data)
    if pair.baggage:
        enc = await make_encb(
            merchant_key, merchant_thumb, suite, gateway_public, gateway_thumb,
            pair.req_content, content, token_baggage(pair, tokens),
        )  # fmt: skip
    else:
        enc = await make_enc(
            merchant_key, merchant_thumb, suite, gateway_public, gateway_thumb,
            pair.req_content, content,
        )  # fmt: skip
    return encode_message(header_for(now_ms, data), pair.req_body(enc, list(certs)))


async def open_request(
    pair: Pair, gateway_key: PrivateKey, gateway_thumb: bytes, body: Any, sender: SenderKey
) -> tuple[Any, list[bytes], bytes]:
    """Gateway: (data record, CapTokens, signer thumbprint) of ``pair``'s request body."""
    if pair.baggage:
        opened = await open_encb(gateway_key, gateway_thumb, body.enc, sender, pair.req_content)
        assert opened.baggage is not None
        if pair is AUTH_REVERSAL:
            tokens = [opened.baggage]
        else:
            tokens = list(codec.decode(TokenSeq, opened.baggage).tokens)
    else:
        opened = await open_enc(gateway_key, gateway_thumb, body.enc, sender, pair.req_content)
        tokens = []
    return codec.decode(pair.req_data, opened.content), tokens, opened.signer


async def build_response(
    pair: Pair,
    gateway_key: PrivateKey,
    gateway_thumb: bytes,
    suite: Suite,
    merchant_public: PublicKey,
    merchant_thumb: bytes,
    data: Any,
    certs: list[bytes],
    now_ms: int,
    *,
    baggage: AuthResBaggage | None = None,
    crls: list[bytes] | None = None,
    bci: bytes | None = None,
) -> bytes:
    """Gateway: the wrapped response of ``pair`` (Rule 1)."""
    content = codec.encode(data)
    if pair.res_baggage:
        enc = await make_encb(
            gateway_key, gateway_thumb, suite, merchant_public, merchant_thumb,
            pair.res_content, content, codec.encode(baggage or AuthResBaggage(None, None, None)),
        )  # fmt: skip
    else:
        enc = await make_enc(
            gateway_key, gateway_thumb, suite, merchant_public, merchant_thumb,
            pair.res_content, content,
        )  # fmt: skip
    body = pair.res_body(enc, list(certs), list(crls or []), bci)
    return encode_message(header_for(now_ms, data), body)


async def open_response(
    pair: Pair, merchant_key: PrivateKey, merchant_thumb: bytes, body: Any, sender: SenderKey
) -> tuple[Any, AuthResBaggage | None]:
    """Merchant: (data record, AuthResBaggage of an AuthRevRes or None) of a response body."""
    if pair.res_baggage:
        opened = await open_encb(merchant_key, merchant_thumb, body.enc, sender, pair.res_content)
        assert opened.baggage is not None
        baggage: AuthResBaggage | None = codec.decode(AuthResBaggage, opened.baggage)
    else:
        opened = await open_enc(merchant_key, merchant_thumb, body.enc, sender, pair.res_content)
        baggage = None
    return codec.decode(pair.res_data, opened.content), baggage
