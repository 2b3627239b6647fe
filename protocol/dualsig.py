"""The dual signature: one cardholder signature binding the order (OI) and the payment (PI).

    PIData       = {PIHead, AccountPart}            AccountPart = {PANData, [PIN block]}
    PI-TBS       = {"PI-TBS", H(PIData), H(OIData), merchant cert thumb, gateway KE cert thumb}
    PIDualSigned = {SO(C, PI-TBS), EX(P, PI-OILink = L(PIHead, OIData), AccountPart)}
    OIDualSigned = L(OIData, PIData)
    no cert:  PIUnsigned = EXH(P, PI-OILink, AccountPart with PANToken),
              OIUnsigned = L(OIData, PIDataUnsigned)

Rule 1: the merchant verifies with OIData and H(PIData) only; it never can read the account
part (it is sealed in the gateway's wrap). The gateway verifies with PIData and the H(OIData)
taken from the linkage, never seeing OIData. Both check the same signature.
Rule 2: PI-TBS names its purpose, the merchant and the gateway (SET's explicitness gap), so a
PI cannot be replayed to another merchant or through another gateway key.
Rule 3: all inputs and outputs are exact encoded bytes; failures are ``ProtocolError``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from protocol import codec, detached, envelope, linkage
from protocol.codec import Bytes32, Digest, MaxLen
from protocol.detached import DetachedSignature
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey, Suite

PI_TBS = "PI-TBS"
PI_OILINK = "PI-OILink"
PI_UNSIGNED = "PIUnsigned"
PIDATA = "PIData"
PIDATA_UNSIGNED = "PIDataUnsigned"
OIDATA = "OIData"
MAX_PAN_DATA = 160
MAX_PIN_BLOCK = 16  # ISO 9564 format 0 = 8 bytes, format 4 = 16 bytes


@dataclass(frozen=True, slots=True)
class AccountPart:
    """p of EX/EXH: PANData (or PANToken), and the OPE PIN block, readable only by the gateway."""

    pan_data: Annotated[bytes, MaxLen(MAX_PAN_DATA)]
    pin_block: Annotated[bytes, MaxLen(MAX_PIN_BLOCK)] | None


@dataclass(frozen=True, slots=True)
class PIData:
    """The payment instruction whose digest the cardholder signs."""

    pi_head: bytes
    account: bytes  # encoded AccountPart


@dataclass(frozen=True, slots=True)
class PITBS:
    """What the dual signature signs (built by each verifier, never decoded)."""

    label: str
    pi_digest: Digest
    oi_digest: Digest
    merchant: Bytes32
    gateway: Bytes32


@dataclass(frozen=True, slots=True)
class PIDualSigned:
    """PISignature and the EX envelope to the gateway."""

    signature: DetachedSignature
    envelope: bytes


@dataclass(frozen=True, slots=True)
class PurchaseParts:
    """What a cardholder sends: encoded PI (dual-signed or unsigned) and OI (= L(OIData,
    PIData)), and OI's two halves for message records that carry them as separate fields."""

    pi: bytes
    oi: bytes
    oi_data: bytes
    pi_digest: bytes


@dataclass(frozen=True, slots=True)
class MerchantView:
    """What the merchant learns: OIData, H(PIData) and the cardholder's cert thumbprint."""

    oi_data: bytes
    pi_digest: bytes
    signer: bytes | None


@dataclass(frozen=True, slots=True)
class GatewayView:
    """What the gateway learns: PIHead, the account part, H(OIData), the signer (if any)."""

    pi_head: bytes
    pan_data: bytes
    pin_block: bytes | None
    oi_digest: bytes
    signer: bytes | None


def oi_digest(oi_data: bytes) -> bytes:
    """H(OIData): what AuthReq carries (HOIData) for the gateway to compare."""
    return linkage.digest_of(OIDATA, oi_data)


def _account(pan_data: bytes, pin_block: bytes | None) -> bytes:
    if len(pan_data) > MAX_PAN_DATA or (pin_block is not None and len(pin_block) > MAX_PIN_BLOCK):
        raise ProtocolError(ErrorCode.INVALID_FIELD, "account data or PIN block too long")
    return codec.encode(AccountPart(pan_data, pin_block))


def _tbs(pi_digest: bytes, oi_dig: bytes, merchant: bytes, gateway: bytes) -> bytes:
    return codec.encode(PITBS(PI_TBS, pi_digest, oi_dig, merchant, gateway))


def _pidata(pi_head: bytes, account: bytes) -> bytes:
    return codec.encode(PIData(pi_head, account))


async def make_dual_signed(
    key: PrivateKey,
    signer: bytes,
    suite: Suite,
    gateway_public: PublicKey,
    gateway: bytes,
    merchant: bytes,
    pi_head: bytes,
    pan_data: bytes,
    oi_data: bytes,
    pin_block: bytes | None = None,
) -> PurchaseParts:
    """Cardholder: PIDualSigned and OIDualSigned for one purchase (``gateway``/``merchant``
    are the gateway key-exchange and merchant certificate thumbprints)."""
    account = _account(pan_data, pin_block)
    pidata = _pidata(pi_head, account)
    tbs = _tbs(linkage.digest_of(PIDATA, pidata), oi_digest(oi_data), merchant, gateway)
    signature = await detached.sign_detached(key, signer, PI_TBS, tbs)
    pi_oilink = linkage.make_linked(pi_head, OIDATA, oi_data)
    env = await envelope.make_ex(suite, gateway_public, gateway, PI_OILINK, pi_oilink, account)
    pi = codec.encode(PIDualSigned(signature, env))
    oi = linkage.Linked(oi_data, linkage.dd(PIDATA, pidata))
    return PurchaseParts(pi, codec.encode(oi), oi_data, oi.link.digest)


