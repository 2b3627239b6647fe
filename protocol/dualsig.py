"""The dual signature: one cardholder signature binding the order (OI) and the payment (PI).

    AccountPart  = {PANData, PIN-sealed flag}       (p: sealed in the wrap, gateway HSM only)
    PIData       = {PIHead, DD(AccountPart),        DD(p) = H("<ct>/extra", p), the same digest
                    [H(PIN seal)]}                  EX's bulk part L(t, p) carries beside t
    PI-TBS       = {"PI-TBS", H(PIData), H(OIData), merchant cert thumb, gateway KE cert thumb}
    PIDualSigned = {SO(C, PI-TBS), EX(P, PI-OILink = L(PIHead, OIData), AccountPart),
                    [PIN seal]}                     (OPE: the thin client's seal, pin.py)
    OIDualSigned = L(OIData, PIData)
    no cert:  PIUnsigned = EXH(P, PI-OILink, AccountPart with PANToken),
              OIUnsigned = L(OIData, PIDataUnsigned)

Rule 1: the merchant verifies with OIData and H(PIData) only; it never can read the account
part (it is sealed in the gateway's wrap). The gateway verifies with PIHead, DD(p) and the
H(OIData) taken from the linkage, never seeing OIData. Both check the same signature.
Rule 2: PI-TBS names its purpose, the merchant and the gateway (SET's explicitness gap), so a
PI cannot be replayed to another merchant or through another gateway key.
Rule 3: all inputs and outputs are exact encoded bytes; failures are ``ProtocolError``.
Rule 4 (OPE): the PIN block never passes through the wallet: the cardholder's thin client
seals it to the gateway for this XID (``pin.seal_pin``); the PI carries that seal beside the
envelope, p says a seal is required and PIData holds the seal's digest, so the dual
signature binds the seal to the purchase. (The seal cannot live inside p: an RSA-2048
OAEP wrap holds 190-214 bytes, a seal to an RSA key is larger.) The gateway opens a PI
through an ``AccountOpener``: the keystore's ``open_pi_account`` unwraps inside the HSM
boundary, opens the seal for the XID of the PI's own PIHead (a seal made for another
purchase does not decrypt) and returns ``OpenedAccount`` = the bulk key, [H(t)], DD(p),
PANData and the PIN block translated to format 4 under the zone PIN key.
``open_account`` is that opening as pure computation; the keystore runs it with the token.
Rule 5: a plain ``PrivateKey`` still opens card-only PIs (it is wrapped in a
``KeyAccountOpener`` without a PIN key); a PIN-bearing PI is refused on that path.
Rule 6: PIUnsigned carries no PIN seal (it has no place for one): OPE needs a certificate.
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
from protocol.messages import PIHead, PIKind

PI_TBS = "PI-TBS"
PI_OILINK = "PI-OILink"
PI_UNSIGNED = "PIUnsigned"
PIDATA = "PIData"
PIDATA_UNSIGNED = "PIDataUnsigned"
OIDATA = "OIData"
MAX_PAN_DATA = 160
MAX_PIN_BLOCK = 16  # ISO 9564 format 4 = 16 bytes (under the ZPK)
MAX_PIN_SEAL = 1024  # an RSA-4096 wrap and the sealed block fit
PIN_SEAL_LABEL = pin.PIN_SEAL + "/seal"
# Which envelope each PI kind travels in: (content type, treatment, H(t) in the wrap).
_WRAPS = {PIKind.DUAL_SIGNED: (PI_OILINK, "EX", False), PIKind.UNSIGNED: (PI_UNSIGNED, "EXH", True)}
# (XID, PIN seal, binding digits) -> the sealed PIN block as format 4 under the ZPK
PinOpen = Callable[[bytes, bytes, str], bytes]


@dataclass(frozen=True, slots=True)
class AccountPart:
    """p of EX/EXH: PANData (or PANToken) and whether the PI comes with a PIN seal (OPE)."""

    pan_data: Annotated[bytes, MaxLen(MAX_PAN_DATA)]
    pin_sealed: bool


@dataclass(frozen=True, slots=True)
class PIData:
    """The payment instruction whose digest the cardholder signs."""

    pi_head: bytes
    account_digest: Digest  # DD(AccountPart) as EX's bulk link names it
    pin_seal: Digest | None  # H(PIN seal) for OPE


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
    """PISignature, the EX envelope to the gateway and (OPE) the thin client's PIN seal."""

    signature: DetachedSignature
    envelope: bytes
    pin_seal: Annotated[bytes, MaxLen(MAX_PIN_SEAL)] | None = None


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

    async def open_pi_account(
        self, kind: PIKind, envelope: bytes, pin_seal: bytes | None = None
    ) -> OpenedAccount: ...


