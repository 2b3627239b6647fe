"""The SET Error message: one builder every party answers with, one reader every party uses.

Rule 1: every refusal of a request is one record, ``Error`` (message type ``Error``, AMQP type
``ERROR_TYPE``), whose ``ErrorTBS`` carries the code, a fresh nonce and the offending
message's header (``ErrorMsg``: the header only, never the body, which may hold secrets).
Rule 2: signed where the protocol says: a CA signs its Errors, S(CA, "Error" -> ErrorTBS),
with its certificate and brand certificate attached (``ErrorSigner``); other parties send
them unsigned. An Error is never answered.
Rule 3: ``read_error`` is the one way to read an Error received: it returns the ``ErrorTBS``
and whether a party we trust signed it (the certificate we hold for that party, or an
attached CA certificate chaining to our root). A signed Error whose signature fails raises
``ProtocolError(signatureFailure)``; an unsigned or unplaceable one is read but trusted for
nothing. ``RemoteError`` is what a requester raises for an Error it received, distinct from
the ``ProtocolError`` of a check that failed locally (h11's local/remote distinction).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from protocol import codec, ids
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    load_certificate,
    public_key_of,
    set_extension,
)
from protocol.chain import Expect, validate_path
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey
from protocol.messages import Error, ErrorTBS, MessageType
from protocol.signed import SignedData, open_signed, sign_data
from protocol.wrapper import (
    Decoded,
    amqp_type,
    decode_message,
    encode_message,
    make_header,
    peek_header,
)

ERROR_TYPE = amqp_type(MessageType.ERROR)
ERROR_CONTENT = "Error"
_CA_TYPES = (CertType.CCA, CertType.MCA, CertType.PCA)


@dataclass(frozen=True, slots=True)
class ErrorSigner:
    """The key and certificates a party signs its Errors with (Rule 2)."""

    key: PrivateKey
    thumb: bytes
    certs: list[bytes]


class RemoteError(Exception):
    """The peer answered a SET Error (``code``; ``verified``: a party we trust signed it)."""

    def __init__(self, who: str, tbs: ErrorTBS, verified: bool) -> None:
        super().__init__(f"{who} refused: {tbs.code.name}")
        self.code = tbs.code
        self.verified = verified


def error_tbs(exc: ProtocolError, request: bytes) -> ErrorTBS:
    """The ``ErrorTBS`` refusing ``request`` with ``exc``'s code (Rule 1)."""
    header = peek_header(request)
    return ErrorTBS(
        exc.code, ids.new_challenge(), None, None, b"" if header is None else codec.encode(header)
    )


async def build_error(
    exc: ProtocolError, request: bytes, now_ms: int, signer: ErrorSigner | None = None
) -> bytes:
    """The wrapped ``Error`` refusing ``request``: signed by ``signer`` if given (Rule 2)."""
    tbs = codec.encode(error_tbs(exc, request))
    if signer is None:
        body = Error(False, tbs, [])
    else:
        signed = await sign_data(signer.key, signer.thumb, ERROR_CONTENT, tbs)
        body = Error(True, codec.encode(signed), list(signer.certs))
    return encode_message(make_header(now_ms), body)


def read_error(
    error: Error,
    now_ms: int,
    *,
    trusted: x509.Certificate | None = None,
    root: x509.Certificate | None = None,
) -> tuple[ErrorTBS, bool]:
    """An Error's ``ErrorTBS`` and whether a party we trust signed it (Rule 3): ``trusted``
    is the certificate we hold for the peer; ``root`` lets an attached CA certificate that
    chains to it vouch instead."""
    if not error.signed:
        return codec.decode(ErrorTBS, error.content), False
    signed = codec.decode(SignedData, error.content)
    signer: x509.Certificate | None = None
    if trusted is not None and signed.signer == cert_thumbprint(trusted):
        signer = trusted
    elif root is not None:
        attached = [load_certificate(c) for c in error.certs]
        leaf = next((c for c in attached if cert_thumbprint(c) == signed.signer), None)
        if leaf is not None and set_extension(leaf).cert_type in _CA_TYPES:
            validate_path(
                leaf,
                [c for c in attached if c is not leaf],
                root=root,
                now=ids.to_dt(now_ms),
                expect=Expect(set_extension(leaf).cert_type, KeyUse.SIGNATURE),
                revocation=None,
            )
            signer = leaf
    if signer is None:  # signed by a key we cannot place: read it, trust nothing in it
        return codec.decode(ErrorTBS, signed.content), False
    tbs = codec.decode(ErrorTBS, open_signed(signed, public_key_of(signer), ERROR_CONTENT))
    return tbs, True


def expect_reply(
    reply: bytes,
    now_ms: int,
    expect: type,
    *,
    who: str,
    trusted: x509.Certificate | None = None,
    root: x509.Certificate | None = None,
    window_ms: int = ids.DEFAULT_WINDOW_MS,
) -> Decoded:
    """Decode a reply that must be an ``expect`` record; an Error raises ``RemoteError``
    (read by ``read_error``), any other record ``ProtocolError(messageNotSupported)``."""
    decoded = decode_message(reply, now_ms=now_ms, window_ms=window_ms)
    if isinstance(decoded.body, Error):
        tbs, verified = read_error(decoded.body, now_ms, trusted=trusted, root=root)
        raise RemoteError(who, tbs, verified)
    if not isinstance(decoded.body, expect):
        raise ProtocolError(ErrorCode.MESSAGE_NOT_SUPPORTED, "unexpected reply type")
    return decoded


__all__ = [
    "ERROR_TYPE",
    "ErrorSigner",
    "RemoteError",
    "build_error",
    "error_tbs",
    "expect_reply",
    "read_error",
]
