"""The dual signature: one cardholder signature binding the order (OI) and the payment (PI).

    AccountPart  = {PANData, [PIN block]}           (p: sealed in the wrap, gateway HSM only)
    PIData       = {PIHead, DD(AccountPart)}        DD(p) = H("<ct>/extra", p), the same digest
                                                    EX's bulk part L(t, p) carries beside t
    PI-TBS       = {"PI-TBS", H(PIData), H(OIData), merchant cert thumb, gateway KE cert thumb}
    PIDualSigned = {SO(C, PI-TBS), EX(P, PI-OILink = L(PIHead, OIData), AccountPart)}
    OIDualSigned = L(OIData, PIData)
    no cert:  PIUnsigned = EXH(P, PI-OILink, AccountPart with PANToken),
              OIUnsigned = L(OIData, PIDataUnsigned)

Rule 1: the merchant verifies with OIData and H(PIData) only; it never can read the account
part (it is sealed in the gateway's wrap). The gateway verifies with PIHead, DD(p) and the
H(OIData) taken from the linkage, never seeing OIData. Both check the same signature.
Rule 2: PI-TBS names its purpose, the merchant and the gateway (SET's explicitness gap), so a
PI cannot be replayed to another merchant or through another gateway key.
Rule 3: all inputs and outputs are exact encoded bytes; failures are ``ProtocolError``.
Rule 4 (OPE): the gateway opens a PI through an ``AccountOpener``: the keystore's
``open_pi_account`` unwraps inside the HSM boundary and returns ``OpenedAccount`` = the bulk
key, [H(t)], DD(p), PANData and, for a PIN-bearing PI, the PIN block translated to format 4
under the zone PIN key. Because PIData holds DD(p) rather than p, the gateway checks the
dual signature without ever holding p, so the clear PIN block never reaches its process.
``open_account`` is that opening as pure computation; the keystore runs it with the token.
Rule 5: a plain ``PrivateKey`` still opens card-only PIs (it is wrapped in a
``KeyAccountOpener`` without a PIN key); a PIN-bearing PI is refused on that path.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

from protocol import codec, detached, envelope, keywrap, linkage, pan, pin
from protocol.codec import Bytes32, Digest, MaxLen
from protocol.detached import DetachedSignature
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import PrivateKey, PublicKey, Suite
from protocol.messages import PIKind

PI_TBS = "PI-TBS"
PI_OILINK = "PI-OILink"
PI_UNSIGNED = "PIUnsigned"
PIDATA = "PIData"
PIDATA_UNSIGNED = "PIDataUnsigned"
OIDATA = "OIData"
MAX_PAN_DATA = 160
MAX_PIN_BLOCK = 16  # ISO 9564 format 0 = 8 bytes (in a PI), format 4 = 16 (under the ZPK)
# Which envelope each PI kind travels in: (content type, treatment, H(t) in the wrap).
_WRAPS = {PIKind.DUAL_SIGNED: (PI_OILINK, "EX", False), PIKind.UNSIGNED: (PI_UNSIGNED, "EXH", True)}
PinTranslate = Callable[[bytes, str], bytes]  # (PI's PIN block, binding digits) -> under ZPK


@dataclass(frozen=True, slots=True)
class AccountPart:
    """p of EX/EXH: PANData (or PANToken), and the OPE PIN block, readable only by the gateway."""

    pan_data: Annotated[bytes, MaxLen(MAX_PAN_DATA)]
    pin_block: Annotated[bytes, MaxLen(MAX_PIN_BLOCK)] | None


@dataclass(frozen=True, slots=True)
class PIData:
    """The payment instruction whose digest the cardholder signs."""

    pi_head: bytes
    account_digest: Digest  # DD(AccountPart) as EX's bulk link names it


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
    """What the gateway learns: PIHead, PANData, H(OIData), the signer (if any) and, for OPE,
    the PIN block as format 4 under the zone PIN key (never the cardholder's block)."""

    pi_head: bytes
    pan_data: bytes
    pin_block: bytes | None  # format 4 under the ZPK, from the keystore; None without a PIN
    oi_digest: bytes
    signer: bytes | None


@dataclass(frozen=True, slots=True)
class OpenedAccount:
    """What opening a PI's wrap yields to the gateway process (the keystore's answer)."""

    bulk_key: Bytes32
    content_digest: Digest | None  # H(t) sealed in an EXH wrap (PIUnsigned); None for EX
    account_digest: Digest  # DD(AccountPart)
    pan_data: Annotated[bytes, MaxLen(MAX_PAN_DATA)]
    pin_block: Annotated[bytes, MaxLen(MAX_PIN_BLOCK)] | None  # format 4 under the ZPK


class AccountOpener(Protocol):
    """Opens the wrap of a PI's envelope; the keystore client implements it over the bus."""

    async def open_pi_account(self, kind: PIKind, envelope: bytes) -> OpenedAccount: ...


@dataclass(frozen=True, slots=True)
class PiWrap:
    """The parts of a PI envelope the private-key holder needs, and the context they bind."""

    content_type: str
    context: bytes
    ephemeral: bytes
    key_block: bytes
    with_digest: bool


def oi_digest(oi_data: bytes) -> bytes:
    """H(OIData): what AuthReq carries (HOIData) for the gateway to compare."""
    return linkage.digest_of(OIDATA, oi_data)


def account_digest(content_type: str, account: bytes) -> bytes:
    """DD(AccountPart): the digest EX/EXH put beside t in the bulk part (envelope rule 2)."""
    return linkage.digest_of(envelope.extra_label(content_type), account)


def _account(pan_data: bytes, pin_block: bytes | None) -> bytes:
    if len(pan_data) > MAX_PAN_DATA:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "account data too long")
    if pin_block is not None and len(pin_block) != pin.FORMAT0_BYTES:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "a PI carries an 8-byte format 0 PIN block")
    return codec.encode(AccountPart(pan_data, pin_block))