@dataclass(frozen=True, slots=True)
class PiWrap:
    """The parts of a PI envelope the private-key holder needs, and the context they bind."""

    content_type: str
    context: bytes
    ephemeral: bytes
    key_block: bytes
    with_digest: bool
    recipient: bytes
    nonce: bytes
    ciphertext: bytes


def oi_digest(oi_data: bytes) -> bytes:
    """H(OIData): what AuthReq carries (HOIData) for the gateway to compare."""
    return linkage.digest_of(OIDATA, oi_data)


def account_digest(content_type: str, account: bytes) -> bytes:
    """DD(AccountPart): the digest EX/EXH put beside t in the bulk part (envelope rule 2)."""
    return linkage.digest_of(envelope.extra_label(content_type), account)


def pin_seal_digest(sealed: bytes) -> bytes:
    """H(PIN seal): what p carries so the dual signature binds the seal."""
    return linkage.digest_of(PIN_SEAL_LABEL, sealed)


def _seal_digest(pin_seal: bytes | None) -> bytes | None:
    return None if pin_seal is None else pin_seal_digest(pin_seal)


def _account(pan_data: bytes, pin_seal: bytes | None, gateway: bytes) -> bytes:
    if len(pan_data) > MAX_PAN_DATA:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "account data too long")
    if pin_seal is not None:
        if len(pin_seal) > MAX_PIN_SEAL:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "PIN seal too long")
        env = codec.decode(envelope.Envelope, pin_seal)
        if env.content_type != pin.PIN_SEAL or not hmac.compare_digest(env.recipient, gateway):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "PIN seal is not sealed to this gateway")
    return codec.encode(AccountPart(pan_data, pin_seal is not None))


def _tbs(pi_digest: bytes, oi_dig: bytes, merchant: bytes, gateway: bytes) -> bytes:
    return codec.encode(PITBS(PI_TBS, pi_digest, oi_dig, merchant, gateway))


def _pidata(pi_head: bytes, acct_digest: bytes, seal_digest: bytes | None = None) -> bytes:
    return codec.encode(PIData(pi_head, acct_digest, seal_digest))


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
    pin_seal: bytes | None = None,
) -> PurchaseParts:
    """Cardholder: PIDualSigned and OIDualSigned for one purchase (``gateway``/``merchant``
    are the gateway key-exchange and merchant certificate thumbprints; ``pin_seal`` is the
    thin client's ``pin.seal_pin`` for this XID, never a clear block)."""
    account = _account(pan_data, pin_seal, gateway)
    pidata = _pidata(pi_head, account_digest(PI_OILINK, account), _seal_digest(pin_seal))
    tbs = _tbs(linkage.digest_of(PIDATA, pidata), oi_digest(oi_data), merchant, gateway)
    signature = await detached.sign_detached(key, signer, PI_TBS, tbs)
    pi_oilink = linkage.make_linked(pi_head, OIDATA, oi_data)
    env = await envelope.make_ex(suite, gateway_public, gateway, PI_OILINK, pi_oilink, account)
    pi = codec.encode(PIDualSigned(signature, env, pin_seal))
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
    return PiWrap(
        content_type, context, env.ephemeral, env.key_block, with_digest, env.recipient,
        env.nonce, env.ciphertext,
    )  # fmt: skip