def verify_at_merchant(
    pi: bytes, oi: bytes, cardholder_public: PublicKey, merchant: bytes, gateway: bytes
) -> MerchantView:
    """Merchant: check the dual signature with OIData and H(PIData); the PI stays sealed."""
    oi_linked = codec.decode(linkage.Linked, oi)
    return verify_oi_at_merchant(
        pi, oi_linked.content, oi_linked.link.digest, cardholder_public, merchant, gateway
    )


def verify_oi_at_merchant(
    pi: bytes,
    oi_data: bytes,
    pi_digest: bytes,
    cardholder_public: PublicKey,
    merchant: bytes,
    gateway: bytes,
) -> MerchantView:
    """``verify_at_merchant`` for OIDualSigned carried as two fields (OIData, H(PIData))."""
    pid = codec.decode(PIDualSigned, pi)
    if not hmac.compare_digest(envelope.recipient_of(pid.envelope), gateway):
        raise ProtocolError(ErrorCode.THUMBS_MISMATCH, "PI is not sealed to the expected gateway")
    tbs = _tbs(pi_digest, oi_digest(oi_data), merchant, gateway)
    detached.verify_detached(pid.signature, cardholder_public, PI_TBS, tbs)
    return MerchantView(oi_data, pi_digest, pid.signature.signer)


def _check_oi_digest(found: bytes, expected: bytes | None) -> None:
    if expected is not None and not hmac.compare_digest(found, expected):
        raise ProtocolError(ErrorCode.LINKAGE_FAILURE, "PI is linked to another order")


def _split(pi_oilink: bytes, account: bytes) -> tuple[bytes, bytes, AccountPart]:
    link = codec.decode(linkage.Linked, pi_oilink)
    return link.content, link.link.digest, codec.decode(AccountPart, account)


async def open_at_gateway(
    pi: bytes,
    key: PrivateKey,
    gateway: bytes,
    cardholder_public: PublicKey,
    merchant: bytes,
    expected_oi_digest: bytes | None = None,
) -> GatewayView:
    """Gateway: open the PI, verify the dual signature with H(OIData) from the linkage, and
    (if given) that it equals the HOIData the merchant's AuthReq carries."""
    pid = codec.decode(PIDualSigned, pi)
    pi_oilink, account = await envelope.open_ex(key, gateway, pid.envelope, PI_OILINK)
    pi_head, oi_dig, part = _split(pi_oilink, account)
    pi_digest = linkage.digest_of(PIDATA, _pidata(pi_head, account))
    tbs = _tbs(pi_digest, oi_dig, merchant, gateway)
    detached.verify_detached(pid.signature, cardholder_public, PI_TBS, tbs)
    _check_oi_digest(oi_dig, expected_oi_digest)
    return GatewayView(pi_head, part.pan_data, part.pin_block, oi_dig, pid.signature.signer)


# --- cardholders without a certificate --------------------------------------------------


async def make_unsigned(
    suite: Suite,
    gateway_public: PublicKey,
    gateway: bytes,
    pi_head: bytes,
    pan_token: bytes,
    oi_data: bytes,
    pin_block: bytes | None = None,
) -> PurchaseParts:
    """Cardholder without a certificate: PIUnsigned = EXH(P, PI-OILink, PANToken) and OIUnsigned."""
    account = _account(pan_token, pin_block)
    pi_oilink = linkage.make_linked(pi_head, OIDATA, oi_data)
    pi = await envelope.make_exh(suite, gateway_public, gateway, PI_UNSIGNED, pi_oilink, account)
    oi = linkage.Linked(oi_data, linkage.dd(PIDATA_UNSIGNED, _pidata(pi_head, account)))
    return PurchaseParts(pi, codec.encode(oi), oi_data, oi.link.digest)


def read_unsigned_oi(oi: bytes) -> MerchantView:
    """Merchant, unsigned purchase: OIData and H(PIDataUnsigned); nothing to verify."""
    linked = codec.decode(linkage.Linked, oi)
    return MerchantView(linked.content, linked.link.digest, None)


async def open_unsigned_at_gateway(
    pi: bytes, key: PrivateKey, gateway: bytes, expected_oi_digest: bytes | None = None
) -> GatewayView:
    """Gateway: open PIUnsigned (EXH checks H and DD) and check the order linkage."""
    pi_oilink, account = await envelope.open_exh(key, gateway, pi, PI_UNSIGNED)
    pi_head, oi_dig, part = _split(pi_oilink, account)
    _check_oi_digest(oi_dig, expected_oi_digest)
    return GatewayView(pi_head, part.pan_data, part.pin_block, oi_dig, None)


for _record in (AccountPart, PIData, PITBS, PIDualSigned):
    codec.validate_schema(_record)