def _tbs(pi_digest: bytes, oi_dig: bytes, merchant: bytes, gateway: bytes) -> bytes:
    return codec.encode(PITBS(PI_TBS, pi_digest, oi_dig, merchant, gateway))


def _pidata(pi_head: bytes, acct_digest: bytes) -> bytes:
    return codec.encode(PIData(pi_head, acct_digest))


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
    are the gateway key-exchange and merchant certificate thumbprints; ``pin_block`` is an
    ISO 9564 format 0 block bound to the account)."""
    account = _account(pan_data, pin_block)
    pidata = _pidata(pi_head, account_digest(PI_OILINK, account))
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


# --- opening the wrap: the keystore's half (pure computation) ---------------------------


def pi_wrap(kind: PIKind, data: bytes) -> PiWrap:
    """The wrap of an encoded PI envelope of ``kind``; refuses another content type."""
    content_type, treatment, with_digest = _WRAPS[kind]
    env = codec.decode(envelope.Envelope, data)
    if env.content_type != content_type:
        raise ProtocolError(
            ErrorCode.DECODING_FAILURE,
            f"expected content type {content_type}, got {env.content_type}",
        )
    context = envelope.context_bytes(treatment, content_type, env.recipient, b"")
    return PiWrap(content_type, context, env.ephemeral, env.key_block, with_digest)


def _binding(kind: PIKind, pan_data: bytes) -> str:
    """The digits the PIN block is bound to: the account number of PANData/PANToken."""
    try:
        if kind is PIKind.DUAL_SIGNED:
            return pan.decode_pan_data(pan_data).account.pin_binding_number
        return pan.decode_pan_token(pan_data).account.pin_binding_number
    except ProtocolError:
        raise ProtocolError(
            ErrorCode.INVALID_FIELD, "PIN-bearing PI without valid account data"
        ) from None


def open_account(
    kind: PIKind, wrap: PiWrap, unwrapped: keywrap.Unwrapped, translate: PinTranslate | None
) -> OpenedAccount:
    """Read p from an unwrapped PI wrap and answer without the cardholder's PIN block: a
    PIN block is passed to ``translate`` (None: PIN-bearing PIs are refused)."""
    if unwrapped.extra is None:
        raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "wrap block has no account part")
    part = codec.decode(AccountPart, unwrapped.extra)
    translated: bytes | None = None
    if part.pin_block is not None:
        if translate is None:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_ALGORITHM,
                "a PIN-bearing PI opens only inside the keystore (open_pi_account)",
            )
        translated = translate(part.pin_block, _binding(kind, part.pan_data))
    return OpenedAccount(
        unwrapped.key,
        unwrapped.digest,
        account_digest(wrap.content_type, unwrapped.extra),
        part.pan_data,
        translated,
    )


class KeyAccountOpener:
    """``AccountOpener`` over a ``PrivateKey`` (and, for OPE, the ZPK as a block cipher):
    ``open_pi_account``'s construction in one process, for tests and tools."""

    def __init__(self, key: PrivateKey, zpk_encrypt: pin.BlockCipher | None = None) -> None:
        self.key = key
        self.zpk_encrypt = zpk_encrypt

    async def open_pi_account(self, kind: PIKind, envelope: bytes) -> OpenedAccount:
        wrap = pi_wrap(kind, envelope)
        opened = await keywrap.unwrap(
            self.key, wrap.context, wrap.ephemeral, wrap.key_block, wrap.with_digest, True
        )
        encrypt = self.zpk_encrypt
        translate = None
        if encrypt is not None:

            def translate(block: bytes, number: str) -> bytes:
                return pin.translate_to_format4(block, number, encrypt)

        return open_account(kind, wrap, opened, translate)


