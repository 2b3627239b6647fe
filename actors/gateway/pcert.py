"""PCertReq/PCertRes: a merchant fetches the gateway's current certificates over the protocol
(set-protocol.md §3.7: S(M) / S(P)).

Rule 1: the request is a merchant signature (certType merchant, this brand, chain and
revocation as every merchant request), and the merchant id it certifies is the RRTags'; the
header's RRPID is the body's. Nothing is stored: the answer depends only on what the gateway
holds, so a repeated request gets the same certificates.
Rule 2: the answer, signed by the gateway, names (``cert_thumbs``) and carries its signature
and key-exchange certificates with the PCA and Brand certificates, minus those whose
thumbprints the merchant says it holds, and the BCI and CRLs the gateway holds. A request
for brands none of which is the gateway's answers ``brandNotSupported`` with no certificate.
"""

from __future__ import annotations

from actors.entrypoint import SetHandler
from actors.gateway.capture import ClearingService
from actors.gateway.service import _load
from protocol import codec
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    certificate_der,
    public_key_of,
    set_extension,
)
from protocol.chain import Expect
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import MessageType, PCertCode, PCertReq, PCertReqData, PCertRes, PCertResData
from protocol.signed import SignedData, open_signed, sign_data
from protocol.wrapper import Decoded, amqp_type, check_header_ids, encode_message, make_header
from setpay.logs import get_logger

log = get_logger(component="gateway")

PCERT_REQ = "PCertReq"
PCERT_RES = "PCertRes"


class PCertService:
    """Answers PCertReq for one gateway."""

    def __init__(self, clearing_service: ClearingService) -> None:
        self.gw = clearing_service.gw

    @property
    def handlers(self) -> dict[MessageType, SetHandler]:
        return {MessageType.PCERT_REQ: self._pcert}

    async def _pcert(self, decoded: Decoded) -> tuple[str, bytes]:
        req: PCertReq = decoded.body
        gw = self.gw
        signed = codec.decode(SignedData, req.signed)
        certs = [_load(der) for der in req.certs]
        leaf = next((c for c in certs if cert_thumbprint(c) == signed.signer), None)
        if leaf is None:
            raise ProtocolError(ErrorCode.MISSING_CERTIFICATE, "merchant certificate not sent")
        gw._validate(leaf, certs, Expect(CertType.MERCHANT, KeyUse.SIGNATURE, gw.identity.brand))
        data = codec.decode(PCertReqData, open_signed(signed, public_key_of(leaf), PCERT_REQ))
        check_header_ids(decoded.header, rrpid=data.rr_tags.rrpid)
        merchant = set_extension(leaf).merchant
        if merchant is None or merchant.merchant_id != data.rr_tags.mer_term_ids.merchant_id:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "merchant id is not the signer's")
        brands = {b.brand_id for b in data.brand_and_bin}
        ours = [gw.identity.kx_cert, gw.identity.sig_cert, *gw.identity.chain]
        if brands and gw.identity.brand not in brands:
            code, send = PCertCode.BRAND_NOT_SUPPORTED, []
        else:
            held = set(data.thumbs)
            code, send = PCertCode.SUCCESS, [c for c in ours if cert_thumbprint(c) not in held]
        res = PCertResData(data.rr_tags, code, [cert_thumbprint(c) for c in send])
        body_signed = await sign_data(gw.sig_key, gw.sig_thumb, PCERT_RES, codec.encode(res))
        held_rev = gw.trust.held(gw.identity.brand)
        body = PCertRes(
            codec.encode(body_signed),
            [certificate_der(c) for c in dict.fromkeys([*send, gw.identity.sig_cert])],
            [] if held_rev is None else list(held_rev.crls),
            None if held_rev is None else held_rev.bci,
        )
        log.info("gateway_pcert_answered", code=code.name, certs=len(send))
        header = make_header(gw.clock.now_ms(), rrpid=data.rr_tags.rrpid)
        return amqp_type(MessageType.PCERT_RES), encode_message(header, body)
