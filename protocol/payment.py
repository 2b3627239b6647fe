"""Wire conventions of authorization (AuthReq/AuthRes), shared by the merchant and the gateway.

Pure functions over ``protocol/`` records and treatments: no I/O, no broker, no store.

Rule 1 (treatments): AuthReq.enc = EncB(M, P, "AuthReq" → ``AuthReqData``, PI), signed with
the merchant's *signature* key (signer = merchant signature cert thumbprint) and sealed to the
gateway's *key-exchange* certificate. AuthRes.enc = EncB(P, M, "AuthRes" → ``AuthResData``,
encoded ``AuthResBaggage``), signed with the gateway's signature key and sealed to the
merchant's key-exchange certificate. The baggage is always present (an all-empty
``AuthResBaggage`` when there is no token), so the signature always binds it.
Rule 2 (certificates): ``AuthReq.certs`` = the merchant's signature *and* key-exchange
certificates (AuthRes is sealed to the latter) and the cardholder's signature certificate (the
one in PReq.certs), with the CA certificates the sender has (MCA, CCA, Brand); the gateway
picks them by thumbprint (the EncB signer, the PI's dual-signature signer) or by role (the
merchant key-exchange cert of the same merchant id) and validates each to its root.
``AuthRes.certs`` = the gateway signature certificate (+ PCA, Brand).
Rule 3 (transport, as the CA's: the parties' ``broker.peer.PeerLink``): the merchant
wraps the AuthReq (protocol/wrapper.py; header ids = TransIDs XID/LID-C/LID-M and the AuthTags
RRPID, see ``wrap_auth_req``) and publishes it on the SET exchange to routing key
``gateway`` (the role queue, or ``gateway.<instance>``) with AMQP type
``amqp_type(MessageType.AUTH_REQ)``, a correlation id and ``reply_to`` = its own instance
key; ``PeerLink(bus, role, instance, target="gateway")`` does exactly that. The gateway
answers on ``reply_to`` with the wrapped AuthRes (type ``amqp_type(MessageType.AUTH_RES)``)
or a wrapped, unsigned SET Error (type ``amqp_type(MessageType.ERROR)``) whose ErrorMsg holds
the offending header. The same AuthReq sent twice (same RRPID, same bytes) gets the same
stored AuthRes; the same RRPID with other content gets Error ``replay``.
Rule 4: failures of these functions are ``ProtocolError`` (from the treatments and codec).
"""

from __future__ import annotations

from protocol import codec
from protocol.keys import PrivateKey, PublicKey, Suite
from protocol.messages import (
    AuthReq,
    AuthReqData,
    AuthRes,
    AuthResBaggage,
    AuthResData,
    AuthTags,
    MessageType,
)
from protocol.treatments import SenderKey, make_encb, open_encb
from protocol.wrapper import (
    MessageHeader,
    amqp_type,
    check_header_trans_ids,
    encode_message,
    make_header,
)

AUTH_REQ = "AuthReq"  # content type of AuthReqData
AUTH_RES = "AuthRes"  # content type of AuthResData
AUTH_REQ_TYPE = amqp_type(MessageType.AUTH_REQ)
AUTH_RES_TYPE = amqp_type(MessageType.AUTH_RES)
ERROR_TYPE = amqp_type(MessageType.ERROR)
GATEWAY_ROLE = "gateway"  # routing key of the gateway role queue
EMPTY_BAGGAGE = AuthResBaggage(None, None, None)

__all__ = [
    "AUTH_REQ",
    "AUTH_REQ_TYPE",
    "AUTH_RES",
    "AUTH_RES_TYPE",
    "EMPTY_BAGGAGE",
    "ERROR_TYPE",
    "GATEWAY_ROLE",
    "build_auth_req",
    "build_auth_res",
    "check_auth_header",
    "open_auth_req",
    "open_auth_res",
    "wrap_auth_req",
    "wrap_auth_res",
]


