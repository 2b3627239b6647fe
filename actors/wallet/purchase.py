"""The cardholder side of a purchase: PInitReq, PInitRes checks, PReq, PRes/InqRes checks.

Rule 1: nothing from the merchant is used before it is checked: the merchant's signature
certificate and the gateway key-exchange certificate named by PEThumb are validated to the
trusted root for the brand (with the BCI and CRLs the PInitRes carries), the signature
verifies, our RRPID and Chall-C come back, the header repeats the body's ids.
Rule 2: the PI is sealed to the gateway key PEThumb names, and the dual signature names that
gateway and the merchant certificate; the account data goes only into the PI's extra part.
Rule 3: failures are ``ProtocolError``; pure functions but for the injected signing key.
Rule 4: the BCI a merchant hands over must not be older than the newest one of its brand this
wallet (or thin client) has seen: ``BciFloor`` keeps the highest sequence per root and brand
and refuses a lower one with ``staleRevocationData`` (a rollback to revocation data from
before a revocation); a higher one raises the floor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509

from actors.wallet.vault import CardSecrets
from protocol import codec, dualsig, ids, pan
from protocol.certs import (
    CertType,
    KeyUse,
    cert_thumbprint,
    certificate_der,
    load_certificate,
    public_key_of,
    set_extension,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey, Suite, suite_for_public_key
from protocol.messages import (
    CurrAmt,
    InqReq,
    InqReqData,
    OIData,
    PIHead,
    PIKind,
    PinEntry,
    PInitReq,
    PInitRes,
    PInitResData,
    PReq,
    PResData,
    PurchaseInputs,
    TransIDs,
)
from protocol.order import hod
from protocol.signed import SignedData, open_signed
from protocol.trustview import Trust, load_all, pick
from protocol.wrapper import SW_IDENT, MessageHeader, check_header_trans_ids

LANGUAGE = "en"


class Floors(Protocol):
    """Where a ``BciFloor`` keeps its sequences (the wallet store, or memory)."""

    def bci_floor(self, key: str) -> int: ...

    def raise_bci_floor(self, key: str, sequence: int, now_ms: int) -> None: ...


@dataclass
class MemoryFloors:
    """Floors held in memory (a thin client's session)."""

    seen: dict[str, int] = field(default_factory=dict)

    def bci_floor(self, key: str) -> int:
        return self.seen.get(key, 0)

    def raise_bci_floor(self, key: str, sequence: int, now_ms: int) -> None:
        self.seen[key] = max(sequence, self.seen.get(key, 0))


@dataclass
class BciFloor:
    """The highest BCI sequence seen per root and brand (Rule 4)."""

    floors: Floors = field(default_factory=MemoryFloors)

    def admit(self, trust: Trust, now_ms: int) -> None:
        """Refuse ``trust``'s BCI if older than one seen; else remember its sequence."""
        key = f"{cert_thumbprint(trust.root).hex()}/{trust.brand}"
        seen, offered = self.floors.bci_floor(key), trust.revocation.sequence
        if offered < seen:
            raise ProtocolError(
                ErrorCode.STALE_REVOCATION_DATA,
                f"BCI {offered} of {trust.brand} is older than {seen}, already seen",
            )
        if offered > seen:
            self.floors.raise_bci_floor(key, offered, now_ms)


@dataclass(frozen=True)
class Offer:
    """A checked PInitRes: the session ids and the certificates they name (Rule 1)."""

    data: PInitResData
    merchant_cert: x509.Certificate
    merchant_id: str
    gateway_cert: x509.Certificate
    brand: str
    bin: str
    certs: list[bytes]  # the PInitRes's certificates, BCI and CRLs, for the thin client
    crls: list[bytes]
    bci: bytes | None


def offer_to_bytes(offer: Offer) -> bytes:
    """The offer as stored between PInit and PReq (actors/wallet/store.py Rule 4), without
    its BIN: the first digits of the account number stay in the sealed card alone."""
    return codec.packb([
        codec.encode(offer.data), certificate_der(offer.merchant_cert), offer.merchant_id,
        certificate_der(offer.gateway_cert), offer.brand, offer.certs, offer.crls, offer.bci,
    ])  # fmt: skip


def offer_from_bytes(data: bytes, account: pan.Account) -> Offer:
    """The offer ``offer_to_bytes`` stored (the wallet's own row, checked when it was made),
    its BIN taken again from the opened card's ``account``."""
    raw, merchant, merchant_id, gateway, brand, certs, crls, bci = codec.unpackb(data)
    return Offer(
        codec.decode(PInitResData, raw), load_certificate(merchant), merchant_id,
        load_certificate(gateway), brand, pan.merchant_bin(account), list(certs), list(crls),
        bci,
    )  # fmt: skip


def pinit_req(
    merchant_bin: str, kind: pan.AccountKind, brand: str, lid_m: bytes
) -> PInitReq:
    """A PInitReq for the order ``lid_m`` with fresh RRPID, LID-C and Chall-C; the account is
    named by ``pan.merchant_bin`` of it and its kind, nothing more."""
    return PInitReq(
        ids.new_rrpid(), LANGUAGE, ids.new_lid(), lid_m, ids.new_challenge(), brand,
        merchant_bin, kind, [],
    )  # fmt: skip


def check_pinit_res(
    res: PInitRes,
    header: MessageHeader,
    sent: PInitReq,
    root: x509.Certificate,
    now_ms: int,
    floor: BciFloor | None = None,
) -> Offer:
    """Check a PInitRes against what we sent (Rules 1, 4)."""
    certs = load_all(res.certs)
    trust = Trust.load(root, sent.brand_id, certs, res.bci, res.crls, now_ms)
    if floor is not None:
        floor.admit(trust, now_ms)
    signed = codec.decode(SignedData, res.signed)
    merchant = pick(certs, signed.signer)
    trust.validate(merchant, certs, CertType.MERCHANT, KeyUse.SIGNATURE, now_ms)
    data = codec.decode(PInitResData, open_signed(signed, public_key_of(merchant), "PInitRes"))
    if data.rrpid != sent.rrpid:
        raise ProtocolError(ErrorCode.UNKNOWN_RRPID, "PInitRes answers another request")
    if data.chall_c != sent.chall_c:
        raise ProtocolError(ErrorCode.CHALLENGE_MISMATCH, "Chall-C not echoed")
    check_header_trans_ids(header, data.trans_ids, data.rrpid)
    if (data.trans_ids.lid_c, data.trans_ids.lid_m) != (sent.lid_c, sent.lid_m):
        raise ProtocolError(ErrorCode.UNKNOWN_LID, "PInitRes for another order")
    gateway = pick(certs, data.pe_thumb)
    trust.validate(gateway, certs, CertType.GATEWAY, KeyUse.KEY_EXCHANGE, now_ms)
    merchant_data = set_extension(merchant).merchant
    if merchant_data is None:
        raise ProtocolError(ErrorCode.INVALID_CERTIFICATE, "merchant certificate without id")
    return Offer(
        data, merchant, merchant_data.merchant_id, gateway, sent.brand_id, sent.bin,
        res.certs, res.crls, res.bci,
    )  # fmt: skip


def validate_gateway(
    root: x509.Certificate,
    brand: str,
    certs_der: list[bytes],
    bci: bytes | None,
    crls: list[bytes],
    gateway_thumb: bytes,
    now_ms: int,
    floor: BciFloor | None = None,
) -> x509.Certificate:
    """The gateway key-exchange certificate ``gateway_thumb`` names, validated to ``root`` for
    ``brand`` with the BCI and CRLs given (what the thin client checks before sealing a PIN;
    Rule 4 with its ``floor``)."""
    certs = load_all(certs_der)
    trust = Trust.load(root, brand, certs, bci, crls, now_ms)
    if floor is not None:
        floor.admit(trust, now_ms)
    gateway = pick(certs, gateway_thumb)
    trust.validate(gateway, certs, CertType.GATEWAY, KeyUse.KEY_EXCHANGE, now_ms)
    return gateway


async def build_preq(
    offer: Offer,
    key: PrivateKey,
    card_cert: x509.Certificate,
    chain: list[x509.Certificate],
    card: CardSecrets,
    description: str,
    amount: CurrAmt,
    pin_seal: bytes | None = None,
    *,
    peer_suite: Callable[[PublicKey], Suite] = suite_for_public_key,
) -> tuple[PReq, OIData]:
    """PReq = {PIDualSigned, OIDualSigned} for the checked ``offer`` (Rule 2); ``pin_seal``
    is the thin client's ``pin.seal_pin`` for this XID (OPE), carried beside the PI."""
    trans = offer.data.trans_ids
    od_salt = ids.new_challenge()
    order_digest = hod(description, amount, od_salt)
    oi = OIData(
        trans, ids.new_rrpid(), offer.data.chall_c, order_digest, od_salt, offer.data.chall_m,
        offer.brand, offer.bin,
    )  # fmt: skip
    merchant_thumb = cert_thumbprint(offer.merchant_cert)
    gateway_thumb = cert_thumbprint(offer.gateway_cert)
    head = PIHead(
        trans, PurchaseInputs(order_digest, amount), offer.merchant_id, merchant_thumb,
        gateway_thumb, None, pan.trans_stain(card.card_secret, trans.xid), SW_IDENT, None,
        card.account.kind, None if pin_seal is None else PinEntry.PIN_ANY,
    )  # fmt: skip
    pan_data = codec.encode(pan.make_pan_data(card.account, card.expiry, card.pan_secret))
    gateway_public = public_key_of(offer.gateway_cert)
    parts = await dualsig.make_dual_signed(
        key, cert_thumbprint(card_cert), peer_suite(gateway_public), gateway_public,
        gateway_thumb, merchant_thumb, codec.encode(head), pan_data, codec.encode(oi),
        pin_seal=pin_seal,
    )  # fmt: skip
    certs = [certificate_der(card_cert), *(certificate_der(c) for c in chain)]
    return PReq(PIKind.DUAL_SIGNED, parts.pi, parts.oi_data, parts.pi_digest, certs), oi


def inq_req(trans: TransIDs) -> tuple[InqReq, InqReqData]:
    """An unsigned InqReq with a fresh RRPID and Chall-C2."""
    data = InqReqData(trans, ids.new_rrpid(), ids.new_challenge())
    return InqReq(False, codec.encode(data), []), data


def check_result(
    signed_bytes: bytes,
    header: MessageHeader,
    merchant_cert: x509.Certificate,
    content_type: str,
    rrpid: bytes,
    challenge: bytes,
    trans: TransIDs,
) -> PResData:
    """Check a PRes/InqRes: signed by the merchant of the session, our ids and challenge."""
    signed = codec.decode(SignedData, signed_bytes)
    if signed.signer != cert_thumbprint(merchant_cert):
        raise ProtocolError(ErrorCode.SIGNATURE_FAILURE, "signed by another certificate")
    data = codec.decode(PResData, open_signed(signed, public_key_of(merchant_cert), content_type))
    if data.rrpid != rrpid:
        raise ProtocolError(ErrorCode.UNKNOWN_RRPID, "answer to another request")
    if data.chall_c != challenge:
        raise ProtocolError(ErrorCode.CHALLENGE_MISMATCH, "challenge not echoed")
    if data.trans_ids != trans:
        raise ProtocolError(ErrorCode.UNKNOWN_XID, "answer about another purchase")
    check_header_trans_ids(header, data.trans_ids, data.rrpid)
    return data