def pi_xid(wrap: PiWrap, bulk_key: bytes) -> bytes:
    """The XID of the PIHead inside a PI's bulk part (what a PIN seal must be bound to)."""
    bulk = codec.decode(
        linkage.Linked, keywrap.aead_open(bulk_key, wrap.nonce, wrap.ciphertext, wrap.context)
    )
    pi_oilink = codec.decode(linkage.Linked, bulk.content)
    return codec.decode(PIHead, pi_oilink.content).trans_ids.xid


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
    kind: PIKind,
    wrap: PiWrap,
    unwrapped: keywrap.Unwrapped,
    pin_seal: bytes | None,
    open_pin: PinOpen | None,
) -> OpenedAccount:
    """Read p from an unwrapped PI wrap and answer without the cardholder's PIN block: the
    PIN seal p asks for goes to ``open_pin`` with the PI's XID (None: refused)."""
    if unwrapped.extra is None:
        raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "wrap block has no account part")
    part = codec.decode(AccountPart, unwrapped.extra)
    translated: bytes | None = None
    if not part.pin_sealed:
        if pin_seal is not None:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "PIN seal beside a PI without a PIN")
    else:
        if pin_seal is None:
            raise ProtocolError(ErrorCode.INVALID_FIELD, "PIN-bearing PI without its PIN seal")
        if open_pin is None:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_ALGORITHM,
                "a PIN-bearing PI opens only inside the keystore (open_pi_account)",
            )
        xid = pi_xid(wrap, unwrapped.key)
        translated = open_pin(xid, pin_seal, _binding(kind, part.pan_data))
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

    async def open_pi_account(
        self, kind: PIKind, envelope: bytes, pin_seal: bytes | None = None
    ) -> OpenedAccount:
        wrap = pi_wrap(kind, envelope)
        opened = await keywrap.unwrap(
            self.key, wrap.context, wrap.ephemeral, wrap.key_block, wrap.with_digest, True
        )
        encrypt = self.zpk_encrypt
        open_pin = None
        sealed = opened.extra is not None and codec.decode(AccountPart, opened.extra).pin_sealed
        if encrypt is not None and pin_seal is not None and sealed:
            # The PrivateKey is async: open the seal first, translate in open_account.
            block0 = await pin.open_pin_seal(self.key, pin_seal, pi_xid(wrap, opened.key))

            def open_pin(_xid: bytes, _seal: bytes, number: str) -> bytes:
                return pin.translate_to_format4(block0, number, encrypt)

        return open_account(kind, wrap, opened, pin_seal, open_pin)


def holds_pin_block(oaep_plaintext: bytes) -> bool:
    """True if an RSA wrap's plaintext is a PIN seal's or a PIN-bearing PI's (keystore guard:
    those open only through ``open_pi_account``)."""
    block = keywrap.decode_key_block(oaep_plaintext)
    if block is None or block.extra is None:
        return False
    if pin.is_pin_seal_block(block.extra):
        return True
    try:
        return codec.decode(AccountPart, block.extra).pin_sealed
    except ProtocolError:
        return False


def is_pi_wrap_info(info: bytes) -> bool:
    """True if an ECDH-ES HKDF info names a PI envelope or a PIN seal (keystore guard: such
    derivations would hand k_extra, hence p or the PIN block, to the caller)."""
    try:
        label, context, _ = codec.unpackb(info)
        content_type = codec.unpackb(context)[1]
    except (ProtocolError, TypeError, ValueError, KeyError, IndexError):
        return False
    return label == "setpay/v1/ECDH-ES" and content_type in (PI_OILINK, PI_UNSIGNED, pin.PIN_SEAL)


# --- the gateway's half ---------------------------------------------------------------------


def _opener(key: PrivateKey | AccountOpener) -> AccountOpener:
    if hasattr(key, "open_pi_account"):
        return key  # type: ignore[return-value]
    return KeyAccountOpener(key)  # type: ignore[arg-type]


async def _open_pi(
    kind: PIKind, data: bytes, opener: AccountOpener, gateway: bytes, pin_seal: bytes | None
) -> tuple[bytes, bytes, OpenedAccount]:
    """Open the envelope of a PI through ``opener``: (PIHead, H(OIData), OpenedAccount)."""
    wrap = pi_wrap(kind, data)
    env = codec.decode(envelope.Envelope, data)
    if not hmac.compare_digest(env.recipient, gateway):
        raise ProtocolError(ErrorCode.DECRYPTION_FAILURE, "envelope is for another recipient")
    opened = await opener.open_pi_account(kind, data, pin_seal)
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
        PIKind.DUAL_SIGNED, pid.envelope, _opener(key), gateway, pid.pin_seal
    )
    pidata = _pidata(pi_head, opened.account_digest, _seal_digest(pid.pin_seal))
    pi_digest = linkage.digest_of(PIDATA, pidata)
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
) -> PurchaseParts:
    """Cardholder without a certificate: PIUnsigned = EXH(P, PI-OILink, PANToken) and
    OIUnsigned (no PIN seal: Rule 6)."""
    account = _account(pan_token, None, gateway)
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
    pi_head, oi_dig, opened = await _open_pi(PIKind.UNSIGNED, pi, _opener(key), gateway, None)
    _check_oi_digest(oi_dig, expected_oi_digest)
    return GatewayView(pi_head, opened.pan_data, opened.pin_block, oi_dig, None)


for _record in (AccountPart, PIData, PITBS, PIDualSigned, OpenedAccount):
    codec.validate_schema(_record)