async def build_auth_req(
    merchant_key: PrivateKey,
    merchant_thumb: bytes,
    suite: Suite,
    gateway_public: PublicKey,
    gateway_thumb: bytes,
    data: AuthReqData,
    pi: bytes,
    certs: list[bytes],
) -> AuthReq:
    """Merchant: AuthReq = EncB(M, P, AuthReqData, PI); ``merchant_thumb`` names the merchant
    signature cert, ``gateway_thumb`` the gateway key-exchange cert (Rule 1)."""
    enc = await make_encb(
        merchant_key,
        merchant_thumb,
        suite,
        gateway_public,
        gateway_thumb,
        AUTH_REQ,
        codec.encode(data),
        pi,
    )
    return AuthReq(enc, list(certs))


async def open_auth_req(
    gateway_key: PrivateKey, gateway_thumb: bytes, req: AuthReq, resolve_sender: SenderKey
) -> tuple[AuthReqData, bytes, bytes]:
    """Gateway: open and verify AuthReq with the key-exchange key → (AuthReqData, PI bytes,
    signer thumbprint). ``resolve_sender`` maps the signer thumbprint to a *validated* key."""
    opened = await open_encb(gateway_key, gateway_thumb, req.enc, resolve_sender, AUTH_REQ)
    assert opened.baggage is not None  # open_encb always returns the checked baggage
    return codec.decode(AuthReqData, opened.content), opened.baggage, opened.signer


async def build_auth_res(
    gateway_key: PrivateKey,
    gateway_thumb: bytes,
    suite: Suite,
    merchant_public: PublicKey,
    merchant_thumb: bytes,
    data: AuthResData,
    baggage: AuthResBaggage,
    certs: list[bytes],
    crls: list[bytes] | None = None,
    bci: bytes | None = None,
) -> AuthRes:
    """Gateway: AuthRes = EncB(P, M, AuthResData, AuthResBaggage); ``gateway_thumb`` names the
    gateway signature cert, ``merchant_thumb`` the merchant key-exchange cert (Rule 1)."""
    enc = await make_encb(
        gateway_key,
        gateway_thumb,
        suite,
        merchant_public,
        merchant_thumb,
        AUTH_RES,
        codec.encode(data),
        codec.encode(baggage),
    )
    return AuthRes(enc, list(certs), list(crls or []), bci)


async def open_auth_res(
    merchant_key: PrivateKey, merchant_thumb: bytes, res: AuthRes, gateway_public: SenderKey
) -> tuple[AuthResData, AuthResBaggage]:
    """Merchant: open and verify AuthRes with its key-exchange key (``merchant_thumb`` = that
    cert); ``gateway_public`` is the gateway signature key or a resolver by thumbprint."""
    opened = await open_encb(merchant_key, merchant_thumb, res.enc, gateway_public, AUTH_RES)
    assert opened.baggage is not None
    data = codec.decode(AuthResData, opened.content)
    return data, codec.decode(AuthResBaggage, opened.baggage)


def _header(now_ms: int, tags: AuthTags) -> MessageHeader:
    t = tags.trans_ids
    return make_header(now_ms, xid=t.xid, lid_c=t.lid_c, lid_m=t.lid_m, rrpid=tags.rrpid)


def wrap_auth_req(now_ms: int, req: AuthReq, data: AuthReqData) -> bytes:
    """The wrapped AuthReq; its header repeats the TransIDs and RRPID of ``data`` (Rule 3)."""
    return encode_message(_header(now_ms, data.auth_tags), req)


def wrap_auth_res(now_ms: int, res: AuthRes, data: AuthResData) -> bytes:
    """The wrapped AuthRes; its header repeats the TransIDs and RRPID of ``data``."""
    return encode_message(_header(now_ms, data.auth_tags), res)


def check_auth_header(header: MessageHeader, tags: AuthTags) -> None:
    """Header ids must equal the opened body's TransIDs and RRPID (``wrapperMsgMismatch``)."""
    check_header_trans_ids(header, tags.trans_ids, tags.rrpid)