def holds_pin_block(oaep_plaintext: bytes) -> bool:
    """True if an RSA wrap's plaintext carries a PIN-bearing AccountPart (keystore guard)."""
    block = keywrap.decode_key_block(oaep_plaintext)
    if block is None or block.extra is None:
        return False
    try:
        return codec.decode(AccountPart, block.extra).pin_block is not None
    except ProtocolError:
        return False


def is_pi_wrap_info(info: bytes) -> bool:
    """True if an ECDH-ES HKDF info names a PI envelope (keystore guard: such derivations
    would hand k_extra, hence p, to the caller)."""
    try:
        label, context, _ = codec.unpackb(info)
        content_type = codec.unpackb(context)[1]
    except (ProtocolError, TypeError, ValueError, KeyError, IndexError):
        return False
    return label == "setpay/v1/ECDH-ES" and content_type in (PI_OILINK, PI_UNSIGNED)


# --- the gateway's half ---------------------------------------------------------------------


def _opener(key: PrivateKey | AccountOpener) -> AccountOpener:
    if hasattr(key, "open_pi_account"):
        return key  # type: ignore[return-value]
    return KeyAccountOpener(key)  # type: ignore[arg-type]


async def _open_pi(
    kind: PIKind, data: bytes, opener: AccountOpener, gateway: bytes
) -> tuple[bytes, bytes, OpenedAccount]:
    """Open the envelope of a PI through ``opener``: (PIHead, H(OIData), OpenedAccount)."""
    wrap = pi_wrap(kind, data)
    env = codec.decode(envelope.Envelope, data)
    if not hmac.compare_digest(env.recipient, gateway):
        raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "envelope is for another recipient")
    opened = await opener.open_pi_account(kind, data)
    bulk = codec.decode(
        linkage.Linked, keywrap.aead_open(opened.bulk_key, env.nonce, env.ciphertext, wrap.context)
    )
    if not hmac.compare_digest(bulk.link.digest, opened.account_digest):
        raise ProtocolError(ErrorCode.LINKAGE_FAILURE, "account part digest does not match")
    if wrap.with_digest:
        if opened.content_digest is None:
            raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "wrap lacks the content digest")
        linkage.check_digest(
            opened.content_digest,
            envelope.hash_label(wrap.content_type),
            bulk.content,
            "enveloped content",
        )
    link = codec.decode(linkage.Linked, bulk.content)
    return link.content, link.link.digest, opened


async def open_at_gateway(
    pi: bytes,
    key: PrivateKey | AccountOpener,
    gateway: bytes,
    cardholder_public: PublicKey,
    merchant: bytes,
    expected_oi_digest: bytes | None = None,
) -> GatewayView:
    """Gateway: open the PI (through the keystore's ``AccountOpener``, or a plain key for a
    card-only PI), verify the dual signature with H(OIData) from the linkage, and (if given)
    that it equals the HOIData the merchant's AuthReq carries."""
    pid = codec.decode(PIDualSigned, pi)
    pi_head, oi_dig, opened = await _open_pi(
        PIKind.DUAL_SIGNED, pid.envelope, _opener(key), gateway
    )
    pi_digest = linkage.digest_of(PIDATA, _pidata(pi_head, opened.account_digest))
    tbs = _tbs(pi_digest, oi_dig, merchant, gateway)
    detached.verify_detached(pid.signature, cardholder_public, PI_TBS, tbs)
    _check_oi_digest(oi_dig, expected_oi_digest)
    return GatewayView(pi_head, opened.pan_data, opened.pin_block, oi_dig, pid.signature.signer)


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
    pidata = _pidata(pi_head, account_digest(PI_UNSIGNED, account))
    oi = linkage.Linked(oi_data, linkage.dd(PIDATA_UNSIGNED, pidata))
    return PurchaseParts(pi, codec.encode(oi), oi_data, oi.link.digest)


def read_unsigned_oi(oi: bytes) -> MerchantView:
    """Merchant, unsigned purchase: OIData and H(PIDataUnsigned); nothing to verify."""
    linked = codec.decode(linkage.Linked, oi)
    return MerchantView(linked.content, linked.link.digest, None)


async def open_unsigned_at_gateway(
    pi: bytes,
    key: PrivateKey | AccountOpener,
    gateway: bytes,
    expected_oi_digest: bytes | None = None,
) -> GatewayView:
    """Gateway: open PIUnsigned (EXH checks H and DD) and check the order linkage."""
    pi_head, oi_dig, opened = await _open_pi(PIKind.UNSIGNED, pi, _opener(key), gateway)
    _check_oi_digest(oi_dig, expected_oi_digest)
    return GatewayView(pi_head, opened.pan_data, opened.pin_block, oi_dig, None)


for _record in (AccountPart, PIData, PITBS, PIDualSigned, OpenedAccount):
    codec.validate_schema(_record)
